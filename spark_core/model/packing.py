"""Padding-free forwards: the sequences of a micro-batch concatenated into one row.

A padded micro-batch of B sequences costs B x (longest length) tokens of attention and
MLP work; packed, it costs the sum of the real lengths. The row holds each sequence's
tokens in order, and the model is told where one ends and the next begins by the
positions alone (attention mask None):

- `position_ids` has four rows, as Qwen2.5-VL's text model reads a packed input: row 0
  the plain text positions, restarting at 0 for every sequence (transformers derives the
  block-diagonal causal mask from where they restart: a 4D mask on SDPA and eager, the
  cumulative sequence lengths of flash-attn's varlen kernel on flash_attention_2/3), rows
  1-3 the M-RoPE (temporal, height, width) positions each sequence would get alone
  (`get_rope_index` of the padded batch, padding dropped);
- the images keep their order: pixel values and grids are those of the padded batch, and
  the image placeholders appear in the row in the same order as in the padded rows, so
  the vision features land where they did.

A response token is predicted from the hidden state just before it, which is always a
token of the same sequence (every sequence starts with its prompt), so the log-probs of
the packed row, scattered back to the padded layout, are those of the padded forward.
"""

from __future__ import annotations

import torch

from spark_core.model.logprobs import SequenceBatch

# attention implementations whose masks transformers builds from packed position ids
PACKED_ATTENTION = ("sdpa", "eager", "flash_attention_2", "flash_attention_3")


def check_packed_attention(attn_implementation: str | None) -> None:
    """Refuse train.packed on an attention backend that would attend across sequences."""
    if attn_implementation not in PACKED_ATTENTION:
        raise ValueError(
            f"train.packed needs an attention implementation that keeps packed sequences apart "
            f"({', '.join(PACKED_ATTENTION)}); this model uses {attn_implementation!r}. "
            "Set model.attn_implementation to one of them or train.packed=false")


def pack(batch: SequenceBatch, inner: torch.nn.Module) -> tuple[dict, SequenceBatch]:
    """(keyword arguments of `inner`'s forward for the packed row, the packed batch).

    `inner` is the Qwen2.5-VL base model (`policy.model`): its `get_rope_index` gives
    the M-RoPE positions and its input embedding the embeddings of stray vision tokens
    (see `SequenceBatch.model_inputs`). The packed batch has shape [1, T], T the number
    of real tokens; `unpack` puts per-token values of it back in the padded layout."""
    rope_index = getattr(inner, "get_rope_index", None)
    if rope_index is None:
        raise ValueError(f"{type(inner).__name__} has no get_rope_index: packing is written for Qwen2.5-VL")
    keep = batch.attention_mask.bool()
    padded = batch.model_inputs()  # the padded rows' modality ids, for the M-RoPE positions
    mrope, _ = rope_index(padded["input_ids"], mm_token_type_ids=padded["mm_token_type_ids"],
                          image_grid_thw=batch.image_grid_thw, attention_mask=batch.attention_mask)
    text = batch.attention_mask.long().cumsum(-1) - 1  # 0.. per sequence (right padded)
    position_ids = torch.cat([text[None], mrope.to(text.device, text.dtype)])[:, keep][:, None]  # [4, 1, T]
    flat = SequenceBatch(batch.input_ids[keep][None], torch.ones_like(batch.input_ids[keep])[None],
                         batch.response_mask[keep][None], batch.pixel_values, batch.image_grid_thw, batch.ids)
    kwargs = flat.model_inputs(inner.get_input_embeddings())
    kwargs["attention_mask"] = None  # the sequences are told apart by position_ids[0]
    kwargs["position_ids"] = position_ids
    return kwargs, flat


def unpack(values: torch.Tensor, batch: SequenceBatch) -> torch.Tensor:
    """Per-token values of the packed row ([1, T]) in the padded layout of `batch` ([B, L],
    zeros at padding)."""
    keep = batch.attention_mask.bool()
    out = values.new_zeros(batch.input_ids.shape)
    out[keep] = values.reshape(-1)
    return out
