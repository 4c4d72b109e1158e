"""Resume checkpoints of a long task: the GRPO update's steps and the segment's epochs.

A task that may be killed keeps its progress in two alternating slots under a local
directory. Saving fills the slot that does not hold the newest checkpoint, publishes
it (Flyte's intra-task checkpoint, say) and only then writes and publishes the slot's
pointer: a small JSON file holding the run's key and how far it got, written atomically
and last, so a slot without one is never resumed. A restart (the same pod, or a new
one that restores the last published tree) resumes from the newest slot whose key is
its own: the same inputs, never another run's.

Layout (`base` is local_dir, or local_dir/subdir):

    base/slot-a/<payload> and base/slot-a/<pointer>   the live slots of this pod
    base/slot-b/...
    base/restored/                                    the published tree, restored

A published tree holds what the slots' payloads published over each other, with the
newest pointer at its top. Where payloads would collide there (two slots' engine
states), the payload is written under the slot's name and the pointer names it
(`Pointer.tag`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from typing import Callable, Iterable

log = logging.getLogger(__name__)

CHECKPOINT_EVERY_ENV = "SPARK_CHECKPOINT_EVERY"  # optimizer steps between the update's checkpoints (0 = none)
SLOTS = ("slot-a", "slot-b")
RESTORED = "restored"


def checkpoint_every() -> int:
    return int(os.environ.get(CHECKPOINT_EVERY_ENV, "1") or "1")


def checkpoint_key(parts: list, rows: Iterable = (), length: int = 32) -> str:
    """The identity of a run's inputs: a checkpoint is only resumed by the same key.
    `rows` are hashed one at a time, so a pass over many rollouts needs no JSON of all."""
    h = hashlib.sha256(json.dumps(parts).encode())
    for row in rows:
        h.update(json.dumps(row).encode())
    return h.hexdigest()[:length]


@dataclass
class Checkpoints:
    """Where a task keeps its resume slots and how they outlive the process.

    local_dir: a directory with the same path on every rank of a node (or on a shared
        volume); a restart in the same pod finds the live slots there.
    every: the update's optimizer steps between checkpoints (SPARK_CHECKPOINT_EVERY,
        default 1; 0 = none). The segment saves after every epoch but the last.
    restore: fetch the last published tree into the given empty directory; True if
        there was one. Called on local rank 0 before the task starts its work.
    publish: make a local directory durable: its contents land at the top of the
        published tree. Calls are ordered; a slot's pointer goes after its payload, in a
        directory of its own.
    """

    local_dir: str
    every: int = field(default_factory=checkpoint_every)
    restore: Callable[[str], bool] | None = None
    publish: Callable[[str], None] | None = None


@dataclass(frozen=True)
class Pointer:
    """The file that marks a slot complete, and the names of its fields.

    name: the file name; key: the field holding the run's key; count: the field
    holding its progress (steps or epochs done); tag: where set, the field naming the
    sub-directory of the slot that holds its payload (it must exist to resume)."""

    name: str
    key: str = "key"
    count: str = "done"
    tag: str | None = None

    def read(self, root: str, key: str) -> dict | None:
        """The pointer in `root` when it belongs to `key` and its payload is there, with
        `load_dir` (the directory to load the payload from) added; else None."""
        path = os.path.join(root, self.name)
        if not os.path.exists(path):
            return None
        try:
            with open(path) as f:
                st = json.load(f)
        except (OSError, ValueError) as e:
            log.warning("ignoring an unreadable resume pointer %s: %s", path, e)
            return None
        if st.get(self.key) != key:
            log.info("the checkpoint in %s belongs to other inputs; not resuming from it", root)
            return None
        if self.tag is not None and not os.path.isdir(os.path.join(root, str(st.get(self.tag, "")))):
            log.warning("the resume pointer in %s names checkpoint %r, which is missing", root, st.get(self.tag))
            return None
        return dict(st, load_dir=root)

    def write(self, root: str, state: dict) -> str:
        """Write the pointer atomically (a reader sees the old file or the new one)."""
        path = os.path.join(root, self.name)
        with open(path + ".tmp", "w") as f:
            json.dump(state, f)
        os.replace(path + ".tmp", path)
        return path


def _nothing() -> None:
    pass


def _as_is(found: dict | None) -> dict | None:
    return found


@dataclass
class Ranks:
    """How the ranks of a job share its checkpoints. Local rank 0 of each node prepares,
    restores and publishes the node's files (rank 0 alone publishes the pointer);
    `barrier` orders the ranks around it; `agree` turns each rank's newest checkpoint
    into one choice for all (rank 0's, or none where the ranks disagree)."""

    rank: int = 0
    local_rank: int = 0
    barrier: Callable[[], None] = _nothing
    agree: Callable[[dict | None], dict | None] = _as_is


class ResumeSlots:
    """The two resume slots of one run (`key`) under `ck.local_dir` (or its `subdir`)."""

    def __init__(self, ck: Checkpoints, key: str, pointer: Pointer, ranks: Ranks | None = None, subdir: str = ""):
        self.ck, self.key, self.pointer = ck, key, pointer
        self.ranks = ranks or Ranks()
        self.base = os.path.join(ck.local_dir, subdir) if subdir else ck.local_dir

    def _live(self) -> list[tuple[str, dict]]:
        found = [(s, self.pointer.read(os.path.join(self.base, s), self.key)) for s in SLOTS]
        return [(s, st) for s, st in found if st is not None]

    def find(self) -> dict | None:
        """The newest checkpoint of this run: its pointer's fields and `load_dir`, from
        the restored tree of the last attempt or a live slot of this pod; None to start
        afresh. Every rank calls it and gets the same answer."""
        restored = os.path.join(self.base, RESTORED)
        if self.ranks.local_rank == 0:
            os.makedirs(self.base, exist_ok=True)
            if self.ck.restore is not None:
                shutil.rmtree(restored, ignore_errors=True)
                os.makedirs(restored)
                try:
                    if not self.ck.restore(restored):
                        shutil.rmtree(restored, ignore_errors=True)
                except Exception as e:  # noqa: BLE001 - a lost checkpoint means starting over, not failing
                    log.warning("could not restore the last checkpoint (%s); starting from the beginning", e)
                    shutil.rmtree(restored, ignore_errors=True)
        self.ranks.barrier()
        found = [st for st in [self.pointer.read(restored, self.key)] + [st for _, st in self._live()]
                 if st is not None]
        best = max(found, key=lambda st: st[self.pointer.count]) if found else None
        return self.ranks.agree(best)

    def save(self, done: int, write: Callable[[str, str], None], extra: dict | None = None) -> None:
        """Save a checkpoint after `done` steps or epochs. `write(slot_dir, tag)` writes
        the payload; every rank calls it (each writes its own part). The slot is
        published, then its pointer is written and published."""
        live = self._live()
        newest = max(live, key=lambda s: s[1][self.pointer.count])[0] if live else None
        slot = SLOTS[1] if newest == SLOTS[0] else SLOTS[0]  # never the slot of the newest checkpoint
        root = os.path.join(self.base, slot)
        self.ranks.barrier()  # every rank chose before the slot is cleared
        if self.ranks.local_rank == 0:
            shutil.rmtree(root, ignore_errors=True)
            os.makedirs(root)
        self.ranks.barrier()
        write(root, slot)
        self.ranks.barrier()
        if self.ranks.local_rank == 0 and self.ck.publish is not None:
            self.ck.publish(root)
        self.ranks.barrier()
        if self.ranks.local_rank == 0:
            state = {self.pointer.key: self.key, self.pointer.count: done, **(extra or {})}
            if self.pointer.tag is not None:
                state[self.pointer.tag] = slot
            path = self.pointer.write(root, state)
            if self.ranks.rank == 0 and self.ck.publish is not None:
                self._publish_file(path)
        self.ranks.barrier()

    def _publish_file(self, path: str) -> None:
        """Publish one file at the top of the published tree (publish takes directories)."""
        box = os.path.join(self.base, ".publishing")
        shutil.rmtree(box, ignore_errors=True)
        os.makedirs(box)
        try:
            shutil.copy2(path, box)
            self.ck.publish(box)
        finally:
            shutil.rmtree(box, ignore_errors=True)

    def clear(self) -> None:
        """The run is complete: its slots are not needed any more."""
        self.ranks.barrier()
        if self.ranks.local_rank == 0:
            for sub in SLOTS + (RESTORED,):
                shutil.rmtree(os.path.join(self.base, sub), ignore_errors=True)
            for d in dict.fromkeys((self.base, self.ck.local_dir)):  # innermost first; only when empty
                try:
                    os.rmdir(d)
                except OSError:
                    pass


def save_rng_state(path: str) -> None:
    """This process's torch RNG state (CPU, and CUDA where present), e.g. per rank in a slot."""
    import torch

    rng = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state()
    torch.save(rng, path)


def load_rng_state(path: str) -> None:
    """Restore what save_rng_state wrote, where the file exists."""
    import torch

    if not os.path.exists(path):
        return
    rng = torch.load(path, weights_only=True)
    torch.set_rng_state(rng["cpu"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state(rng["cuda"])
