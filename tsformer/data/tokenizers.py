"""Tokenizers of every task family, and what they keep in a checkpoint.

- Speech (CTC), id 0 the blank: :class:`CharTokenizer` and :class:`CTCSentencePieceTokenizer`
  (unigram / BPE), both :class:`Tokenizer`. Transcripts are normalised (:func:`normalize_text`);
  a tokenizer round-trips through :meth:`Tokenizer.state`, a dict of plain Python types kept
  in a weights-only checkpoint (``checkpoint["asr"]["tokenizer"]``).
- Documents: :class:`SentencePieceTokenizer`, ids 0..3 ``<pad>``, ``<unk>``, ``<cls>``,
  ``</s>``; its model bytes are ``checkpoint["sentencepiece_model"]``.
- Character language modelling: :class:`CharVocab`, id 0 for unseen characters; its
  characters are ``checkpoint["char_vocab"]`` (str).

Both SentencePiece tokenizers train through :func:`train_sentencepiece` and hold the
serialized model proto; both character tokenizers number their characters from 1.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Iterable
from pathlib import Path

import numpy as np

BLANK = 0
PAD_ID, UNK_ID, CLS_ID, EOS_ID = 0, 1, 2, 3


# -- shared parts ----------------------------------------------------------------------------
def train_sentencepiece(lines: Iterable[str], vocab_size: int, model_type: str = "unigram", **options) -> bytes:
    """Train a SentencePiece model (Kudo & Richardson 2018) on ``lines``; the serialized proto.

    ``vocab_size`` is a soft limit (small corpora cannot fill a large vocabulary);
    ``options`` are further ``SentencePieceTrainer`` settings (special ids, coverage, ...).
    """
    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=buf, vocab_size=int(vocab_size), model_type=model_type,
        hard_vocab_limit=False, minloglevel=2, **options,
    )
    return buf.getvalue()


class _SentencePieceModel:
    """A serialized SentencePiece model (``proto``) and its processor (``sp``)."""

    def __init__(self, proto: bytes):
        import sentencepiece as spm

        self.proto = bytes(proto)
        self.sp = spm.SentencePieceProcessor(model_proto=self.proto)

    def to_bytes(self) -> bytes:
        return self.proto


class _Characters:
    """Characters in id order, numbered from 1 (0 is the CTC blank or an unseen character);
    ``vocab_size`` counts id 0."""

    def __init__(self, symbols: Iterable[str]):
        self.symbols = list(symbols)
        self.index = {s: i + 1 for i, s in enumerate(self.symbols)}
        self.vocab_size = len(self.symbols) + 1


# -- speech (CTC) ----------------------------------------------------------------------------
CASES = ("upper", "lower", "keep")


def normalize_text(text: str, case: str = "upper") -> str:
    """Single spaces and ``case`` (``upper``: the LibriSpeech / AN4 convention, ``lower`` or ``keep``)."""
    if case == "upper":
        text = text.upper()
    elif case == "lower":
        text = text.lower()
    elif case != "keep":
        raise ValueError(f"text case must be one of {', '.join(CASES)}, got {case!r}")
    return " ".join(text.split())


class Tokenizer:
    """Base class of the CTC tokenizers. ``vocab_size`` counts the blank; ``case`` is the
    transcripts' case (:func:`normalize_text`), kept in :meth:`state`."""

    blank = BLANK
    vocab_size: int
    case = "upper"

    def normalize(self, text: str) -> str:
        return normalize_text(text, self.case)

    def token_texts(self) -> list[str]:
        """The surface text of every id (``""`` for the blank); a word starts after a space."""
        raise NotImplementedError

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def decode(self, ids: Iterable[int]) -> str:
        raise NotImplementedError

    def state(self) -> dict:
        raise NotImplementedError


