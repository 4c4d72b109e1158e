"""The arms benchmark's statistics, output parsing and README block (its runs are real
workflow runs, exercised by the end-to-end tests; here the parts that turn them into a table)."""

from __future__ import annotations

import math
import random

import pytest

from benchmarks import arms


def test_t_intervals_match_scipy():
    stats = pytest.importorskip("scipy.stats")
    for df in (1, 2, 3, 5, 10, 29, 30):
        assert arms.t975(df) == pytest.approx(stats.t.ppf(0.975, df), abs=1e-3)
    rng = random.Random(0)
    for n in (2, 3, 5, 8):
        xs = [rng.uniform(0, 1) for _ in range(n)]
        m, lo, hi = arms.mean_ci(xs)
        want = stats.t.interval(0.95, n - 1, loc=sum(xs) / n, scale=stats.sem(xs))
        assert (lo, hi) == pytest.approx(want, abs=2e-3)
    a, b = [0.61, 0.66, 0.58], [0.48, 0.52, 0.55, 0.50]
    d, lo, hi = arms.diff_ci(a, b)
    res = stats.ttest_ind(a, b, equal_var=False)
    ci = res.confidence_interval(0.95)
    assert d == pytest.approx(sum(a) / 3 - sum(b) / 4)
    # the df is rounded down, so the interval is the same or a little wider than scipy's
    assert lo <= ci.low + 1e-9 and hi >= ci.high - 1e-9 and (hi - lo) < 1.3 * (ci.high - ci.low)
    assert math.isnan(arms.mean_ci([0.5])[1]) and arms.mean_ci([0.5])[0] == 0.5


def test_overrides_keep_compute_equal_and_vary_only_loop_seeds():
    o = {arm: arms.arm_overrides(arm, 16, 43, 640, 4, {"train.lr": 1e-3}) for arm in arms.ARMS}
    assert o["policy"]["rollout.prompts_per_epoch"] == 32 and o["spark"]["rollout.prompts_per_epoch"] == 16
    assert o["reward"]["train.ppo_epochs"] == 2 and "train.ppo_epochs" not in o["spark"]
    for v in o.values():
        assert v["seed"] == v["recycle.seed"] == v["train.seed"] == 43 and v["train.lr"] == 1e-3
        assert v["data.synthetic_eval"] == v["eval.judge_samples"] == 640 and v["eval.every"] == 4
    from spark_core.config import SparkConfig
    from tasks.data import prepare_data
    from tasks.evaluate import evaluate_policy, judge_eval_set
    from tasks.model import base_model, bootstrap
    from tests.helpers import config_inputs

    def prefix(cfg):  # what the stages before the loop take
        return repr([config_inputs(t, cfg) for t in (prepare_data, base_model, bootstrap, judge_eval_set,
                                                    evaluate_policy)])

    prefixes = {prefix(SparkConfig().with_overrides(dict(v, **{"recycle.arm": arm}))) for arm, v in o.items()}
    prefixes |= {prefix(SparkConfig().with_overrides(arms.arm_overrides("spark", 16, s, 640, 4, {})))
                 for s in (42, 44)}
    assert len(prefixes) == 1  # every arm and seed shares the warm start and the held-out sets


def test_parse_metrics_from_pyflyte_output(mlflow_db):
    from spark_core import tracking

    hist = [{"eval/accuracy": 0.25}, {"eval/accuracy": 0.5, "policy/samples": 128.0}]
    run_id = tracking.start_run({"seed": 1}, run_name="spark-tiny-cpu-s1", tags={})
    tracking.backfill(run_id, hist)
    out = ("Running Execution on local.\nSparkOutput(policy=/tmp/p, metrics=StructuredDataset(uri=None), "
           "summary=\n\nSPARK run finished\n...\n"
           f"MLflow run:        spark-tiny-cpu-s1 (id {run_id}), experiment 'spark'\n)\n")
    assert arms.parse_metrics(out, mlflow_db) == hist
    with pytest.raises(ValueError):
        arms.parse_metrics("nothing here", mlflow_db)


def _rows():
    rows = []
    for arm, acc, judge in (("policy", 0.30, 0.50), ("spark", 0.31, 0.65), ("reward", 0.28, 0.60)):
        for i, seed in enumerate((42, 43, 44)):
            r = {"arm": arm, "seed": seed, "minutes": 5.0 + i, "rollouts": 1024, "opt_steps": 16,
                 "eval/accuracy": acc + 0.01 * i, "eval/judge_accuracy": judge + 0.01 * i,
                 "eval/judge_accuracy/pointwise": judge + 0.02 * i, "eval/judge_accuracy/pairwise": judge - 0.01 * i}
            for k in list(r):
                if k.startswith("eval/"):
                    r[f"{k}@0"] = 0.2
            rows.append(r)
    return rows


def test_report_and_readme_block(tmp_path):
    block = arms.report(_rows(), "python -m benchmarks.arms --seeds 3", 640)
    lines = block.splitlines()
    spark = next(line for line in lines if line.startswith("| spark |"))
    cells = [c.strip() for c in spark.strip("|").split("|")]
    assert cells[:4] == ["spark", "3", "1024", "16"]
    m, lo, hi = arms.mean_ci([0.31, 0.32, 0.33])
    assert cells[4] == f"{m:.3f} [{lo:.3f}, {hi:.3f}]" and cells[-1] == "6.0"
    assert [line.split("|")[1].strip() for line in lines if line.startswith("| ") and "[" in line][:3] == \
        ["policy", "reward", "spark"]  # the order of arms.ARMS
    judge = next(line for line in lines if line.startswith("| judge acc |"))
    d, dlo, dhi = arms.diff_ci([0.65, 0.66, 0.67], [0.50, 0.51, 0.52])
    assert f"{100 * d:+.1f} [{100 * dlo:+.1f}, {100 * dhi:+.1f}]" in judge and judge.rstrip(" |").endswith("yes")
    assert "standard error of one run's accuracy is at most 0.020" in block

    readme = tmp_path / "README.md"
    readme.write_text(f"# T\n\nbefore\n{arms.BEGIN}\nold table\n{arms.END}\nafter\n")
    arms.write_readme(block, str(readme))
    arms.write_readme(block, str(readme))  # idempotent
    text = readme.read_text()
    assert text == f"# T\n\nbefore\n{arms.BEGIN}\n{block}\n{arms.END}\nafter\n"
    readme.write_text("no markers")
    with pytest.raises(SystemExit):
        arms.write_readme(block, str(readme))


def test_a_difference_without_spread_over_seeds_claims_nothing():
    # every seed gave the same judge accuracy (a judge that RL did not move)
    d = arms.diff_ci([0.475, 0.475, 0.475], [0.477, 0.477, 0.477])
    assert d[1] == pytest.approx(-0.002) and d[2] == pytest.approx(-0.002)
    assert arms.interval_verdict(*d) == "no spread over seeds"
    assert arms.interval_verdict(*arms.diff_ci([0.65, 0.66, 0.67], [0.50, 0.51, 0.52])) == "yes"
    assert arms.interval_verdict(*arms.diff_ci([0.5, 0.6, 0.55], [0.52, 0.5, 0.58])) == "no"
    assert arms.interval_verdict(*arms.diff_ci([0.5], [0.6])) == "-"
