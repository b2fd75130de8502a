"""Learned attention parts: persistent memory (all-attention) and adaptive span."""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from tsformer.nn.attention import MultiHeadSelfAttention
from tsformer.nn.attention.parts import apply_constraints, auxiliary_loss
from tsformer.nn.conv_transformer import ConvTransformerForecaster
from tsformer.nn.longformer import LongformerCharLM


def _qkv(layer, x):
    B, L, _ = x.shape
    return layer.qkv(x).view(B, L, 3, layer.n_heads, layer.head_dim).permute(2, 0, 3, 1, 4)


@pytest.mark.parametrize("pattern", ["causal", "full"])
def test_persistent_memory_is_attention_over_the_concatenated_keys(pattern):
    torch.manual_seed(0)
    N = 3
    layer = MultiHeadSelfAttention(16, 2, pattern=pattern, persistent=N, kernel="sdpa").eval()
    x, lengths = torch.randn(2, 7, 16), torch.tensor([7, 4])
    q, k, v = _qkv(layer, x)
    pk, pv = layer.persistent(2)
    keys, values = torch.cat([pk, k], 2), torch.cat([pv, v], 2)
    i, j = torch.arange(7)[:, None], torch.arange(7)[None, :]
    ctx_ok = (j <= i) if pattern == "causal" else torch.ones(7, 7, dtype=torch.bool)
    ctx_ok = ctx_ok & (j < lengths[:, None, None])  # (B, L, L)
    ok = torch.cat([torch.ones(2, 7, N, dtype=torch.bool), ctx_ok], -1)[:, None]
    scores = (q @ keys.transpose(-1, -2) / 8**0.5).masked_fill(~ok, float("-inf"))
    want = layer.out((scores.softmax(-1) @ values).transpose(1, 2).reshape(2, 7, 16))
    valid = torch.arange(7)[None] < lengths[:, None]
    assert_close(layer(x, lengths)[valid], want[valid], rtol=1e-4, atol=1e-5)
    # The slots carry no position: with ALiBi their columns get no distance penalty.
    ali = MultiHeadSelfAttention(16, 2, pattern=pattern, persistent=N, positions="alibi").eval()
    ali.load_state_dict(layer.state_dict())
    slopes = ali.positions.slopes[None, :, None, None]
    dist = (i - j) if pattern == "causal" else (i - j).abs()
    bias = torch.cat([torch.zeros(1, 2, 7, N), -slopes * dist], -1)
    scores = (q @ keys.transpose(-1, -2) / 8**0.5 + bias).masked_fill(~ok, float("-inf"))
    want = ali.out((scores.softmax(-1) @ values).transpose(1, 2).reshape(2, 7, 16))
    assert_close(ali(x, lengths)[valid], want[valid], rtol=1e-4, atol=1e-5)


def test_without_memory_slots_the_layer_is_the_plain_layer():
    torch.manual_seed(0)
    plain = MultiHeadSelfAttention(16, 2, pattern="causal").eval()
    none = MultiHeadSelfAttention(16, 2, pattern="causal", persistent=0).eval()
    none.load_state_dict(plain.state_dict())
    x = torch.randn(1, 6, 16)
    assert_close(none(x), plain(x))
    assert none.persistent is None
    with_mem = MultiHeadSelfAttention(16, 2, pattern="causal", persistent=2)
    assert {"persistent.key", "persistent.value"} <= set(dict(with_mem.named_parameters()))


def _span_layer(spans, max_span=64, ramp=4, pattern="causal", kernel="auto"):
    layer = MultiHeadSelfAttention(8, 2, pattern=pattern, kernel=kernel,
                                   span={"max": max_span, "ramp": ramp, "granularity": 8})
    with torch.no_grad():
        layer.span.z.copy_(torch.tensor(spans) / max_span)
    return layer.eval()


@pytest.mark.parametrize("pattern", ["causal", "full"])
def test_adaptive_span_soft_mask_equals_an_explicitly_masked_softmax(pattern):
    """Sukhbaatar et al. 2019, Eq. 4: weights m_z(t - r) exp(s_tr) / sum_q m_z(t - q) exp(s_tq)."""
    torch.manual_seed(0)
    R, spans = 4, [3.0, 9.5]
    layer = _span_layer(spans, ramp=R, pattern=pattern, kernel="reference")
    x = torch.randn(2, 20, 8)
    q, k, v = _qkv(layer, x)
    i, j = torch.arange(20)[:, None], torch.arange(20)[None, :]
    d = (i - j) if pattern == "causal" else (i - j).abs()
    z = torch.tensor(spans)[:, None, None]
    m = ((R + z - d) / R).clamp(0, 1)  # (H, L, L)
    if pattern == "causal":
        m = m * (j <= i)
    w = m * torch.exp(q @ k.transpose(-1, -2) / 2.0)
    want = layer.out(((w / w.sum(-1, keepdim=True)) @ v).transpose(1, 2).reshape(2, 20, 8))
    assert_close(layer(x), want, rtol=1e-4, atol=1e-5)
    for kernel in ["sdpa", "auto"]:
        layer.spec.kernel = kernel
        assert_close(layer(x), want, rtol=1e-4, atol=1e-5)


