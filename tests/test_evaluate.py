"""Benchmark scoring, self-reflection, the HTML report and the compare/eval CLIs."""

from __future__ import annotations

import json
import os

import pyarrow.parquet as pq
import pytest

from spark_core import schemas
from spark_core.config import SparkConfig
from spark_core.data import generate, write_benchmark_dataset
from spark_core.evaluate.benchmark import evaluate_benchmark
from spark_core.evaluate.tts import self_reflect
from spark_core.rollout.base import Sample


class FakeBackend:
    """Scripted responses: `script(row) -> str`; records every generate call."""

    def __init__(self, script):
        self.script = script
        self.calls: list[tuple[str, list[str]]] = []

    def generate(self, rows, spec, desc="rollout"):
        assert spec.n == 1 and spec.greedy
        self.calls.append((desc, [r["prompt_id"] for r in rows]))
        return [Sample(prompt_id=r["prompt_id"], sample_index=0, response=self.script(r), prompt_token_ids=[],
                       response_token_ids=[]) for r in rows]


def _bench(tmp_path, sizes: dict[str, int], extra: list[dict] = ()) -> str:
    """One evaluation-format file holding several benchmarks (plus optional raw rows)."""
    out = tmp_path / "bench"
    records = []
    for k, (name, n) in enumerate(sizes.items()):
        rows = generate(n, seed=10 + k, image_size=48, id_prefix=name)
        with open(write_benchmark_dataset(rows, str(out), name)) as f:
            records += json.load(f)
    path = out / "bench.json"
    path.write_text(json.dumps(records + list(extra)))
    return str(path)


def _solve_script(plan: dict[str, str]):
    """plan: prompt_id -> "right" | "wrong" | "none" for the first answer."""

    def script(row):
        kind = plan[row["prompt_id"]]
        if kind == "right":
            return f"So the result is \\boxed{{{row['answer']}}}."
        if kind == "wrong":
            return f"So the result is \\boxed{{{int(row['answer']) + 1000}}}."
        return f"I think it is {row['answer']} but I forgot the box."

    return script


@pytest.fixture()
def bench(tmp_path):
    # alpha: 2 rows, both right (1.0); beta: 6 rows, 1 right, 3 wrong, 2 unboxed (1/6)
    bad = {"dataset": "beta", "problem": "What is 1+1?", "image_path": ""}  # no answer: quarantined
    path = _bench(tmp_path, {"alpha": 2, "beta": 6}, [bad])
    plan = {"bench-0": "right", "bench-1": "right",
            "bench-2": "right", "bench-3": "wrong", "bench-4": "wrong", "bench-5": "wrong",
            "bench-6": "none", "bench-7": "none"}
    return path, plan


def test_benchmark_accuracies_exact(bench):
    path, plan = bench
    backend = FakeBackend(_solve_script(plan))
    results, rep = evaluate_benchmark("unused", path, SparkConfig(), backend=backend)
    assert len(backend.calls) == 1 and len(results) == 8
    assert {r["mode"] for r in results} == {"single"}
    assert rep["per_benchmark"]["alpha"] == {"n": 2, "correct": 2, "accuracy": 1.0}
    assert rep["per_benchmark"]["beta"]["accuracy"] == pytest.approx(1 / 6)
    assert rep["accuracy"] == pytest.approx((1.0 + 1 / 6) / 2)  # every benchmark weighs the same
    assert rep["accuracy_micro"] == pytest.approx(3 / 8)
    assert rep["accuracy"] != pytest.approx(rep["accuracy_micro"])
    # unboxed answers are wrong and listed, never dropped
    assert rep["unextracted_count"] == 2
    assert sorted(u["prompt_id"] for u in rep["unextracted"]) == ["bench-6", "bench-7"]
    assert not any(r["correct"] for r in results if r["extracted"] is None)
    # the bad input row is reported with its reason
    assert rep["n_quarantined"] == 1 and rep["quarantine_by_field"] == {"answer": 1}
    assert "no answer" in rep["quarantined"][0]["reason"]
    assert not any(k.startswith("tts") for k in rep)
    schemas.table(results, schemas.EVAL_RESULTS)  # rows conform to the schema


