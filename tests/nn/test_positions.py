"""Positions inside attention: ALiBi slopes and bias, Transformer-XL's relative terms."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from tsformer.nn.attention import MultiHeadSelfAttention, alibi_slopes
from tsformer.nn.attention.positions import XLPositions, rel_shift, sinusoid


def test_alibi_slopes_for_8_and_12_heads_follow_the_paper():
    # Press et al. 2022, Sec. 3: 8 heads -> 1/2^1 .. 1/2^8.
    assert alibi_slopes(8) == pytest.approx([2.0**-k for k in range(1, 9)])
    # Not a power of 2: the 8-head slopes, then every other slope of the 16-head sequence
    # (2^-0.5, 2^-1, 2^-1.5, ...): 2^-0.5, 2^-1.5, 2^-2.5, 2^-3.5.
    assert alibi_slopes(12) == pytest.approx([2.0**-k for k in range(1, 9)] + [2.0**-(k + 0.5) for k in range(4)])
    assert alibi_slopes(16) == pytest.approx([2.0 ** (-k / 2) for k in range(1, 17)])
    assert len(alibi_slopes(6)) == 6 and alibi_slopes(1) == pytest.approx([2.0**-8])


def _dense_layer(layer, x, lengths, bias_fn):
    B, L, _ = x.shape
    H, D = layer.n_heads, layer.head_dim
    q, k, v = layer.qkv(x).view(B, L, 3, H, D).permute(2, 0, 3, 1, 4)
    i = torch.arange(L)
    scores = q @ k.transpose(-1, -2) / D**0.5 + bias_fn(q, i[:, None], i[None, :])
    mask = layer.pattern.to_dense(L) & (i[None, :] < lengths[:, None])[:, None, None]
    scores = scores.masked_fill(~mask, float("-inf"))
    return layer.out((scores.softmax(-1) @ v).transpose(1, 2).reshape(B, L, H * D))


@pytest.mark.parametrize("pattern", ["causal", "full", "window"])
@pytest.mark.parametrize("kernel", ["reference", "sdpa", "auto", "sparse"])
def test_alibi_layer_equals_the_bias_added_densely(pattern, kernel):
    torch.manual_seed(0)
    one_sided = pattern == "window"
    if kernel == "sparse" and pattern != "window":
        pytest.skip("the sparse kernel serves windows only")
    layer = MultiHeadSelfAttention(24, 12, positions="alibi", pattern=pattern, window=5, one_sided=one_sided,
                                   kernel=kernel).eval()
    slopes = torch.tensor(alibi_slopes(12))[None, :, None, None]
    causal = pattern != "full"
    x, lengths = torch.randn(2, 11, 24), torch.tensor([11, 6])

    def bias(q, i, j):
        return -slopes * ((i - j) if causal else (i - j).abs())

    try:
        got = layer(x, lengths)
    except ValueError as e:  # a kernel that does not (yet) take slope biases says so
        assert kernel == "sparse" and "bias" in str(e)
        return
    valid = torch.arange(11)[None, :] < lengths[:, None]  # padded rows: don't care
    assert_close(got[valid], _dense_layer(layer, x, lengths, bias)[valid], rtol=1e-4, atol=1e-5)


def test_rel_shift_equals_an_explicit_gather_of_r():
    """Dai et al. 2019, Appendix B: scores against R at descending distances, shifted, equal
    the scores gathered at distance i + M - j (valid, causal entries)."""
    g = torch.Generator().manual_seed(0)
    for Lq, M in [(5, 0), (4, 3), (1, 6)]:
        Lk = Lq + M
        x = torch.randn(2, Lq, Lk, generator=g)  # column m: distance Lk - 1 - m
        shifted = rel_shift(x)
        for i in range(Lq):
            for j in range(i + M + 1):
                d = i + M - j
                assert shifted[0, i, j] == x[0, i, Lk - 1 - d] and shifted[1, i, j] == x[1, i, Lk - 1 - d]


def test_xl_positions_match_the_papers_four_terms():
    """Scores of the XL layer = (a) q.k + (b) q.W_R R_{i-j} + (c) u.k + (d) v.W_R R_{i-j}, all
    scaled, with the memory's keys before the segment (query offset M); the table path and
    the paper's rel_shift give the same (b) + (d)."""
    torch.manual_seed(0)
    B, H, D, Lq, M = 2, 2, 4, 5, 3
    Lk = Lq + M
    pos = XLPositions(H * D, H, D)
    with torch.no_grad():
        pos.u.normal_()
        pos.v.normal_()
    q, k = torch.randn(B, H, Lq, D), torch.randn(B, H, Lk, D)
    scale = D**-0.5
    bias = pos.bias(q, scale, Lk)
    got = (pos.content(q) @ k.transpose(-1, -2)) * scale + bias.to_dense(Lq, Lk, M)
    rk = pos.relative_keys(torch.arange(Lk - 1, -1, -1))  # (H, Lk, D): distances descending
    ac = (q + pos.u[None, :, None]) @ k.transpose(-1, -2)
    bd = rel_shift((q + pos.v[None, :, None]) @ rk.transpose(-1, -2))
    want = (ac + bd) * scale
    causal = torch.arange(Lk)[None, :] <= torch.arange(Lq)[:, None] + M
    assert_close(got.masked_fill(~causal, 0), want.masked_fill(~causal, 0), rtol=1e-5, atol=1e-5)
    # R is the sinusoid of the distance (sin half, cos half).
    assert_close(sinusoid(torch.tensor([0.0]), 4), torch.tensor([[0.0, 0.0, 1.0, 1.0]]))
