"""Attention layers: registry and builder, old checkpoints, cached decoding, positions."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import Tensor
from torch.testing import assert_close

from tsformer.attention import Causal, attention
from tsformer.attention.split import split_attention
from tsformer.nn.attention import (
    ATTENTION_LAYERS,
    AttentionLayer,
    MultiHeadSelfAttention,
    build_attention,
    register_attention,
)
from tsformer.nn.conformer import ConformerCTC
from tsformer.nn.conv_transformer import ConvTransformerForecaster
from tsformer.nn.longformer import LongformerCharLM, LongformerClassifier
from tsformer.nn.patch_forecaster import PatchForecaster

GOLDEN = Path(__file__).with_name("golden") / "pre_layers.pt"
CLASSES = {
    "forecaster": ConvTransformerForecaster,
    "patch": PatchForecaster,
    "conformer_relative": ConformerCTC,
    "conformer_lsra": ConformerCTC,
    "longformer": LongformerClassifier,
    "charlm": LongformerCharLM,
}


@pytest.fixture(scope="module")
def golden():
    return torch.load(GOLDEN, weights_only=False)


@pytest.mark.parametrize("name", list(CLASSES))
def test_checkpoints_from_before_the_change_load_and_compute_the_same(golden, name):
    """Weights saved by the pre-layer networks (tests/nn/golden/make_pre_layers.py) load
    strictly into today's, and give the same outputs (relative positions now go through
    the score-bias path; Longformer's output projection moved into its attention layer)."""
    entry = golden[name]
    net = CLASSES[name](**entry["kwargs"]).eval()
    net.load_state_dict(entry["state_dict"], strict=True)
    with torch.no_grad():
        out = net(*entry["inputs"])
    want = entry["outputs"]
    for a, b in zip(out if isinstance(out, tuple) else (out,), want if isinstance(want, tuple) else (want,)):
        assert_close(a, b, rtol=1e-4, atol=1e-5)
    if name == "forecaster":  # sample paths for a fixed seed are those of before
        ctx, cov, sid = entry["inputs"]
        with torch.no_grad():
            s = net.sample(ctx[:, :21], cov[:, :28], sid, num_samples=5, generator=torch.Generator().manual_seed(3))
        assert_close(s, entry["samples"], rtol=1e-4, atol=1e-4)


def test_registry_and_builder():
    assert {"mhsa", "conv", "lsra", "longformer"} <= set(ATTENTION_LAYERS)
    layer = build_attention({"type": "mhsa", "pattern": "window", "window": 8, "positions": "relative"}, 32, 4)
    assert isinstance(layer, MultiHeadSelfAttention) and layer.spec.window == 8
    assert layer(torch.randn(2, 11, 32), torch.tensor([11, 5])).shape == (2, 11, 32)
    with pytest.raises(ValueError, match="unknown attention type 'nope'"):
        build_attention({"type": "nope"}, 32, 4)
    with pytest.raises(ValueError, match=r"does not take the option\(s\) \['conv_heads'\]"):
        build_attention({"type": "mhsa", "conv_heads": 2}, 32, 4)
    with pytest.raises(ValueError, match="unknown attention kernel"):
        build_attention({"kernel": "nope"}, 32, 4)
    with pytest.raises(ValueError, match="positions='sinusoid'"):
        build_attention({"positions": "sinusoid"}, 32, 4)


def test_layer_pattern_mismatches_name_both_sides():
    # A bidirectional layer type in a decoder.
    with pytest.raises(ValueError, match=r"decoder.*'lsra'.*bidirectional"):
        build_attention({"type": "lsra", "pattern": "causal"}, 32, 4, causal=True, network="the decoder")
    # A non-causal pattern in a decoder.
    with pytest.raises(ValueError, match=r"causal pattern.*'full'.*'mhsa'"):
        build_attention({"type": "mhsa", "pattern": "full"}, 32, 4, causal=True)
    # A pattern the type cannot take.
    with pytest.raises(ValueError, match=r"'longformer'.*cannot take pattern 'logsparse'"):
        build_attention({"type": "longformer", "pattern": "logsparse"}, 32, 4)
    with pytest.raises(ValueError, match="ConvTransformerForecaster"):
        ConvTransformerForecaster(2, 1, d_model=16, n_heads=2, attention={"pattern": "full"})


def test_register_a_new_type():
    @register_attention("test_identity_attention")
    class Identity(AttentionLayer):
        def __init__(self, d_model, n_heads, spec=None, **config):
            super().__init__()
            self.setup(spec, d_model, n_heads, config)

        def forward(self, x, lengths=None, global_idx=(), cache=None):
            return x

    try:
        net = PatchForecaster(32, 4, patch_len=8, stride=4, d_model=16, n_heads=2,
                              attention={"type": "test_identity_attention", "pattern": "full"})
        assert all(isinstance(b.attn, Identity) for b in net.blocks)
        assert net(torch.randn(3, 32)).shape == (3, 4)
        with pytest.raises(ValueError, match="already registered"):
            register_attention("mhsa")(Identity)
    finally:
        ATTENTION_LAYERS.pop("test_identity_attention")


