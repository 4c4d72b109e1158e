"""Loading and saving Qwen2.5-VL checkpoints: the tiny one and real ones, one code path.

Weights are read from safetensors only (no pickle), and `trust_remote_code` is off
unless the configuration turns it on.
"""

from __future__ import annotations

import glob
import json
import os
from contextlib import contextmanager

from spark_core.config import ModelConfig

# Written next to the image processor so that environments with torchvision (the vLLM
# image) build the stock processor, video component included, from the directory.
VIDEO_PROCESSOR_CONFIG = {
    "video_processor_type": "Qwen2VLVideoProcessor",
    "patch_size": 14,
    "temporal_patch_size": 2,
    "merge_size": 2,
}


class CheckpointError(ValueError):
    pass


def _image_only_processor_class():
    from transformers import Qwen2_5_VLProcessor

    class ImageOnlyQwen2_5_VLProcessor(Qwen2_5_VLProcessor):
        """The stock processor minus its video component, whose class needs torchvision.

        Text and image handling are inherited unchanged.
        """

        def check_argument_for_proper_class(self, argument_name, argument):
            if argument_name == "video_processor" and argument is None:
                return None
            return super().check_argument_for_proper_class(argument_name, argument)

    return ImageOnlyQwen2_5_VLProcessor


def pixel_limits(image_processor) -> tuple[int, int]:
    """(min_pixels, max_pixels) of a Qwen2-VL image processor (kept in `size`)."""
    size = image_processor.size
    return int(size["shortest_edge"]), int(size["longest_edge"])


def make_processor(tokenizer, image_processor, chat_template: str | None):
    from transformers import Qwen2_5_VLProcessor

    try:
        from transformers import Qwen2VLVideoProcessor

        lo, hi = pixel_limits(image_processor)
        video = Qwen2VLVideoProcessor(min_pixels=lo, max_pixels=hi)
        return Qwen2_5_VLProcessor(image_processor, tokenizer, video, chat_template=chat_template)
    except ImportError:
        cls = _image_only_processor_class()
        return cls(image_processor, tokenizer, None, chat_template=chat_template)


def _read_chat_template(model_dir: str, tokenizer) -> str | None:
    jinja = os.path.join(model_dir, "chat_template.jinja")
    if os.path.exists(jinja):
        return open(jinja, encoding="utf-8").read()
    js = os.path.join(model_dir, "chat_template.json")
    if os.path.exists(js):
        return json.load(open(js, encoding="utf-8"))["chat_template"]
    return getattr(tokenizer, "chat_template", None)


def load_processor(model_dir: str, cfg: ModelConfig):
    """The processor of a checkpoint, with the configured pixel limits applied.

    The same min/max pixel limits are used by the trainer and by both rollout
    backends, so a prompt has the same vision tokens everywhere.
    """
    from transformers import AutoTokenizer
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=cfg.trust_remote_code)
    image_processor = Qwen2VLImageProcessorPil.from_pretrained(model_dir)
    image_processor.size = {"shortest_edge": cfg.min_pixels, "longest_edge": cfg.max_pixels}
    template = _read_chat_template(model_dir, tokenizer)
    if template is None:
        raise CheckpointError(f"{model_dir} has no chat template (chat_template.jinja/json or tokenizer config)")
    tokenizer.chat_template = template
    if tokenizer.pad_token is None:
        tokenizer.pad_token = "<|endoftext|>"
    tokenizer.padding_side = "left"  # generation pads on the left
    return make_processor(tokenizer, image_processor, template)


def check_safetensors(model_dir: str) -> None:
    if not os.path.isdir(model_dir):
        raise CheckpointError(f"model directory {model_dir!r} does not exist")
    if not os.path.exists(os.path.join(model_dir, "config.json")):
        raise CheckpointError(f"{model_dir!r} has no config.json: not a Hugging Face model directory")
    if not glob.glob(os.path.join(model_dir, "*.safetensors")):
        pickles = glob.glob(os.path.join(model_dir, "*.bin")) + glob.glob(os.path.join(model_dir, "*.pt"))
        hint = " (only pickle weights found; convert them to safetensors first)" if pickles else ""
        raise CheckpointError(f"{model_dir!r} has no .safetensors weights{hint}")


class _ZeRO3Marker:
    """What transformers reads of a DeepSpeed config to build a model partitioned.

    transformers' own HfDeepSpeedConfig does the same but needs `accelerate`, which the
    trainer images do not carry; from_pretrained only asks `is_zero3()` and `config`."""

    def __init__(self, ds_config: dict):
        self.config = ds_config

    def is_zero3(self) -> bool:
        return True


@contextmanager
def zero3_partitioned_init(ds_config: dict):
    """Inside, from_pretrained builds the model under deepspeed.zero.Init: each parameter
    is partitioned over the ranks as it is created and the checkpoint is loaded shard by
    shard, so no rank ever holds the whole model. Unset on exit, so models loaded later
    in the same process (e.g. for rollouts) are built whole again."""
    from transformers.integrations import set_hf_deepspeed_config, unset_hf_deepspeed_config

    marker = _ZeRO3Marker(ds_config)
    set_hf_deepspeed_config(marker)
    try:
        yield
    finally:
        unset_hf_deepspeed_config()


def load_model(model_dir: str, cfg: ModelConfig, *, device: str = "cpu", for_training: bool = False,
               zero3_config: dict | None = None):
    """A Qwen2.5-VL from a safetensors directory. With `zero3_config` (a DeepSpeed config
    of ZeRO stage 3) the model is built partitioned over the ranks (see
    zero3_partitioned_init) and `device` is ignored: its shards are on the accelerator."""
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    check_safetensors(model_dir)
    dtype = getattr(torch, cfg.dtype)
    attn = cfg.attn_implementation
    if attn == "flash_attention_2":
        try:
            import flash_attn  # noqa: F401
        except ImportError:
            attn = "sdpa"
    kwargs = dict(dtype=dtype, attn_implementation=attn, use_safetensors=True, trust_remote_code=cfg.trust_remote_code)
    if zero3_config is not None:
        with zero3_partitioned_init(zero3_config):
            model = Qwen2_5_VLForConditionalGeneration.from_pretrained(model_dir, **kwargs)
    else:
        model = Qwen2_5_VLForConditionalGeneration.from_pretrained(model_dir, **kwargs)
        model.to(device)
    model.train(for_training)
    return model


def save_checkpoint(model, processor, out_dir: str) -> str:
    """A standard Hugging Face directory that transformers and `vllm serve` load as is."""
    os.makedirs(out_dir, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    save_processor(processor, out_dir)
    return out_dir


def save_processor(processor, out_dir: str) -> None:
    processor.tokenizer.save_pretrained(out_dir)
    processor.image_processor.save_pretrained(out_dir)
    with open(os.path.join(out_dir, "chat_template.jinja"), "w", encoding="utf-8") as f:
        f.write(processor.chat_template or processor.tokenizer.chat_template)
    lo, hi = pixel_limits(processor.image_processor)
    video = dict(VIDEO_PROCESSOR_CONFIG, min_pixels=lo, max_pixels=hi)
    with open(os.path.join(out_dir, "video_preprocessor_config.json"), "w") as f:
        json.dump(video, f, indent=2)
    with open(os.path.join(out_dir, "processor_config.json"), "w") as f:
        json.dump({"processor_class": "Qwen2_5_VLProcessor"}, f, indent=2)
