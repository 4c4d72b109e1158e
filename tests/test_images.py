"""Image definitions and their lock files: pinned, consistent with pyproject, buildable offline."""

from __future__ import annotations

import dataclasses
import importlib
import os
import re
import sys
from pathlib import Path

import pytest
from flytekit import ImageSpec
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

import images

ROOT = Path(__file__).resolve().parent.parent
LOCK_DIR = ROOT / "images" / "locks"
LOCK_NAMES = ("light", "rollout", "trainer", "segment")
PINNED = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)(\[[A-Za-z0-9._,-]+\])?==(?P<version>[^\s;\\]+)(\s*\\)?$")


def read_lock(path: Path) -> dict[str, str]:
    pins: dict[str, str] = {}
    for n, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#") or line.startswith("--hash="):
            continue
        m = PINNED.match(line)
        assert m, f"{path.name}:{n} is not a pinned name==version line: {raw!r}"
        name = canonicalize_name(m["name"])
        assert name not in pins, f"{path.name}:{n} pins {name} twice"
        pins[name] = m["version"]
    return pins


@pytest.fixture(scope="module")
def locks() -> dict[str, dict[str, str]]:
    return {name: read_lock(LOCK_DIR / f"{name}.lock.txt") for name in LOCK_NAMES}


def all_specs():
    return [images.light_image, images.rollout_image, images.trainer_base_image, images.trainer_image,
            images.segment_base_image, images.segment_image]


# ---- lock files -------------------------------------------------------------


@pytest.mark.parametrize("name", LOCK_NAMES)
def test_lock_files_exist_with_inputs(name):
    assert (LOCK_DIR / f"{name}.in").is_file()
    assert (LOCK_DIR / f"{name}.lock.txt").is_file()
    assert os.access(LOCK_DIR / "compile.sh", os.X_OK)
    assert (LOCK_DIR / "README.md").is_file()


@pytest.mark.parametrize("name", LOCK_NAMES)
def test_every_lock_line_is_pinned(name, locks):
    assert len(locks[name]) > 50  # a full transitive closure, not a short list


def test_rollout_lock_pins(locks):
    pins = locks["rollout"]
    assert pins["vllm"] == "0.32.0"
    assert pins["torch"] == "2.13.0"
    assert Version("5.16.1") <= Version(pins["transformers"]) < Version("5.20")


def test_trainer_lock_pins(locks):
    pins = locks["trainer"]
    assert pins["deepspeed"] == "0.19.8"
    assert pins["torch"] == "2.13.0"
    assert pins["flytekitplugins-kfpytorch"] == "1.16.31"
    assert "vllm" not in pins
    # built in a later image step (see images/__init__.py); its build needs these
    assert "flash-attn" not in pins
    for dep in ("einops", "ninja", "packaging", "psutil", "setuptools", "wheel"):
        assert dep in pins, dep


def test_segment_lock_holds_rollout_and_trainer(locks):
    """The colocated segment needs vLLM and DeepSpeed in one environment, at the versions
    the separate stage images use."""
    seg = locks["segment"]
    for name in ("vllm", "torch", "transformers"):
        assert seg[name] == locks["rollout"][name], name
    for name in ("deepspeed", "flytekitplugins-kfpytorch", "einops", "ninja"):
        assert seg[name] == locks["trainer"][name], name
    assert "flash-attn" not in seg  # built in the image, as for the trainer


def test_light_lock_has_no_gpu_extras(locks):
    assert "vllm" not in locks["light"] and "flash-attn" not in locks["light"]


def test_locks_agree_on_shared_pins(locks):
    import flytekit

    for name, pins in locks.items():
        assert pins["flytekit"] == flytekit.__version__ == "1.16.31", name
        assert pins["torch"] == "2.13.0", name


def test_locks_satisfy_pyproject(locks):
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    base = [Requirement(r) for r in project["dependencies"]]
    extras = {
        "rollout": [Requirement(r) for r in project["optional-dependencies"]["rollout-gpu"]],
        "trainer": [],  # flash-attn (train-gpu) is installed outside the lock
        "segment": [Requirement(r) for r in project["optional-dependencies"]["rollout-gpu"]],
        "light": [],
    }
    for name, pins in locks.items():
        for req in base + extras[name]:
            key = canonicalize_name(req.name)
            assert key in pins, f"{name}.lock.txt lacks {req.name}"
            assert req.specifier.contains(pins[key], prereleases=True), f"{name}: {req} vs {pins[key]}"


