"""Log-mel features, SpecAugment masks, tokenizers."""

import torch

from tsformer.data.audio import LogMelFilterbank, SpecAugment, feature_stats, speed_perturb
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


def test_specaugment_masks_within_limits_and_lengths():
    sa = SpecAugment(freq_masks=2, freq_width=5, time_masks=2, time_width=10)
    x = torch.ones(3, 50, 20)
    lengths = torch.tensor([50, 30, 12])
    g = torch.Generator().manual_seed(0)
    m = sa.mask(x, lengths, g)
    assert m.shape == x.shape
    for b in range(3):
        fm = m[b].all(0)  # frequency bins masked at every frame
        assert fm.sum() <= 10
        tm = m[b][:, ~fm].all(1) if (~fm).any() else m[b].all(1)
        assert tm.sum() <= 20
        assert not tm[int(lengths[b]):].any()  # time masks stay inside the utterance
    sa.eval()
    assert torch.equal(sa(x, lengths), x)  # identity at evaluation


def test_specaugment_masks_something_in_training():
    sa = SpecAugment(freq_masks=2, freq_width=5, time_masks=2, time_width=10).train()
    torch.manual_seed(0)
    y = sa(torch.ones(4, 50, 20), torch.full((4,), 50))
    assert 0 < (y == 0).float().mean() < 0.8


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


def test_bucket_batch_sampler_covers_all_items_once_with_similar_lengths():
    from tsformer.data.speech import BucketBatchSampler

    lengths = [(i * 37) % 101 for i in range(100)]
    s = BucketBatchSampler(lengths, batch_size=8, pool=4, seed=1)
    batches = list(s)
    assert len(batches) == len(s) == 13
    assert sorted(i for b in batches for i in b) == list(range(100))
    # within a pool of 32 sorted items, a batch spans far less than the full range
    spans = [max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches if len(b) == 8]
    assert sum(spans) / len(spans) < 40
    assert list(s) != batches  # a new order every epoch
