"""The vLLM rollout backend: request building, arguments and output conversion without a GPU,
plus one real run on the tiny model where a GPU and vLLM are present."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
from types import SimpleNamespace

import pytest
from PIL import Image

from spark_core import schemas
from spark_core.config import ANSWER_SUFFIX, ModelConfig
from spark_core.data import generate
from spark_core.model.loading import load_processor, pixel_limits
from spark_core.model.prompting import decode_image, render_prompt
from spark_core.model.token_ids import TokenIds
from spark_core.rollout.base import NEVER_SAMPLE_TOKENS, SamplingSpec, sampling_knobs
from spark_core.rollout.hf import generation_config
from spark_core.rollout.vllm_backend import (
    build_requests,
    engine_kwargs,
    request_seed,
    samples_from_outputs,
    sampling_kwargs,
)

HAS_VLLM = importlib.util.find_spec("vllm") is not None
IMAGE_PAD = "<|image_pad|>"
# made-up ids, neither Qwen's nor the compact vocabulary's: the output conversion and the
# sampling arguments take every id from the checkpoint's TokenIds
IDS = TokenIds(image=905, video=906, vision_start=903, vision_end=904, im_end=902, endoftext=900, pad=900)
IM_END_ID, STOP_IDS = IDS.im_end, IDS.stops


@pytest.fixture(scope="module")
def processor(tiny_dir):
    return load_processor(tiny_dir, ModelConfig())


@pytest.fixture(scope="module")
def rows():
    return generate(3, seed=0)


def text_row(pid: str = "txt-0") -> dict:
    q = "What is 2 + 3?"
    return {"prompt_id": pid, "kind": schemas.KIND_SOLVE,
            "message": schemas.message_json(q + "\n" + ANSWER_SUFFIX, has_image=False), "question": q,
            "answer": "5", "image": None, "source": "test", "template_id": "", "source_prompt_id": "",
            "source_rollout_id": ""}


# ---- build_requests -------------------------------------------------------


def test_build_requests_image_rows(processor, rows):
    reqs = build_requests(processor, rows)
    assert len(reqs) == len(rows)
    for req, row in zip(reqs, rows):
        assert set(req) == {"prompt", "multi_modal_data"}
        assert req["prompt"] == render_prompt(processor, row)
        # one placeholder; vLLM expands it to the image's vision tokens
        assert req["prompt"].count(IMAGE_PAD) == 1
        assert req["prompt"].endswith("<|im_start|>assistant\n")
        img = req["multi_modal_data"]["image"]
        assert isinstance(img, Image.Image) and img.mode == "RGB"
        assert img.size == decode_image(row).size
        assert img.tobytes() == decode_image(row).tobytes()
        assert json.loads(row["message"])[0]["content"][-1]["text"].split("\n")[0] in req["prompt"]


def test_build_requests_text_only_row(processor, rows):
    reqs = build_requests(processor, [text_row(), rows[0]])
    assert set(reqs[0]) == {"prompt"}
    assert IMAGE_PAD not in reqs[0]["prompt"]
    assert "What is 2 + 3?" in reqs[0]["prompt"]
    assert "multi_modal_data" in reqs[1]


def test_build_requests_empty(processor):
    assert build_requests(processor, []) == []


# ---- sampling_kwargs ------------------------------------------------------


def test_sampling_kwargs_sampling():
    kw = sampling_kwargs(SamplingSpec(n=8, temperature=0.9, top_p=0.95, max_new_tokens=64, seed=7), IDS)
    assert kw["n"] == 8
    assert kw["temperature"] == 0.9 and kw["top_p"] == 0.95
    assert kw["top_k"] == 0  # disabled
    assert kw["max_tokens"] == 64 and kw["seed"] == 7
    assert kw["logprobs"] == 0  # sampled token's log-prob only
    assert kw["stop_token_ids"] == [902, 900]
    assert kw["skip_special_tokens"] is True and kw["detokenize"] is True


def test_sampling_kwargs_greedy():
    kw = sampling_kwargs(SamplingSpec(n=2, temperature=0.0, top_p=0.5, max_new_tokens=4), IDS)
    assert kw["temperature"] == 0.0 and kw["top_p"] == 1.0 and kw["top_k"] == 0


# every SamplingParams field that changes which token is drawn (vLLM 0.32), all named
SAMPLING_KNOBS = {"n", "temperature", "top_p", "top_k", "min_p", "repetition_penalty", "presence_penalty",
                  "frequency_penalty", "max_tokens", "min_tokens", "seed", "stop", "stop_token_ids", "ignore_eos",
                  "bad_words", "logit_bias", "allowed_token_ids"}


@pytest.mark.parametrize("spec", [SamplingSpec(n=8, temperature=1.0, max_new_tokens=16, seed=1),
                                  SamplingSpec(n=4, temperature=0.7, top_p=0.9, max_new_tokens=9),
                                  SamplingSpec(n=1, temperature=0.0, max_new_tokens=5)])
def test_sampling_kwargs_name_every_knob_like_the_hf_backend(spec):
    kw = sampling_kwargs(spec, IDS)
    assert SAMPLING_KNOBS <= set(kw)
    g = generation_config(spec, IDS)  # the hf backend's full config for the same spec
    k = sampling_knobs(spec, IDS)
    assert kw["max_tokens"] == g.max_new_tokens and kw["min_tokens"] == g.min_new_tokens == 0
    assert kw["repetition_penalty"] == g.repetition_penalty == 1.0
    assert kw["presence_penalty"] == kw["frequency_penalty"] == 0.0 and kw["min_p"] == 0.0
    assert kw["stop_token_ids"] == g.eos_token_id and kw["stop"] == [] and kw["ignore_eos"] is False
    assert kw["logit_bias"] is None and kw["allowed_token_ids"] is None
    if spec.greedy:
        assert kw["temperature"] == 0.0 and g.do_sample is False
    else:
        assert (kw["temperature"], kw["top_p"], kw["top_k"]) == (g.temperature, g.top_p, g.top_k) \
            == (k["temperature"], k["top_p"], 0)
    assert kw["bad_words"] == list(NEVER_SAMPLE_TOKENS)


def test_bad_words_are_the_suppressed_ids(processor):
    # vLLM tokenises each bad word without special tokens added; a single id is masked to -inf
    tok = processor.tokenizer
    real = TokenIds.from_tokenizer(processor)
    ids = [tok.encode(w, add_special_tokens=False) for w in sampling_kwargs(SamplingSpec(), real)["bad_words"]]
    assert ids == [[i] for i in real.never_sample]
    assert generation_config(SamplingSpec(), real).suppress_tokens == list(real.never_sample)
    assert IMAGE_PAD in NEVER_SAMPLE_TOKENS and "<|video_pad|>" in NEVER_SAMPLE_TOKENS


@pytest.mark.skipif(not HAS_VLLM, reason="vllm not installed")
def test_sampling_kwargs_accepted_by_vllm():
    from vllm import SamplingParams

    p = SamplingParams(**sampling_kwargs(SamplingSpec(n=4, temperature=1.0, max_new_tokens=16, seed=3), IDS))
    assert p.n == 4 and p.logprobs == 0 and p.top_k == 0


def test_request_seed_per_prompt():
    assert request_seed(0, "a") == request_seed(0, "a")
    assert len({request_seed(0, f"p{i}") for i in range(100)}) == 100
    assert request_seed(0, "a") != request_seed(1, "a")
    assert all(0 <= request_seed(s, "x") < 2**30 for s in range(20))


# ---- engine_kwargs --------------------------------------------------------


def test_engine_kwargs(tiny_dir, processor):
    cfg = ModelConfig()
    kw = engine_kwargs(tiny_dir, cfg, 2, 0.7, seed=5, processor=processor)
    lo, hi = pixel_limits(load_processor(tiny_dir, cfg).image_processor)
    assert kw["mm_processor_kwargs"] == {"min_pixels": lo, "max_pixels": hi, "use_fast": False}
    assert (lo, hi) == (cfg.min_pixels, cfg.max_pixels)
    assert kw["generation_config"] == "vllm"  # the checkpoint's generation_config.json is not read
    assert kw["model"] == tiny_dir and kw["tokenizer"] == tiny_dir
    assert kw["trust_remote_code"] is False
    assert kw["dtype"] == cfg.dtype
    assert kw["limit_mm_per_prompt"] == {"image": 1}
    assert kw["enable_prefix_caching"] is True
    assert kw["seed"] == 5 and kw["tensor_parallel_size"] == 2 and kw["gpu_memory_utilization"] == 0.7
    assert kw["logprobs_mode"] == "raw_logprobs"
    assert "max_model_len" not in kw
    assert engine_kwargs(tiny_dir, cfg, 1, 0.5, max_model_len=2048, processor=processor)["max_model_len"] == 2048


def test_engine_kwargs_follow_configured_pixel_limits(tiny_dir):
    cfg = ModelConfig(min_pixels=8 * 28 * 28, max_pixels=32 * 28 * 28, trust_remote_code=True, dtype="bfloat16")
    kw = engine_kwargs(tiny_dir, cfg, 1, 0.5)  # loads the processor itself
    lo, hi = pixel_limits(load_processor(tiny_dir, cfg).image_processor)
    assert kw["mm_processor_kwargs"] == {"min_pixels": lo, "max_pixels": hi, "use_fast": False} == {
        "min_pixels": 8 * 28 * 28, "max_pixels": 32 * 28 * 28, "use_fast": False}
    assert kw["trust_remote_code"] is True and kw["dtype"] == "bfloat16"


def test_engine_image_processor_matches_the_trainers(tiny_dir, processor, rows):
    # vLLM builds the checkpoint's processor with `mm_processor_kwargs` (use_fast defaults to
    # True there); built the same way here, it must be the trainer's class and give its pixels
    import torch
    from transformers import AutoImageProcessor

    cfg = ModelConfig(min_pixels=8 * 28 * 28, max_pixels=24 * 28 * 28)
    trainer = load_processor(tiny_dir, cfg).image_processor
    kw = engine_kwargs(tiny_dir, cfg, processor=load_processor(tiny_dir, cfg))["mm_processor_kwargs"]
    engine = AutoImageProcessor.from_pretrained(tiny_dir, **kw)
    assert type(engine) is type(trainer)
    images = [decode_image(r) for r in rows] + [Image.new("RGB", (300, 90), (10, 200, 30))]
    a, b = engine(images=images, return_tensors="pt"), trainer(images=images, return_tensors="pt")
    assert torch.equal(a["image_grid_thw"], b["image_grid_thw"])
    assert torch.equal(a["pixel_values"], b["pixel_values"])
    assert a["image_grid_thw"][-1].prod() * 28 * 28 // 4 <= 24 * 28 * 28  # the limit is applied


@pytest.mark.skipif(not HAS_VLLM, reason="vllm not installed")
def test_engine_kwargs_are_engine_args(tiny_dir, processor):
    from vllm.engine.arg_utils import EngineArgs

    names = {f.name for f in dataclasses.fields(EngineArgs)}
    assert set(engine_kwargs(tiny_dir, ModelConfig(), processor=processor)) <= names


# ---- samples_from_outputs -------------------------------------------------


def lp(token_ids, values):
    return [{t: SimpleNamespace(logprob=v)} for t, v in zip(token_ids, values)]


def completion(index, token_ids, values, finish, text="", stop_reason=None, logprobs=None):
    return SimpleNamespace(index=index, token_ids=token_ids, text=text, finish_reason=finish,
                           stop_reason=stop_reason,
                           logprobs=logprobs if logprobs is not None else lp(token_ids, values))


def test_samples_from_outputs_prompt_major():
    rows = [{"prompt_id": "p0"}, {"prompt_id": "p1"}]
    spec = SamplingSpec(n=2, max_new_tokens=3)
    outputs = [
        SimpleNamespace(prompt_token_ids=[1, 2, 3], outputs=[
            # listed out of order: sample_index follows `index`
            completion(1, [40, 41, 42], [-0.5, -0.6, -0.7], "length", text="abc"),
            completion(0, [10, IM_END_ID], [-0.1, -0.2], "stop", text="x"),
        ]),
        SimpleNamespace(prompt_token_ids=(4, 5), outputs=[
            completion(0, [7, 8, 9], [-1.0, -1.1, -1.2], "length", text="789"),
            completion(1, [IDS.endoftext], [-3.0], "stop", text=""),
        ]),
    ]
    samples = samples_from_outputs(rows, outputs, spec, IDS)
    assert [(s.prompt_id, s.sample_index) for s in samples] == [("p0", 0), ("p0", 1), ("p1", 0), ("p1", 1)]
    s0, s1, s2, s3 = samples
    assert s0.response_token_ids == [10, IM_END_ID] and s0.logprobs == [-0.1, -0.2]
    assert s0.finish_reason == "stop" and s0.response == "x" and s0.prompt_token_ids == [1, 2, 3]
    assert s1.response_token_ids == [40, 41, 42] and s1.logprobs == [-0.5, -0.6, -0.7]
    assert s1.finish_reason == "length" and s1.response == "abc"
    assert s2.prompt_token_ids == [4, 5] and s2.finish_reason == "length"
    assert s3.response_token_ids == [IDS.endoftext] and s3.finish_reason == "stop"
    for s in samples:
        assert len(s.logprobs) == len(s.response_token_ids)
        assert all(isinstance(t, int) for t in s.response_token_ids)


def test_samples_from_outputs_picks_sampled_token_among_alternatives():
    # with logprobs > 0 a position also holds top alternatives; the sampled token's value is used
    lps = [{5: SimpleNamespace(logprob=-2.0), 6: SimpleNamespace(logprob=-0.1)},
           {IM_END_ID: SimpleNamespace(logprob=-0.3), 9: SimpleNamespace(logprob=-0.01)}]
    out = SimpleNamespace(prompt_token_ids=[1], outputs=[completion(0, [5, IM_END_ID], None, "stop", logprobs=lps)])
    (s,) = samples_from_outputs([{"prompt_id": "p"}], [out], SamplingSpec(n=1), IDS)
    assert s.logprobs == [-2.0, -0.3]


def test_dropped_stop_token_restored_when_its_logprob_is_known():
    lps = lp([11, 12, IM_END_ID], [-0.1, -0.2, -0.05])  # a log-prob for the stop position too
    out = SimpleNamespace(prompt_token_ids=[1], outputs=[completion(0, [11, 12], None, "stop", logprobs=lps)])
    (s,) = samples_from_outputs([{"prompt_id": "p"}], [out], SamplingSpec(n=1), IDS)
    assert s.response_token_ids == [11, 12, IM_END_ID]
    assert s.logprobs == [-0.1, -0.2, -0.05]
    assert s.finish_reason == "stop"


def test_dropped_stop_token_uses_stop_reason():
    eot = IDS.endoftext
    lps = lp([11, eot], [-0.1, -0.4])
    out = SimpleNamespace(prompt_token_ids=[1],
                          outputs=[completion(0, [11], None, "stop", stop_reason=eot, logprobs=lps)])
    (s,) = samples_from_outputs([{"prompt_id": "p"}], [out], SamplingSpec(n=1), IDS)
    assert s.response_token_ids == [11, eot] and s.logprobs == [-0.1, -0.4]


def test_dropped_stop_token_without_logprob_is_not_invented():
    out = SimpleNamespace(prompt_token_ids=[1], outputs=[completion(0, [11, 12], [-0.1, -0.2], "stop")])
    (s,) = samples_from_outputs([{"prompt_id": "p"}], [out], SamplingSpec(n=1), IDS)
    assert s.response_token_ids == [11, 12] and s.logprobs == [-0.1, -0.2]
    assert s.finish_reason == "stop"


def test_length_finish_never_gets_a_stop_token():
    out = SimpleNamespace(prompt_token_ids=[1], outputs=[completion(0, [3, 4], [-1.0, -1.0], "length")])
    (s,) = samples_from_outputs([{"prompt_id": "p"}], [out], SamplingSpec(n=1, max_new_tokens=2), IDS)
    assert s.response_token_ids == [3, 4] and s.finish_reason == "length"
    assert not set(s.response_token_ids) & set(STOP_IDS)


def test_samples_from_outputs_rejects_bad_outputs():
    spec = SamplingSpec(n=2)
    ok = completion(0, [1], [-0.1], "stop")
    with pytest.raises(ValueError, match="outputs for"):
        samples_from_outputs([{"prompt_id": "p"}], [], spec, IDS)
    with pytest.raises(ValueError, match="completions"):
        samples_from_outputs([{"prompt_id": "p"}], [SimpleNamespace(prompt_token_ids=[1], outputs=[ok])], spec, IDS)
    missing = completion(0, [1, 2], None, "length", logprobs=lp([1, 99], [-0.1, -0.2]))
    with pytest.raises(ValueError, match="sampled token"):
        samples_from_outputs([{"prompt_id": "p"}], [SimpleNamespace(prompt_token_ids=[1], outputs=[missing])],
                             SamplingSpec(n=1), IDS)
    none = completion(0, [1], [-0.1], "length")
    none.logprobs = None
    with pytest.raises(ValueError, match="no logprobs"):
        samples_from_outputs([{"prompt_id": "p"}], [SimpleNamespace(prompt_token_ids=[1], outputs=[none])],
                             SamplingSpec(n=1), IDS)
    aborted = completion(0, [1], [-0.1], "abort")
    with pytest.raises(RuntimeError, match="abort"):
        samples_from_outputs([{"prompt_id": "p"}], [SimpleNamespace(prompt_token_ids=[1], outputs=[aborted])],
                             SamplingSpec(n=1), IDS)


# ---- the backend itself ---------------------------------------------------


def test_module_imports_without_vllm():
    import spark_core.rollout.vllm_backend as vb

    assert hasattr(vb, "VLLMBackend")


@pytest.mark.skipif(HAS_VLLM, reason="checks the message when vllm is missing")
def test_backend_needs_vllm(tiny_dir, monkeypatch):
    from spark_core.rollout.vllm_backend import VLLMBackend

    monkeypatch.delenv("VLLM_WORKER_MULTIPROC_METHOD", raising=False)
    with pytest.raises(ImportError):
        VLLMBackend(tiny_dir, ModelConfig())
    assert os.environ["VLLM_WORKER_MULTIPROC_METHOD"] == "spawn"


def _gpu_ready() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available() and HAS_VLLM


@pytest.mark.gpu
@pytest.mark.skipif(not _gpu_ready(), reason="needs a CUDA GPU and vllm")
def test_vllm_backend_on_tiny_model(tiny_dir, rows):
    import torch

    from spark_core.model.loading import load_model
    from spark_core.model.logprobs import build_batch, gather_response, response_logprobs
    from spark_core.rollout.vllm_backend import VLLMBackend

    cfg = ModelConfig()
    backend = VLLMBackend(tiny_dir, cfg, gpu_memory_utilization=0.3, seed=0)
    spec = SamplingSpec(n=2, temperature=1.0, max_new_tokens=8, seed=1)
    samples = backend.generate(rows[:2], spec)
    assert [(s.prompt_id, s.sample_index) for s in samples] == [
        (rows[0]["prompt_id"], 0), (rows[0]["prompt_id"], 1), (rows[1]["prompt_id"], 0), (rows[1]["prompt_id"], 1)]
    for s in samples:
        assert 1 <= len(s.response_token_ids) <= 8
        assert len(s.logprobs) == len(s.response_token_ids)
        assert s.finish_reason in ("stop", "length")
        if s.finish_reason == "stop":
            assert s.response_token_ids[-1] in backend.ids.stops
    # same seed, same samples
    again = backend.generate(rows[:2], spec)
    assert [s.response_token_ids for s in again] == [s.response_token_ids for s in samples]

    # the trainer's recomputation agrees with vLLM: same vision tokens, same log-probs
    model = load_model(tiny_dir, cfg, device="cuda")
    expanded = [rows[i // spec.n] for i in range(len(samples))]
    batch = build_batch(backend.processor, expanded, [s.prompt_token_ids for s in samples],
                        [s.response_token_ids for s in samples]).to("cuda")
    with torch.no_grad():
        ref = gather_response(response_logprobs(model, batch).cpu(), batch.to("cpu"))
    for s, r in zip(samples, ref):
        assert s.logprobs == pytest.approx(r, abs=5e-2)


def test_make_backend_passes_engine_settings(monkeypatch):
    import spark_core.rollout.vllm_backend as vb
    from spark_core.config import RolloutConfig
    from spark_core.rollout.base import make_backend

    seen = {}

    class FakeBackend:
        def __init__(self, model_dir, cfg, **kwargs):
            seen.update(model_dir=model_dir, cfg=cfg, kwargs=kwargs)

    monkeypatch.setattr(vb, "VLLMBackend", FakeBackend)
    cfg = ModelConfig()
    r = RolloutConfig(backend="vllm", tensor_parallel_size=2, gpu_memory_utilization=0.85)
    backend = make_backend("vllm", "/models/x", cfg, r)
    assert isinstance(backend, FakeBackend)
    assert seen["model_dir"] == "/models/x" and seen["cfg"] is cfg
    assert seen["kwargs"] == {"tensor_parallel_size": 2, "gpu_memory_utilization": 0.85}
    make_backend("vllm", "/models/x", cfg)  # without a RolloutConfig: the backend's defaults
    assert seen["kwargs"] == {}
