"""Rollouts with transformers `generate` (CPU, tests, small GPUs)."""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from spark_core.config import ModelConfig
from spark_core.model.loading import load_model, load_processor
from spark_core.model.logprobs import build_batch, gather_response, response_logprobs
from spark_core.model.prompting import processor_inputs
from spark_core.model.tokenizer import SPECIAL_IDS
from spark_core.rollout.base import Sample, SamplingSpec

STOP_IDS = (SPECIAL_IDS["<|im_end|>"], SPECIAL_IDS["<|endoftext|>"])


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
        gen_kwargs = dict(max_new_tokens=spec.max_new_tokens, num_return_sequences=spec.n,
                          eos_token_id=list(STOP_IDS), pad_token_id=STOP_IDS[1])
        if spec.greedy:
            gen_kwargs.update(do_sample=False)
        else:
            gen_kwargs.update(do_sample=True, temperature=spec.temperature, top_p=spec.top_p, top_k=0)
        out = self.model.generate(**inputs, **gen_kwargs)
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
