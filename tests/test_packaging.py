"""What a Flyte cluster receives: the workflows packaged offline (`pyflyte package`) for
each preset, with every task spec decoded from its protobuf and checked for GPUs,
accelerators, shared memory, the distributed update's configuration, cache versions
and images.

Resources are fixed when tasks are serialized, from the preset named by SPARK_PRESET
(tasks/resources.py), so each preset is packaged in its own `pyflyte` process; the
three run side by side.
"""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from tasks.cache_versions import STAGE_TASKS, stage_version

# three `pyflyte package` runs (~10 s of CPU each): about a minute on a shared 2-core machine
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
PRESETS = ("tiny-cpu", "7b-8xh100", "32b-16xh100")
REGISTRY = "localhost:30000"
DEFAULT_IMAGE = "ghcr.io/example/spark-default:packaging-test"

# cached task -> the stage whose version it carries; a cached task not listed here
# takes the stage named after its module (tasks.recycle.* -> "recycle")
STAGE_OF_TASK = {
    "tasks.data.prepare_data": "data",
    "tasks.data.select_prompts": "select_prompts",
    "tasks.model.base_model": "base_model",
    "tasks.model.bootstrap": "bootstrap",
    "tasks.evaluate.judge_eval_set": "judge_eval_set",
    "tasks.evaluate.evaluate_policy": "evaluate",
    "tasks.rollout.rollout_shard": "rollout",
    "tasks.reward.score_rollouts": "reward",
    "tasks.recycle.recycle_rollouts": "recycle",
    "tasks.update.update_policy": "update",
}
ROLLOUT_IMAGE_TASKS = {"tasks.rollout.rollout_shard", "tasks.evaluate.evaluate_policy",
                       "tasks.evaluate.judge_eval_set"}
TRAINER_IMAGE_TASKS = {"tasks.update.update_policy", "tasks.model.bootstrap"}
ROLLOUT = "tasks.rollout.rollout_shard"
EVALUATE = "tasks.evaluate.evaluate_policy"
UPDATE = "tasks.update.update_policy"
SEGMENT = "tasks.segment.run_segment"


def stage_of(task_name: str) -> str:
    if task_name in STAGE_OF_TASK:
        return STAGE_OF_TASK[task_name]
    module = task_name.split(".")[1] if task_name.startswith("tasks.") else ""
    assert module in STAGE_TASKS, f"cached task {task_name} has no stage: add it to STAGE_OF_TASK"
    return module


def _pyflyte() -> str:
    exe = Path(sys.executable).parent / "pyflyte"
    return str(exe) if exe.exists() else "pyflyte"


