"""The starting checkpoint: the embedded tiny model (plus warm start) or a user's model."""

from __future__ import annotations

import json

from flytekit import task
from flytekit.types.directory import FlyteDirectory
from flytekit.types.structured import StructuredDataset

from images import light_image, trainer_image
from tasks.cache_versions import stage_cache
from spark_core.config import PREFIX_SEED, BootstrapConfig, ModelConfig, StageConfig
from tasks.common import Checkpoint, rows_of, workdir
from tasks.resources import LIGHT, PRESET, UPDATE


@task(cache=stage_cache("base_model"), container_image=light_image, resources=LIGHT)
def base_model(model: ModelConfig) -> Checkpoint:
    """The tiny model is built here; a user model directory (or bucket) is passed through."""
    from spark_core.model.loading import check_safetensors
    from spark_core.model.tiny import build_tiny

    if model.path in ("", "tiny"):
        return FlyteDirectory(build_tiny(workdir("tiny-model"), model))
    d = FlyteDirectory(model.path)
    local = d.download()
    check_safetensors(local)
    return FlyteDirectory(local)


# The warm start only runs for the tiny default; GPU presets disable it and merely pass
# the model through, so they get a light pod instead of a full training node.
@task(cache=stage_cache("bootstrap"), container_image=trainer_image,
      resources=UPDATE if PRESET == "tiny-cpu" else LIGHT)
def bootstrap(model: ModelConfig, bootstrap: BootstrapConfig, base: Checkpoint,
              train: StructuredDataset) -> tuple[Checkpoint, str]:
    """Short supervised warm start (tiny default); disabled presets pass the model through."""
    from spark_core import schemas
    from spark_core.train.sft import run_bootstrap

    cfg = StageConfig("bootstrap", model=model, bootstrap=bootstrap, seed=PREFIX_SEED)
    if not bootstrap.enabled:
        return base, json.dumps({})
    out = workdir("bootstrap")
    metrics = run_bootstrap(cfg, base.download(), rows_of(train, schemas.PROMPTS), out)
    return FlyteDirectory(out), json.dumps(metrics)
