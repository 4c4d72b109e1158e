"""The binary verifiable reward: the last ``\\boxed{}`` answer of a response against its label.

Every result carries named sub-scores::

    {"reward": 0.0 | 1.0, "extracted": str | None,
     "status": "ok" | "wrong" | "no_boxed" | "timeout" | "error", "ms": float}

Cheap decisions (no box, judge labels, string-equal answers) are made in the calling
process. Only the symbolic comparison goes to math_verify, and that runs in separate
worker processes: math_verify's own timeouts rely on SIGALRM, which only works on the
main thread, and sympy can hang on adversarial input. A worker that overruns its
per-sample budget is killed and replaced, so one bad sample costs at most ``timeout_s``.
"""

from __future__ import annotations

import atexit
import logging
import math
import os
import re
import subprocess
import sys
import threading
import time
from collections import deque
from multiprocessing.connection import Connection
from multiprocessing.connection import wait as _wait_for

log = logging.getLogger(__name__)

SCAN_CHARS = 20_000  # only the tail of a response can hold its final answer
JUDGE_LABELS = frozenset({"yes", "no", "a", "b"})
STARTUP_TIMEOUT_S = 120.0  # a fresh worker imports sympy; generous on a loaded node
MAX_IDLE_WORKERS = 8
_MAX_STARTUP_FAILURES = 3

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


HANG_TOKEN = "__spark_verify_hang__"
CRASH_TOKEN = "__spark_verify_crash__"


def _math_equal_or_misbehave(gold: str, pred: str) -> bool:
    if HANG_TOKEN in pred:
        time.sleep(3600)
    if CRASH_TOKEN in pred:
        os._exit(3)
    return math_equal(gold, pred)


_COMPARATORS = {"math": math_equal, "misbehave_on_token": _math_equal_or_misbehave}
# Which comparator workers run; tests select "misbehave_on_token" to exercise timeouts
# and worker crashes.
COMPARATOR = "math"


def _worker_loop(inp: Connection, out: Connection) -> None:
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    try:
        math_equal("1", "1")  # pay the sympy import before the first timed sample
    except Exception:
        pass
    out.send(("ready",))
    while True:
        try:
            task = inp.recv()
        except (EOFError, OSError):
            return  # parent went away
        if task is None:
            return
        name, gold, pred = task
        try:
            msg = ("done", bool(_COMPARATORS[name](gold, pred)))
        except BaseException as e:  # noqa: BLE001 - report, never die on one sample
            msg = ("error", f"{type(e).__name__}: {e}"[:300])
        try:
            out.send(msg)
        except (EOFError, OSError):
            return


def _serve() -> None:
    """Worker entry point: framed messages on stdin/stdout."""
    rfd, wfd = os.dup(0), os.dup(1)
    os.dup2(2, 1)  # stray prints from libraries must not corrupt the message stream
    sys.stdout = sys.stderr
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    _worker_loop(Connection(rfd, writable=False), Connection(wfd, readable=False))


# ---- worker processes ----------------------------------------------------------------

# Workers are plain subprocesses rather than multiprocessing children: they never
# re-import the caller's __main__, and daemonic callers may start them too.
_PKG_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_WORKER_CMD = "from spark_core.reward.verifier import _serve; _serve()"


class _Worker:
    def __init__(self) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([_PKG_ROOT] + [p for p in [env.get("PYTHONPATH", "")] if p])
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _WORKER_CMD],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, close_fds=True,
        )
        try:
            self.send_conn = Connection(os.dup(self.proc.stdin.fileno()), readable=False)
            self.conn = Connection(os.dup(self.proc.stdout.fileno()), writable=False)
        finally:
            self.proc.stdin.close()
            self.proc.stdout.close()
        self.ready = False
        self.born = time.monotonic()
        self.task: int | None = None
        self.t0 = 0.0
        self.deadline = 0.0

    def alive(self) -> bool:
        return self.proc.poll() is None

    def send(self, msg) -> None:
        self.send_conn.send(msg)

    def kill(self) -> None:
        try:
            self.proc.kill()
            self.proc.wait(timeout=5)
        except Exception:
            pass
        for c in (self.send_conn, self.conn):
            try:
                c.close()
            except Exception:
                pass

    def stop(self) -> None:
        try:
            self.send(None)
            self.proc.wait(timeout=1)
        except Exception:
            pass
        self.kill()


