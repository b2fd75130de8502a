"""Unpadding (model.unpad, MosaicBERT): the packed encoder equals the padded one on the real
tokens, outputs and gradients in fp32, for every attention type and pattern the encoder takes."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from tsformer.nn.longformer import (
    LongformerCharLM,
    LongformerClassifier,
    LongformerEncoder,
    LongformerMaskedLM,
)
from tsformer.nn.precision import FP32LayerNorm
from tsformer.nn.unpad import Packing

V = 23
LENGTHS = [9, 1, 6, 13, 2]  # odd lengths, a one-token document, one at the full length
BASE = dict(d_model=16, n_heads=4, n_layers=2, d_ff=24, window=[4, 6], max_tokens=32, dropout=0.0)

CASES = {
    "longformer_window_dilated": dict(dilation=[1, 2], dilated_heads=2),
    "longformer_window_alibi_glu": dict(dilation=[1, 2], ffn="glu", attention={"positions": "alibi"}),
    "longformer_window_rotary": dict(attention={"positions": "rotary"}),
    "longformer_window_relative": dict(attention={"positions": "relative", "max_relative": 3}),
    "longformer_full": dict(attention={"pattern": "full"}),
    "mhsa_full_alibi": dict(attention={"type": "mhsa", "pattern": "full", "positions": "alibi"}),
    "mhsa_window": dict(attention={"type": "mhsa", "pattern": "window"}),
    "mhsa_logsparse": dict(attention={"type": "mhsa", "pattern": "logsparse"}),
    "mhsa_causal": dict(attention={"type": "mhsa", "pattern": "causal"}),
    "mhsa_span": dict(attention={"type": "mhsa", "pattern": "full", "span": {"max": 8, "ramp": 2}}),
    "mhsa_persistent_noffn": dict(ffn="none", attention={"type": "mhsa", "pattern": "full", "persistent": 3}),
    "mqa": dict(attention={"type": "mqa", "pattern": "full"}),
    "linformer": dict(attention={"type": "linformer", "k": 5}),
    "conv": dict(attention={"type": "conv", "pattern": "logsparse"}),
    "lsra": dict(attention={"type": "lsra", "pattern": "full"}),
}


def batch(lengths=LENGTHS, seed=0):
    g = torch.Generator().manual_seed(seed)
    L = max(lengths)
    tokens = torch.randint(3, V, (len(lengths), L), generator=g)
    lens = torch.tensor(lengths)
    tokens[torch.arange(L)[None] >= lens[:, None]] = 0
    return tokens, lens


def twins(**kw):
    torch.manual_seed(0)
    padded = LongformerEncoder(V, **{**BASE, **kw})
    packed = LongformerEncoder(V, **{**BASE, **kw}, unpad=True)
    packed.load_state_dict(padded.state_dict())
    return padded, packed


def check_equal(padded, packed, tokens, lens, global_idx=(0,)):
    real = torch.arange(tokens.shape[1])[None] < lens[:, None]
    w = torch.randn(*tokens.shape, padded.norm.normalized_shape[0], generator=torch.Generator().manual_seed(1))
    outs, grads = [], []
    for net in (padded, packed):
        net.zero_grad()
        h = net(tokens, lens, global_idx)
        (h * w)[real].sum().backward()
        outs.append(h[real])
        grads.append({n: p.grad for n, p in net.named_parameters() if p.grad is not None})
    assert_close(outs[1], outs[0], rtol=1e-5, atol=1e-5)
    assert set(grads[1]) == set(grads[0])
    for n, g in grads[0].items():
        assert_close(grads[1][n], g, rtol=1e-4, atol=1e-5, msg=n)
    assert torch.all(packed(tokens, lens, global_idx)[~real] == 0)  # the padding comes back as zeros


@pytest.mark.parametrize("case", sorted(CASES))
def test_unpadded_encoder_equals_padded_on_real_tokens(case):
    padded, packed = twins(**CASES[case])
    tokens, lens = batch()
    check_equal(padded, packed, tokens, lens)


def test_unpadded_global_tokens_past_a_short_document():
    """Global positions beyond a document's end (length-1 and length-2 documents) stay padding."""
    padded, packed = twins(dilation=[1, 2])
    tokens, lens = batch([1, 2, 7, 5])
    check_equal(padded, packed, tokens, lens, global_idx=(0, 3))


def test_unpadded_classifier_and_masked_lm_equal_padded():
    tokens, lens = batch()
    torch.manual_seed(0)
    enc = dict(BASE, dropout=0.0)
    for cls, kw in ((LongformerClassifier, {"num_classes": 3, "pooling": "mean"}), (LongformerMaskedLM, {"mask_prob": 0.3})):
        torch.manual_seed(0)
        a = cls(V, **kw, **enc).eval()
        b = cls(V, **kw, **enc, unpad=True).eval()
        b.load_state_dict(a.state_dict())
        if cls is LongformerMaskedLM:
            ra, rb = (m(tokens, lens, generator=torch.Generator().manual_seed(3)) for m in (a, b))
            assert_close(rb[0], ra[0])
            assert torch.equal(rb[1], ra[1]) and torch.equal(rb[2], ra[2])
        else:
            assert_close(b(tokens, lens), a(tokens, lens), rtol=1e-5, atol=1e-5)


def test_unpad_without_lengths_is_the_padded_path():
    padded, packed = twins()
    tokens, _ = batch([5, 5])
    assert_close(packed(tokens), padded(tokens))


def test_packing_round_trip_and_rows():
    lens = torch.tensor([3, 1, 4])
    p = Packing.from_lengths(lens, 4)
    assert p.tokens == 8 and p.positions().tolist() == [0, 1, 2, 0, 0, 1, 2, 3]
    x = torch.randn(3, 4, 2)
    packed = p.unpad(x)
    assert packed.shape == (8, 2)
    back = p.pad(packed)
    real = torch.arange(4)[None] < lens[:, None]
    assert torch.equal(back[real], x[real]) and torch.all(back[~real] == 0)
    rows = p.rows(packed, [0, 2])  # (B, 2, 2): position 2 of the one-token document is padding
    assert torch.equal(rows[:, 0], x[:, 0]) and torch.equal(rows[1, 1], torch.zeros(2))
    assert torch.equal(rows[[0, 2], 1], x[[0, 2], 2])


def test_unpad_refuses_what_needs_the_padded_layout():
    with pytest.raises(ValueError, match="model.unpad needs a bidirectional encoder"):
        LongformerCharLM(V, unpad=True, **BASE)
    with pytest.raises(ValueError, match="model.ffn=rwkv"):
        LongformerEncoder(V, unpad=True, ffn="rwkv", **BASE)
    with pytest.raises(ValueError, match="model.autocast"):
        LongformerEncoder(V, autocast="fp8", **BASE)


def test_fp32_layernorm_under_bf16_autocast():
    torch.manual_seed(0)
    ln = FP32LayerNorm(8)
    ref = torch.nn.LayerNorm(8)
    ref.load_state_dict(ln.state_dict())
    x = torch.randn(3, 8) * 4 + 2
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert ln(x).dtype == torch.float32  # an fp32 residual stream stays fp32
        assert_close(ln(x), ref(x))
        xb = x.bfloat16()
        out = ln(xb)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, ref(xb.float()).bfloat16())  # statistics in fp32, one rounding at the end
    assert_close(ln(x), ref(x), rtol=0, atol=0)
