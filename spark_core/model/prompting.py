"""Turning a PROMPTS row into chat text and images, identically for every backend."""

from __future__ import annotations

import io
import json
from typing import Any

from PIL import Image


def decode_image(row: dict) -> Image.Image | None:
    data = row.get("image")
    if not data:
        return None
    img = Image.open(io.BytesIO(data))
    return img.convert("RGB")


def chat_messages(row: dict) -> list[dict[str, Any]]:
    """The row's `message` (SPARK format) with the image item reduced to a placeholder.

    The image itself travels separately (PIL image), so the chat template only has
    to emit the vision tokens.
    """
    msgs = json.loads(row["message"]) if isinstance(row["message"], str) else row["message"]
    out = []
    for m in msgs:
        content = m["content"]
        if isinstance(content, str):
            content = [{"type": "text", "text": content}]
        items = []
        for c in content:
            if c.get("type") == "image":
                items.append({"type": "image"})
            elif c.get("type") == "text":
                items.append({"type": "text", "text": c["text"]})
        out.append({"role": m["role"], "content": items})
    return out


def render_prompt(processor, row: dict) -> str:
    """Chat-template text ending with the assistant turn opener."""
    return processor.apply_chat_template(chat_messages(row), tokenize=False, add_generation_prompt=True)


def processor_inputs(processor, rows: list[dict], texts: list[str] | None = None):
    """Tokenised inputs (input_ids, attention_mask, pixel_values, image_grid_thw) for rows.

    `texts` overrides the rendered prompt (e.g. prompt + response for scoring).
    """
    texts = texts if texts is not None else [render_prompt(processor, r) for r in rows]
    images = [decode_image(r) for r in rows]
    if any(i is None for i in images) and not all(i is None for i in images):
        raise ValueError("a batch must be all image rows or all text-only rows")
    kwargs = {"text": texts, "return_tensors": "pt", "padding": True}
    if images and images[0] is not None:
        kwargs["images"] = images
    return processor(**kwargs)


def encode_example(processor, row: dict, target: str) -> tuple[list[int], list[int]]:
    """(prompt ids with the image's vision tokens, target ids + <|im_end|>) for teacher forcing."""
    from spark_core.model.token_ids import TokenIds

    prompt_ids = processor_inputs(processor, [row])["input_ids"][0].tolist()
    target_ids = processor.tokenizer.encode(target, add_special_tokens=False) + [TokenIds.from_tokenizer(processor).im_end]
    return prompt_ids, target_ids
