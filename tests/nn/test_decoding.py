"""Parallel decoding (#18): Jacobi iteration (Santilli et al. 2023) and lookahead decoding
(Fu et al. 2024) reach exactly what sequential decoding gives, for the char LM (greedy,
and sampled with pre-drawn noise) and the forecaster (sample paths with pre-drawn noise)."""

import pytest
import torch
from torch.testing import assert_close

from tsformer.nn.conv_transformer import ConvTransformerForecaster
from tsformer.nn.decoding import (
    DecodeCache,
    decode_values,
    generate_tokens,
    gumbel_noise,
    jacobi_decode,
    jacobi_tokens,
    lookahead_tokens,
)
from tsformer.nn.longformer import LongformerCharLM


def char_lm(positions="rotary", **kw):
    torch.manual_seed(0)
    return LongformerCharLM(vocab_size=12, d_model=16, n_heads=2, n_layers=2, d_ff=32, window=[4, 8],
                            dilation=[1, 2], dilated_heads=1, max_tokens=128, positions=positions, **kw).eval()


class CountingLM(torch.nn.Module):
    """Counts forward passes (the prompt's included) of a wrapped token model."""

    def __init__(self, net):
        super().__init__()
        self.net, self.calls = net, 0

    def forward(self, tokens, cache=None):
        self.calls += 1
        return self.net(tokens, cache=cache)

    def new_cache(self, *a, **k):
        return self.net.new_cache(*a, **k)


@pytest.mark.parametrize("steps", [1, 2, 7, 23])
def test_jacobi_and_lookahead_equal_greedy(steps):
    lm = char_lm()
    prompt = torch.randint(1, 12, (2, 9), generator=torch.Generator().manual_seed(steps))
    greedy = generate_tokens(lm, prompt, steps, temperature=0.0, max_context=128)
    for block in (1, 3, 8, 64):
        out, counts = jacobi_tokens(lm, prompt, steps, block=block, max_context=128)
        assert torch.equal(out, greedy)
        assert counts["passes"] <= steps  # every pass accepts at least one position
    for window, ngram, pool in ((1, 2, 0), (3, 3, 2), (5, 4, 4)):
        counted = CountingLM(lm)
        out, counts = lookahead_tokens(counted, prompt, steps, window=window, ngram=ngram, pool=pool, max_context=128)
        assert torch.equal(out, greedy), (window, ngram, pool)
        assert counts["passes"] == counted.calls - 2 <= 2 * max(steps - 1, 0)  # one prefill per prompt row


@pytest.mark.parametrize("positions", ["learned", "relative"])
def test_lookahead_equals_greedy_with_other_positions(positions):
    """The lookahead and verification branches are rows over the shared cached prefix, so
    every position scheme serves them at its true positions."""
    lm = char_lm(positions)
    prompt = torch.tensor([[3, 4, 5, 3, 4, 5, 3, 4, 5, 3, 4]])
    greedy = generate_tokens(lm, prompt, 40, temperature=0.0, max_context=128)
    out, counts = lookahead_tokens(lm, prompt, 40, window=4, ngram=3, pool=3, max_context=128)
    assert torch.equal(out, greedy)
    assert counts["passes"] < 39  # a random model falls into loops the pool predicts


def test_parallel_decoding_equals_sequential_sampling_with_the_same_noise():
    lm = char_lm()
    prompt = torch.randint(1, 12, (2, 7), generator=torch.Generator().manual_seed(0))
    noise = gumbel_noise(2, 19, 12, torch.Generator().manual_seed(1))
    seq = generate_tokens(lm, prompt, 19, temperature=0.9, noise=noise)
    assert torch.equal(seq, generate_tokens(lm, prompt, 19, temperature=0.9, noise=noise, cache=False))
    assert torch.equal(jacobi_tokens(lm, prompt, 19, block=6, temperature=0.9, noise=noise)[0], seq)
    assert torch.equal(lookahead_tokens(lm, prompt, 19, temperature=0.9, noise=noise)[0], seq)
    with pytest.raises(ValueError, match="pre-drawn noise"):
        jacobi_tokens(lm, prompt, 5, temperature=0.9)