def _env(preset: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(SPARK_PRESET=preset, FLYTE_LOCAL_CACHE_ENABLED="false", SPARK_IMAGE_REGISTRY=REGISTRY,
               TOKENIZERS_PARALLELISM="false")
    return env


def _decode(folder: Path) -> dict:
    """{"tasks": {name: TaskSpec dict}, "workflows": {...}, "launch_plans": {...}}.

    `pyflyte package` names each file after the message it holds: *_1.pb TaskSpec,
    *_2.pb WorkflowSpec, *_3.pb LaunchPlan.
    """
    from flyteidl.admin import launch_plan_pb2, task_pb2, workflow_pb2
    from google.protobuf.json_format import MessageToDict

    out: dict[str, dict] = {"tasks": {}, "workflows": {}, "launch_plans": {}}
    for path in sorted(glob.glob(str(folder / "*.pb"))):
        data = Path(path).read_bytes()
        if path.endswith("_1.pb"):
            msg = task_pb2.TaskSpec.FromString(data)
            out["tasks"][msg.template.id.name] = MessageToDict(msg)
        elif path.endswith("_2.pb"):
            msg = workflow_pb2.WorkflowSpec.FromString(data)
            out["workflows"][msg.template.id.name] = MessageToDict(msg)
        elif path.endswith("_3.pb"):
            msg = launch_plan_pb2.LaunchPlan.FromString(data)
            out["launch_plans"][msg.id.name] = MessageToDict(msg)
        else:
            raise AssertionError(f"unexpected file in the package: {path}")
    return out


@pytest.fixture(scope="module")
def packages(tmp_path_factory) -> dict[str, dict]:
    """Package every preset (in parallel) and decode the results."""
    base = tmp_path_factory.mktemp("packages")
    procs = {}
    for p in PRESETS:
        d = base / p
        d.mkdir()
        cmd = [_pyflyte(), "--pkgs", "workflows", "package", "--image", DEFAULT_IMAGE,
               "-o", str(d / "pkg.tgz"), "--force"]
        procs[p] = (d, subprocess.Popen(cmd, cwd=ROOT, env=_env(p), stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True))
    decoded = {}
    for p, (d, proc) in procs.items():
        log, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"packaging {p} failed:\n{log}"
        with tarfile.open(d / "pkg.tgz") as tar:
            tar.extractall(d / "pb", filter="data")
        decoded[p] = _decode(d / "pb")
        decoded[p]["log"] = log
    return decoded


# ---- helpers on decoded TaskSpecs -------------------------------------------


def template(pkg: dict, name: str) -> dict:
    return pkg["tasks"][name]["template"]


def container(tmpl: dict) -> dict:
    """The task's container: the plain one, or the primary container of its pod template."""
    if "container" in tmpl:
        return tmpl["container"]
    pod = tmpl["k8sPod"]
    name = tmpl["config"]["primary_container_name"]
    return next(c for c in pod["podSpec"]["containers"] if c["name"] == name)


def resources(tmpl: dict) -> tuple[dict[str, str], dict[str, str]]:
    res = container(tmpl).get("resources", {})
    if "container" not in tmpl:  # a pod spec: Kubernetes names and quantities
        names = {"gpu": "GPU", "nvidia.com/gpu": "GPU", "cpu": "CPU", "memory": "MEMORY"}
        conv = lambda d: {names.get(k, k): str(v) for k, v in (d or {}).items()}  # noqa: E731
        return conv(res.get("requests")), conv(res.get("limits"))
    as_map = lambda items: {r["name"]: r["value"] for r in items}  # noqa: E731
    return as_map(res.get("requests", [])), as_map(res.get("limits", []))


def accelerator(tmpl: dict) -> str | None:
    return tmpl.get("extendedResources", {}).get("gpuAccelerator", {}).get("device")


def shared_memory(tmpl: dict) -> dict | None:
    return tmpl.get("extendedResources", {}).get("sharedMemory")


def env_of(tmpl: dict) -> dict[str, str]:
    c = container(tmpl)
    if "container" not in tmpl:
        return {e["name"]: e.get("value", "") for e in c.get("env", [])}
    return {e["key"]: e["value"] for e in c.get("env", [])}


# ---- every preset -------------------------------------------------------------


@pytest.mark.parametrize("preset", PRESETS)
def test_package_holds_the_whole_pipeline(packages, preset):
    pkg = packages[preset]
    assert set(STAGE_OF_TASK) <= set(pkg["tasks"])
    assert {"workflows.spark.make_config", "workflows.spark.coevolve"} <= set(pkg["tasks"])
    assert "workflows.spark.spark" in pkg["workflows"]
    lp = pkg["launch_plans"]["workflows.spark.spark"]
    assert lp["spec"]["workflowId"]["name"] == "workflows.spark.spark"
    # the preset default of the workflow input is the one packaged
    default = lp["spec"]["defaultInputs"]["parameters"]["preset"]["default"]
    assert default["scalar"]["primitive"]["stringValue"] == preset


@pytest.mark.parametrize("preset", PRESETS)
def test_cache_versions(packages, preset):
    pkg = packages[preset]
    cached = {n for n, t in pkg["tasks"].items() if t["template"]["metadata"].get("discoverable")}
    assert set(STAGE_OF_TASK) <= cached, "a listed task lost its cache"
    assert {stage_of(n) for n in cached} == set(STAGE_TASKS), "a stage's version is used by no task"
    for name in cached:
        # computed from the stage's sources in the `pyflyte package` process, as here
        assert template(pkg, name)["metadata"]["discoveryVersion"] == stage_version(stage_of(name)), name


@pytest.mark.parametrize("preset", PRESETS)
def test_images_per_task(packages, preset):
    """ImageSpec images serialize as <registry>/<name>:<content hash>; --image only sets
    the default, which no task uses."""
    pkg = packages[preset]
    for name in pkg["tasks"]:
        image = container(template(pkg, name))["image"]
        assert image.startswith(f"{REGISTRY}/"), (name, image)
        assert image != DEFAULT_IMAGE
        repo, tag = image.rsplit(":", 1)
        assert tag
        want = ("spark-rollout" if name in ROLLOUT_IMAGE_TASKS else
                "spark-trainer" if name in TRAINER_IMAGE_TASKS else
                "spark-segment" if name == SEGMENT else "spark-light")
        assert repo == f"{REGISTRY}/{want}", (name, image)


def test_preset_reaches_the_dynamic_loop(packages):
    """The epoch loop serializes its tasks inside its own pod, with the same preset."""
    for preset, pkg in packages.items():
        assert env_of(template(pkg, "workflows.spark.coevolve"))["SPARK_PRESET"] == preset


# ---- tiny-cpu -------------------------------------------------------------------


def test_tiny_default_requests_no_gpu(packages):
    pkg = packages["tiny-cpu"]
    for name in pkg["tasks"]:
        tmpl = template(pkg, name)
        req, lim = resources(tmpl)
        assert "GPU" not in req and "GPU" not in lim, name
        assert accelerator(tmpl) is None, name
    assert template(pkg, UPDATE)["type"] == "python-task"  # nnodes=1: no operator needed


# ---- 7b-8xh100 ----------------------------------------------------------------


@pytest.mark.parametrize("name", [ROLLOUT, EVALUATE])
def test_7b_one_h100_per_rollout_and_eval_pod(packages, name):
    tmpl = template(packages["7b-8xh100"], name)
    req, lim = resources(tmpl)
    assert req["GPU"] == lim["GPU"] == "1"
    assert accelerator(tmpl) == "nvidia-h100"
    assert req == lim  # guaranteed QoS


def test_7b_rollout_has_shared_memory_for_vllm(packages):
    tmpl = template(packages["7b-8xh100"], ROLLOUT)
    assert shared_memory(tmpl)["mountPath"] == "/dev/shm"
    assert env_of(tmpl)["VLLM_WORKER_MULTIPROC_METHOD"] == "spawn"


def test_7b_update_is_single_node_elastic_on_8_h100(packages):
    tmpl = template(packages["7b-8xh100"], UPDATE)
    req, lim = resources(tmpl)
    assert req["GPU"] == lim["GPU"] == "8"
    assert req == lim
    assert accelerator(tmpl) == "nvidia-h100"
    # flytekit 1.16 serializes shared_memory=True as an extended resource (no pod template)
    assert shared_memory(tmpl) == {"mountPath": "/dev/shm", "mountName": "flyte-shared-memory"}
    assert "podTemplateName" not in tmpl.get("metadata", {}) and "k8sPod" not in tmpl
    # Elastic with nnodes=1 is a plain python task (one pod, no Kubeflow operator),
    # marked by the plugin's task_type_version 1; it carries no custom config...
    assert tmpl["type"] == "python-task"
    assert tmpl.get("taskTypeVersion") == 1
    assert not tmpl.get("custom")
    # ...so the pod rebuilds the torchrun launch config by importing the task module:
    args = container(tmpl)["args"]
    assert args[0] == "pyflyte-execute"
    assert args[args.index("task-module") + 1] == "tasks.update"
    assert args[args.index("task-name") + 1] == "update_policy"
    env = env_of(tmpl)
    assert env["OMP_NUM_THREADS"] == "1" and env["TORCH_NCCL_ASYNC_ERROR_HANDLING"] == "1"


def _elastic_in_pod(tmpl: dict, module: str = "tasks.update", task: str = "update_policy") -> dict:
    """The Elastic config the update pod builds when it imports tasks.update: the pod's
    environment is the task's container env (plus the image's), not the registering shell's."""
    env = {k: v for k, v in os.environ.items() if k != "SPARK_PRESET"}
    env.update(env_of(tmpl))
    code = (f"import json, {module} as u; c = u.{task}.task_config; "
            "print(json.dumps({'nnodes': c.nnodes, 'nproc_per_node': c.nproc_per_node}))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_7b_update_pod_launches_8_processes(packages):
    assert _elastic_in_pod(template(packages["7b-8xh100"], UPDATE)) == {"nnodes": 1, "nproc_per_node": 8}


# ---- segments, the state volume and blocks of epochs -----------------------------


def _state_volume(tmpl: dict) -> tuple[str, str]:
    """(claim name, mount path) of the state volume in a task's pod template."""
    pod = tmpl["k8sPod"]["podSpec"]
    vols = {v["name"]: v for v in pod["volumes"]}
    claim = vols["spark-state"]["persistentVolumeClaim"]["claimName"]
    mounts = {m["name"]: m["mountPath"] for m in container(tmpl).get("volumeMounts", [])}
    return claim, mounts["spark-state"]


@pytest.mark.parametrize("preset", ["7b-8xh100", "32b-16xh100"])
def test_gpu_segment_mounts_the_state_volume(packages, preset):
    tmpl = template(packages[preset], SEGMENT)
    assert _state_volume(tmpl) == ("spark-state", "/mnt/spark-state")
    env = env_of(tmpl)
    assert env["SPARK_STATE_DIR"] == "/mnt/spark-state" and env["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"
    req, lim = resources(tmpl)
    assert req["GPU"] == lim["GPU"] == "8"
    assert accelerator(tmpl) == "nvidia-h100" and shared_memory(tmpl)["mountPath"] == "/dev/shm"
    assert container(tmpl)["image"].startswith(f"{REGISTRY}/spark-segment:")


def test_7b_segment_pod_launches_8_processes(packages):
    tmpl = template(packages["7b-8xh100"], SEGMENT)
    assert tmpl["type"] == "python-task"
    assert _elastic_in_pod(tmpl, "tasks.segment", "run_segment") == {"nnodes": 1, "nproc_per_node": 8}


def test_tiny_segment_keeps_state_in_object_storage(packages):
    tmpl = template(packages["tiny-cpu"], SEGMENT)
    assert "k8sPod" not in tmpl and "SPARK_STATE_DIR" not in env_of(tmpl)


@pytest.mark.parametrize("preset", PRESETS)
def test_blocks_of_epochs_are_a_launch_plan(packages, preset):
    pkg = packages[preset]
    lp = pkg["launch_plans"]["spark_block"]
    assert lp["spec"]["workflowId"]["name"] == "workflows.spark.spark_block"
    assert "workflows.spark.coevolve_block" in pkg["tasks"]
    assert env_of(template(pkg, "workflows.spark.coevolve_block"))["SPARK_PRESET"] == preset


# ---- 32b-16xh100 ----------------------------------------------------------------


def test_32b_update_is_a_two_node_pytorch_job(packages):
    tmpl = template(packages["32b-16xh100"], UPDATE)
    assert tmpl["type"] == "pytorch"  # needs the Kubeflow training operator + pytorch plugin
    custom = tmpl["custom"]
    elastic = custom["elasticConfig"]
    assert elastic["minReplicas"] == elastic["maxReplicas"] == 2
    assert elastic["nprocPerNode"] == 8
    assert elastic["rdzvBackend"] == "c10d"
    assert custom["workerReplicas"]["replicas"] == 2
    req, lim = resources(tmpl)  # per pod
    assert req["GPU"] == lim["GPU"] == "8"
    assert accelerator(tmpl) == "nvidia-h100"
    assert shared_memory(tmpl)["mountPath"] == "/dev/shm"


def test_32b_rollouts_use_two_gpus_for_tensor_parallel(packages):
    for name in (ROLLOUT, EVALUATE):
        req, lim = resources(template(packages["32b-16xh100"], name))
        assert req["GPU"] == lim["GPU"] == "2"
