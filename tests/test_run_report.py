"""The end-of-run summary, MLflow run names and cached-rerun tags, whole-number epoch ticks."""

from __future__ import annotations

import pytest

from spark_core.evaluate import compare
from spark_core.evaluate.report import epoch_figure, run_summary

HIST = [{"eval/accuracy": 0.125, "eval/answer_prob": 0.1, "eval/judge_accuracy": 0.5, "eval/judge_answer_prob": 0.3,
         "eval/judge_accuracy/pointwise": 0.5,
         "eval/judge_accuracy/pairwise": 0.5, "time/bootstrap": 12.0},
        {"eval/accuracy": 0.25, "eval/answer_prob": 0.12, "eval/judge_accuracy": 0.625, "eval/judge_answer_prob": 0.35,
         "eval/judge_accuracy/pointwise": 0.75,
         "eval/judge_accuracy/pairwise": 0.375, "policy/reward_mean": 0.2, "recycled/reward_mean": 0.4,
         "time/update_policy": 30.5},
        {"eval/accuracy": 0.375, "eval/answer_prob": 0.15, "eval/judge_accuracy": 0.7, "eval/judge_answer_prob": 0.4,
         "eval/judge_accuracy/pointwise": 0.8,
         "eval/judge_accuracy/pairwise": 0.5, "policy/reward_mean": 0.3, "recycled/reward_mean": 0.45,
         "time/update_policy": 29.25}]


def test_summary_text_says_what_happened_and_where():
    run = {"run_id": "abc123", "run_name": "spark-tiny-cpu-s42", "experiment": "spark",
           "tracking_uri": "sqlite:////w/mlflow.db", "rerun_of": ""}
    text = run_summary(HIST, arm="spark", preset="tiny-cpu", seed=42, checkpoint="/tmp/x/policy", run=run)
    lines = text.splitlines()
    assert lines[0].startswith("SPARK run finished: arm spark, preset tiny-cpu, seed 42, 2 epoch(s)")
    header = next(line for line in lines if line.lstrip().startswith("epoch"))
    assert header.split() == ["epoch", "held-out", "acc", "p(answer)", "judge", "acc", "p(verdict)", "pointwise",
                              "pairwise", "policy", "reward", "recycled", "reward"]
    rows = [line.split() for line in lines[lines.index(header) + 1:lines.index(header) + 4]]
    assert rows == [["0", "0.125", "0.100", "0.500", "0.300", "0.500", "0.500", "-", "-"],
                    ["1", "0.250", "0.120", "0.625", "0.350", "0.750", "0.375", "0.200", "0.400"],
                    ["2", "0.375", "0.150", "0.700", "0.400", "0.800", "0.500", "0.300", "0.450"]]
    assert "held-out accuracy: 0.125 -> 0.375 (+25.0 points)" in text
    assert "p(true answer):    0.100 -> 0.150 (+5.0 points)" in text
    assert "judge accuracy:    0.500 -> 0.700 (+20.0 points)" in text
    assert "p(right verdict):  0.300 -> 0.400 (+10.0 points)" in text
    assert "policy reward:     0.200 -> 0.300 (+10.0 points)" in text
    assert "checkpoint:        /tmp/x/policy" in text
    assert "spark-tiny-cpu-s42 (id abc123), experiment 'spark'" in text
    assert "mlflow ui --backend-store-uri sqlite:////w/mlflow.db" in text
    assert "repeats" not in text and max(len(line) for line in lines) < 120
    rerun = run_summary(HIST, arm="spark", preset="tiny-cpu", seed=42, checkpoint="/c", run=dict(run, rerun_of="r0"))
    assert "repeats MLflow run r0" in rerun
    # sparse metrics (no eval at some epochs) and no MLflow run still give a readable table
    sparse = run_summary([HIST[0], {"policy/reward_mean": 0.1}, HIST[2]], arm="policy", preset="p", seed=1,
                         checkpoint="/c", run=None)
    assert "\n    1             -          -          -           -          -         -          0.100" in sparse
    assert "MLflow" not in sparse


def _whole(ticks) -> bool:
    return len(ticks) > 0 and all(float(t).is_integer() for t in ticks)


@pytest.mark.parametrize("n_epochs", [1, 2, 3, 7, 15, 40])
def test_deck_curves_have_whole_number_epoch_ticks(n_epochs):
    hist = [{"eval/accuracy": 0.1 + 0.01 * e} if e % 3 == 0 else {"policy/reward_mean": 0.2} for e in range(n_epochs + 1)]
    for keys in (["eval/accuracy"], ["policy/reward_mean"]):
        ax = epoch_figure("t", keys, hist).axes[0]
        assert _whole(ax.get_xticks()), (n_epochs, keys, list(ax.get_xticks()))