def test_lookahead_needs_a_cache_that_forgets_positions():
    lm = LongformerCharLM(vocab_size=12, d_model=16, n_heads=2, n_layers=1, d_ff=32, window=4, max_tokens=64,
                          ffn="rwkv", attention={"type": "rwkv", "pattern": "causal", "positions": "none"}).eval()
    with pytest.raises(ValueError, match="cannot forget positions"):
        lookahead_tokens(lm, torch.tensor([[1, 2, 3]]), 5)
    # Jacobi still works: it restores a snapshot and feeds the accepted positions again.
    prompt = torch.tensor([[1, 2, 3]])
    assert torch.equal(jacobi_tokens(lm, prompt, 9, block=4)[0], generate_tokens(lm, prompt, 9, temperature=0.0))


def test_jacobi_cuts_the_cache_back_to_the_accepted_prefix():
    """A toy chain y[p + 1] = f(y[p]) through a real cache: each pass accepts what it can,
    the cache keeps exactly the accepted inputs, never more passes than positions."""
    lm = char_lm()
    cache = lm.new_cache(1, 64)
    first = lm(torch.tensor([[1, 2, 3]]), cache=cache)[:, -1].argmax(-1)  # (1,): known from the prompt
    lengths = []

    def step(x, start):
        assert cache.length == 3 + start  # the cache holds the prompt and inputs 0 .. start - 1
        lengths.append((start, x.shape[1]))
        logits = lm(x, cache=cache)
        return logits.argmax(-1)

    out, counts = jacobi_decode(step, first, 12, cache, block=5)
    assert cache.length == 3 + 11  # every input but the last (whose successor is not asked for)
    assert counts["passes"] <= 11 and counts["passes"] == len(lengths)
    assert all(m <= 5 for _, m in lengths)
    greedy = generate_tokens(lm, torch.tensor([[1, 2, 3]]), 12, temperature=0.0)
    assert torch.equal(out, greedy[:, 3:])
    # Truncating past a recurrent state is refused with a reason.
    rec = DecodeCache.create(1, 1, 1, 8)
    rec.layers[0].advance(3)
    rec.layers[0].state["rwkv"] = (torch.zeros(1),)
    rec.layers[0].advance(2)
    with pytest.raises(ValueError, match="cannot forget positions"):
        rec.truncate(3)


@pytest.mark.parametrize("attention", [None, {"type": "mhsa", "pattern": "causal", "positions": "rotary"},
                                       {"type": "rwkv"}])
def test_forecast_jacobi_equals_sequential_sampling_with_the_same_noise(attention):
    torch.manual_seed(0)
    kw = {"ffn": "rwkv"} if attention and attention["type"] == "rwkv" else {}
    m = ConvTransformerForecaster(3, 2, d_model=16, n_heads=2, n_layers=2, d_ff=32, dropout=0.0,
                                  attention=attention, **kw).eval()
    g = torch.Generator().manual_seed(0)
    x, cov, sid = torch.randn(2, 20, generator=g), torch.randn(2, 20 + 10, 2, generator=g), torch.tensor([0, 1])
    noise = torch.randn(2, 4, 11, generator=g)
    seq = m.sample(x, cov, sid, num_samples=4, noise=noise)
    for block in (None, 1, 4):
        jac = m.sample(x, cov, sid, num_samples=4, noise=noise, decode={"method": "jacobi", "block": block})
        assert_close(jac, seq, rtol=1e-5, atol=1e-5)
    # block=1 is sequential sampling itself; without noise, Jacobi draws it from the generator.
    one = m.sample(x, cov, sid, num_samples=4, generator=torch.Generator().manual_seed(5),
                   decode={"method": "jacobi", "block": 1})
    jac = m.sample(x, cov, sid, num_samples=4, generator=torch.Generator().manual_seed(5), decode={"method": "jacobi"})
    assert_close(jac, one, rtol=1e-5, atol=1e-5)
    # The default sampler is untouched by all this: the generator's step-by-step draws.
    ref = m.sample_reference(x, cov, sid, num_samples=4, generator=torch.Generator().manual_seed(3))
    assert_close(m.sample(x, cov, sid, num_samples=4, generator=torch.Generator().manual_seed(3)), ref,
                 rtol=1e-4, atol=1e-4)


def test_decode_values_counts_and_rejects_unknown_methods():
    cache = DecodeCache.create(0, 1, 1, 4)
    out, counts = decode_values(lambda x, s: x + 1, torch.zeros(2), 5, cache)
    assert out.tolist() == [[0, 1, 2, 3, 4]] * 2 and counts == {"passes": 4, "positions": 5}
    with pytest.raises(ValueError, match="decode.method='lookahead'"):
        decode_values(lambda x, s: x + 1, torch.zeros(2), 5, cache, {"method": "lookahead"})