class CharTokenizer(_Characters, Tokenizer):
    """One id per character (space included); characters unseen in training are dropped.

    Args:
        symbols: the characters, in id order (ids start at 1).
        case: ``upper`` | ``lower`` | ``keep`` (:func:`normalize_text`).
    """

    def __init__(self, symbols: Iterable[str], case: str = "upper"):
        super().__init__(symbols)
        self.case = case

    @classmethod
    def train(cls, texts: Iterable[str], case: str = "upper") -> CharTokenizer:
        return cls(sorted({c for t in texts for c in normalize_text(t, case)}), case)

    def encode(self, text: str) -> list[int]:
        return [self.index[c] for c in self.normalize(text) if c in self.index]

    def token_texts(self) -> list[str]:
        return [""] + list(self.symbols)

    def decode(self, ids: Iterable[int]) -> str:
        chars = [self.symbols[i - 1] for i in ids if 0 < i <= len(self.symbols)]
        return " ".join("".join(chars).split())

    def state(self) -> dict:
        return {"type": "char", "symbols": list(self.symbols), "case": self.case}


class CTCSentencePieceTokenizer(_SentencePieceModel, Tokenizer):
    """SentencePiece subwords for CTC: ``<unk>`` is piece 0 and no other special pieces;
    ids are the pieces shifted by one for the blank.

    Args:
        proto: the serialized SentencePiece model.
        case: ``upper`` | ``lower`` | ``keep`` (:func:`normalize_text`).
    """

    def __init__(self, proto: bytes, case: str = "upper"):
        super().__init__(proto)
        self.vocab_size = self.sp.get_piece_size() + 1
        self.case = case

    @classmethod
    def train(
        cls, texts: Iterable[str], vocab_size: int = 64, model_type: str = "unigram", case: str = "upper"
    ) -> CTCSentencePieceTokenizer:
        if model_type not in ("unigram", "bpe"):
            raise ValueError(f"sentencepiece model_type must be unigram or bpe, got {model_type!r}")
        return cls(train_sentencepiece([normalize_text(t, case) for t in texts], vocab_size, model_type,
                                       character_coverage=1.0, bos_id=-1, eos_id=-1, unk_id=0), case)

    def encode(self, text: str) -> list[int]:
        return [i + 1 for i in self.sp.encode(self.normalize(text))]

    def decode(self, ids: Iterable[int]) -> str:
        return self.normalize(self.sp.decode([int(i) - 1 for i in ids if int(i) > 0]))

    def token_texts(self) -> list[str]:
        return [""] + [self.sp.id_to_piece(i).replace("\u2581", " ") for i in range(self.sp.get_piece_size())]

    def state(self) -> dict:
        return {"type": "sentencepiece", "model": base64.b64encode(self.proto).decode("ascii"), "case": self.case}


def build_tokenizer(texts: list[str], type: str = "char", vocab_size: int = 64, model_type: str = "unigram",
                    case: str = "upper") -> Tokenizer:
    """Train the configured CTC tokenizer on the training transcripts.

    Args:
        texts: training transcripts.
        type: ``char`` or ``sentencepiece``.
        vocab_size, model_type: SentencePiece settings (ignored for ``char``).
        case: the transcripts' case, ``upper`` | ``lower`` | ``keep``.
    """
    normalize_text("", case)  # an unknown case fails here, before training
    if type == "char":
        return CharTokenizer.train(texts, case)
    if type == "sentencepiece":
        return CTCSentencePieceTokenizer.train(texts, vocab_size=vocab_size, model_type=model_type, case=case)
    raise ValueError(f"unknown tokenizer type {type!r}; choose char or sentencepiece")


def tokenizer_from_state(state: dict) -> Tokenizer:
    """Rebuild a CTC tokenizer from :meth:`Tokenizer.state`."""
    case = state.get("case", "upper")  # checkpoints older than the setting are upper-case
    if state["type"] == "char":
        return CharTokenizer(state["symbols"], case)
    if state["type"] == "sentencepiece":
        return CTCSentencePieceTokenizer(base64.b64decode(state["model"]), case)
    raise ValueError(f"unknown tokenizer state type {state['type']!r}")


