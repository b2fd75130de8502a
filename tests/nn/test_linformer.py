"""Linformer (Wang et al. 2020): exact when k = L with identity projections, padding-invariant,
never causal, projections shared as asked."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from tsformer.nn.attention import LinformerAttention, MultiHeadSelfAttention, build_attention


def test_equals_exact_attention_with_identity_projections_and_k_equal_l():
    torch.manual_seed(0)
    L = 9
    lin = LinformerAttention(16, 2, k=L, max_len=L, sharing="headwise", kernel="reference").eval()
    full = MultiHeadSelfAttention(16, 2, pattern="full", kernel="reference").eval()
    full.load_state_dict({k: v for k, v in lin.state_dict().items() if k.startswith(("qkv", "out"))})
    with torch.no_grad():
        lin.proj.copy_(torch.eye(L).expand_as(lin.proj))
        lin.proj_v.copy_(torch.eye(L).expand_as(lin.proj_v))
    x = torch.randn(2, L, 16)
    assert_close(lin(x), full(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("sharing", ["headwise", "kv", "layer"])
def test_padding_does_not_change_real_positions(sharing):
    torch.manual_seed(0)
    lin = build_attention({"type": "linformer", "k": 6, "max_len": 40, "sharing": sharing}, 16, 2,
                          shared={}).eval()
    x = torch.randn(1, 13, 16)
    alone = lin(x, torch.tensor([13]))
    padded = torch.cat([x, 50 * torch.randn(1, 20, 16)], 1)  # garbage in the padding
    batched = lin(padded, torch.tensor([13]))
    assert_close(batched[:, :13], alone, rtol=1e-5, atol=1e-5)


def test_cannot_be_causal_and_says_why():
    with pytest.raises(ValueError, match="decoder.*linformer.*mixes all positions"):
        build_attention({"type": "linformer"}, 16, 2, causal=True, network="the decoder")
    with pytest.raises(ValueError, match="cannot take pattern 'causal'.*mixes all positions"):
        build_attention({"type": "linformer", "pattern": "causal"}, 16, 2)
    with pytest.raises(ValueError, match="no score-bias positions"):
        build_attention({"type": "linformer", "positions": "alibi"}, 16, 2)


def test_layer_sharing_is_one_parameter_across_layers():
    from tsformer.nn.longformer import LongformerClassifier

    kw = dict(vocab_size=30, num_classes=2, d_model=16, n_heads=2, n_layers=3, d_ff=32, window=[4, 4, 4],
              max_tokens=64)
    per_layer = LongformerClassifier(attention={"type": "linformer", "k": 8, "sharing": "kv"}, **kw)
    one = LongformerClassifier(attention={"type": "linformer", "k": 8, "sharing": "layer"}, **kw)
    projs = {id(lay.attn.proj) for lay in one.encoder.layers}
    assert len(projs) == 1 and len({id(lay.attn.proj) for lay in per_layer.encoder.layers}) == 3
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert n(per_layer) - n(one) == 2 * 8 * 64
    tokens = torch.randint(1, 30, (2, 20))
    assert one(tokens, torch.tensor([20, 11])).shape == (2, 2)
