"""Tokenizers for CTC speech recognition: characters and SentencePiece (unigram / BPE).

Id 0 is always the CTC blank. A tokenizer round-trips through :meth:`Tokenizer.state`, a
dict of plain Python types, so it can live inside a weights-only checkpoint.
"""

from __future__ import annotations

import base64
import io
import logging
from collections.abc import Iterable

log = logging.getLogger(__name__)

BLANK = 0


def normalize_text(text: str) -> str:
    """Upper-case with single spaces, the LibriSpeech / AN4 convention."""
    return " ".join(text.upper().split())


class Tokenizer:
    """Base class. ``vocab_size`` counts the blank."""

    blank = BLANK
    vocab_size: int

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def decode(self, ids: Iterable[int]) -> str:
        raise NotImplementedError

    def state(self) -> dict:
        raise NotImplementedError


class CharTokenizer(Tokenizer):
    """One id per character (space included); characters unseen in training are dropped.

    Args:
        symbols: the characters, in id order (ids start at 1).
    """

    def __init__(self, symbols: list[str]):
        self.symbols = list(symbols)
        self.index = {s: i + 1 for i, s in enumerate(self.symbols)}
        self.vocab_size = len(self.symbols) + 1

    @classmethod
    def train(cls, texts: Iterable[str]) -> CharTokenizer:
        return cls(sorted({c for t in texts for c in normalize_text(t)}))

    def encode(self, text: str) -> list[int]:
        return [self.index[c] for c in normalize_text(text) if c in self.index]

    def decode(self, ids: Iterable[int]) -> str:
        chars = [self.symbols[i - 1] for i in ids if 0 < i <= len(self.symbols)]
        return " ".join("".join(chars).split())

    def state(self) -> dict:
        return {"type": "char", "symbols": list(self.symbols)}


class SentencePieceTokenizer(Tokenizer):
    """SentencePiece subwords (Kudo & Richardson 2018), ids shifted by one for the blank.

    Args:
        model: the serialized SentencePiece model proto.
    """

    def __init__(self, model: bytes):
        import sentencepiece as spm

        self.model = model
        self.sp = spm.SentencePieceProcessor(model_proto=model)
        self.vocab_size = self.sp.get_piece_size() + 1

    @classmethod
    def train(
        cls, texts: Iterable[str], vocab_size: int = 64, model_type: str = "unigram"
    ) -> SentencePieceTokenizer:
        import sentencepiece as spm

        if model_type not in ("unigram", "bpe"):
            raise ValueError(f"sentencepiece model_type must be unigram or bpe, got {model_type!r}")
        buf = io.BytesIO()
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter([normalize_text(t) for t in texts]),
            model_writer=buf,
            vocab_size=vocab_size,
            model_type=model_type,
            character_coverage=1.0,
            bos_id=-1,
            eos_id=-1,
            unk_id=0,
            hard_vocab_limit=False,  # small corpora (digits) cannot fill a large vocabulary
            minloglevel=2,
        )
        return cls(buf.getvalue())

    def encode(self, text: str) -> list[int]:
        return [i + 1 for i in self.sp.encode(normalize_text(text))]

    def decode(self, ids: Iterable[int]) -> str:
        return normalize_text(self.sp.decode([int(i) - 1 for i in ids if int(i) > 0]))

    def state(self) -> dict:
        return {"type": "sentencepiece", "model": base64.b64encode(self.model).decode("ascii")}


def build_tokenizer(texts: list[str], type: str = "char", vocab_size: int = 64, model_type: str = "unigram") -> Tokenizer:
    """Train the configured tokenizer on the training transcripts.

    Args:
        texts: training transcripts.
        type: ``char`` or ``sentencepiece``.
        vocab_size, model_type: SentencePiece settings (ignored for ``char``).
    """
    if type == "char":
        return CharTokenizer.train(texts)
    if type == "sentencepiece":
        return SentencePieceTokenizer.train(texts, vocab_size=vocab_size, model_type=model_type)
    raise ValueError(f"unknown tokenizer type {type!r}; choose char or sentencepiece")


def tokenizer_from_state(state: dict) -> Tokenizer:
    """Rebuild a tokenizer from :meth:`Tokenizer.state`."""
    if state["type"] == "char":
        return CharTokenizer(state["symbols"])
    if state["type"] == "sentencepiece":
        return SentencePieceTokenizer(base64.b64decode(state["model"]))
    raise ValueError(f"unknown tokenizer state type {state['type']!r}")