class _Pool:
    """Idle workers kept between calls; concurrent callers each check out their own."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._idle: list[_Worker] = []
        self._pid = os.getpid()

    def _forget_after_fork(self) -> None:
        # workers belong to the parent; a forked child must not touch them
        self._lock = threading.Lock()
        self._idle = []
        self._pid = os.getpid()

    def acquire(self, n: int) -> list[_Worker]:
        got: list[_Worker] = []
        with self._lock:
            while self._idle and len(got) < n:
                w = self._idle.pop()
                if w.alive():
                    got.append(w)
                else:
                    w.kill()
        while len(got) < n:
            got.append(_Worker())
        return got

    def release(self, workers: list[_Worker]) -> None:
        surplus = []
        with self._lock:
            for w in workers:
                if w.task is None and w.alive() and len(self._idle) < MAX_IDLE_WORKERS:
                    self._idle.append(w)
                else:
                    surplus.append(w)
        for w in surplus:
            w.kill()

    def shutdown(self) -> None:
        if os.getpid() != self._pid:
            return
        with self._lock:
            idle, self._idle = self._idle, []
        for w in idle:
            w.stop()


_POOL = _Pool()
atexit.register(_POOL.shutdown)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_POOL._forget_after_fork)


def shutdown_workers() -> None:
    """Stop the idle verifier workers (they are also stopped at interpreter exit)."""
    _POOL.shutdown()


def _compare_in_process(name: str, gold: str, pred: str, timeout_s: float) -> tuple[str, str | None]:
    """Fallback when no worker can be started: math_verify's own alarm where allowed
    (main thread only; elsewhere the comparison runs without a time limit)."""
    from math_verify import parse, verify as mv_verify

    on_main = threading.current_thread() is threading.main_thread()
    secs = max(1, int(math.ceil(timeout_s))) if on_main else None
    try:
        if name != "math":
            return STATUS_ERROR, "test comparators need worker processes"
        g = parse(f"${gold}$", parsing_timeout=secs)
        p = parse(f"${pred}$", parsing_timeout=secs)
        ok = bool(g) and bool(p) and bool(mv_verify(g, p, timeout_seconds=secs))
        return (STATUS_OK if ok else STATUS_WRONG), None
    except Exception as e:  # noqa: BLE001
        return STATUS_ERROR, f"{type(e).__name__}: {e}"[:300]


def _compare_many(tasks: list[tuple[int, str, str]], timeout_s: float, workers: int) -> dict[int, tuple[str, float]]:
    """Run (index, gold, pred) comparisons; returns index -> (status, ms). Never blocks
    longer than about timeout_s per sample (plus worker start-up)."""
    results: dict[int, tuple[str, float]] = {}
    name = COMPARATOR
    pending = deque(tasks)

    def run_locally() -> None:
        while pending:
            idx, gold, pred = pending.popleft()
            t0 = time.perf_counter()
            status, _ = _compare_in_process(name, gold, pred, timeout_s)
            results[idx] = (status, (time.perf_counter() - t0) * 1000.0)

    try:
        pool = _POOL.acquire(max(1, min(workers, len(tasks))))
    except Exception as e:  # noqa: BLE001
        log.warning("verifier workers could not start (%s); comparing in-process", e)
        run_locally()
        return results

    failures = 0

    def replace(i: int) -> None:
        pool[i].kill()
        pool[i] = _Worker()

    try:
        while (pending or any(w.task is not None for w in pool)) and failures <= _MAX_STARTUP_FAILURES:
            for i, w in enumerate(pool):
                if w.ready and w.task is None and pending:
                    item = pending.popleft()
                    try:
                        w.send((name, item[1], item[2]))
                    except (OSError, ValueError):
                        pending.appendleft(item)
                        failures += 1
                        replace(i)
                        continue
                    w.task, w.t0 = item[0], time.monotonic()
                    w.deadline = w.t0 + timeout_s
            waiting = [w for w in pool if not w.ready or w.task is not None]
            if not waiting:
                continue
            due = min(w.deadline if w.task is not None else w.born + STARTUP_TIMEOUT_S for w in waiting)
            ready = set(_wait_for([w.conn for w in waiting], timeout=max(0.0, due - time.monotonic())))
            now = time.monotonic()
            for i, w in enumerate(pool):
                if w.ready and w.task is None:
                    continue
                if w.conn in ready:
                    try:
                        msg = w.conn.recv()
                    except (EOFError, OSError):
                        msg = None
                    if msg is None:  # the worker died (e.g. out of memory)
                        if w.task is not None:
                            results[w.task] = (STATUS_ERROR, (now - w.t0) * 1000.0)
                            w.task = None
                        else:
                            failures += 1
                        replace(i)
                    elif msg[0] == "ready":
                        w.ready = True
                    else:
                        status = STATUS_ERROR if msg[0] == "error" else (STATUS_OK if msg[1] else STATUS_WRONG)
                        results[w.task] = (status, (now - w.t0) * 1000.0)
                        w.task = None
                elif w.task is not None and now >= w.deadline:
                    results[w.task] = (STATUS_TIMEOUT, (now - w.t0) * 1000.0)
                    w.task = None
                    replace(i)
                elif not w.ready and now >= w.born + STARTUP_TIMEOUT_S:
                    failures += 1
                    replace(i)
    except Exception as e:  # noqa: BLE001 - e.g. no new process can be started
        log.warning("verifier worker pool failed (%s)", e)
    finally:
        for w in pool:
            if w.task is not None:  # interrupted mid-sample; its worker is killed on release
                results[w.task] = (STATUS_ERROR, (time.monotonic() - w.t0) * 1000.0)
        _POOL.release(pool)
    if pending:
        log.warning("verifier workers keep failing to start; comparing %d samples in-process", len(pending))
        run_locally()
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
