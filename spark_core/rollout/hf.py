"""Rollouts with transformers `generate` (CPU, tests, small GPUs)."""

from __future__ import annotations

import contextlib

import torch
from tqdm.auto import tqdm

from spark_core.config import ModelConfig
from spark_core.model.loading import load_model, load_processor
from spark_core.model.logprobs import build_batch, gather_response, response_logprobs
from spark_core.model.prompting import processor_inputs
from spark_core.model.token_ids import TokenIds, check_agree
from spark_core.rollout.base import Sample, SamplingSpec, sampling_knobs


def generation_config(spec: SamplingSpec, ids: TokenIds):
    """A complete transformers GenerationConfig for `spec`: every knob set, none inherited.

    transformers fills each knob left unset (None) from the model's own generation_config,
    so every knob that could change the distribution is given a value here.
    """
    from transformers import GenerationConfig

    k = sampling_knobs(spec, ids)
    # start from transformers' own neutral value of every knob, then set ours
    defaults = getattr(GenerationConfig, "_get_default_generation_params", dict)
    values = {k: v for k, v in defaults().items() if k not in ("max_length", "min_length")}  # *_new_tokens rule
    values.update(
        max_new_tokens=k["max_new_tokens"], min_new_tokens=k["min_new_tokens"], do_sample=not k["greedy"],
        temperature=k["temperature"], top_p=k["top_p"], min_p=None,  # None = off in transformers
        top_k=None if k["greedy"] else k["top_k"],  # greedy takes the argmax; top-k is unused (and warned about)
        typical_p=1.0, epsilon_cutoff=0.0, eta_cutoff=0.0, repetition_penalty=k["repetition_penalty"],
        no_repeat_ngram_size=0, bad_words_ids=None, suppress_tokens=k["never_sample_ids"], begin_suppress_tokens=None,
        num_beams=1, num_return_sequences=spec.n, eos_token_id=k["stop_ids"], pad_token_id=ids.pad,
        forced_bos_token_id=None, forced_eos_token_id=None, renormalize_logits=False, guidance_scale=None,
        sequence_bias=None, watermarking_config=None, output_scores=False, return_dict_in_generate=False,
    )
    return GenerationConfig(**values)


class NucleusFilter:
    """Top-p (nucleus) filtering that finds the nucleus with `topk` instead of a sort.

    transformers' TopPLogitsWarper sorts every row's whole 152k-entry vocabulary at every
    decoding step, which on CPU costs about as much as the tiny model's forward pass. The
    nucleus is the same set: the tokens, most likely first, whose likelier tokens hold
    less than `top_p` of the mass (the likeliest is always kept). It is read off each
    row's `k` likeliest tokens; a row whose `k` likeliest hold less than `top_p` goes
    through transformers' own TopPLogitsWarper, so only float rounding at the nucleus edge
    can differ.

    It runs among the custom processors, before transformers' temperature warper, so it
    applies the temperature itself when choosing the nucleus (masked logits stay -inf
    after the warper divides them)."""

    def __init__(self, top_p: float, temperature: float = 1.0, k: int = 256):
        if not 0.0 < float(top_p) <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        self.top_p, self.temperature, self.k = float(top_p), float(temperature), int(k)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        scaled = scores.float() / self.temperature
        probs = torch.softmax(scaled, dim=-1)
        vals, idx = probs.topk(min(self.k, probs.shape[-1]), dim=-1)  # descending
        keep = torch.zeros_like(probs, dtype=torch.bool).scatter_(-1, idx, (vals.cumsum(-1) - vals) < self.top_p)
        wide = vals.sum(-1) < self.top_p  # rows whose nucleus holds more than k tokens
        if bool(wide.any()):
            from transformers import TopPLogitsWarper

            rows = None if input_ids is None else input_ids[wide]
            keep[wide] = ~torch.isinf(TopPLogitsWarper(self.top_p)(rows, scaled[wide]))
        return scores.masked_fill(~keep, float("-inf"))


@contextlib.contextmanager
def _no_checkpoint_generation_defaults(model):
    """Hide the checkpoint's generation_config while generating, so none of its values
    (repetition_penalty, top_k, ...) can fill a knob; restored afterwards."""
    from transformers import GenerationConfig

    saved = model.generation_config
    model.generation_config = GenerationConfig()
    try:
        yield
    finally:
        model.generation_config = saved


class HFBackend:
    # how top_p < 1 is applied: a callable (top_p, temperature) -> logits processor
    top_p_filter = NucleusFilter

    def __init__(self, model_dir: str, cfg: ModelConfig, device: str | None = None, prompts_per_chunk: int = 8,
                 model=None, processor=None):
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.cfg = cfg
        self.processor = processor or load_processor(model_dir, cfg)
        self.model = model or load_model(model_dir, cfg, device=self.device)
        self.model.eval()
        self.ids = check_agree(self.processor, self.model.config)
        self.prompts_per_chunk = prompts_per_chunk

    @torch.no_grad()
    def generate(self, prompts: list[dict], spec: SamplingSpec, desc: str = "rollout") -> list[Sample]:
        torch.manual_seed(spec.seed)
        samples: list[Sample] = []
        chunks = [prompts[i : i + self.prompts_per_chunk] for i in range(0, len(prompts), self.prompts_per_chunk)]
        for chunk in tqdm(chunks, desc=desc, unit="chunk", disable=len(chunks) < 2):
            samples.extend(self._generate_chunk(chunk, spec))
        return samples

    def _generate_chunk(self, rows: list[dict], spec: SamplingSpec) -> list[Sample]:
        tok = self.processor.tokenizer
        tok.padding_side = "left"
        inputs = processor_inputs(self.processor, rows).to(self.device)
        gen = generation_config(spec, self.ids)
        extra = []
        if gen.do_sample and gen.top_p is not None and gen.top_p < 1.0:
            # the same nucleus without sorting the vocabulary at every step
            extra.append(self.top_p_filter(gen.top_p, gen.temperature))
            gen.top_p = 1.0
        with _no_checkpoint_generation_defaults(self.model):
            out = self.model.generate(**inputs, generation_config=gen, logits_processor=extra or None)
        P = inputs["input_ids"].shape[1]
        prompt_ids, response_ids, finish = [], [], []
        for j in range(out.shape[0]):
            i = j // spec.n
            mask = inputs["attention_mask"][i].bool()
            prompt_ids.append(inputs["input_ids"][i][mask].tolist())
            resp = out[j, P:].tolist()
            cut = next((k for k, t in enumerate(resp) if t in self.ids.stops), None)
            if cut is None:
                finish.append("length")
            else:
                resp = resp[: cut + 1]  # keep the stop token: the policy learns to stop
                finish.append("stop")
            response_ids.append(resp)
        expanded_rows = [rows[j // spec.n] for j in range(out.shape[0])]
        batch = build_batch(self.processor, expanded_rows, prompt_ids, response_ids).to(self.device)
        logprobs = gather_response(response_logprobs(self.model, batch).cpu(), batch.to("cpu"))
        texts = tok.batch_decode(response_ids, skip_special_tokens=True)
        return [
            Sample(prompt_id=expanded_rows[j]["prompt_id"], sample_index=j % spec.n, response=texts[j],
                   prompt_token_ids=prompt_ids[j], response_token_ids=response_ids[j], logprobs=logprobs[j],
                   finish_reason=finish[j])
            for j in range(out.shape[0])
        ]
