"""The binary verifiable reward: the last ``\\boxed{}`` answer of a response against its label.

Every result carries named sub-scores::

    {"reward": 0.0 | 1.0, "extracted": str | None,
     "status": "ok" | "wrong" | "no_boxed" | "timeout" | "error", "ms": float}

Cheap decisions (no box, judge labels, string-equal answers) are made in the calling
process. Only the symbolic comparison goes to math_verify, and that runs in separate
worker processes (a pebble ProcessPool): math_verify's own timeouts rely on SIGALRM,
which only works on the main thread, and sympy can hang on adversarial input. A worker
that overruns its per-sample budget is killed and replaced, so one bad sample costs
about ``timeout_s``; a hang or a crashed worker scores 0.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import multiprocessing.util
import os
import re
import threading
import time
from concurrent.futures.process import BrokenProcessPool

from pebble import ProcessPool

log = logging.getLogger(__name__)

SCAN_CHARS = 20_000  # only the tail of a response can hold its final answer
JUDGE_LABELS = frozenset({"yes", "no", "a", "b"})
STARTUP_TIMEOUT_S = 120.0  # a fresh worker imports sympy; generous on a loaded node

STATUS_OK = "ok"
STATUS_WRONG = "wrong"
STATUS_NO_BOXED = "no_boxed"
STATUS_TIMEOUT = "timeout"
STATUS_ERROR = "error"

# ---- extraction ----------------------------------------------------------------------

_BOXED_OPEN = re.compile(r"\\boxed\s*\{")
_BRACE_TOKEN = re.compile(r"\\.|[{}]", re.DOTALL)  # an escaped char never opens/closes a group


def extract_boxed(text: str) -> str | None:
    """Content of the last top-level ``\\boxed{...}`` in `text`, braces matched.

    Returns None when there is no box, or when the last box never closes (a truncated
    answer is not an answer). Linear in the scanned length, which is capped.
    """
    if not isinstance(text, str) or not text:
        return None
    s = text[-SCAN_CHARS:]
    found: str | None = None
    pos = 0
    while True:
        m = _BOXED_OPEN.search(s, pos)
        if m is None:
            return found
        depth = 1
        close = -1
        for tok in _BRACE_TOKEN.finditer(s, m.end()):
            t = tok.group()
            if t == "{":
                depth += 1
            elif t == "}":
                depth -= 1
                if depth == 0:
                    close = tok.start()
                    break
        if close < 0:
            return None
        found = s[m.end():close]
        pos = close + 1  # boxes nested inside this one are part of its content


# ---- normalisation ---------------------------------------------------------------------

_TEXT_WRAP = re.compile(r"\\(?:text|textbf|textrm|textit|mathrm|mathbf|mbox)\s*\{([^{}]*)\}")
_LEFT_RIGHT = re.compile(r"\\(?:left|right)(?![A-Za-z])")
_THIN_SPACE = re.compile(r"\\[!,;: ]")
_SPACES = re.compile(r"\s+")
_SPACE_AT_SYMBOL = re.compile(r" ?([^\w ]) ?")


def _unwrap_text(s: str) -> str:
    for _ in range(4):  # bounded: nested wrappers are rare and inputs are capped
        t = _TEXT_WRAP.sub(r"\1", s)
        if t == s:
            break
        s = t
    return s


def normalize_choice(s: str) -> str:
    """Judge verdicts: case-insensitive, ignoring whitespace, \\text{} and a final period."""
    s = _unwrap_text(s.strip()).strip().strip("$").strip()
    s = s.rstrip(".").strip()
    return s.lower()


def is_judge_label(label: str) -> bool:
    return normalize_choice(label) in JUDGE_LABELS


def normalize_math(s: str) -> str:
    """A conservative textual normal form; equal forms are certainly the same answer."""
    s = _unwrap_text(s)
    s = s.replace("$", "")
    s = _LEFT_RIGHT.sub("", s)
    s = _THIN_SPACE.sub(" ", s)
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = _SPACES.sub(" ", s).strip()
    s = _SPACE_AT_SYMBOL.sub(r"\1", s)  # "x + 1" == "x+1", but "\pi r" keeps its space
    return s.rstrip(".").strip()


# ---- the symbolic comparison (runs inside worker processes) ---------------------------


def math_equal(gold: str, pred: str) -> bool:
    """math_verify on both sides wrapped in $...$, with its signal timeouts switched off."""
    from math_verify import parse, verify as mv_verify

    g = parse(f"${gold}$", parsing_timeout=None)
    p = parse(f"${pred}$", parsing_timeout=None)
    if not g or not p:
        return False
    return bool(mv_verify(g, p, timeout_seconds=None))


# What the workers run on each (gold, pred): a module-level function, sent to them by name.
COMPARE = math_equal


def _warm_up() -> None:
    """Worker initializer: pay the sympy import before the first timed sample."""
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    try:
        math_equal("1", "1")
    except Exception:  # noqa: BLE001 - an initializer that raises would break the pool
        pass


def _timed(compare, gold: str, pred: str) -> tuple[bool, float]:
    t0 = time.perf_counter()
    return bool(compare(gold, pred)), (time.perf_counter() - t0) * 1000.0


# ---- worker processes ----------------------------------------------------------------


def _end_later(pool: ProcessPool, stop: bool) -> None:
    """Stop `pool` now (pending tasks dropped) or close it (they finish); its workers
    are joined in the background."""
    if stop:
        pool.stop()
    else:
        pool.close()
    threading.Thread(target=pool.join, name="verifier-pool-end", daemon=True).start()


class _SharedPool:
    """One pebble pool per process, shared by concurrent callers and grown on demand.

    pebble times each task from when a worker picks it up, and kills and replaces a
    worker that overruns its task's timeout or dies. Workers are forked: "spawn" and
    "forkserver" run the caller's __main__ again in every worker (an unguarded script
    would run twice, a script read from stdin cannot be found). A worker only runs
    sympy, never CUDA or OpenMP, so forking from a trainer or vLLM process is safe, as
    for torch's DataLoader workers.
    """

    def __init__(self) -> None:
        self.forget_after_fork()

    def forget_after_fork(self) -> None:
        # a forked child owns neither the parent's pool nor, maybe, the lock's state
        self._lock = threading.Lock()
        self._pool: ProcessPool | None = None
        self._size = 0
        self._exit_hook = False

    def get(self, workers: int) -> ProcessPool:
        with self._lock:
            if self._pool is not None and not self._pool.active:  # it failed
                _end_later(self._pool, stop=True)
                self._pool = None
            elif self._pool is not None and self._size < workers:
                _end_later(self._pool, stop=False)  # what others scheduled on it still runs
                self._pool = None
            if self._pool is None:
                if not self._exit_hook:
                    # pebble's workers are not daemonic: a multiprocessing child would wait
                    # for them at exit, before any atexit hook, so stop them before that join
                    multiprocessing.util.Finalize(None, self.shutdown, exitpriority=10)
                    self._exit_hook = True
                self._size = max(workers, self._size)
                self._pool = ProcessPool(max_workers=self._size, initializer=_warm_up,
                                         context=multiprocessing.get_context("fork"))
            return self._pool

    def discard(self, pool: ProcessPool | None) -> None:
        """Drop `pool` (the current one when None) after it failed; the next call starts
        a fresh one. A pool already retired by growth finishes on its own."""
        with self._lock:
            if pool is None or self._pool is pool:
                pool, self._pool = self._pool, None
            else:
                return
        if pool is not None:
            _end_later(pool, stop=True)

    def shutdown(self) -> None:
        with self._lock:
            pool, self._pool, self._size = self._pool, None, 0
        if pool is not None:
            pool.stop()
            pool.join()


_POOL = _SharedPool()
os.register_at_fork(after_in_child=_POOL.forget_after_fork)


def shutdown_workers() -> None:
    """Stop the verifier workers (they are also stopped at interpreter exit)."""
    _POOL.shutdown()


def _compare_in_process(gold: str, pred: str, timeout_s: float) -> str:
    """Fallback when no worker can be started: math_verify's own alarm where allowed
    (main thread only; elsewhere the comparison runs without a time limit)."""
    from math_verify import parse, verify as mv_verify

    on_main = threading.current_thread() is threading.main_thread()
    secs = max(1, int(math.ceil(timeout_s))) if on_main else None
    try:
        g = parse(f"${gold}$", parsing_timeout=secs)
        p = parse(f"${pred}$", parsing_timeout=secs)
        return STATUS_OK if bool(g) and bool(p) and bool(mv_verify(g, p, timeout_seconds=secs)) else STATUS_WRONG
    except Exception:  # noqa: BLE001
        return STATUS_ERROR


def _compare_many(tasks: list[tuple[int, str, str]], timeout_s: float, workers: int) -> dict[int, tuple[str, float]]:
    """Run (index, gold, pred) comparisons; returns index -> (status, ms). Each sample gets
    `timeout_s` once a worker holds it, and the whole call at most STARTUP_TIMEOUT_S more
    than its samples' budgets; samples still out then count as timed out."""
    results: dict[int, tuple[str, float]] = {}
    scheduled: list[tuple[int, str, str, float, object]] = []
    for attempt in range(2):  # a pool that fails to start is replaced once
        pool = None
        try:
            pool = _POOL.get(max(1, workers))
            for idx, gold, pred in tasks[len(scheduled):]:
                fut = pool.schedule(_timed, args=(COMPARE, gold, pred), timeout=timeout_s)
                scheduled.append((idx, gold, pred, time.monotonic(), fut))
            break
        except Exception as e:  # noqa: BLE001 - e.g. no process can be started, or a daemonic caller
            _POOL.discard(pool)
            if attempt:
                log.warning("verifier workers could not start (%s); comparing in-process", e)
    local = tasks[len(scheduled):]
    deadline = time.monotonic() + STARTUP_TIMEOUT_S + timeout_s * len(scheduled)
    broken = None
    for idx, gold, pred, t0, fut in scheduled:
        try:
            ok, ms = fut.result(timeout=max(0.0, deadline - time.monotonic()))
            results[idx] = (STATUS_OK if ok else STATUS_WRONG, ms)
        except TimeoutError:  # pebble's per-sample timeout, or the call's deadline
            fut.cancel()  # a no-op once done; else pebble stops the sample's worker
            results[idx] = (STATUS_TIMEOUT, timeout_s * 1000.0)
        except BrokenProcessPool as e:  # the pool failed as a whole; this sample never ran
            broken = e
            local.append((idx, gold, pred))
        except Exception:  # noqa: BLE001 - the worker died on this sample, or the comparison raised
            results[idx] = (STATUS_ERROR, (time.monotonic() - t0) * 1000.0)
    if broken is not None:
        log.warning("verifier worker pool failed (%s); comparing %d samples in-process", broken, len(local))
        _POOL.discard(pool)
    for idx, gold, pred in local:
        t0 = time.perf_counter()
        results[idx] = (_compare_in_process(gold, pred, timeout_s), (time.perf_counter() - t0) * 1000.0)
    return results