# ---- image specs ------------------------------------------------------------


def test_images_point_at_their_locks():
    assert Path(images.light_image.requirements) == LOCK_DIR / "light.lock.txt"
    assert Path(images.rollout_image.requirements) == LOCK_DIR / "rollout.lock.txt"
    assert Path(images.trainer_base_image.requirements) == LOCK_DIR / "trainer.lock.txt"
    assert images.trainer_image.base_image is images.trainer_base_image
    for spec in all_specs():
        assert spec.packages is None  # everything comes from a lock
        if spec.requirements:
            assert Path(spec.requirements).is_file()


def test_python_and_registry():
    for spec in all_specs():
        assert spec.python_version == "3.11", spec.name
        assert spec.registry == os.environ.get("SPARK_IMAGE_REGISTRY", "localhost:30000").lower()
        assert spec.platform == "linux/amd64"
    names = [s.name for s in all_specs()]
    assert len(set(names)) == len(names)


def test_registry_from_environment(monkeypatch):
    monkeypatch.setenv("SPARK_IMAGE_REGISTRY", "ghcr.io/example-org")
    try:
        mod = importlib.reload(images)
        assert {s.registry for s in (mod.light_image, mod.rollout_image, mod.trainer_image)} == {"ghcr.io/example-org"}
        assert mod.rollout_image.image_name().startswith("ghcr.io/example-org/spark-rollout:")
        monkeypatch.delenv("SPARK_IMAGE_REGISTRY")
        assert importlib.reload(images).rollout_image.registry == "localhost:30000"
    finally:
        monkeypatch.undo()
        importlib.reload(images)


def test_rollout_image():
    spec = images.rollout_image
    assert spec.env["VLLM_WORKER_MULTIPROC_METHOD"] == "spawn"
    assert spec.base_image.startswith("nvidia/cuda:13.0")
    assert spec.cuda is None  # the default builder rejects cuda=; the base image brings it


def images_lock_pin(name: str, package: str) -> str:
    for line in (LOCK_DIR / f"{name}.lock.txt").read_text().splitlines():
        if line.startswith(f"{package}=="):
            return line.split("==", 1)[1].strip()
    raise KeyError(package)


def test_trainer_images():
    base, spec = images.trainer_base_image, images.trainer_image
    assert "devel" in base.base_image  # nvcc for DeepSpeed's JIT-built ops
    (cmd,) = base.commands
    # a prebuilt wheel for the locked torch and the base image's CUDA, not a source build
    # (flash-attn's sdist does not build against CUDA 13: Dao-AILab/flash-attention#2064)
    assert "--no-deps" in cmd and f"flash-attn @ {images.FLASH_ATTN_WHEEL}" in cmd
    wheel = images.FLASH_ATTN_WHEEL.rsplit("/", 1)[1]
    torch_minor = ".".join(images_lock_pin("trainer", "torch").split(".")[:2])
    cuda = images.CUDA_DEVEL_BASE.split(":")[1].split("-")[0]  # 13.0.2
    python = "cp" + images.PYTHON_VERSION.replace(".", "")
    assert wheel == (f"flash_attn-{images.FLASH_ATTN_VERSION}+cu{''.join(cuda.split('.')[:2])}torch{torch_minor}-"
                     f"{python}-{python}-linux_x86_64.whl")
    assert images.FLASH_ATTN_LOCAL_VERSION == f"{images.FLASH_ATTN_VERSION}+cu130torch{torch_minor}"
    assert f'grep -qx "{images.FLASH_ATTN_LOCAL_VERSION}"' in cmd  # the build checks what it installed
    assert base.source_root is None  # source changes must not rebuild flash-attn
    assert spec.requirements is None and spec.commands is None


def test_pyproject_names_the_flash_attn_of_the_images():
    import tomllib

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert extras["train-gpu"] == [f"flash-attn=={images.FLASH_ATTN_VERSION}"]