def test_tts_reported_separately(bench):
    path, plan = bench
    solve = _solve_script(plan)

    def script(row):
        if "/tts-judge-" in row["prompt_id"]:
            return "Not convinced: \\boxed{No}"
        if "/tts-reflect-" in row["prompt_id"]:
            return f"Fixed: \\boxed{{{row['answer']}}}"
        return solve(row)

    results, rep = evaluate_benchmark("unused", path, SparkConfig(), backend=FakeBackend(script), tts_rounds=1)
    assert rep["accuracy"] == pytest.approx((1.0 + 1 / 6) / 2)  # single pass unchanged by TTS
    assert rep["accuracy_micro"] == pytest.approx(3 / 8)
    assert rep["tts_accuracy"] == 1.0 and rep["tts_accuracy_micro"] == 1.0
    assert rep["tts_per_benchmark"]["beta"]["accuracy"] == 1.0
    assert rep["tts_wrong_to_right"] == 5 and rep["tts_right_to_wrong"] == 0
    assert [r["mode"] for r in results].count("single") == 8 and [r["mode"] for r in results].count("tts") == 8


def _rows(n):
    rows = generate(n, seed=3, image_size=48, id_prefix="q")
    first = [{"dataset": "d", "prompt_id": r["prompt_id"], "kind": "solve", "mode": "single", "answer": r["answer"],
              "response": "", "extracted": None, "correct": False, "rounds": 1} for r in rows]
    return rows, first


def _first(rows, first, answers):
    for f, a in zip(first, answers):
        f["response"] = f"\\boxed{{{a}}}" if a is not None else "no box"
        f["extracted"] = a
    return first


def test_tts_stops_on_yes_and_respects_rounds():
    rows, first = _rows(4)
    a, b, c, d = (r["prompt_id"] for r in rows)
    _first(rows, first, [rows[0]["answer"], "77", "78", None])

    def script(row):
        pid = row["prompt_id"]
        src, tag = pid.split("/")
        if tag.startswith("tts-judge"):
            assert "\\boxed{" not in row["question"].split("Proposed answer:")[1].split("\n")[0]  # final answer only
            if src == a:
                return "\\boxed{YES}"  # case-insensitive
            if src == c and tag == "tts-judge-1":
                return "\\boxed{yes}"
            return "\\boxed{No}"
        assert tag.startswith("tts-reflect")
        return f"\\boxed{{{row['answer']}}}" if src == c else "\\boxed{99}"

    fake = FakeBackend(script)
    out = self_reflect(fake, rows, first, rounds=2, max_new_tokens=8, timeout_s=5.0)
    by = {r["prompt_id"]: r for r in out}
    assert by[a]["rounds"] == 1 and by[a]["correct"]  # accepted at once
    assert by[c]["rounds"] == 2 and by[c]["correct"]  # one reflection, then Yes
    assert by[b]["rounds"] == 3 and not by[b]["correct"]  # R=2 reflections, never more
    assert by[d]["rounds"] == 3
    assert all(r["mode"] == "tts" for r in out)
    # batched per round: judge, reflect, judge, reflect
    assert [desc for desc, _ in fake.calls] == ["tts:judge-0", "tts:reflect-0", "tts:judge-1", "tts:reflect-1"]
    assert fake.calls[0][1] == [f"{p}/tts-judge-0" for p in (a, b, c)]  # no boxed answer: nothing to judge
    assert fake.calls[1][1] == [f"{p}/tts-reflect-0" for p in (b, c, d)]
    assert fake.calls[3][1] == [f"{p}/tts-reflect-1" for p in (b, d)]

    fake1 = FakeBackend(script)
    out1 = self_reflect(fake1, rows, first, rounds=1, max_new_tokens=8)
    assert len(fake1.calls) == 2 and max(r["rounds"] for r in out1) == 2

    fake0 = FakeBackend(script)
    out0 = self_reflect(fake0, rows, first, rounds=0, max_new_tokens=8)
    assert fake0.calls == [] and [r["rounds"] for r in out0] == [1, 1, 1, 1]

    # the judge decision is injectable
    fake_all = FakeBackend(script)
    out_all = self_reflect(fake_all, rows, first, rounds=2, max_new_tokens=8, accept=lambda resp: True)
    assert [desc for desc, _ in fake_all.calls] == ["tts:judge-0", "tts:reflect-0", "tts:judge-1"]
    assert [r["rounds"] for r in out_all] == [1, 1, 1, 2]