# ---- public API ----------------------------------------------------------------------


def _result(reward: float, extracted: str | None, status: str, ms: float) -> dict:
    return {"reward": reward, "extracted": extracted, "status": status, "ms": ms}


def _as_text(x) -> str:
    if isinstance(x, str):
        return x
    return "" if x is None else str(x)


def _local_decision(response: str, label: str) -> tuple[dict | None, str | None]:
    """Decide without math_verify where possible; else return the extracted answer."""
    extracted = extract_boxed(response)
    if extracted is None:
        return _result(0.0, None, STATUS_NO_BOXED, 0.0), None
    if is_judge_label(label):
        ok = normalize_choice(extracted) == normalize_choice(label)
        return _result(1.0 if ok else 0.0, extracted, STATUS_OK if ok else STATUS_WRONG, 0.0), None
    pred, gold = normalize_math(extracted), normalize_math(label)
    if not pred or not gold:
        return _result(0.0, extracted, STATUS_WRONG, 0.0), None
    if pred == gold:
        return _result(1.0, extracted, STATUS_OK, 0.0), None
    return None, extracted


def score_batch(responses: list[str], labels: list[str], timeout_s: float = 5.0, workers: int = 2) -> list[dict]:
    """Score responses against labels; safe to call from any thread.

    Answers decided by the fast path never leave this process; the rest are compared
    by math_verify in up to `workers` worker processes, each sample under `timeout_s`.
    """
    if len(responses) != len(labels):
        raise ValueError(f"{len(responses)} responses but {len(labels)} labels")
    timeout_s = max(0.01, float(timeout_s))
    out: list[dict | None] = [None] * len(responses)
    tasks: list[tuple[int, str, str]] = []
    for i, (resp, label) in enumerate(zip(responses, labels)):
        t0 = time.perf_counter()
        label = _as_text(label)
        try:
            res, extracted = _local_decision(_as_text(resp), label)
        except Exception:  # noqa: BLE001 - malformed input scores 0, never raises
            res, extracted = _result(0.0, None, STATUS_ERROR, 0.0), None
        ms = (time.perf_counter() - t0) * 1000.0
        if res is not None:
            res["ms"] = ms
            out[i] = res
        else:
            out[i] = _result(0.0, extracted, STATUS_ERROR, ms)
            tasks.append((i, label, extracted))
    if tasks:
        for idx, (status, ms) in _compare_many(tasks, timeout_s, workers).items():
            r = out[idx]
            r["status"] = status
            r["reward"] = 1.0 if status == STATUS_OK else 0.0
            r["ms"] += ms
    return out  # type: ignore[return-value]


def verify(response: str, label: str, timeout_s: float = 5.0) -> dict:
    """Score one response; see `score_batch`."""
    return score_batch([response], [label], timeout_s=timeout_s, workers=1)[0]
