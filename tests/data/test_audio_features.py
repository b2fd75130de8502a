"""Log-mel features, tokenizers."""

import torch

from tsformer.data.audio import LogMelFilterbank, feature_stats, speed_perturb
from tsformer.data.tokenizers import (
    CharTokenizer,
    SentencePieceTokenizer,
    build_tokenizer,
    tokenizer_from_state,
)


def test_fbank_shape():
    f = LogMelFilterbank(n_mels=80)(torch.randn(16000))
    assert f.shape == (101, 80) and torch.isfinite(f).all()


def test_speed_perturb_changes_length():
    x = torch.randn(16000)
    assert abs(speed_perturb(x, 1.1).shape[0] - 16000 / 1.1) < 5
    assert speed_perturb(x, 1.0) is x


def test_feature_stats():
    mean, std = feature_stats([torch.tensor([[1.0, 2.0], [3.0, 2.0]]), torch.tensor([[5.0, 2.0]])])
    assert mean == [3.0, 2.0]
    assert abs(std[0] - (8 / 3) ** 0.5) < 1e-6 and std[1] == 1e-3


def test_char_tokenizer_roundtrip_and_state():
    tok = CharTokenizer.train(["seven three", "ZERO"])
    assert tok.vocab_size == len(set("SEVEN THREEZRO")) + 1
    ids = tok.encode("SEVEN ZERO")
    assert 0 not in ids and tok.decode(ids) == "SEVEN ZERO"
    assert tokenizer_from_state(tok.state()).encode("THREE") == tok.encode("THREE")


def test_sentencepiece_tokenizer_roundtrip_and_state():
    texts = ["SEVEN THREE ZERO", "ONE TWO THREE", "FOUR FIVE SIX", "SEVEN EIGHT NINE"] * 20
    for kind in ("unigram", "bpe"):
        tok = build_tokenizer(texts, type="sentencepiece", vocab_size=30, model_type=kind)
        ids = tok.encode("SEVEN THREE ZERO")
        assert min(ids) >= 1 and tok.decode(ids) == "SEVEN THREE ZERO"
        again = tokenizer_from_state(tok.state())
        assert isinstance(again, SentencePieceTokenizer) and again.encode("NINE ONE") == tok.encode("NINE ONE")