def test_deck_html_values_and_plots():
    from spark_core.evaluate.report import deck_html

    hist = [{"eval/accuracy": 0.1, "eval/judge_accuracy": 0.4, "eval/judge_accuracy/pointwise": 0.45},
            {"eval/accuracy": 0.2, "eval/judge_accuracy": 0.5, "eval/judge_accuracy/pairwise": 0.55,
             "policy/reward_mean": 0.25, "policy/kl": 0.0012},
            {"eval/accuracy": 0.123456, "eval/judge_accuracy": 0.654321, "policy/reward_mean": 0.3,
             "policy/kl": 0.0021, "eval/accuracy/alpha<x>": 0.5}]
    page = deck_html(hist, per_benchmark={"alpha": 0.5, "beta": 0.25})
    assert page.count('<img alt=') >= 3 and '<img alt="Solve accuracy (eval)" src="data:image/png;base64,' in page
    for text in ("0.123", "0.654", "0.002", "0.500", "0.250", "0.375", "eval/accuracy/alpha&lt;x&gt;"):
        assert text in page
    assert '<img alt="Solve accuracy by source (eval)" src="data:image/png;base64,' in page
    assert "<img" not in deck_html([], None)
    assert "by source" not in deck_html(hist[:2], None)  # no per-source key logged: no empty panel


def _make_runs(uri_env, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri_env)
    from spark_core import tracking

    ids = {}
    for arm, base in (("spark", 0.2), ("policy", 0.1)):
        rid = tracking.start_run({"recycle": {"arm": arm}}, run_name=f"{arm}-run", tags={"arm": arm})
        for step in range(3):
            tracking.log_metrics(rid, {"eval/accuracy": base + 0.1 * step, "eval/judge_accuracy": base / 2}, step)
        tracking.end_run(rid)
        ids[arm] = rid
    return ids


def test_compare_table_and_plot(tmp_path, monkeypatch, capsys):
    from spark_core.evaluate import compare

    ids = _make_runs(f"sqlite:///{tmp_path}/m.db", monkeypatch)
    data = compare.collect("spark", None, ["eval/accuracy", "eval/judge_accuracy"])
    assert [d["arm"] for d in data] == ["spark", "policy"]
    assert data[0]["metrics"]["eval/accuracy"] == [(0, 0.2), (1, pytest.approx(0.3)), (2, pytest.approx(0.4))]

    png = tmp_path / "cmp.png"
    assert compare.main(["--metrics", "eval/accuracy", "eval/judge_accuracy", "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    for rid in ids.values():
        assert rid in out
    spark_line = next(line for line in out.splitlines() if ids["spark"] in line)
    assert "spark" in spark_line and "FINISHED" in spark_line
    assert "0.200" in spark_line and "0.400" in spark_line
    policy_line = next(line for line in out.splitlines() if ids["policy"] in line)
    assert "0.100" in policy_line and "0.300" in policy_line
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000

    assert compare.main(["--runs", ids["policy"]]) == 0
    assert ids["spark"] not in capsys.readouterr().out
    assert compare.main(["--experiment", "nope"]) == 2


def test_spark_eval_cli_tiny_model(tiny_dir, tmp_path, capsys):
    from spark_core.evaluate.cli import main

    path = _bench(tmp_path, {"alpha": 2, "beta": 2})
    out = tmp_path / "res.parquet"
    code = main([tiny_dir, path, "--max-new-tokens", "6", "--out", str(out), "--tts-rounds", "1"])
    text = capsys.readouterr().out
    assert code == 0
    assert "alpha" in text and "beta" in text and "macro average" in text
    assert "unextracted" in text and "Self-reflection TTS" in text
    t = pq.read_table(out)
    assert t.schema.names == schemas.EVAL_RESULTS.names
    modes = t.column("mode").to_pylist()
    assert modes.count("single") == 4 and modes.count("tts") == 4
    assert os.path.getsize(out) > 0


def test_report_task_deck():
    pytest.importorskip("images")
    from tasks.report import report

    hist = [{"eval/accuracy": 0.25, "eval/accuracy/alpha": 0.5}, {"eval/accuracy": 0.375, "eval/accuracy/alpha": 0.75}]
    from flytekit.types.structured import StructuredDataset

    from spark_core import schemas

    html = report(history=StructuredDataset(dataframe=schemas.history_table(hist)))
    assert "0.750" in html and "data:image/png;base64," in html