@pytest.mark.parametrize("n_epochs", [1, 2, 3, 15, 40])
def test_compare_plot_has_whole_number_epoch_ticks(n_epochs):
    runs = [{"run_id": f"r{i}", "run_name": f"n{i}", "arm": arm,
             "metrics": {"eval/accuracy": [(s, 0.1 * i + 0.01 * s) for s in range(n_epochs + 1)],
                         "policy/kl": [(s, 0.001 * s) for s in range(1, n_epochs + 1)]}}
            for i, arm in enumerate(("spark", "policy"))]
    fig = compare.figure(runs)
    assert len(fig.axes) == 2
    for ax in fig.axes:
        fig.canvas.draw()
        assert _whole(ax.get_xticks()), (n_epochs, ax.get_title(), list(ax.get_xticks()))
        assert len(ax.lines) == 2


def test_run_names_and_cached_reruns_in_mlflow(mlflow_db, capsys):
    import mlflow

    from spark_core import tracking

    assert tracking.run_name("policy_reward", "tiny-cpu", 7) == "policy_reward-tiny-cpu-s7"
    cfg = {"recycle": {"arm": "spark"}}

    def run(history):
        rid = tracking.start_run(cfg, run_name=tracking.run_name("spark", "tiny-cpu", 42), tags={"arm": "spark"})
        for e, m in enumerate(history):
            tracking.log_metrics(rid, m, step=e)
        return rid, tracking.finish_run(rid, history)

    first, of = run(HIST)
    assert of is None
    retrained = [dict(h, **{"time/update_policy": 31.0}) for h in HIST]  # same results, recomputed: new timings
    second, of2 = run(retrained)
    replay, of3 = run(HIST)  # every stage's output (timings too) from the cache
    replay2, of4 = run(HIST)
    assert of2 is None and of3 == first and of4 == first  # a rerun of a rerun points at the original

    client = mlflow.MlflowClient(tracking_uri=mlflow_db)
    got = {rid: client.get_run(rid) for rid in (first, second, replay, replay2)}
    assert got[first].info.run_name == got[second].info.run_name == "spark-tiny-cpu-s42"
    assert got[replay].info.run_name == "spark-tiny-cpu-s42-rerun"
    assert got[replay].data.tags[tracking.RERUN_TAG] == first and tracking.RERUN_TAG not in got[second].data.tags
    assert all(r.info.status == "FINISHED" for r in got.values())
    info = tracking.run_info(replay)
    assert info == {"run_id": replay, "run_name": "spark-tiny-cpu-s42-rerun", "experiment": "spark",
                    "tracking_uri": mlflow_db, "rerun_of": first}

    assert [r["run_id"] for r in compare.collect()] == [first, second]
    assert compare.main([]) == 0
    out = capsys.readouterr().out
    assert first in out and second in out and replay not in out and replay2 not in out
    assert "2 cached rerun(s) left out" in out
    assert compare.main(["--include-reruns"]) == 0
    out = capsys.readouterr().out
    assert f"rerun of {first}" in out and replay in out and replay2 in out


def test_summary_breaks_held_out_accuracy_down_by_source():
    # the mean stays put while one source gains and another loses: the summary says which
    hist = [{"eval/accuracy": 0.5, "eval/accuracy/synthetic:total_dots": 0.75, "eval/accuracy/synthetic:more_dots": 0.25},
            {"eval/accuracy": 0.5, "eval/accuracy/synthetic:total_dots": 1.0, "eval/accuracy/synthetic:more_dots": 0.0}]
    lines = run_summary(hist, arm="spark", preset="tiny-cpu", seed=1, checkpoint="/c").splitlines()
    at = lines.index("held-out accuracy by source:")
    assert [line.split() for line in lines[at + 1:at + 3]] == [
        ["synthetic:more_dots", "0.250", "->", "0.000", "(-25.0", "points)"],
        ["synthetic:total_dots", "0.750", "->", "1.000", "(+25.0", "points)"]]
    # one source (a user's own data): no breakdown, the overall line says it all
    one = [{"eval/accuracy": 0.5, "eval/accuracy/mine": 0.5}, {"eval/accuracy": 0.6, "eval/accuracy/mine": 0.6}]
    assert "by source" not in run_summary(one, arm="spark", preset="p", seed=1, checkpoint="/c")
