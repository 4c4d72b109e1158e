"""The tiny model is a real Qwen2.5-VL (compact vocabulary by default, Qwen's one setting
away), and checkpoints round-trip."""

from __future__ import annotations

import json
import os

import pytest
import torch

from spark_core.config import ModelConfig
from spark_core.data import generate
from spark_core.model.loading import CheckpointError, load_model, load_processor, pixel_limits
from spark_core.model.logprobs import build_batch, response_logprobs
from spark_core.model.prompting import processor_inputs, render_prompt
from spark_core.model.token_ids import TokenIds
from spark_core.model.tokenizer import build_qwen_tokenizer


def test_qwen_vocabulary_matches_qwen2():
    tok = build_qwen_tokenizer()
    # ids of the released Qwen2/Qwen2.5 tokenizer
    assert tok.encode("Hello world", add_special_tokens=False) == [9707, 1879]
    assert tok.encode("123", add_special_tokens=False) == [16, 17, 18]  # digits split one by one
    for name, idx in {"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645,
                      "<|vision_start|>": 151652, "<|image_pad|>": 151655}.items():
        assert tok.convert_tokens_to_ids(name) == idx
    ids = TokenIds.from_tokenizer(tok)
    assert (ids.image, ids.im_end, ids.endoftext) == (151655, 151645, 151643)
    text = "A \\boxed{3} answer"
    assert tok.decode(tok.encode(text, add_special_tokens=False)) == text


def test_chat_template_is_qwen_format(tiny_dir):
    proc = load_processor(tiny_dir, ModelConfig())
    row = generate(1, seed=0)[0]
    text = render_prompt(proc, row)
    assert text.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                           "<|vision_start|><|image_pad|><|vision_end|>")
    assert text.endswith("<|im_end|>\n<|im_start|>assistant\n")
    inputs = processor_inputs(proc, [row])
    n_img = int((inputs["input_ids"] == TokenIds.from_tokenizer(proc).image).sum())
    assert n_img == int(inputs["image_grid_thw"].prod()) // 4  # 2x2 spatial merge


