"""Conformer and LSRA: shapes, padding invariance, parameter budgets."""

import pytest
import torch

from tsformer.nn.attention import LSRA, DynamicConv, LightweightConv, MultiHeadSelfAttention
from tsformer.nn.conformer import ConformerCTC
from tsformer.train import compose_config


def n_params(m):
    return sum(p.numel() for p in m.parameters())


SMALL = dict(d_model=32, n_heads=4, n_layers=2, d_ff=64, conv_kernel=7, dropout=0.0, subsampling_channels=8)
ATTNS = [
    {"type": "mhsa", "pos": "rotary"},
    {"type": "mhsa", "pos": "relative", "max_relative": 8},
    {"type": "mhsa", "pos": "none", "pattern": "window", "window": 5},
    {"type": "lsra", "conv_type": "lightweight", "conv_kernel": 5, "conv_heads": 2},
    {"type": "lsra", "conv_type": "dynamic", "conv_kernel": 5, "conv_heads": 2},
]


@pytest.mark.parametrize("attention", ATTNS, ids=lambda a: f"{a['type']}-{a.get('pos', a.get('conv_type'))}")
def test_conformer_shapes_and_padding_invariance(attention):
    torch.manual_seed(0)
    net = ConformerCTC(20, 11, attention=attention, **SMALL).eval()
    x = torch.randn(3, 64, 20)
    lengths = torch.tensor([64, 40, 23])
    lp, out_len = net(x, lengths)
    assert lp.shape == (3, 15, 11)
    assert out_len.tolist() == [15, 9, 5]  # ((L - 1) // 2 - 1) // 2
    assert torch.allclose(lp.exp().sum(-1), torch.ones(3, 15), atol=1e-5)
    for b in (1, 2):
        L = int(lengths[b])
        # Unpadded alone vs padded in the batch (and with garbage in the padding).
        alone, _ = net(x[b : b + 1, :L], lengths[b : b + 1])
        noisy = x.clone()
        noisy[b, L:] = 100.0
        batched, _ = net(noisy, lengths)
        n = int(out_len[b])
        assert torch.allclose(alone[0], lp[b, :n], atol=1e-4)
        assert torch.allclose(alone[0], batched[b, :n], atol=1e-4)


def test_padding_invariance_holds_in_training_mode_batch_norm():
    # Masked batch norm: padded frames do not enter the statistics.
    torch.manual_seed(0)
    net = ConformerCTC(20, 11, attention={"type": "mhsa"}, **SMALL).train()
    x, lengths = torch.randn(2, 40, 20), torch.tensor([40, 30])
    a, _ = net(x, lengths)
    x2 = torch.cat([x, torch.randn(2, 16, 20) * 50], 1)
    b, _ = net(x2, lengths)
    assert torch.allclose(a[0, :9], b[0, :9], atol=1e-4) and torch.allclose(a[1, :6], b[1, :6], atol=1e-4)


def test_lsra_shapes_and_parameter_count():
    d, h, k, ch = 32, 4, 5, 2
    lsra = LSRA(d, h, conv_type="lightweight", conv_kernel=k, conv_heads=ch)
    x, lengths = torch.randn(2, 17, d), torch.tensor([17, 9])
    assert lsra(x, lengths).shape == (2, 17, d)
    half = d // 2
    attn = 4 * half * half + 4 * half  # q, k, v, out projections on half the channels
    glu = half * 2 * half + 2 * half
    conv = ch * k
    out = half * half + half
    assert n_params(lsra) == attn + glu + conv + out
    dyn = LSRA(d, h, conv_type="dynamic", conv_kernel=k, conv_heads=ch)
    assert n_params(dyn) == attn + glu + (half * ch * k + ch * k) + out
    assert n_params(lsra) < n_params(MultiHeadSelfAttention(d, h))


def test_lightweight_and_dynamic_conv_shapes_and_locality():
    x = torch.zeros(1, 20, 8)
    x[0, 10] = 1.0
    for conv in (LightweightConv(8, 5, 2), DynamicConv(8, 5, 2)):
        y = conv(x)
        assert y.shape == x.shape
        assert y[0, :8].abs().max() == 0 and y[0, 13:].abs().max() == 0  # only +-2 frames reached


def test_shipped_configs_have_equal_parameter_budgets():
    counts = {}
    for name in ("conformer", "conformer_lsra"):
        cfg = compose_config(["task=librispeech", f"model={name}"])
        kw = {k: v for k, v in cfg.model.items() if k != "_target_"}
        counts[name] = n_params(ConformerCTC(input_dim=80, vocab_size=32, **kw))
    assert cfg.model.attention.type == "lsra"
    assert abs(counts["conformer"] - counts["conformer_lsra"]) / counts["conformer"] < 0.01