def test_relative_positions_through_bias_equal_the_dense_formula():
    """Shaw et al. (2018): scores ``(q.k + q.a_{clip(j-i)}) / sqrt(d)``, written out densely,
    equal the layer's bias path on every kernel that takes the bias."""
    torch.manual_seed(0)
    for kernel in ["reference", "sdpa", "auto"]:
        layer = MultiHeadSelfAttention(16, 2, positions="relative", max_relative=3, kernel=kernel).eval()
        x = torch.randn(2, 9, 16)
        lengths = torch.tensor([9, 6])
        q, k, v = layer.qkv(x).view(2, 9, 3, 2, 8).permute(2, 0, 3, 1, 4)
        idx = torch.arange(9)
        rel = (idx[None, :] - idx[:, None]).clamp(-3, 3) + 3
        scores = (q @ k.transpose(-1, -2) + torch.einsum("bhid,ijd->bhij", q, layer.positions.rel_k(rel))) / 8**0.5
        scores = scores.masked_fill(~(idx[None, :] < lengths[:, None])[:, None, None], float("-inf"))
        ref = layer.out((scores.softmax(-1) @ v).transpose(1, 2).reshape(2, 9, 16))
        assert_close(layer(x, lengths), ref, rtol=1e-4, atol=1e-5)


def _spare_buffer(t: Tensor, spare: int) -> Tensor:
    """``t (B, H, R, n, D)`` as a position-major cache buffer ``(B, n + spare, R, H, D)`` of
    which only the first ``n`` positions are written (a read of the rest shows as NaN)."""
    return torch.cat([t, torch.full((*t.shape[:3], spare, t.shape[-1]), float("nan"))], 3).permute(0, 3, 2, 1, 4)


def _split(q: Tensor, pk, pv, sk, sv, pattern, spare: int = 0, **kw) -> Tensor:
    """split_attention on head-major ``q (B, H, R, l, D)`` and suffixes ``(B, H, R, n, D)``
    (the layout the reference loop below slices), returning ``(B, H, R, l, D)``."""
    out = split_attention(q.transpose(1, 2), pk, pv, _spare_buffer(sk, spare), _spare_buffer(sv, spare), pattern,
                          suffix_len=sk.shape[3], **kw)
    return out.transpose(1, 2)


@pytest.mark.parametrize("spare", [0, 3])
@pytest.mark.parametrize("in_place", [True, False])
@pytest.mark.parametrize("lq", [1, 2])
def test_split_attention_equals_reference_over_concatenated_keys(spare, in_place, lq, monkeypatch):
    import tsformer.attention.split as split

    monkeypatch.setattr(split, "_LOOP_KEYS", 32 if in_place else -1)
    g = torch.Generator().manual_seed(0)
    B, H, R, P, n, D = 2, 2, 3, 5, 4, 8
    q = torch.randn(B, H, R, lq, D, generator=g)
    pk, pv = torch.randn(B, H, P, D, generator=g), torch.randn(B, H, P, D, generator=g)
    sk, sv = torch.randn(B, H, R, n, D, generator=g), torch.randn(B, H, R, n, D, generator=g)
    out = _split(q, pk, pv, sk, sv, Causal(), spare)
    for r in range(R):
        k = torch.cat([pk, sk[:, :, r]], 2)
        v = torch.cat([pv, sv[:, :, r]], 2)
        assert_close(out[:, :, r], attention(q[:, :, r], k, v, Causal(), kernel="reference"))


