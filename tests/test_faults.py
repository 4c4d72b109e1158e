"""Nothing is lost: bad input is quarantined or refused with its path, a crashed update
resumes from its last checkpoint, and a rerun after a crash reuses finished stages.

(NaN losses are covered in tests/test_engine.py.)
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys

import pyarrow as pa
import pytest
import torch

from spark_core import schemas
from spark_core.config import SparkConfig, load_config
from spark_core.data.loader import DataError
from tests.helpers import safetensors_weights, scored_rollouts, torch_extensions_dir

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---- bad input -------------------------------------------------------------------------


def _data_inputs(**fields) -> dict:
    base = {"data.synthetic_train": 4, "data.synthetic_eval": 2}
    cfg = load_config("tiny-cpu", json.dumps(dict(base, **fields)))
    return {"data": cfg.data}


def test_corrupted_parquet_fails_naming_the_path(tmp_path):
    from tasks.data import prepare_data

    bad = tmp_path / "train.parquet"
    bad.write_bytes(b"PAR1 this is not a parquet file \x00\xff" * 8)
    with pytest.raises(DataError, match=re.escape(str(bad))):
        prepare_data(**_data_inputs(**{"data.train_path": str(bad)}))


def _png() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 30, 30)).save(buf, format="PNG")
    return buf.getvalue()


def test_bad_rows_are_quarantined_with_reasons(tmp_path):
    from tasks.data import prepare_data

    (tmp_path / "ok.png").write_bytes(_png())
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n then garbage")
    rows = [
        {"id": "good-1", "problem": "What is 2 + 3?", "answer": "5", "image_path": "ok.png"},
        {"id": "good-2", "problem": "What is 7 - 4?", "answer": "3"},
        {"id": "no-answer", "problem": "What is 1 + 1?"},
        {"id": "lost-image", "problem": "Count the dots.", "answer": "4", "image_path": "missing.png"},
        {"id": "bad-image", "problem": "Which color?", "answer": "red", "image_path": "broken.png"},
        {"id": "good-1", "problem": "A duplicate id.", "answer": "9"},
    ]
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n{not json\n")

    d = prepare_data(**_data_inputs(**{"data.train_path": str(path)}))
    train = d.train.open(pa.Table).all().to_pylist()
    assert [r["prompt_id"] for r in train] == ["good-1", "good-2"]
    assert train[0]["image"] and train[1]["image"] is None and train[0]["answer"] == "5"
    assert d.eval.open(pa.Table).all().num_rows == 2  # eval stays synthetic

    q = d.quarantine.open(pa.Table).all()
    assert q.schema.names == schemas.QUARANTINE.names
    got = {(r["row_index"], r["row_id"], r["field"]) for r in q.to_pylist()}
    assert got == {(2, "no-answer", "answer"), (3, "lost-image", "image_path"), (4, "bad-image", "image_path"),
                   (5, "good-1", "prompt_id"), (6, "train-6", "json")}
    reasons = {r["row_id"]: r["reason"] for r in q.to_pylist()}
    assert all(v.startswith(f"[{path}]") for v in reasons.values())
    assert "no answer" in reasons["no-answer"]
    assert "missing.png" in reasons["lost-image"] and "does not exist" in reasons["lost-image"]
    assert "cannot be decoded" in reasons["bad-image"]
    assert "duplicates" in reasons["good-1"]
    raw = {r["row_id"]: r["raw"] for r in q.to_pylist()}
    assert json.loads(raw["no-answer"])["problem"] == "What is 1 + 1?"


def test_only_bad_rows_fail_with_the_count(tmp_path):
    from tasks.data import prepare_data

    path = tmp_path / "all_bad.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [
        {"id": "a", "problem": "no answer here"},
        {"id": "b", "answer": "1"},
        {"id": "c", "problem": "x", "answer": "2", "image_path": "nowhere.png"},
    ]) + "\n")
    with pytest.raises(DataError, match=r"all 3 rows were quarantined") as e:
        prepare_data(**_data_inputs(**{"data.train_path": str(path)}))
    assert str(path) in str(e.value)


# ---- a crashed update resumes from its last checkpoint -----------------------------------


@pytest.fixture(scope="module")
def small_rollouts(tiny_dir):
    return scored_rollouts(tiny_dir, 2, data_seed=3, sample_seed=5)




def test_crashed_update_resumes_from_its_checkpoint(tiny_dir, small_rollouts, tmp_path, monkeypatch):
    """Crash after step 1 of 2 (the checkpoint of step 1 is published through a real
    flytekit SyncCheckpoint); the next attempt, on a fresh local disk, restores it, skips
    step 1 and ends exactly where an uninterrupted pass ends."""
    from flytekit.core.checkpointer import SyncCheckpoint

    from spark_core.checkpoint import Checkpoints
    from spark_core.train.callbacks import CRASH_AFTER_STEP_ENV
    from spark_core.train.engine import STATE_FILE, run_update

    rows, scored = small_rollouts
    cfg = SparkConfig()
    cfg.train.train_batch_size = 2
    cfg.train.micro_batch_size = 2
    cfg.train.lr = 5e-3

    def update(name: str, checkpoints=None):
        return run_update(cfg=cfg, model_dir=tiny_dir, ref_dir=tiny_dir, prompts=rows, scored=scored,
                          out_dir=str(tmp_path / name / "out"), state_in=None, state_out=str(tmp_path / name / "state"),
                          phase="policy", checkpoints=checkpoints)

    full = update("full")
    assert full["steps"] == 2 and full["resumed_steps"] == 0

    attempt1 = SyncCheckpoint(checkpoint_dest=str(tmp_path / "cp-attempt1"))
    monkeypatch.setenv(CRASH_AFTER_STEP_ENV, "1")
    with pytest.raises(RuntimeError, match="simulated crash after step 1"):
        update("crashed", Checkpoints(str(tmp_path / "pod1"), every=1, publish=attempt1.save))
    assert not os.path.exists(tmp_path / "crashed" / "out")
    published = sorted(os.listdir(tmp_path / "cp-attempt1"))
    assert {"slot-a", "spark_resume.json"} <= set(published)
    assert json.load(open(tmp_path / "cp-attempt1" / "spark_resume.json"))["steps_done"] == 1

    # the retry: a new pod (empty local dir) whose checkpoint source is the last attempt's
    monkeypatch.delenv(CRASH_AFTER_STEP_ENV)
    attempt2 = SyncCheckpoint(checkpoint_dest=str(tmp_path / "cp-attempt2"),
                              checkpoint_src=str(tmp_path / "cp-attempt1"))
    resumed = update("resumed", Checkpoints(str(tmp_path / "pod2"), every=1,
                                            restore=lambda d: attempt2.restore(d) is not None,
                                            publish=attempt2.save))
    assert resumed["resumed_steps"] == 1
    assert resumed["global_step"] == full["global_step"] == 2
    assert resumed["steps"] == full["steps"] == 2  # the step log covers the whole pass
    assert [s["step"] for s in resumed["step_log"]] == [0, 1]
    for a, b in zip(resumed["step_log"], full["step_log"]):
        assert a["lr"] == b["lr"] and a["loss"] == pytest.approx(b["loss"], rel=1e-5, abs=1e-7)
    assert json.load(open(tmp_path / "resumed" / "state" / STATE_FILE))["global_step"] == 2
    assert not os.path.exists(tmp_path / "pod2" / "live")  # resume files are removed once the pass is done

    # the same weights as the uninterrupted pass, bit for bit: on CPU with fixed seeds the
    # pass is deterministic, and the checkpoint holds the fp32 weights, Adam moments and RNG
    w_full, w_resumed = safetensors_weights(str(tmp_path / "full" / "out")), safetensors_weights(str(tmp_path / "resumed" / "out"))
    w_start = safetensors_weights(tiny_dir)
    assert w_full.keys() == w_resumed.keys()
    assert any(not torch.equal(w_full[k], w_start[k]) for k in w_full)  # the pass did train
    for k in w_full:
        assert torch.equal(w_resumed[k], w_full[k]), k


def test_resume_ignores_a_checkpoint_of_another_pass(tmp_path):
    """A state file of a different pass (other rollouts or start step) is never resumed."""
    from spark_core.train.engine import RESUME_FILE, RESUME_POINTER

    _read_resume = RESUME_POINTER.read

    os.makedirs(tmp_path / "slot-a")
    (tmp_path / RESUME_FILE).write_text(json.dumps({"pass_key": "other", "tag": "slot-a", "steps_done": 1}))
    assert _read_resume(str(tmp_path), "mine") is None
    (tmp_path / RESUME_FILE).write_text(json.dumps({"pass_key": "mine", "tag": "slot-b", "steps_done": 1}))
    assert _read_resume(str(tmp_path), "mine") is None  # names a checkpoint that is not there
    (tmp_path / RESUME_FILE).write_text(json.dumps({"pass_key": "mine", "tag": "slot-a", "steps_done": 1}))
    assert _read_resume(str(tmp_path), "mine")["load_dir"] == str(tmp_path)


# ---- a rerun after a crash reuses the finished stages -----------------------------------

_CHECK = re.compile(r"Checking cache for task named (\S+), cache version")
_RESULT = re.compile(r"Cache (hit|miss)")


def _cache_log(text: str) -> list[tuple[str, str]]:
    """(task name, "hit"|"miss") in order, from flytekit's INFO log of the local cache."""
    out, pending = [], None
    for line in text.splitlines():
        m = _CHECK.search(line)
        if m:
            pending = m.group(1)
            continue
        r = _RESULT.search(line)
        if r and pending:
            out.append((pending, r.group(1)))
            pending = None
    return out


