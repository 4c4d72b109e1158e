"""The three image consumers (HF rollout, vLLM rollout, trainer) see the same pixels for a
row, at non-default pixel limits and for an image that must be resized."""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image

from spark_core import schemas
from spark_core.config import ANSWER_SUFFIX, ModelConfig
from spark_core.model.loading import load_processor
from spark_core.model.logprobs import build_batch
from spark_core.model.prompting import processor_inputs
from spark_core.rollout.vllm_backend import build_requests, engine_kwargs

# limits away from the defaults, and an image above max_pixels with an odd aspect ratio
CFG = ModelConfig(min_pixels=8 * 28 * 28, max_pixels=20 * 28 * 28)


def _row() -> dict:
    noise = np.random.default_rng(0).integers(0, 255, (317, 611, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noise).save(buf, format="PNG")
    q = "How many dots?"
    return {"prompt_id": "p0", "kind": schemas.KIND_SOLVE,
            "message": schemas.message_json(q + "\n" + ANSWER_SUFFIX, has_image=True), "question": q,
            "answer": "3", "image": buf.getvalue(), "source": "test", "template_id": "",
            "source_prompt_id": "", "source_rollout_id": ""}


def test_hf_rollout_and_trainer_pixels_agree(tiny_dir):
    proc, row = load_processor(tiny_dir, CFG), _row()
    rollout = processor_inputs(proc, [row])  # what HFBackend feeds generate()
    prompt = rollout["input_ids"][0].tolist()
    batch = build_batch(proc, [row], [prompt], [[proc.tokenizer.pad_token_id]])  # the trainer's input
    assert torch.equal(rollout["image_grid_thw"], batch.image_grid_thw)
    assert torch.equal(rollout["pixel_values"], batch.pixel_values)
    t, h, w = batch.image_grid_thw[0].tolist()
    assert h * w * 14 * 14 <= CFG.max_pixels and (h, w) != (317 // 14, 611 // 14)  # resized


def test_vllm_request_pixels_agree_with_trainer(tiny_dir):
    # vLLM gets the decoded image and builds its processor from `mm_processor_kwargs`
    from transformers import AutoImageProcessor

    proc, row = load_processor(tiny_dir, CFG), _row()
    (req,) = build_requests(proc, [row])
    engine = AutoImageProcessor.from_pretrained(tiny_dir, **engine_kwargs(tiny_dir, CFG, processor=proc)["mm_processor_kwargs"])
    a = engine(images=[req["multi_modal_data"]["image"]], return_tensors="pt")
    b = build_batch(proc, [row], [processor_inputs(proc, [row])["input_ids"][0].tolist()], [[0]])
    assert torch.equal(a["image_grid_thw"], b.image_grid_thw)
    assert torch.equal(a["pixel_values"], b.pixel_values)