# -- documents -------------------------------------------------------------------------------
class SentencePieceTokenizer(_SentencePieceModel):
    """A SentencePiece unigram model trained on the training split of a document corpus.

    Ids 0..3 are ``<pad>``, ``<unk>``, ``<cls>`` (SentencePiece's BOS slot, used as the
    classification token) and ``</s>``. :meth:`to_bytes`/:meth:`from_bytes` carry the model
    inside a checkpoint.
    """

    @classmethod
    def train(cls, texts: list[str], vocab_size: int = 8000, model_type: str = "unigram",
              max_sentences: int = 300_000, seed: int = 0) -> SentencePieceTokenizer:
        """Train on ``texts`` (a sample of at most ``max_sentences`` lines)."""
        lines = [ln.strip() for t in texts for ln in t.splitlines() if ln.strip()]
        if len(lines) > max_sentences:
            rng = np.random.default_rng(seed)
            lines = [lines[i] for i in sorted(rng.choice(len(lines), max_sentences, replace=False))]
        return cls(train_sentencepiece(
            lines, vocab_size, model_type, character_coverage=0.9995,
            pad_id=PAD_ID, unk_id=UNK_ID, bos_id=CLS_ID, eos_id=EOS_ID, bos_piece="<cls>",
            max_sentence_length=1 << 16, num_threads=1,
        ))

    @classmethod
    def from_bytes(cls, proto: bytes) -> SentencePieceTokenizer:
        return cls(proto)

    @classmethod
    def load(cls, path: str | Path) -> SentencePieceTokenizer:
        """From a checkpoint that carries ``sentencepiece_model`` or a SentencePiece ``.model`` file."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"tokenizer: {path} does not exist (a .ckpt with a SentencePiece model, or a "
                                    f".model file)")
        if path.suffix == ".model":
            return cls(path.read_bytes())
        import torch

        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(ckpt, dict) or not isinstance(ckpt.get("sentencepiece_model"), bytes):
            raise ValueError(f"{path}: no sentencepiece_model in this checkpoint (one written by a text task, "
                             f"e.g. task=mlm, has it)")
        return cls(ckpt["sentencepiece_model"])

    @property
    def vocab_size(self) -> int:
        return int(self.sp.get_piece_size())

    def encode(self, texts: list[str]) -> list[list[int]]:
        """Token ids (no special tokens) per text."""
        return self.sp.encode(list(texts), out_type=int)

    def decode(self, ids: list[int]) -> str:
        return self.sp.decode([int(i) for i in ids if int(i) > EOS_ID])


# -- characters (language modelling) ---------------------------------------------------------
class CharVocab(_Characters):
    """Characters of the training text; id 0 is reserved for unseen characters.

    Encoding is vectorised (code points through a lookup table), so tens of millions of
    characters take about a second.

    Args:
        chars (str): the characters, in id order (ids start at 1).
    """

    def __init__(self, chars: str):
        super().__init__(chars)
        self.chars = chars

    @classmethod
    def fit(cls, text: str) -> CharVocab:
        """Every character of ``text``, in code-point order (``sorted(set(text))``).

        Args:
            text (str): the training text.

        Returns:
            CharVocab: the vocabulary.
        """
        return cls("".join(sorted(set(text))))

    def __len__(self) -> int:
        return self.vocab_size

    @property
    def dtype(self) -> np.dtype:
        """The smallest integer dtype torch holds every id of this vocabulary in (uint8 up to
        255 characters, then int16, int32)."""
        n = len(self.symbols)
        return np.dtype(np.uint8 if n <= 255 else np.int16 if n <= 32767 else np.int32)

    def encode(self, text: str, dtype: np.dtype | type = np.int64) -> np.ndarray:
        """Ids of the characters of ``text``; 0 for a character not in the vocabulary.

        Args:
            text (str): the text to encode.
            dtype (np.dtype | type): dtype of the result (:attr:`dtype` is the compact one).

        Returns:
            np.ndarray: one id per character.
        """
        cps = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)  # code points
        if not len(cps):
            return np.zeros(0, dtype)
        table = np.zeros(int(cps.max()) + 1, dtype)
        own = np.fromiter(map(ord, self.symbols), dtype=np.int64, count=len(self.symbols))
        keep = own < len(table)
        table[own[keep]] = np.arange(1, len(own) + 1)[keep]
        return table[cps]

    def decode(self, ids) -> str:
        return "".join(self.symbols[i - 1] if 0 < i <= len(self.symbols) else "\ufffd" for i in ids)
