"""The real workflow, every stage, at tiny sizes: local Flyte execution, DeepSpeed, MLflow."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pyarrow as pa
import pytest

from spark_core import schemas
from tests.helpers import torch_extensions_dir

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAST = {"bootstrap.steps": 20, "bootstrap.batch_size": 8, "data.synthetic_train": 32, "data.synthetic_eval": 8,
        "rollout.prompts_per_epoch": 4, "rollout.n_samples": 4, "rollout.max_new_tokens": 16,
        "train.train_batch_size": 16, "eval.max_new_tokens": 16, "eval.judge_samples": 8,
        "recycle.recycled_batch": 2}


@pytest.mark.slow
def test_workflow_runs_two_epochs_end_to_end(mlflow_db):
    """2 colocated epochs in one segment node; the layout with a node per stage passes
    the same checks in tests/test_epoch_drivers.py (on the run it compares)."""
    from workflows.spark import spark

    out = spark(epochs=2, mode="segment", overrides=json.dumps(FAST))
    check_finished_run(out, mlflow_db)


def check_finished_run(out, mlflow_uri: str) -> None:
    """A finished 2-epoch run of 4 prompts x 4 samples (recycled batch 2, one optimizer
    step a pass): artifacts, metric keys per epoch, MLflow history, the summary."""
    import mlflow
    from transformers import Qwen2_5_VLForConditionalGeneration

    # the final policy is a standard Hugging Face directory
    path = out.policy.path
    assert os.path.exists(os.path.join(path, "model.safetensors"))
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(path, use_safetensors=True)
    assert model.config.model_type == "qwen2_5_vl"

    history = schemas.history_rows(out.metrics.open(pa.Table).all())  # a table, one row per epoch
    assert len(history) == 3  # epoch 0 (start) + 2 epochs
    recycled_passes = 0
    for e, m in enumerate(history):
        assert 0.0 <= m["eval/accuracy"] <= 1.0
        assert "eval/judge_accuracy" in m
        if e == 0:
            continue
        for key in ("policy/reward_mean", "policy/samples", "policy/loss", "policy/kl", "time/update_policy",
                    "time/reward_policy", "time/evaluate", "recycled/steps"):
            assert key in m, (e, key)
        assert m["policy/samples"] == 16 and m["policy/steps"] == 1
        if m["recycled/steps"]:  # the queue held a full batch: the recycled pass ran
            recycled_passes += 1
            assert m["recycled/samples"] == 2 * 4 and "recycled/loss" in m
            assert m["recycled/global_step"] == m["policy/global_step"] + 1
    assert recycled_passes >= 1

    client = mlflow.MlflowClient(tracking_uri=mlflow_uri)
    run = client.get_run(out.summary.mlflow_run_id)
    assert run.info.experiment_id == client.get_experiment_by_name("spark").experiment_id
    assert run.info.status == "FINISHED" and run.data.params["recycle.arm"] == "spark"
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "eval/accuracy")]
    assert steps == [0, 1, 2]
    kl = client.get_metric_history(run.info.run_id, "policy/kl")
    assert [m.step for m in kl] == [1, 2]

    q = out.quarantine.open(pa.Table).all()
    assert q.schema.names == schemas.QUARANTINE.names and q.num_rows == 0

    # the run's summary: per-epoch figures from the history, the checkpoint, the MLflow run
    assert run.info.run_name == "spark-tiny-cpu-s42"
    text = out.summary.text
    assert repr(out.summary).strip() == text and out.summary.mlflow_run_id == run.info.run_id
    lines = text.splitlines()
    assert lines[0].startswith("SPARK run finished: arm spark, preset tiny-cpu, seed 42, 2 epoch(s)")
    header = next(i for i, line in enumerate(lines) if line.split()[:1] == ["epoch"])
    # column order: epoch, held-out acc, p(answer), judge acc, p(verdict), ...
    assert lines[header].split()[:7] == ["epoch", "held-out", "acc", "p(answer)", "judge", "acc", "p(verdict)"]
    for e, m in enumerate(history):
        cells = lines[header + 1 + e].split()
        assert cells[:5] == [str(e), f"{m['eval/accuracy']:.3f}", f"{m['eval/answer_prob']:.3f}",
                             f"{m['eval/judge_accuracy']:.3f}", f"{m['eval/judge_answer_prob']:.3f}"]
        assert 0.0 < m["eval/answer_prob"] < 1.0 and 0.0 < m["eval/judge_answer_prob"] < 1.0
        if e:
            assert f"{m['policy/reward_mean']:.3f}" in cells
    assert f"held-out accuracy: {history[0]['eval/accuracy']:.3f} -> {history[-1]['eval/accuracy']:.3f}" in text
    assert f"checkpoint:        {path}" in text
    assert f"spark-tiny-cpu-s42 (id {run.info.run_id}), experiment 'spark'" in text
    assert f"mlflow ui --backend-store-uri {mlflow_uri}" in text and "repeats" not in text
    assert tracking_tags(run, "spark.rerun_of") is None


def tracking_tags(run, key):
    return run.data.tags.get(key)


@pytest.mark.slow
def test_rerun_reuses_cached_stages(tmp_path):
    """Two identical `pyflyte run`s with the local cache on: the second reuses every
    cached stage, so it returns the very same checkpoint path."""
    env = dict(os.environ, HOME=str(tmp_path), TORCH_EXTENSIONS_DIR=torch_extensions_dir(), FLYTE_LOCAL_CACHE_ENABLED="true",
               MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}")
    # two epochs, evaluated only at the start and the end (eval.every)
    fast = dict(FAST, **{"rollout.prompts_per_epoch": 2, "rollout.n_samples": 2, "bootstrap.steps": 5,
                         "eval.every": 2})
    # the policy arm: no recycled pass, half the work, the same caching
    cmd = [sys.executable, "-m", "flytekit.clis.sdk_in_container.pyflyte", "run", "workflows/spark.py", "spark",
           "--epochs", "2", "--arm", "policy", "--overrides", json.dumps(fast)]
    outs = []
    for _ in range(2):
        p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
        assert p.returncode == 0, p.stderr[-3000:]
        outs.append(p.stdout)
    policy = [o.split("policy=")[1].split(",")[0] for o in outs]
    assert policy[0] == policy[1]
    assert os.path.isdir(os.path.join(str(tmp_path), ".flyte", "local-cache"))

    # the output ends with the readable summary, not with the metrics JSON
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    runs = client.search_runs([client.get_experiment_by_name("spark").experiment_id],
                              order_by=["attributes.start_time ASC"])
    assert [r.info.run_name for r in runs] == ["policy-tiny-cpu-s42", "policy-tiny-cpu-s42-rerun"]
    first, rerun = runs
    for out, r in zip(outs, runs):
        tail = out.rstrip().split("summary=", 1)[1]
        assert tail.rstrip().endswith(")") and "{" not in tail and "\\n" not in tail
        lines = tail.strip().splitlines()
        assert lines[0].startswith("SPARK run finished: arm policy, preset tiny-cpu, seed 42, 2 epoch(s)")
        header = next(i for i, line in enumerate(lines) if line.split()[:1] == ["epoch"])
        rows = [line.split() for line in lines[header + 1:header + 4]]
        assert [row[0] for row in rows] == ["0", "1", "2"] and rows[1][1:4] == ["-", "-", "-"]  # not evaluated
        assert rows[0][1] != "-" and rows[2][1] != "-"
        assert f"(id {r.info.run_id})" in tail and f"mlflow ui --backend-store-uri {env['MLFLOW_TRACKING_URI']}" in tail
    # epoch 1 was not evaluated; the metrics output is a table, not a line of JSON
    assert [m.step for m in client.get_metric_history(first.info.run_id, "eval/accuracy")] == [0, 2]
    assert "metrics='" not in outs[0]

    # the second run replayed the cache: tagged as a rerun of the first, left out by spark-compare
    assert "repeats" not in outs[0] and f"repeats MLflow run {first.info.run_id}" in outs[1]
    assert tracking_tags(rerun, "spark.rerun_of") == first.info.run_id
    assert tracking_tags(first, "spark.rerun_of") is None
    p = subprocess.run([sys.executable, "-m", "spark_core.evaluate.compare"], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert first.info.run_id in p.stdout and rerun.info.run_id not in p.stdout
    assert "1 cached rerun(s) left out" in p.stdout


@pytest.mark.slow
def test_report_and_compare_from_a_real_run(mlflow_db, tmp_path, capsys):
    """The Deck HTML and the comparison plot, checked for the run's values."""
    from spark_core.evaluate import compare
    from tasks.report import report
    from workflows.spark import spark

    fast = dict(FAST, **{"rollout.prompts_per_epoch": 2, "rollout.n_samples": 2, "bootstrap.steps": 5})
    out = spark(epochs=1, arm="policy", overrides=json.dumps(fast))
    history = schemas.history_rows(out.metrics.open(pa.Table).all())
    html = report(history=out.metrics)
    assert f"{history[-1]['eval/accuracy']:.3f}" in html
    assert f"{history[-1]['policy/reward_mean']:.3f}" in html
    assert html.count('src="data:image/png;base64,') >= 2

    png = tmp_path / "cmp.png"
    assert compare.main(["--metrics", "eval/accuracy", "policy/reward_mean", "--plot", str(png)]) == 0
    printed = capsys.readouterr().out
    assert "policy" in printed and f"{history[-1]['eval/accuracy']:.3f}" in printed
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