@pytest.mark.parametrize("P,n,lq", [(0, 1, 1), (1, 0, 1), (168, 0, 1), (7, 1, 1), (13, 5, 1), (40, 9, 3), (168, 23, 1), (33, 17, 17)])
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("spare", [0, 2])
@pytest.mark.parametrize("in_place", [True, False])
def test_split_attention_gathers_sparse_keys_like_the_reference(P, n, lq, with_bias, spare, in_place, monkeypatch):
    """A LogSparse step scores only the keys its queries may see (the gathered fast path,
    with the suffix keys read in place, as on CPU, or gathered, as on other devices); the
    result equals the reference kernel over the concatenated keys, also when the suffix
    comes as a longer buffer of which ``suffix_len`` positions are written."""
    import tsformer.attention.split as split
    from tsformer.attention.bias import DenseBias
    from tsformer.attention.patterns import LogSparse

    monkeypatch.setattr(split, "_LOOP_KEYS", 32 if in_place else -1)

    g = torch.Generator().manual_seed(P * 31 + n)
    B, H, R, D = 2, 2, 3, 8
    q = torch.randn(B, H, R, lq, D, generator=g)
    pk, pv = torch.randn(B, H, P, D, generator=g), torch.randn(B, H, P, D, generator=g)
    sk, sv = torch.randn(B, H, R, n, D, generator=g), torch.randn(B, H, R, n, D, generator=g)
    bias = DenseBias(torch.randn(B * R, H, lq, P + n, generator=g)) if with_bias else None
    out = _split(q, pk, pv, sk, sv, LogSparse(), spare, bias=bias)
    for r in range(R):
        k = torch.cat([pk, sk[:, :, r]], 2)
        v = torch.cat([pv, sv[:, :, r]], 2)
        b = None if bias is None else DenseBias(bias.bias.view(B, R, H, lq, P + n)[:, r])
        assert_close(out[:, :, r], attention(q[:, :, r], k, v, LogSparse(), kernel="reference", bias=b))


@pytest.mark.parametrize("in_place", [True, False])
@pytest.mark.parametrize("lq", [1, 3])
def test_split_attention_gradients_equal_the_reference(in_place, lq, monkeypatch):
    """The gathered LogSparse path (suffix keys read in place or gathered) differentiates
    like the reference kernel over the concatenated keys, for every input."""
    import tsformer.attention.split as split
    from tsformer.attention.patterns import LogSparse

    monkeypatch.setattr(split, "_LOOP_KEYS", 32 if in_place else -1)
    g = torch.Generator().manual_seed(5)
    B, H, R, P, n, D = 2, 2, 3, 40, 9, 8
    xs = [torch.randn(B, H, R, lq, D, generator=g), torch.randn(B, H, P, D, generator=g),
          torch.randn(B, H, P, D, generator=g), torch.randn(B, H, R, n, D, generator=g),
          torch.randn(B, H, R, n, D, generator=g)]
    w = torch.randn(B, H, R, lq, D, generator=g)
    a = [x.clone().requires_grad_() for x in xs]
    (_split(*a, LogSparse()) * w).sum().backward()
    b = [x.clone().requires_grad_() for x in xs]
    q, pk, pv, sk, sv = b
    ref = torch.stack([attention(q[:, :, r], torch.cat([pk, sk[:, :, r]], 2), torch.cat([pv, sv[:, :, r]], 2),
                                 LogSparse(), kernel="reference") for r in range(R)], 2)
    (ref * w).sum().backward()
    for x, y in zip(a, b):
        assert_close(x.grad, y.grad)


