"""Rollouts with transformers `generate` (CPU, tests, small GPUs)."""

from __future__ import annotations

import contextlib

import torch
from tqdm.auto import tqdm

from spark_core.config import ModelConfig
from spark_core.model.loading import load_model, load_processor
from spark_core.model.logprobs import build_batch, gather_response, response_logprobs
from spark_core.model.prompting import processor_inputs
from spark_core.model.tokenizer import SPECIAL_IDS
from spark_core.rollout.base import Sample, SamplingSpec, sampling_knobs

STOP_IDS = (SPECIAL_IDS["<|im_end|>"], SPECIAL_IDS["<|endoftext|>"])


def generation_config(spec: SamplingSpec):
    """A complete transformers GenerationConfig for `spec`: every knob set, none inherited.

    transformers fills each knob left unset (None) from the model's own generation_config,
    so every knob that could change the distribution is given a value here.
    """
    from transformers import GenerationConfig

    k = sampling_knobs(spec)
    # start from transformers' own neutral value of every knob, then set ours
    defaults = getattr(GenerationConfig, "_get_default_generation_params", dict)
    values = {k: v for k, v in defaults().items() if k not in ("max_length", "min_length")}  # *_new_tokens rule
    values.update(
        max_new_tokens=k["max_new_tokens"], min_new_tokens=k["min_new_tokens"], do_sample=not k["greedy"],
        temperature=k["temperature"], top_p=k["top_p"], min_p=None,  # None = off in transformers
        top_k=None if k["greedy"] else k["top_k"],  # greedy takes the argmax; top-k is unused (and warned about)
        typical_p=1.0, epsilon_cutoff=0.0, eta_cutoff=0.0, repetition_penalty=k["repetition_penalty"],
        no_repeat_ngram_size=0, bad_words_ids=None, suppress_tokens=k["never_sample_ids"], begin_suppress_tokens=None,
        num_beams=1, num_return_sequences=spec.n, eos_token_id=list(STOP_IDS), pad_token_id=STOP_IDS[1],
        forced_bos_token_id=None, forced_eos_token_id=None, renormalize_logits=False, guidance_scale=None,
        sequence_bias=None, watermarking_config=None, output_scores=False, return_dict_in_generate=False,
    )
    return GenerationConfig(**values)


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
    def __init__(self, model_dir: str, cfg: ModelConfig, device: str | None = None, prompts_per_chunk: int = 8,
                 model=None, processor=None):
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.cfg = cfg
        self.processor = processor or load_processor(model_dir, cfg)
        self.model = model or load_model(model_dir, cfg, device=self.device)
        self.model.eval()
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
        with _no_checkpoint_generation_defaults(self.model):
            out = self.model.generate(**inputs, generation_config=generation_config(spec))
        P = inputs["input_ids"].shape[1]
        prompt_ids, response_ids, finish = [], [], []
        for j in range(out.shape[0]):
            i = j // spec.n
            mask = inputs["attention_mask"][i].bool()
            prompt_ids.append(inputs["input_ids"][i][mask].tolist())
            resp = out[j, P:].tolist()
            cut = next((k for k, t in enumerate(resp) if t in STOP_IDS), None)
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