def test_checkpoint_reloads_with_plain_transformers(tiny_dir):
    from transformers import AutoConfig, Qwen2_5_VLForConditionalGeneration

    files = set(os.listdir(tiny_dir))
    assert {"config.json", "model.safetensors", "tokenizer.json", "preprocessor_config.json",
            "chat_template.jinja"} <= files
    assert not any(f.endswith((".bin", ".pt")) for f in files)
    from transformers import AutoTokenizer
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    cfg = AutoConfig.from_pretrained(tiny_dir)
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    # the compact vocabulary: embedding rows are the tokenizer's size rounded up to 64
    assert cfg.model_type == "qwen2_5_vl" and cfg.text_config.vocab_size == -(-len(tok) // 64) * 64 < 4096
    assert cfg.image_token_id == tok.convert_tokens_to_ids("<|image_pad|>")
    m = Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_dir, use_safetensors=True)
    assert sum(p.numel() for p in m.parameters()) > 100_000
    # the exported policy answers a chat prompt with no project code involved (the stock
    # processor's video half needs torchvision, so its two halves are used directly)
    from PIL import Image

    image = Qwen2VLImageProcessorPil.from_pretrained(tiny_dir)(images=[Image.new("RGB", (112, 112))], return_tensors="pt")
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "How many dots?"}]}]
    text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    text = text.replace("<|image_pad|>", "<|image_pad|>" * (int(image["image_grid_thw"].prod()) // 4))
    inputs = dict(tok([text], return_tensors="pt"), **image)
    out = m.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 3 or int(out[0, -1]) in m.generation_config.eos_token_id


def test_pickle_only_checkpoint_is_refused(tmp_path, tiny_dir):
    d = tmp_path / "m"
    d.mkdir()
    (d / "config.json").write_text(open(os.path.join(tiny_dir, "config.json")).read())
    (d / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(CheckpointError, match="safetensors"):
        load_model(str(d), ModelConfig())


def test_pixel_limits_come_from_config(tiny_dir):
    cfg = ModelConfig(min_pixels=8 * 28 * 28, max_pixels=32 * 28 * 28)
    assert pixel_limits(load_processor(tiny_dir, cfg).image_processor) == (8 * 28 * 28, 32 * 28 * 28)


def test_response_logprobs_match_full_forward(tiny_dir):
    cfg = ModelConfig()
    proc = load_processor(tiny_dir, cfg)
    model = load_model(tiny_dir, cfg)
    rows = generate(2, seed=3)
    inputs = processor_inputs(proc, rows[:1])
    prompt = inputs["input_ids"][0].tolist()
    resp = proc.tokenizer.encode("I count 3. \\boxed{3}", add_special_tokens=False)
    batch = build_batch(proc, rows[:1], [prompt], [resp])
    with torch.no_grad():
        lp = response_logprobs(model, batch)
        full = model(**batch.model_inputs()).logits.log_softmax(-1)
    P = len(prompt)
    expected = torch.stack([full[0, P - 1 + i, t] for i, t in enumerate(resp)])
    got = lp[0, P : P + len(resp)]
    assert torch.allclose(got, expected, atol=1e-4)
    assert batch.response_mask[0, :P].sum() == 0 and batch.response_mask[0].sum() == len(resp)


def test_processor_config_files_describe_stock_processor(tiny_dir):
    assert json.load(open(os.path.join(tiny_dir, "processor_config.json")))["processor_class"] == "Qwen2_5_VLProcessor"


def test_tiny_embedding_init_std_is_applied_and_stays_tied(tmp_path):
    # the wider start of the tied embedding/LM head is what lets the warm start learn
    # to condition on the prompt in tens of steps (benchmarks/learning_sweep.py)
    from transformers import Qwen2_5_VLForConditionalGeneration

    from spark_core.config import ModelConfig, TinyModelConfig
    from spark_core.model.tiny import build_tiny

    for std in (0.02, 0.1):
        cfg = ModelConfig(tiny=TinyModelConfig(embed_init_std=std))
        d = build_tiny(str(tmp_path / f"m{std}"), cfg)
        m = Qwen2_5_VLForConditionalGeneration.from_pretrained(d, use_safetensors=True)
        w = m.get_input_embeddings().weight
        assert abs(float(w.std()) - std) < 0.1 * std
        assert m.lm_head.weight.data_ptr() == w.data_ptr()


def test_tiny_fan_in_init_scales_every_layer_to_its_width(tmp_path):
    # Qwen's 0.02 is the right std for a 3584-wide layer; a 64-wide one needs ~1/8, or
    # each layer shrinks its input ~6x and the answer barely depends on the image
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    from spark_core.config import ModelConfig, TinyModelConfig
    from spark_core.model.tiny import build_tiny

    def load(init: str):
        d = build_tiny(str(tmp_path / init), ModelConfig(tiny=TinyModelConfig(weight_init=init)))
        return Qwen2_5_VLForConditionalGeneration.from_pretrained(d, use_safetensors=True)

    fan_in, config = load("fan_in"), load("config")
    layers = {n: m for n, m in fan_in.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv3d))
              and m is not fan_in.lm_head}
    assert any(".visual." in f".{n}" for n in layers) and any("language_model" in n for n in layers)
    for name, mod in layers.items():
        want = mod.weight[0].numel() ** -0.5
        assert abs(float(mod.weight.std()) - want) < 0.15 * want, (name, float(mod.weight.std()), want)
    q_fan, q_cfg = (dict(m.named_modules())["model.language_model.layers.0.self_attn.q_proj"] for m in (fan_in, config))
    assert abs(float(q_cfg.weight.std()) - 0.02) < 0.003  # the checkpoint config's initializer_range
    assert float(q_fan.weight.std()) > 5 * float(q_cfg.weight.std())
    w = fan_in.get_input_embeddings().weight
    assert abs(float(w.std()) - TinyModelConfig().embed_init_std) < 0.01
    assert fan_in.lm_head.weight.data_ptr() == w.data_ptr()
    with pytest.raises(ValueError, match="weight_init"):
        build_tiny(str(tmp_path / "bad"), ModelConfig(tiny=TinyModelConfig(weight_init="xavier")))
