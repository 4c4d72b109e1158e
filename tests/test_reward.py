"""The verifiable reward: extraction, judge labels, math equivalence, timeouts, threads."""

from __future__ import annotations

import errno
import multiprocessing
import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spark_core.reward import extract_boxed, score_batch, verify
from spark_core.reward import verifier as V
from tests.helpers import CRASH_TOKEN, HANG_TOKEN, misbehaving_math_equal, score_into

# ---- extraction --------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        (r"so \boxed{3}", "3"),
        (r"\boxed{\frac{1}{2}}", r"\frac{1}{2}"),
        (r"\boxed {7}", "7"),
        (r"\boxed  {x+1}", "x+1"),
        (r"first \boxed{1} then \boxed{2}", "2"),
        (r"\boxed{\{1,2\}}", r"\{1,2\}"),
        (r"\boxed{a{b{c}}d}", "a{b{c}}d"),
        (r"\boxed{\boxed{5}}", r"\boxed{5}"),
        (r"\boxed{}", ""),
        (r"\box{Yes}", None),
        ("no box at all", None),
        ("", None),
        (r"\boxed{3", None),
        (r"\boxed{3} then \boxed{4", None),
        (r"\boxed{3}}}}", "3"),
        ("\\boxed{", None),
        ("\\", None),
    ],
)
def test_extract_boxed(text, expected):
    assert extract_boxed(text) == expected


def test_extract_boxed_non_string():
    assert extract_boxed(None) is None  # type: ignore[arg-type]


# ---- scoring table ------------------------------------------------------------------

CASES = [
    # response, label, reward, status
    (r"The answer is \boxed{3}.", "3", 1.0, "ok"),
    (r"\boxed{\frac{1}{2}}", "0.5", 1.0, "ok"),
    (r"\boxed{\dfrac{1}{2}}", r"\frac{1}{2}", 1.0, "ok"),
    (r"\boxed{x + 1}", "1+x", 1.0, "ok"),
    (r"\boxed{4}", "3", 0.0, "wrong"),
    (r"\box{Yes}", "Yes", 0.0, "no_boxed"),
    (r"\boxed{Yes}", "Yes", 1.0, "ok"),
    (r"\boxed{yes}", "Yes", 1.0, "ok"),
    (r"\boxed{\text{Yes}}", "Yes", 1.0, "ok"),
    (r"\boxed{ No. }", "No", 1.0, "ok"),
    (r"\boxed{No}", "Yes", 0.0, "wrong"),
    (r"\boxed{A}", "A", 1.0, "ok"),
    (r"\boxed{b}", "B", 1.0, "ok"),
    (r"\boxed{A. Correct}", "A", 0.0, "wrong"),
    (r"\boxed{A}", "B", 0.0, "wrong"),
    (r"\boxed{Yes}", "A", 0.0, "wrong"),
    (r"I think \boxed{2}, no wait, \boxed{3}", "3", 1.0, "ok"),
    (r"I think \boxed{3}, no wait, \boxed{2}", "3", 0.0, "wrong"),
    (r"\boxed{No} ... final: \boxed{Yes}", "Yes", 1.0, "ok"),
    ("", "3", 0.0, "no_boxed"),
    (r"\boxed{}", "3", 0.0, "wrong"),
    (r"\boxed{3}", "", 0.0, "wrong"),
    ("caf\udcff \ud800 \\boxed{3}", "3", 1.0, "ok"),
    ("\x00\x01\uffff\\boxed{\ud83d 7}", "8", 0.0, "wrong"),
]


@pytest.mark.parametrize("response, label, reward, status", CASES)
def test_verify_table(response, label, reward, status):
    r = verify(response, label, timeout_s=10.0)
    assert set(r) == {"reward", "extracted", "status", "ms"}
    assert (r["reward"], r["status"]) == (reward, status), r
    assert r["ms"] >= 0.0


def test_score_batch_matches_verify():
    responses = [c[0] for c in CASES]
    labels = [c[1] for c in CASES]
    out = score_batch(responses, labels, timeout_s=10.0, workers=2)
    assert [(o["reward"], o["status"]) for o in out] == [(c[2], c[3]) for c in CASES]
    assert out[1]["extracted"] == r"\frac{1}{2}"
    assert out[5]["extracted"] is None


def test_score_batch_length_mismatch():
    with pytest.raises(ValueError):
        score_batch(["a"], ["a", "b"])


def test_huge_input_is_fast():
    big = "x{" * 500_000 + r" \boxed{42}"
    t0 = time.perf_counter()
    r = verify(big, "42")
    assert r["reward"] == 1.0
    assert verify("{" * 1_000_000, "42")["status"] == "no_boxed"
    assert verify("\\boxed{" * 200_000, "42")["status"] == "no_boxed"
    assert verify("\\boxed{" + "a" * 1_000_000 + "}", "42")["reward"] == 0.0
    assert time.perf_counter() - t0 < 5.0


# ---- timeouts and threads ----------------------------------------------------------


@pytest.fixture
def one_worker():
    """A fresh pool of one worker, so a later sample can only run on a replacement."""
    V.shutdown_workers()
    yield
    V.shutdown_workers()


@pytest.fixture
def misbehaving(monkeypatch, one_worker):
    monkeypatch.setattr(V, "COMPARE", misbehaving_math_equal)


