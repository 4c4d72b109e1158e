"""The special token ids a Qwen2-VL-family checkpoint uses, read from the checkpoint.

The embedded tiny model's compact vocabulary, Qwen2.5-VL's own and a fine-tune with
added tokens put these tokens at different ids, so no module keeps a table of them:
the rollout backends and the trainer read them from the processor's tokenizer, and the
trainer's forward from the model config. `check_agree` refuses a checkpoint whose two
disagree, since the model would then look for images at the wrong positions.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

# Vision placeholders and delimiters: they only belong where the processor puts them in a
# prompt. A sampled one would be read as an image slot by the log-prob pass, so neither
# backend may ever sample them (their probability is set to zero before sampling).
NEVER_SAMPLE_TOKENS = ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")


@dataclass(frozen=True)
class TokenIds:
    image: int
    video: int
    vision_start: int
    vision_end: int
    im_end: int
    endoftext: int
    pad: int

    @property
    def stops(self) -> tuple[int, ...]:
        """Ids that end a response: the chat turn terminator first, then <|endoftext|>,
        which also stops a model that emits it."""
        return (self.im_end, self.endoftext)

    @property
    def never_sample(self) -> tuple[int, ...]:
        return (self.vision_start, self.vision_end, self.image, self.video)

    @classmethod
    def from_tokenizer(cls, tokenizer) -> "TokenIds":
        """The ids of a Qwen2-VL tokenizer (or a processor holding one); a missing token
        is an error that names it.

        Read once per tokenizer object (batch builders call this for every batch); read
        again if its pad token was changed since."""
        tok = getattr(tokenizer, "tokenizer", tokenizer)
        try:
            pad_token, ids = _READ[tok]
            if pad_token == tok.pad_token:
                return ids
        except (KeyError, TypeError):  # not read yet, or an object that takes no weak reference
            pass
        ids = cls._read(tok)
        try:
            _READ[tok] = (tok.pad_token, ids)
        except TypeError:
            pass
        return ids

    @classmethod
    def _read(cls, tok) -> "TokenIds":
        names = ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>", "<|im_end|>", "<|endoftext|>")
        ids = [tok.convert_tokens_to_ids(n) for n in names]
        unk = getattr(tok, "unk_token_id", None)
        missing = [n for n, i in zip(names, ids) if i is None or (unk is not None and i == unk)]
        if missing:
            raise ValueError(f"the tokenizer has no {', '.join(missing)}: not a Qwen2-VL-family tokenizer")
        pad = tok.pad_token_id if tok.pad_token_id is not None else ids[5]
        return cls(*(int(i) for i in ids), pad=int(pad))

    @classmethod
    def from_model_config(cls, config) -> "TokenIds":
        """The ids a Qwen2.5-VL model config declares (image/video placeholders, vision
        delimiters, pad and end of sequence)."""
        text = getattr(config, "text_config", config)
        eos = getattr(text, "eos_token_id", None)
        eos = eos[0] if isinstance(eos, (list, tuple)) else eos
        pad = getattr(text, "pad_token_id", None)
        endoftext = getattr(text, "bos_token_id", None)
        endoftext = pad if endoftext is None else endoftext
        return cls(image=int(config.image_token_id), video=int(config.video_token_id),
                   vision_start=int(config.vision_start_token_id), vision_end=int(config.vision_end_token_id),
                   im_end=int(eos), endoftext=int(endoftext), pad=int(endoftext if pad is None else pad))


# tokenizer -> (its pad token when read, its ids); entries go with their tokenizer
_READ: "weakref.WeakKeyDictionary[object, tuple[str | None, TokenIds]]" = weakref.WeakKeyDictionary()


def check_agree(tokenizer, config) -> TokenIds:
    """The tokenizer's ids, after checking that the model config puts the image, video
    and vision delimiter tokens at the same ids."""
    t, c = TokenIds.from_tokenizer(tokenizer), config
    pairs = {"image_token_id": t.image, "video_token_id": t.video,
             "vision_start_token_id": t.vision_start, "vision_end_token_id": t.vision_end}
    bad = {k: (getattr(c, k, None), v) for k, v in pairs.items() if getattr(c, k, None) != v}
    if bad:
        detail = ", ".join(f"{k}: config {a} vs tokenizer {b}" for k, (a, b) in bad.items())
        raise ValueError(f"the model config and tokenizer disagree on special token ids ({detail})")
    return t