def test_segment_images():
    base, spec = images.segment_base_image, images.segment_image
    assert Path(base.requirements) == LOCK_DIR / "segment.lock.txt"
    assert "devel" in base.base_image and base.commands == images.trainer_base_image.commands
    assert base.source_root is None
    assert spec.base_image is base and spec.env["VLLM_WORKER_MULTIPROC_METHOD"] == "spawn"


def test_project_source_goes_into_every_stage_image():
    from flytekit.constants import CopyFileDetection

    for spec in (images.light_image, images.rollout_image, images.trainer_image, images.segment_image):
        assert Path(spec.source_root) == ROOT
        assert spec.source_copy_mode == CopyFileDetection.ALL


def test_locks_match_cuda_of_base_images(locks):
    # torch's CUDA wheels and the base image's toolkit must share the major version
    assert locks["trainer"]["nvidia-cuda-runtime"].startswith("13.0")
    assert locks["rollout"]["nvidia-cuda-runtime"].startswith("13.0")


def test_dockerfiles_render_offline(tmp_path):
    """The default builder accepts every spec; its Dockerfile installs the lock and copies the source."""
    from flytekit.image_spec.default_builder import create_docker_context

    rendered = {}
    for spec in all_specs():
        ctx = tmp_path / spec.name
        ctx.mkdir()
        if isinstance(spec.base_image, ImageSpec):
            # what ImageBuildEngine.build does after building the base image
            spec = dataclasses.replace(spec, base_image=spec.base_image.image_name())
        create_docker_context(spec, ctx)
        rendered[spec.name] = (ctx / "Dockerfile").read_text()
        reqs = (ctx / "requirements_uv.txt").read_text()
        if spec.requirements:
            assert reqs == "\n".join(line.strip() for line in Path(spec.requirements).read_text().splitlines())
        if spec.source_root:
            assert (ctx / "src" / "spark_core" / "rollout" / "vllm_backend.py").is_file()
            assert (ctx / "src" / "images" / "locks" / "rollout.lock.txt").is_file()
            assert not (ctx / "src" / ".venv").exists()
            assert "COPY --chown=flytekit ./src /root" in rendered[spec.name]
        assert "python=3.11" in rendered[spec.name]
    assert "FROM nvidia/cuda:13.0.2-runtime-ubuntu24.04" in rendered["spark-rollout"]
    assert "VLLM_WORKER_MULTIPROC_METHOD=spawn" in rendered["spark-rollout"]
    assert "FROM nvidia/cuda:13.0.2-devel-ubuntu24.04" in rendered["spark-trainer-base"]
    assert images.FLASH_ATTN_WHEEL in rendered["spark-trainer-base"]
    assert "flash-attn" not in rendered["spark-trainer"]
    assert f"FROM {images.trainer_base_image.image_name()}" in rendered["spark-trainer"]


def test_tags_are_content_hashes():
    tags = {s.name: s.tag for s in all_specs()}
    assert len(set(tags.values())) == len(tags)
    assert images.trainer_image.image_name() == f"{images.trainer_image.registry}/spark-trainer:{tags['spark-trainer']}"


def test_import_needs_no_docker_or_network():
    import subprocess

    code = ("import socket, sys\n"
            "def refuse(*a, **k):\n    raise OSError('network used at import')\n"
            "socket.socket.connect = refuse\n"
            "import images\n"
            "print(images.rollout_image.name)")
    env = dict(os.environ, PATH="/nonexistent", PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["spark-rollout"]


# ---- Flyte connection configs ---------------------------------------------


@pytest.mark.parametrize("name, endpoint, insecure", [("remote", "flyte.example.com", False),
                                                       ("sandbox", "localhost:30080", True)])
def test_flyte_configs(name, endpoint, insecure):
    from flytekit.configuration import Config

    cfg = Config.auto(str(ROOT / "config" / f"{name}.yaml"))
    assert cfg.platform.endpoint == endpoint
    assert cfg.platform.insecure is insecure
    if name == "sandbox":
        assert cfg.data_config.s3.endpoint == "http://localhost:30002"
        assert cfg.data_config.s3.access_key_id == "minio"