@pytest.mark.parametrize("width", [1, 2, 9, 15, 16, 40])
def test_split_softmax_equals_torch_softmax_at_few_keys(width):
    """The vectorised softmax used below 16 keys (PyTorch's CPU kernel is scalar there)
    equals torch.softmax, masked keys included; a row with no allowed key is NaN in both."""
    from tsformer.attention.split import _softmax

    g = torch.Generator().manual_seed(width)
    s = torch.randn(7, 3, width, generator=g) * 20
    s[0, :, : width // 2] = float("-inf")
    s[1, 0] = float("-inf")
    got, want = _softmax(s.clone()), torch.softmax(s, -1)
    assert torch.isnan(got[1, 0]).all() and torch.isnan(want[1, 0]).all()
    keep = ~torch.isnan(want)
    assert_close(got[keep], want[keep], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("positions", ["rotary", "learned", "relative"])
def test_char_lm_cached_decoding_equals_full_recompute(positions):
    torch.manual_seed(0)
    lm = LongformerCharLM(vocab_size=20, d_model=16, n_heads=2, n_layers=2, d_ff=32, window=[4, 8],
                          dilation=[1, 2], dilated_heads=1, max_tokens=64, positions=positions).eval()
    tokens = torch.randint(1, 20, (2, 30))
    with torch.no_grad():
        full = lm(tokens)
        cache = lm.new_cache(2, 30)
        parts = [lm(tokens[:, :11], cache=cache)]
        for t in range(11, 27):
            parts.append(lm(tokens[:, t : t + 1], cache=cache))
        parts.append(lm(tokens[:, 27:], cache=cache))  # several positions in one step
    assert cache.length == 30 and len(cache.hidden) == 2
    assert_close(torch.cat(parts, 1), full, rtol=1e-4, atol=1e-5)


def test_forecaster_cache_serves_other_attention_types():
    torch.manual_seed(0)
    m = ConvTransformerForecaster(3, 2, d_model=16, n_heads=2, n_layers=2, d_ff=32, dropout=0.0,
                                  attention={"type": "mhsa", "pattern": "causal", "positions": "rotary"}).eval()
    g = torch.Generator().manual_seed(0)
    x, cov, sid = torch.randn(2, 26, generator=g), torch.randn(2, 30, 2, generator=g), torch.tensor([0, 1])
    a = m.sample(x, cov, sid, num_samples=4, generator=torch.Generator().manual_seed(3))
    b = m.sample_reference(x, cov, sid, num_samples=4, generator=torch.Generator().manual_seed(3))
    assert_close(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("positions", ["rotary", "relative"])
def test_char_lm_generation_with_cache_equals_recompute(positions):
    from tsformer.nn.decoding import generate_tokens

    torch.manual_seed(0)
    lm = LongformerCharLM(vocab_size=12, d_model=16, n_heads=2, n_layers=2, d_ff=32, window=[4, 8],
                          dilation=[1, 2], dilated_heads=1, max_tokens=64, positions=positions).eval()
    prompt = torch.randint(1, 12, (2, 9))
    fast = generate_tokens(lm, prompt, 40, temperature=0.0, max_context=64)
    slow = generate_tokens(lm, prompt, 40, temperature=0.0, cache=False, max_context=64)
    assert fast.shape == (2, 49) and torch.equal(fast, slow)
    sampled = generate_tokens(lm, prompt, 40, generator=torch.Generator().manual_seed(1), max_context=64)
    again = generate_tokens(lm, prompt, 40, generator=torch.Generator().manual_seed(1), cache=False, max_context=64)
    assert torch.equal(sampled, again)
    with pytest.raises(ValueError, match="exceed the model's 64 positions"):
        generate_tokens(lm, prompt, 60, max_context=64)


def test_multi_query_attention_is_mhsa_with_one_shared_key_value_head():
    """The README's worked example: MQA equals multi-head attention whose per-head key and
    value projections are all the same one (Shazeer 2019)."""
    from tsformer.nn.attention import MultiQueryAttention

    torch.manual_seed(0)
    cfg = {"pattern": "window", "window": 5, "positions": "rotary", "kernel": "sparse"}
    mqa = build_attention({"type": "mqa", **cfg}, 16, 4).eval()
    assert isinstance(mqa, MultiQueryAttention)
    mhsa = MultiHeadSelfAttention(16, 4, **{**cfg, "kernel": "reference"}).eval()
    D = 4
    with torch.no_grad():
        wk, wv = mqa.kv.weight[:D], mqa.kv.weight[D:]
        bk, bv = mqa.kv.bias[:D], mqa.kv.bias[D:]
        mhsa.qkv.weight.copy_(torch.cat([mqa.q.weight, wk.repeat(4, 1), wv.repeat(4, 1)]))
        mhsa.qkv.bias.copy_(torch.cat([mqa.q.bias, bk.repeat(4), bv.repeat(4)]))
        mhsa.out.load_state_dict(mqa.out.state_dict())
    x, lengths = torch.randn(2, 13, 16), torch.tensor([13, 7])
    out = mqa(x, lengths)
    assert_close(out, mhsa(x, lengths), rtol=1e-4, atol=1e-5)
    out.sum().backward()  # gradients reach the shared head through the broadcast views
    assert mqa.kv.weight.grad.abs().sum() > 0
    # It decodes on the shared cache like any other causal layer.
    net = ConvTransformerForecaster(2, 1, d_model=16, n_heads=4, n_layers=1, d_ff=16, dropout=0.0,
                                    attention={"type": "mqa", "pattern": "causal"}).eval()
    g = torch.Generator().manual_seed(0)
    xs, cov, sid = torch.randn(1, 12, generator=g), torch.randn(1, 15, 1, generator=g), torch.tensor([1])
    a = net.sample(xs, cov, sid, num_samples=3, generator=torch.Generator().manual_seed(2))
    b = net.sample_reference(xs, cov, sid, num_samples=3, generator=torch.Generator().manual_seed(2))
    assert_close(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("block", [1, 4, 7])
def test_jacobi_decoding_reaches_the_greedy_continuation(block):
    """Santilli et al. 2023: the fixed point of Jacobi iteration is greedy decoding."""
    from tsformer.nn.decoding import generate_tokens, jacobi_tokens

    torch.manual_seed(0)
    lm = LongformerCharLM(vocab_size=12, d_model=16, n_heads=2, n_layers=2, d_ff=32, window=[4, 8],
                          dilation=[1, 2], dilated_heads=1, max_tokens=128, positions="rotary").eval()
    prompt = torch.randint(1, 12, (2, 9))
    greedy = generate_tokens(lm, prompt, 30, temperature=0.0, max_context=128)
    out, counts = jacobi_tokens(lm, prompt, 30, block=block, max_context=128)
    assert torch.equal(out, greedy)
    assert counts["tokens"] == 30 and (30 - 1) // block <= counts["passes"] <= 30 - 1