@pytest.mark.slow
def test_rerun_after_a_crash_reuses_finished_stages(tmp_path):
    from tests.test_workflow_e2e import FAST

    env = dict(os.environ, HOME=str(tmp_path), TORCH_EXTENSIONS_DIR=torch_extensions_dir(),
               FLYTE_LOCAL_CACHE_ENABLED="true", FLYTE_SDK_LOGGING_LEVEL="20",
               FLYTE_SDK_RICH_TRACEBACKS="0", FLYTE_SDK_LOGGING_FORMAT="text",
               MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}")
    fast = dict(FAST, **{"rollout.prompts_per_epoch": 2, "rollout.n_samples": 2, "bootstrap.steps": 5})
    cmd = [sys.executable, "-m", "flytekit.clis.sdk_in_container.pyflyte", "run", "workflows/spark.py", "spark",
           "--epochs", "1", "--overrides", json.dumps(fast)]

    crashed = subprocess.run(cmd, cwd=ROOT, env=dict(env, SPARK_FAULT_CRASH_UPDATE_PHASE="recycled"),
                             capture_output=True, text=True, timeout=1200)
    assert crashed.returncode != 0
    log1 = crashed.stdout + crashed.stderr
    assert "SPARK_FAULT_CRASH_UPDATE_PHASE=recycled" in log1, log1[-4000:]
    first = _cache_log(log1)
    assert first and all(r == "miss" for _, r in first), first
    assert first[-1][0] == "tasks.update.update_policy"  # the recycled update, which failed
    finished = [t for t, _ in first[:-1]]
    assert {"tasks.data.prepare_data", "tasks.model.base_model", "tasks.model.bootstrap",
            "tasks.update.update_policy"} <= set(finished)

    rerun = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    second = _cache_log(rerun.stdout + rerun.stderr)
    # every stage that finished before the crash is reused; the failed update and the rest run
    assert second[:len(finished)] == [(t, "hit") for t in finished], (first, second)
    assert second[len(finished)] == ("tasks.update.update_policy", "miss")
    assert all(r == "miss" for _, r in second[len(finished):])
    assert "policy=" in rerun.stdout


