"""The embedded tiny Qwen2.5-VL: real architecture, processor and chat template, tiny
sizes, random init, and a vocabulary sized for its task (or Qwen's own, one setting away).

It exercises the same code paths as Qwen/Qwen2.5-VL-7B-Instruct (processor, chat
template, vision tokens, M-RoPE, safetensors checkpoints) in seconds on a CPU.
"""

from __future__ import annotations

from spark_core.config import ModelConfig, TinyModelConfig
from spark_core.model.loading import make_processor, save_checkpoint
from spark_core.model.token_ids import TokenIds
from spark_core.model.tokenizer import QWEN_PADDED_VOCAB_SIZE, VOCABS, build_compact_tokenizer, build_qwen_tokenizer


def tiny_tokenizer(t: TinyModelConfig):
    if t.vocab == "compact":
        return build_compact_tokenizer(vocab_size=t.vocab_size)
    if t.vocab == "qwen":
        return build_qwen_tokenizer()
    raise ValueError(f"model.tiny.vocab must be one of {VOCABS}, got {t.vocab!r}")


def embedding_rows(tokenizer, t: TinyModelConfig) -> int:
    """Rows of the embedding / LM head: the tokenizer's size rounded up to 64 (Qwen's own
    vocabulary keeps its real 152,064 rows)."""
    if t.vocab == "qwen":
        return QWEN_PADDED_VOCAB_SIZE
    return -(-len(tokenizer) // 64) * 64


def tiny_model_config(t: TinyModelConfig, tokenizer):
    from transformers import Qwen2_5_VLConfig

    ids = TokenIds.from_tokenizer(tokenizer)
    head_dim = t.hidden_size // t.num_attention_heads
    half = head_dim // 2
    # M-RoPE splits the rotary half-dimension into temporal/height/width sections.
    mrope = [half - 2 * (half * 3 // 8), half * 3 // 8, half * 3 // 8]
    text = dict(
        vocab_size=embedding_rows(tokenizer, t),
        hidden_size=t.hidden_size,
        intermediate_size=t.intermediate_size,
        num_hidden_layers=t.num_hidden_layers,
        num_attention_heads=t.num_attention_heads,
        num_key_value_heads=t.num_key_value_heads,
        max_position_embeddings=4096,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": mrope},
        bos_token_id=ids.endoftext,
        eos_token_id=ids.im_end,
        pad_token_id=ids.pad,
    )
    vision = dict(
        depth=t.vision_depth,
        hidden_size=t.vision_hidden_size,
        intermediate_size=t.vision_intermediate_size,
        num_heads=t.vision_num_heads,
        out_hidden_size=t.hidden_size,  # the merger feeds the language model: same width
        patch_size=14,
        spatial_merge_size=2,
        temporal_patch_size=2,
        window_size=112,
        fullatt_block_indexes=[t.vision_depth - 1],
    )
    return Qwen2_5_VLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=ids.image,
        video_token_id=ids.video,
        vision_start_token_id=ids.vision_start,
        vision_end_token_id=ids.vision_end,
        tie_word_embeddings=True,  # one matrix for embedding and LM head, as small Qwen models do
    )


def build_processor(tokenizer, cfg: ModelConfig):
    """A real Qwen2.5-VL processor; the PIL image processor needs no torchvision."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    image_processor = Qwen2VLImageProcessorPil(
        min_pixels=cfg.min_pixels, max_pixels=cfg.max_pixels, patch_size=14, merge_size=2, temporal_patch_size=2
    )
    return make_processor(tokenizer, image_processor, tokenizer.chat_template)


def build_tiny(out_dir: str, cfg: ModelConfig) -> str:
    """Write a complete Hugging Face directory (safetensors, tokenizer, processor)."""
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    tokenizer = tiny_tokenizer(cfg.tiny)
    ids = TokenIds.from_tokenizer(tokenizer)
    torch.manual_seed(cfg.tiny.seed)
    model = Qwen2_5_VLForConditionalGeneration(tiny_model_config(cfg.tiny, tokenizer))
    if cfg.tiny.weight_init not in ("fan_in", "config"):
        raise ValueError(f"model.tiny.weight_init must be 'fan_in' or 'config', got {cfg.tiny.weight_init!r}")
    with torch.no_grad():
        if cfg.tiny.weight_init == "fan_in":
            head = model.get_output_embeddings()
            for module in model.modules():
                if isinstance(module, (torch.nn.Linear, torch.nn.Conv3d)) and module is not head:
                    module.weight.normal_(0.0, module.weight[0].numel() ** -0.5)
        # tied: this is the LM head too (skipped above, as its fan-in is the hidden size)
        model.get_input_embeddings().weight.normal_(0.0, cfg.tiny.embed_init_std)
    model.generation_config.eos_token_id = list(ids.stops)
    model.generation_config.pad_token_id = ids.pad
    processor = build_processor(tokenizer, cfg)
    return save_checkpoint(model, processor, out_dir)
