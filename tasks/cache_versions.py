"""Cache version of every cached stage, computed from the sources the stage runs.

Flyte's cache key is task name + cache version + interface + inputs, so editing a
stage's code must change its cache version, or Flyte reuses outputs of the old code.
Each stage's version is therefore computed, by a flytekit cache policy (`StageSources`),
from the files its behaviour depends on (STAGE_SOURCES):

- a `.py` file counts by its token stream (Python's `tokenize`), without comments and
  without the newlines that end no statement: a comment or a blank line changes
  nothing, any change to code, strings or docstrings changes the version;
- any other file counts by its raw bytes;
- each file's path relative to the project root counts too (so a renamed or an added
  file counts); absolute paths, mtimes and git state do not, so every machine and
  every checkout of the same code computes the same versions.

Tasks declare `@task(cache=stage_cache("rollout"), ...)`. `python -m tasks.cache_versions`
prints each stage's current version.

When a stage starts calling another module, add that file to STAGE_SOURCES;
tests/test_cache_versions.py checks that the list covers every project module the
stage's task function imports, directly or through other project modules, lazy
imports included. `spark_core/config.py`, `spark_core/schemas.py` and
`tasks/common.py` are in every stage: they decide how the config is read and what the
artifacts look like.

This module is imported by every task module, so it imports nothing heavy (flytekit's
`Cache` only inside `stage_cache`).
"""

from __future__ import annotations

import glob
import hashlib
import io
import os
import sys
import tokenize

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The cached task functions of each stage: [(module file, function name)]. Tasks that
# share a stage share its version.
STAGE_TASKS = {
    "data": [("tasks/data.py", "prepare_data")],
    "select_prompts": [("tasks/data.py", "select_prompts")],
    "base_model": [("tasks/model.py", "base_model")],
    "bootstrap": [("tasks/model.py", "bootstrap")],
    "judge_eval_set": [("tasks/evaluate.py", "judge_eval_set")],
    "evaluate": [("tasks/evaluate.py", "evaluate_policy")],
    "rollout": [("tasks/rollout.py", "rollout_shard")],
    "reward": [("tasks/reward.py", "score_rollouts")],
    "recycle": [("tasks/recycle.py", "recycle_rollouts"), ("tasks/recycle.py", "queue_recycled")],
    "update": [("tasks/update.py", "update_policy")],
    "segment": [("tasks/segment.py", "run_segment")],
}

_COMMON = ["tasks/__init__.py", "tasks/common.py", "tasks/literal_types.py", "spark_core/__init__.py",
           "spark_core/config.py", "spark_core/memory_budget.py", "spark_core/schemas.py"]
_MODEL = ["spark_core/model/*.py"]
_ROLLOUT = ["spark_core/rollout/__init__.py", "spark_core/rollout/base.py", "spark_core/rollout/hf.py",
            "spark_core/rollout/vllm_backend.py"] + _MODEL

# Files (globs relative to the project root) whose contents define each stage's behaviour.
STAGE_SOURCES: dict[str, list[str]] = {
    "data": _COMMON + ["tasks/data.py", "spark_core/data/*.py"],
    "select_prompts": _COMMON + ["tasks/data.py", "spark_core/data/*.py"],
    # the tiny tokenizer is trained on the synthetic tasks' text (tokenizer.task_corpus)
    "base_model": _COMMON + ["tasks/model.py", "spark_core/data/*.py", "spark_core/recycle/*.py",
                             "spark_core/reward/*.py"] + _MODEL,
    "bootstrap": _COMMON + ["tasks/model.py", "spark_core/train/__init__.py", "spark_core/train/sft.py",
                            "spark_core/train/grpo.py", "spark_core/recycle/*.py", "spark_core/data/*.py",
                            "spark_core/reward/*.py"] + _MODEL,
    "judge_eval_set": _COMMON + ["tasks/evaluate.py", "spark_core/evaluate/__init__.py",
                                 "spark_core/evaluate/judge_set.py", "spark_core/recycle/*.py",
                                 "spark_core/reward/*.py"] + _ROLLOUT,
    "evaluate": _COMMON + ["tasks/evaluate.py", "spark_core/evaluate/__init__.py", "spark_core/evaluate/core.py",
                           "spark_core/evaluate/likelihood.py",
                           "spark_core/evaluate/report.py", "spark_core/reward/*.py"] + _ROLLOUT,
    "rollout": _COMMON + ["tasks/rollout.py"] + _ROLLOUT,
    "reward": _COMMON + ["tasks/reward.py", "spark_core/reward/*.py"],
    "recycle": _COMMON + ["tasks/recycle.py", "spark_core/recycle/*.py", "spark_core/reward/*.py"],
    "update": _COMMON + ["tasks/update.py", "tasks/checkpoints.py", "spark_core/checkpoint.py",
                         "spark_core/train/__init__.py", "spark_core/train/engine.py",
                         "spark_core/train/callbacks.py", "spark_core/train/schedule.py",
                         "spark_core/train/collectives.py", "spark_core/train/metrics.py",
                         "spark_core/train/grpo.py"] + _MODEL,
    "segment": _COMMON + ["tasks/segment.py", "tasks/update.py", "tasks/resources.py", "tasks/checkpoints.py",
                          "spark_core/checkpoint.py", "spark_core/train/callbacks.py", "spark_core/train/schedule.py",
                          "spark_core/segment.py",
                          "spark_core/segment_stages.py", "spark_core/epoch.py", "spark_core/train/metrics.py",
                          "spark_core/loop_plan.py", "spark_core/train/__init__.py", "spark_core/train/collectives.py",
                          "spark_core/train/engine.py", "spark_core/train/grpo.py", "spark_core/data/*.py", "spark_core/recycle/*.py",
                          "spark_core/reward/*.py", "spark_core/evaluate/__init__.py", "spark_core/evaluate/core.py",
                          "spark_core/evaluate/likelihood.py"]
                         + _ROLLOUT + ["spark_core/rollout/colocated.py"],
}


