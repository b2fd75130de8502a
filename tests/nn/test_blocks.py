"""Block parts: the GLU feed-forward (MosaicBERT's) at the MLP's parameter count."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from tsformer.nn.blocks import GLUFeedForward, glu_width, make_ffn


def n_params(m):
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize(("d", "d_ff"), [(64, 128), (128, 384), (768, 3072)])
def test_glu_width_matches_the_mlp_parameters(d, d_ff):
    mlp, glu = make_ffn("mlp", d, d_ff, 0.1), make_ffn("glu", d, d_ff, 0.1)
    assert abs(n_params(glu) - n_params(mlp)) / n_params(mlp) < 0.01
    assert glu_width(768, 3072) == 2048  # 3 d h + 2 h + d = 2 d d_ff + d_ff + d: h = 2047.6, rounded


def test_glu_is_gelu_gate_times_value():
    torch.manual_seed(0)
    ffn = GLUFeedForward(8, 16).eval()
    x = torch.randn(3, 5, 8)
    h = ffn.hidden
    w, b = ffn.wi.weight, ffn.wi.bias
    gate, value = x @ w[:h].T + b[:h], x @ w[h:].T + b[h:]
    assert_close(ffn(x), (torch.nn.functional.gelu(gate) * value) @ ffn.wo.weight.T + ffn.wo.bias)


def test_networks_take_the_glu_and_keep_the_mlp_layout():
    from tsformer.nn.conv_transformer import ConvTransformerForecaster
    from tsformer.nn.longformer import LongformerCharLM

    f_mlp = ConvTransformerForecaster(2, 1, d_model=16, n_heads=2, n_layers=1, d_ff=32)
    assert {"blocks.0.ff.0.weight", "blocks.0.ff.3.weight"} <= set(f_mlp.state_dict())  # checkpoints keep loading
    f_glu = ConvTransformerForecaster(2, 1, d_model=16, n_heads=2, n_layers=1, d_ff=32, ffn="glu")
    assert abs(n_params(f_glu) - n_params(f_mlp)) / n_params(f_mlp) < 0.01
    lm = LongformerCharLM(vocab_size=10, d_model=16, n_heads=2, n_layers=1, d_ff=32, window=[4], max_tokens=32,
                          ffn="glu")
    assert lm(torch.randint(0, 10, (1, 7))).shape == (1, 7, 10)
    with pytest.raises(ValueError, match="model.ffn='swish'"):
        make_ffn("swish", 16, 32, 0.0)


@pytest.mark.parametrize(("d", "d_ff"), [(16, 32), (128, 512)])
def test_glu_shapes_and_parameters_as_configured(d, d_ff):
    """model.ffn=glu: gate and value ``d -> h`` in one matrix, ``h -> d`` out, ``h = glu_width``;
    an encoder with it has the MLP encoder's parameter count (within 1%)."""
    from tsformer.nn.longformer import LongformerEncoder

    ff = make_ffn("glu", d, d_ff, 0.0, inner_dropout=False)[0]
    h = glu_width(d, d_ff)
    assert ff.hidden == h
    assert ff.wi.weight.shape == (2 * h, d) and ff.wi.bias.shape == (2 * h,)
    assert ff.wo.weight.shape == (d, h) and ff.wo.bias.shape == (d,)
    assert n_params(ff) == 3 * d * h + 2 * h + d
    assert ff(torch.randn(2, 5, d)).shape == (2, 5, d) and ff(torch.randn(7, d)).shape == (7, d)  # packed rows too
    kw = dict(d_model=d, n_heads=4, n_layers=2, d_ff=d_ff, window=8, max_tokens=64)
    enc_mlp, enc_glu = LongformerEncoder(50, **kw), LongformerEncoder(50, ffn="glu", **kw)
    assert abs(n_params(enc_glu) - n_params(enc_mlp)) / n_params(enc_mlp) < 0.01
    assert isinstance(enc_glu.layers[1].ff[0], GLUFeedForward)
