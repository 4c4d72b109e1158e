"""Per-token log-probabilities of responses: one implementation for rollout and update.

Only response positions go through the LM head, so memory grows with the number of
response tokens, not with prompt length times the vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from spark_core.model.prompting import decode_image
from spark_core.model.token_ids import TokenIds


@dataclass
class SequenceBatch:
    input_ids: torch.Tensor  # [B, L], right padded
    attention_mask: torch.Tensor  # [B, L]
    response_mask: torch.Tensor  # [B, L] 1 where input_ids[t] is a response token
    pixel_values: torch.Tensor | None
    image_grid_thw: torch.Tensor | None
    ids: TokenIds  # the checkpoint's image/video placeholder and pad ids

    def model_inputs(self, embed_tokens=None) -> dict:
        """Keyword arguments for the Qwen2.5-VL forward.

        Vision placeholder ids count as image/video slots only at prompt positions. A
        response that holds one (sampled by a backend that did not forbid it) keeps its
        token as text: the model is given the token's own embedding (`embed_tokens`, the
        input embedding module) and, in `input_ids`, a pad id in its place, so the model
        neither looks for image features for it nor miscounts the prompt's image tokens.
        Without `embed_tokens` such a position is embedded as the pad token.
        """
        prompt = self.response_mask == 0
        image, video = self.input_ids == self.ids.image, self.input_ids == self.ids.video
        mm = (image & prompt).int() + 2 * (video & prompt).int()
        d = {"input_ids": self.input_ids, "attention_mask": self.attention_mask, "mm_token_type_ids": mm}
        stray = (image | video) & ~prompt
        if bool(stray.any()):
            if embed_tokens is not None:
                d["inputs_embeds"] = embed_tokens(self.input_ids)
            d["input_ids"] = self.input_ids.masked_fill(stray, self.ids.pad)
        if self.pixel_values is not None:
            d["pixel_values"] = self.pixel_values
            d["image_grid_thw"] = self.image_grid_thw
        return d

    def forward_inputs(self) -> dict:
        """Keyword arguments of `ResponseLogprobs.forward` (tensors only, for DeepSpeed)."""
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask,
                "response_mask": self.response_mask, "pixel_values": self.pixel_values,
                "image_grid_thw": self.image_grid_thw}

    def to(self, device) -> "SequenceBatch":
        mv = lambda t: None if t is None else t.to(device)  # noqa: E731
        return SequenceBatch(mv(self.input_ids), mv(self.attention_mask), mv(self.response_mask),
                             mv(self.pixel_values), mv(self.image_grid_thw), self.ids)


def build_batch(processor, prompt_rows: list[dict], prompt_ids: list[list[int]],
                response_ids: list[list[int]]) -> SequenceBatch:
    """Prompt + response token ids, right padded, with each prompt row's image.

    `prompt_ids` already contain the expanded image tokens (as produced by the
    processor at rollout time), so only pixel values need recomputing here.
    """
    assert len(prompt_rows) == len(prompt_ids) == len(response_ids)
    ids = TokenIds.from_tokenizer(processor)
    seqs = [list(p) + list(r) for p, r in zip(prompt_ids, response_ids)]
    L = max(len(s) for s in seqs)
    B = len(seqs)
    input_ids = torch.full((B, L), ids.pad, dtype=torch.long)
    attn = torch.zeros((B, L), dtype=torch.long)
    resp = torch.zeros((B, L), dtype=torch.long)
    for i, (p, s) in enumerate(zip(prompt_ids, seqs)):
        input_ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        attn[i, : len(s)] = 1
        resp[i, len(p) : len(s)] = 1
    images = [decode_image(r) for r in prompt_rows]
    images = [im for im in images if im is not None]
    pixel_values = grid = None
    if images:
        out = processor.image_processor(images=images, return_tensors="pt")
        pixel_values, grid = out["pixel_values"], out["image_grid_thw"]
        expected = int(grid.prod(-1).sum() // (processor.image_processor.merge_size**2))
        found = int(((input_ids == ids.image) & (resp == 0)).sum())  # prompt positions only
        if expected != found:
            raise ValueError(
                f"prompt token ids hold {found} image tokens but the images need {expected}: "
                "rollout and trainer processors disagree on pixel limits"
            )
    return SequenceBatch(input_ids, attn, resp, pixel_values, grid, ids)


def _targets(batch: SequenceBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """(mask over positions t-1 whose next token is a response token, those tokens)."""
    target_mask = batch.response_mask[:, 1:].bool()
    return target_mask, batch.input_ids[:, 1:][target_mask]


def fp32_logits(h: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """LM-head logits computed in float32 from (possibly bf16) hidden states and weight.

    In bf16 a logit of ~20 is only resolved to ~0.06, which becomes an error of that
    size in every log-prob and in the PPO ratio; the matmul on the selected rows in
    fp32 costs little since only response positions go through it."""
    return torch.nn.functional.linear(h.float(), weight.float())


def _logprobs_from_hidden(hidden: torch.Tensor, head, batch: SequenceBatch, temperature: float) -> torch.Tensor:
    target_mask, targets = _targets(batch)
    logits = head(hidden[:, :-1][target_mask])  # [N, V] float32
    if temperature != 1.0:
        logits = logits / temperature
    # log p = logit - logsumexp: no second [N, V] tensor for log_softmax's output
    lp = logits.gather(-1, targets[:, None]).squeeze(-1) - torch.logsumexp(logits, dim=-1)
    out = torch.zeros(batch.input_ids.shape, dtype=lp.dtype, device=lp.device)
    full_mask = torch.zeros_like(batch.response_mask, dtype=torch.bool)
    full_mask[:, 1:] = target_mask
    out[full_mask] = lp
    return out


def response_logprobs(model, batch: SequenceBatch, temperature: float = 1.0) -> torch.Tensor:
    """Log-probs of response tokens of a Hugging Face Qwen2.5-VL, shape [B, L], float32
    (zeros outside `response_mask`). Position t's token is predicted from the hidden
    state at t-1. (The trainer runs the same computation through `ResponseLogprobs`.)"""
    if isinstance(model, ResponseLogprobs):
        return model(**batch.forward_inputs(), temperature=temperature)
    inner = model.model
    hidden = inner(**batch.model_inputs(inner.get_input_embeddings()), use_cache=False).last_hidden_state  # [B, L, H]
    return _logprobs_from_hidden(hidden, lambda h: fp32_logits(h, model.lm_head.weight), batch, temperature)


class _Fp32Head(torch.nn.Module):
    """The policy's LM head (the same Parameter, shared) applied in float32. As a module
    of its own, DeepSpeed ZeRO-3 gathers the weight for it like for any layer."""

    def __init__(self, lm_head: torch.nn.Linear):
        super().__init__()
        self.weight = lm_head.weight

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return fp32_logits(h, self.weight)


class ResponseLogprobs(torch.nn.Module):
    """A Qwen2.5-VL whose forward returns response log-probs.

    The trainer hands this module to deepspeed.initialize, so the whole forward (vision
    tower, decoder, LM head) runs through the engine: ZeRO-3 sees every submodule call
    and can prefetch the next layer's shards.

    packed: run the micro-batch padding-free, its sequences concatenated into one row
    (spark_core/model/packing.py); the inputs and the [B, L] output stay padded."""

    def __init__(self, policy: torch.nn.Module, packed: bool = False):
        super().__init__()
        self.policy = policy
        self.head = _Fp32Head(policy.lm_head)
        self.ids = TokenIds.from_model_config(policy.config)
        self.packed = packed
        if packed:
            from spark_core.model.packing import check_packed_attention

            check_packed_attention(getattr(policy.config, "_attn_implementation", None))

    def forward(self, input_ids, attention_mask, response_mask, pixel_values=None, image_grid_thw=None,
                temperature: float = 1.0) -> torch.Tensor:
        batch = SequenceBatch(input_ids, attention_mask, response_mask, pixel_values, image_grid_thw, self.ids)
        inner = self.policy.model
        if self.packed:
            from spark_core.model.packing import pack, unpack

            kwargs, flat = pack(batch, inner)
            hidden = inner(**kwargs, use_cache=False).last_hidden_state  # [1, T, H]
            return unpack(_logprobs_from_hidden(hidden, self.head, flat, temperature), batch)
        hidden = inner(**batch.model_inputs(inner.get_input_embeddings()), use_cache=False).last_hidden_state
        return _logprobs_from_hidden(hidden, self.head, batch, temperature)


def gather_response(values: torch.Tensor, batch: SequenceBatch) -> list[list[float]]:
    """Per-sample lists of the response-position values (inverse of scatter by mask)."""
    out = []
    for i in range(values.shape[0]):
        m = batch.response_mask[i].bool()
        out.append(values[i][m].tolist())
    return out
