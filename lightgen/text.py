"""Frozen text encoders: T5 last hidden states, padded to `max_length` (official: flan-T5-XXL, 128).

Real checkpoints load by hub id or local path. The testbed uses a tiny random T5 built from a config
with a tokenizer that needs no download (word-level over a given vocabulary, else byte-level ByT5).
A tokenizer that silently came back empty is an error, never a stream of `<unk>`.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from lightgen.errors import InputError

_SPECIALS = ["<pad>", "</s>", "<unk>"]
_SIDES = re.compile(r"\b(left|right)\b", re.IGNORECASE)


def mirror_caption(caption: str) -> str:
    """The caption of the horizontally flipped image: the words left and right swapped (case kept)."""
    def swap(m: re.Match) -> str:
        word = {"left": "right", "right": "left"}[m.group(0).lower()]
        return word.capitalize() if m.group(0)[0].isupper() else word
    return _SIDES.sub(swap, caption)


def word_level_tokenizer(vocab: list[str]):
    """A lower-casing, whitespace/punctuation-splitting word tokenizer with T5's special tokens."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = _SPECIALS + sorted({w.lower() for w in vocab} - set(_SPECIALS))
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def _is_word_level(tokenizer) -> bool:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    return backend is not None and type(backend.model).__name__ == "WordLevel"


class TextEncoder(nn.Module):
    """prompts -> (B, max_length, d_model) float32 states; frozen, always in eval mode."""

    def __init__(self, model: nn.Module, tokenizer: Any, max_length: int, source: str = ""):
        super().__init__()
        self.model, self.tokenizer, self.max_length, self.source = model.eval().requires_grad_(False), tokenizer, \
            max_length, source
        self.word_level = _is_word_level(tokenizer)
        byte_level = type(tokenizer).__name__ == "ByT5Tokenizer"
        if not (self.word_level or byte_level) and len(tokenizer) < 1000:
            raise InputError(f"text encoder {source!r}: tokenizer has only {len(tokenizer)} tokens; "
                             "the tokenizer files are missing or unreadable (an empty tokenizer maps every word "
                             "to <unk>)")

    @property
    def channels(self) -> int:
        return self.model.config.d_model

    def train(self, mode: bool = True):
        return super().train(False)  # frozen: dropout never on

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, max_length: int = 128, torch_dtype=None) -> "TextEncoder":
        from transformers import AutoTokenizer, T5EncoderModel

        try:
            tokenizer = AutoTokenizer.from_pretrained(str(name_or_path))
            model = T5EncoderModel.from_pretrained(str(name_or_path), torch_dtype=torch_dtype)
        except OSError as e:
            raise InputError(f"text encoder {str(name_or_path)!r}: cannot load ({e})") from e
        return cls(model, tokenizer, max_length, str(name_or_path))

    @classmethod
    def tiny(cls, t5_config: dict[str, Any], max_length: int, vocab: list[str] | None = None,
             seed: int = 0) -> "TextEncoder":
        """Random T5 encoder from a config (seeded, so it is the same 'frozen' encoder every time)."""
        from transformers import ByT5Tokenizer, T5Config, T5EncoderModel

        tokenizer = word_level_tokenizer(vocab) if vocab else ByT5Tokenizer()
        config = T5Config(**{**t5_config, "vocab_size": max(t5_config.get("vocab_size", 0), len(tokenizer))})
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = T5EncoderModel(config)
        return cls(model, tokenizer, max_length, "tiny-t5")

    def save_pretrained(self, path: str | Path) -> None:
        self.model.save_pretrained(path)
        self.tokenizer.save_pretrained(path)

    @torch.no_grad()
    def forward(self, prompts: list[str]) -> torch.Tensor:
        batch = self.tokenizer(list(prompts), padding="max_length", max_length=self.max_length, truncation=True,
                               return_tensors="pt")
        if self.word_level and (batch.input_ids == self.tokenizer.unk_token_id).any():
            known = set(self.tokenizer.get_vocab())
            unknown = sorted({w for p in prompts for w in _words(self.tokenizer, p) if w not in known})
            raise InputError(f"prompt: unknown word(s) {unknown} for this text encoder's vocabulary")
        device = next(self.model.parameters()).device
        out = self.model(input_ids=batch.input_ids.to(device), attention_mask=batch.attention_mask.to(device))
        return out.last_hidden_state.float()


def _words(tokenizer, prompt: str) -> list[str]:
    backend = tokenizer.backend_tokenizer
    return [w for w, _ in backend.pre_tokenizer.pre_tokenize_str(backend.normalizer.normalize_str(prompt))]