def stage_files(stage: str, root: str = ROOT) -> list[str]:
    """The files of a stage, relative to `root`, sorted. A glob matching nothing is an error."""
    files: set[str] = set()
    for pattern in STAGE_SOURCES[stage]:
        hits = [h for h in glob.glob(os.path.join(root, pattern)) if os.path.isfile(h)]
        if not hits:
            raise FileNotFoundError(f"stage {stage!r}: source pattern {pattern!r} matches no file under {root}")
        files.update(os.path.relpath(h, root).replace(os.sep, "/") for h in hits)
    return sorted(files)


def _slice(lines: list[str], start: tuple[int, int], end: tuple[int, int]) -> str:
    (r1, c1), (r2, c2) = start, end
    if r1 == r2:
        return lines[r1 - 1][c1:c2]
    return lines[r1 - 1][c1:] + "".join(lines[r1:r2 - 1]) + lines[r2 - 1][:c2]


def _python_tokens(text: str):
    """(token name, text) of the code in `text`, without comments and non-logical newlines.

    Names, not token numbers, and NEWLINE without its text (a last line may lack it).
    Python 3.12+ splits an f-string into FSTRING_START ... FSTRING_END; it is joined back
    into the one STRING token that Python 3.11 yields, with the same source text."""
    lines = io.StringIO(text).readlines()
    depth, start = 0, (0, 0)
    for tok in tokenize.generate_tokens(io.StringIO(text).readline):
        name = tokenize.tok_name[tok.type]
        if name.endswith("STRING_START"):  # FSTRING_START, and TSTRING_START in 3.14
            depth, start = depth + 1, (tok.start if depth == 0 else start)
        elif depth:
            if name.endswith("STRING_END"):
                depth -= 1
                if depth == 0:
                    yield "STRING", _slice(lines, start, tok.end)
        elif tok.type in (tokenize.COMMENT, tokenize.NL):
            continue
        else:
            yield name, "" if tok.type == tokenize.NEWLINE else tok.string


_DIGESTS: dict[tuple[bool, str], str] = {}  # (is python, sha256 of the bytes) -> digest


def file_digest(path: str) -> str:
    """sha256 of a file's content: a `.py` file's code tokens, any other file's bytes."""
    with open(path, "rb") as f:
        data = f.read()
    is_py = path.endswith(".py")
    key = (is_py, hashlib.sha256(data).hexdigest())
    if key not in _DIGESTS:
        if not is_py:
            _DIGESTS[key] = key[1]
        else:
            encoding, _ = tokenize.detect_encoding(io.BytesIO(data).readline)
            text = data.decode(encoding).replace("\r\n", "\n").replace("\r", "\n")
            if text.startswith("\ufeff"):
                text = text[1:]
            h = hashlib.sha256()
            for name, s in _python_tokens(text):
                b = s.encode("utf-8")
                h.update(f"{name} {len(b)}\n".encode() + b)
            _DIGESTS[key] = h.hexdigest()
    return _DIGESTS[key]


def stage_digest(stage: str, root: str = ROOT, salt: str = "") -> str:
    """One sha256 over the stage's name, the salt, and each source file's relative path and digest."""
    h = hashlib.sha256(f"stage {stage}\nsalt {salt}\n".encode())
    for rel in stage_files(stage, root):
        h.update(rel.encode() + b"\0" + file_digest(os.path.join(root, rel)).encode() + b"\n")
    return h.hexdigest()


class StageSources:
    """flytekit cache policy (flytekit.core.cache.CachePolicy): a stage's version is the
    digest of its sources (STAGE_SOURCES) under `root`."""

    def __init__(self, stage: str, root: str = ROOT):
        if stage not in STAGE_SOURCES:
            raise KeyError(f"unknown stage {stage!r}; stages: {sorted(STAGE_SOURCES)}")
        self.stage, self.root = stage, root

    def get_version(self, salt: str, params=None) -> str:
        return stage_digest(self.stage, self.root, salt)

    def __repr__(self) -> str:
        return f"StageSources({self.stage!r})"


def stage_cache(stage: str, root: str = ROOT):
    """`Cache(policies=StageSources(stage))`, for `@task(cache=stage_cache("rollout"))`."""
    from flytekit import Cache

    return Cache(policies=StageSources(stage, root))


def stage_version(stage: str, root: str = ROOT) -> str:
    """The cache version flytekit gives a task with `stage_cache(stage)` (Cache.get_version
    hashes the concatenated outputs of its policies), without importing flytekit."""
    return hashlib.sha256(StageSources(stage, root).get_version("").encode()).hexdigest()


def versions(root: str = ROOT) -> dict[str, str]:
    """{stage: cache version} for the code under `root` as it is now."""
    return {stage: stage_version(stage, root) for stage in STAGE_TASKS}


def main(argv: list[str] | None = None, *, root: str = ROOT) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m tasks.cache_versions",
                                description="Print the cache version of each cached stage, computed from its sources.")
    p.add_argument("stages", nargs="*", help="only these stages, with the files each version is computed from")
    args = p.parse_args(argv)
    unknown = sorted(set(args.stages) - set(STAGE_TASKS))
    if unknown:
        p.error(f"unknown stage(s) {unknown}; stages: {', '.join(STAGE_TASKS)}")
    for stage in args.stages or STAGE_TASKS:
        print(f"{stage:<15} {stage_version(stage, root)}")
        if args.stages:
            for rel in stage_files(stage, root):
                print(f"    {rel}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