def test_span_gradient_is_nonzero_only_where_the_ramp_is():
    torch.manual_seed(0)
    # Head 0: span 3, ramp 4 -> the ramp covers distances 4..6, inside the sequence.
    # Head 1: span 40 -> the ramp lies beyond the 12 positions: no gradient.
    layer = _span_layer([3.0, 40.0], ramp=4).train()
    layer(torch.randn(2, 12, 8)).square().sum().backward()
    g = layer.span.z.grad
    assert g[0] != 0 and g[1] == 0


def test_span_penalty_joins_the_loss_and_spans_stay_in_range():
    torch.manual_seed(0)
    lm = LongformerCharLM(vocab_size=12, d_model=16, n_heads=2, n_layers=2, d_ff=32, window=[8, 8], max_tokens=64,
                          dropout=0.0, attention={"type": "mhsa", "pattern": "causal",
                                     "span": {"max": 32, "ramp": 4, "penalty": 0.5, "init": 0.5}})
    spans = [m.span for m in lm.modules() if getattr(m, "span", None) is not None]
    assert len(spans) == 2
    aux = auxiliary_loss(lm)
    assert_close(aux, torch.tensor(2 * 0.5 * 16.0))  # 2 layers x penalty x mean span (0.5 * 32)
    from tsformer.tasks.charlm import CharLMModule

    module = CharLMModule(lm)
    module.log = lambda *a, **k: None
    batch = {"inputs": torch.randint(0, 12, (2, 10)), "targets": torch.randint(0, 12, (2, 10)),
             "weight": torch.ones(2, 10)}
    nll = module._nll(batch)
    assert_close(module.training_step(batch, 0), nll[0] / nll[1] + aux)
    opt = torch.optim.SGD(lm.parameters(), lr=10.0)  # big steps push z out of [0, 1]
    for sign in (1, -1):
        opt.zero_grad()
        (sign * 1e3 * torch.stack([s.z.sum() for s in spans]).sum()).backward()
        opt.step()
        apply_constraints(lm)
        assert all(bool(((s.z >= 0) & (s.z <= 1)).all()) for s in spans)


def test_trimmed_spans_shrink_the_computed_window():
    layer = _span_layer([3.0, 5.0], max_span=256, ramp=4)
    assert layer.span.window() == 16 and layer.span.pattern().window == 16  # ceil(5) + 4, rounded up to 8s
    with torch.no_grad():
        layer.span.z.fill_(1.0)
    assert layer.span.window() == 256  # never beyond max
    # Keys beyond the window are not in the pattern, so the window kernel's work follows the span.
    assert layer.span.pattern().one_sided


@pytest.mark.parametrize("attention", [
    {"positions": "alibi"}, {"span": {"max": 16, "ramp": 4}}, {"persistent": 4}, {"positions": "xl"},
    {"positions": "alibi", "persistent": 2},
])
def test_options_decode_on_the_cache(attention):
    torch.manual_seed(0)
    m = ConvTransformerForecaster(2, 1, d_model=16, n_heads=2, n_layers=2, d_ff=16, dropout=0.0,
                                  attention={"type": "mhsa", "pattern": "causal", **attention}).eval()
    g = torch.Generator().manual_seed(0)
    x, cov, sid = torch.randn(2, 14, generator=g), torch.randn(2, 18, 1, generator=g), torch.tensor([0, 1])
    a = m.sample(x, cov, sid, num_samples=3, generator=torch.Generator().manual_seed(2))
    b = m.sample_reference(x, cov, sid, num_samples=3, generator=torch.Generator().manual_seed(2))
    assert_close(a, b, rtol=1e-4, atol=1e-4)
    lm = LongformerCharLM(vocab_size=12, d_model=16, n_heads=2, n_layers=2, d_ff=16, window=[8, 8], max_tokens=64,
                          attention={"type": "mhsa", "pattern": "causal", **attention}, dropout=0.0,
                          ffn="none" if "persistent" in attention else "mlp").eval()
    tokens = torch.randint(1, 12, (2, 20))
    with torch.no_grad():
        full = lm(tokens)
        cache = lm.new_cache(2, 20)
        steps = [lm(tokens[:, :9], cache=cache)] + [lm(tokens[:, t : t + 1], cache=cache) for t in range(9, 20)]
    assert_close(torch.cat(steps, 1), full, rtol=1e-4, atol=1e-5)
    assert math.isfinite(float(full.sum()))