def test_hanging_sample_times_out_and_next_sample_scores(misbehaving):
    verify(r"\boxed{2/4}", "0.5")  # warm a worker so start-up is not timed
    responses = [rf"\boxed{{{HANG_TOKEN}}}", r"\boxed{2/4}", r"\boxed{5}"]
    t0 = time.perf_counter()
    out = score_batch(responses, ["3", "0.5", "3"], timeout_s=1.0, workers=1)
    elapsed = time.perf_counter() - t0
    assert out[0]["status"] == "timeout" and out[0]["reward"] == 0.0
    # one worker: these ran on the replacement of the killed one
    assert out[1]["status"] == "ok" and out[1]["reward"] == 1.0
    assert out[2]["status"] == "wrong"
    # the replacement worker has to start (and import sympy), then the two samples run
    assert elapsed < 1.0 + 8.0
    assert out[0]["ms"] >= 900.0


def test_single_hang_returns_near_timeout(misbehaving):
    verify(r"\boxed{2/4}", "0.5")
    t0 = time.perf_counter()
    r = verify(rf"\boxed{{{HANG_TOKEN}}}", "3", timeout_s=0.5)
    assert r["status"] == "timeout"
    assert time.perf_counter() - t0 < 0.5 + 1.5
    assert verify(r"\boxed{0.5}", r"\frac{1}{2}")["reward"] == 1.0


def test_crashed_worker_scores_error_and_is_replaced(misbehaving):
    out = score_batch([rf"\boxed{{{CRASH_TOKEN}}}", r"\boxed{2/4}"], ["3", "0.5"], timeout_s=5.0, workers=1)
    assert out[0]["status"] == "error" and out[0]["reward"] == 0.0
    assert out[1]["status"] == "ok"


def test_falls_back_in_process_when_workers_cannot_start(monkeypatch, one_worker):
    def no_processes(self):
        raise OSError(errno.EAGAIN, "no processes for you")

    monkeypatch.setattr(multiprocessing.get_context("fork").Process, "start", no_processes)
    out = score_batch([r"\boxed{\frac{3}{6}}", r"\boxed{7}"], ["0.5", "8"])
    assert [(o["reward"], o["status"]) for o in out] == [(1.0, "ok"), (0.0, "wrong")]
    monkeypatch.undo()
    assert verify(r"\boxed{2/4}", "0.5")["reward"] == 1.0  # the next call starts workers again


def _score_in_a_process(method: str, daemon: bool) -> bool:
    """Score two answers in a child process (which must exit cleanly); whether the
    child held a worker pool of its own."""
    ctx = multiprocessing.get_context(method)
    out = ctx.Queue()
    p = ctx.Process(target=score_into, args=(out, [r"\boxed{\frac{2}{4}}", r"\boxed{3}"], ["0.5", "4"]),
                    daemon=daemon)
    p.start()
    try:
        scores, own_pool = out.get(timeout=120)
    finally:
        p.join(timeout=30)
    assert scores == [(1.0, "ok"), (0.0, "wrong")]
    assert p.exitcode == 0  # its pool's workers do not hold up its exit
    return own_pool


def test_daemonic_caller_compares_in_process():
    """A daemonic process may not start children; it still gets its scores."""
    assert _score_in_a_process("spawn", daemon=True) is False


def test_forked_child_starts_its_own_workers():
    """A child forked while the parent holds a pool scores with a pool of its own; the
    parent's pool keeps working."""
    assert verify(r"\boxed{2/4}", "0.5")["reward"] == 1.0
    assert _score_in_a_process("fork", daemon=False) is True
    assert verify(r"\boxed{\sqrt{4}}", "2")["reward"] == 1.0


def test_works_from_a_thread():
    box: dict = {}

    def run():
        try:
            box["out"] = score_batch([r"\boxed{\frac{2}{4}}", r"\boxed{x^2}", r"\boxed{Yes}"], ["0.5", "x^3", "Yes"])
        except BaseException as e:  # pragma: no cover - reported below
            box["err"] = e

    t = threading.Thread(target=run)
    t.start()
    t.join(timeout=60)
    assert not t.is_alive()
    assert "err" not in box, box.get("err")
    assert [o["reward"] for o in box["out"]] == [1.0, 0.0, 1.0]


def test_concurrent_callers():
    results: list = [None] * 3

    def run(i):
        results[i] = score_batch([r"\boxed{\sqrt{4}}", r"\boxed{3}"], ["2", "4"], workers=2)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    for res in results:
        assert [o["reward"] for o in res] == [1.0, 0.0]


# ---- property tests ----------------------------------------------------------------

_fragments = st.sampled_from(
    ["\\boxed{", "\\boxed {", "}", "{", "\\", "\\{", "\\}", "\\frac{1}{2}", "x", "3", "Yes", "A", " ", "$",
     "\\text{", "\\left(", "\\right)", "^", "_", "\ud800", "\x00", "\n"]
)
_boxy = st.lists(st.one_of(_fragments, st.text(max_size=5)), max_size=40).map("".join)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.text(max_size=300), _boxy))
def test_extract_boxed_never_crashes(text):
    t0 = time.perf_counter()
    out = extract_boxed(text)
    assert out is None or isinstance(out, str)
    if out is not None:
        assert out in text
    assert time.perf_counter() - t0 < 0.5


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.text(max_size=200), _boxy), st.sampled_from(["3", "0.5", "Yes", "A", "x+1", r"\frac{1}{3}", ""]))
def test_verify_never_crashes(text, label):
    t0 = time.perf_counter()
    r = verify(text, label, timeout_s=2.0)
    assert r["reward"] in (0.0, 1.0)
    assert r["status"] in ("ok", "wrong", "no_boxed", "timeout", "error")
    assert (r["reward"] == 1.0) == (r["status"] == "ok")
    assert time.perf_counter() - t0 < 2.0 + 3.0