# ---- secrets never reach MLflow; code shipped with weights never runs ---------------------


def test_secret_params_are_refused_by_key_not_value(mlflow_db, monkeypatch):
    from spark_core import tracking

    cfg = SparkConfig().to_dict()
    assert not any(tracking.looks_secret(k) for k in tracking.flatten(cfg))  # max_new_tokens etc. are fine
    for key in ("hf_token", "db_password", "openaiApiKey", "service_credentials", "client_secret"):
        leaky = dict(cfg, model=dict(cfg["model"], **{key: "s3cr3t-VALUE-123"}))
        with pytest.raises(ValueError, match=re.escape(f"model.{key}")) as e:
            tracking.start_run(leaky, run_name="leak", tags={})
        assert "s3cr3t-VALUE-123" not in str(e.value)
    with pytest.raises(ValueError, match="GITHUB_TOKEN"):
        tracking.start_run(cfg, run_name="leak", tags={"GITHUB_TOKEN": "x" * 12})
    # a secret from the environment copied into an innocent-looking field is refused too
    monkeypatch.setenv("MY_SERVICE_API_KEY", "env-secret-0123456789")
    with pytest.raises(ValueError, match=r"'data\.train_path'") as e:
        tracking.start_run(dict(cfg, data=dict(cfg["data"], train_path="env-secret-0123456789")), run_name="x", tags={})
    assert "env-secret-0123456789" not in str(e.value)

    import mlflow

    run_id = tracking.start_run(cfg, run_name="clean", tags={"arm": "spark"})
    run = mlflow.MlflowClient(tracking_uri=mlflow_db).get_run(run_id)
    assert run.data.params["rollout.max_new_tokens"] == str(cfg["rollout"]["max_new_tokens"])
    logged = " ".join(list(run.data.params.values()) + list(run.data.tags.values()))
    assert "env-secret-0123456789" not in logged  # and no environment variable was logged
    assert not any(k in os.environ for k in run.data.params)


def test_remote_code_in_a_checkpoint_is_not_executed(tiny_dir, tmp_path):
    import shutil

    from spark_core.config import ModelConfig
    from spark_core.model.loading import load_model, load_processor

    assert ModelConfig().trust_remote_code is False
    evil = tmp_path / "evil"
    shutil.copytree(tiny_dir, evil)
    marker = tmp_path / "PWNED"
    (evil / "modeling_evil.py").write_text(
        f"open({str(marker)!r}, 'w').write('ran')\n"
        "from transformers import PretrainedConfig, PreTrainedModel\n"
        "class EvilConfig(PretrainedConfig):\n    model_type = 'evil'\n"
        "class EvilModel(PreTrainedModel):\n    config_class = EvilConfig\n")
    conf = json.loads((evil / "config.json").read_text())
    conf["auto_map"] = {"AutoConfig": "modeling_evil.EvilConfig", "AutoModel": "modeling_evil.EvilModel",
                        "AutoModelForImageTextToText": "modeling_evil.EvilModel"}
    (evil / "config.json").write_text(json.dumps(conf))
    tok = json.loads((evil / "tokenizer_config.json").read_text())
    tok["auto_map"] = {"AutoTokenizer": ["modeling_evil.EvilTokenizer", None]}
    (evil / "tokenizer_config.json").write_text(json.dumps(tok))

    for load in (lambda: load_model(str(evil), ModelConfig()), lambda: load_processor(str(evil), ModelConfig())):
        try:
            obj = load()
            assert type(obj).__module__.startswith(("transformers.", "spark_core.")), type(obj)
        except Exception as e:  # refusing to load is fine too, as long as nothing ran
            assert "PWNED" not in str(e)
        assert not marker.exists(), "code shipped with the checkpoint was executed"
