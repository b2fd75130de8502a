"""Longformer layers: equivalence with Hugging Face, global tokens, padding invariance."""

import pytest
import torch

from tsformer.nn.attention import LongformerSelfAttention
from tsformer.nn.longformer import LongformerCharLM, LongformerClassifier, LongformerEncoder, bits_per_char


def hf_self_attention(d_model, n_heads, window, seed=0):
    """Hugging Face's LongformerSelfAttention, randomly initialised (no download)."""
    transformers = pytest.importorskip("transformers")
    from transformers.models.longformer.modeling_longformer import LongformerSelfAttention as HF

    cfg = transformers.LongformerConfig(hidden_size=d_model, num_attention_heads=n_heads, attention_window=[window],
                                        num_hidden_layers=1, attention_probs_dropout_prob=0.0)
    torch.manual_seed(seed)
    layer = HF(cfg, layer_id=0).eval()
    for p in layer.parameters():  # HF leaves biases at zero: randomise everything
        torch.nn.init.normal_(p, std=0.05)
    return layer


def hf_forward(layer, x, global_idx=(), lengths=None):
    B, L, _ = x.shape
    mask = torch.zeros(B, L)
    for i in global_idx:
        mask[:, i] = 10000.0
    if lengths is not None:
        mask[torch.arange(L)[None, :] >= lengths[:, None]] = -10000.0
    is_masked, is_global = mask < 0, mask > 0
    return layer(x, attention_mask=mask, is_index_masked=is_masked, is_index_global_attn=is_global,
                 is_global_attn=bool(is_global.any()))[0]


@pytest.mark.parametrize("kernel", ["reference", "sparse", "auto"])
@pytest.mark.parametrize("padded", [False, True])
def test_matches_hugging_face_with_same_weights(kernel, padded):
    d, h, w, L = 64, 4, 16, 64
    hf = hf_self_attention(d, h, w)
    ours = LongformerSelfAttention(d, h, window=w, kernel=kernel).eval()
    missing, unexpected = ours.load_state_dict(hf.state_dict(), strict=False)
    # Hugging Face keeps the output projection in a separate module (LongformerSelfOutput).
    assert set(missing) == {"out.weight", "out.bias"} and not unexpected
    torch.manual_seed(1)
    x = torch.randn(2, L, d)
    lengths = torch.tensor([L, 41]) if padded else None
    g = (0, 5)
    with torch.no_grad():
        ref = hf_forward(hf, x, g, lengths)
        out = ours.context(x, lengths, g)
    valid = torch.ones(2, L, dtype=torch.bool) if lengths is None else torch.arange(L)[None] < lengths[:, None]
    torch.testing.assert_close(out[valid], ref[valid], atol=2e-5, rtol=1e-4)


def test_matches_hugging_face_without_globals():
    d, h, w, L = 32, 2, 8, 48
    hf = hf_self_attention(d, h, w, seed=3)
    ours = LongformerSelfAttention(d, h, window=w).eval()
    ours.load_state_dict(hf.state_dict(), strict=False)
    x = torch.randn(1, L, d)
    with torch.no_grad():
        torch.testing.assert_close(ours.context(x), hf_forward(hf, x), atol=2e-5, rtol=1e-4)


def test_global_token_sees_and_is_seen_by_everything():
    torch.manual_seed(0)
    attn = LongformerSelfAttention(16, 2, window=4, kernel="reference").eval()
    x = torch.randn(1, 40, 16, requires_grad=True)
    out = attn(x, None, (0,))
    # The global row depends on the far end of the sequence...
    (g,) = torch.autograd.grad(out[0, 0].sum(), x)
    assert g[0, 39].abs().sum() > 0
    # ...and a far position depends on the global token, but not on other far positions.
    (g,) = torch.autograd.grad(attn(x, None, (0,))[0, 30].sum(), x)
    assert g[0, 0].abs().sum() > 0 and g[0, 10].abs().sum() == 0
    # Without globals position 30 no longer sees position 0.
    (g,) = torch.autograd.grad(attn(x, None, ())[0, 30].sum(), x)
    assert g[0, 0].abs().sum() == 0


def test_global_projections_are_used_for_global_rows_only():
    torch.manual_seed(0)
    attn = LongformerSelfAttention(16, 2, window=4).eval()
    x = torch.randn(1, 20, 16)
    before = attn(x, None, (0,))
    with torch.no_grad():
        attn.query_global.weight.add_(1.0)
    after = attn(x, None, (0,))
    assert not torch.allclose(before[0, 0], after[0, 0])
    torch.testing.assert_close(before[0, 1:], after[0, 1:])


def test_per_head_dilation_changes_only_the_dilated_heads():
    torch.manual_seed(0)
    a = LongformerSelfAttention(16, 4, window=4, dilation=1).eval()
    b = LongformerSelfAttention(16, 4, window=4, dilation=3, dilated_heads=2).eval()
    b.load_state_dict(a.state_dict())
    x = torch.randn(1, 30, 16)
    ya, yb = a.context(x).view(1, 30, 4, 4), b.context(x).view(1, 30, 4, 4)  # per-head, before `out`
    torch.testing.assert_close(ya[:, :, :2], yb[:, :, :2])
    assert not torch.allclose(ya[:, :, 2:], yb[:, :, 2:])


@pytest.mark.parametrize(("positions", "pooling"), [("learned", "cls"), ("rotary", "cls"), ("learned", "mean"),
                                                     ("rotary", "cls_mean")])
def test_classifier_is_invariant_to_padding(positions, pooling):
    torch.manual_seed(0)
    model = LongformerClassifier(vocab_size=50, num_classes=3, d_model=32, n_heads=4, n_layers=2, d_ff=64,
                                 window=[4, 8], dilation=[1, 2], dilated_heads=2, max_tokens=64,
                                 positions=positions, pooling=pooling).eval()
    doc = torch.randint(4, 50, (1, 23))
    doc[0, 0] = 2
    alone = model(doc, torch.tensor([23]))
    padded = torch.zeros(2, 40, dtype=torch.long)
    padded[0, :23] = doc[0]
    padded[1] = torch.randint(4, 50, (40,))
    batch = model(padded, torch.tensor([23, 40]))
    torch.testing.assert_close(batch[0], alone[0], atol=1e-5, rtol=1e-5)
    # Padding content does not leak in.
    padded[0, 23:] = 7
    torch.testing.assert_close(model(padded, torch.tensor([23, 40]))[0], alone[0], atol=1e-5, rtol=1e-5)


def test_mean_pooling_averages_valid_positions():
    torch.manual_seed(0)
    model = LongformerClassifier(vocab_size=50, num_classes=2, d_model=16, n_heads=2, n_layers=1, d_ff=32,
                                 window=[4], dilation=[1], max_tokens=64, pooling="mean").eval()
    docs = torch.randint(4, 50, (2, 30))
    lengths = torch.tensor([30, 17])
    h = model.encoder(docs, lengths, (0,))
    want = model.head(torch.stack([h[0].mean(0), h[1, :17].mean(0)]))
    torch.testing.assert_close(model(docs, lengths), want)
    with pytest.raises(ValueError, match="pooling"):
        LongformerClassifier(vocab_size=50, num_classes=2, d_model=16, n_heads=2, n_layers=1, d_ff=32,
                             window=[4], dilation=[1], max_tokens=64, pooling="max")


def test_token_dropout_zeroes_drawn_tokens_in_training_only():
    torch.manual_seed(0)
    kw = dict(vocab_size=50, num_classes=2, d_model=16, n_heads=2, n_layers=1, d_ff=32, window=[4], dilation=[1],
              max_tokens=64, pooling="mean", dropout=0.0)
    model = LongformerClassifier(token_dropout=0.3, **kw)
    docs = torch.randint(4, 50, (3, 40))
    docs[:, 0] = 2
    lengths = torch.tensor([40, 31, 12])
    torch.manual_seed(1)
    drop = torch.rand(docs.shape) < 0.3
    drop[:, 0] = False  # the global <cls> token is kept
    want = model.eval()(docs.masked_fill(drop, 0), lengths)
    torch.manual_seed(1)
    torch.testing.assert_close(model.train()(docs, lengths), want)
    assert 0.2 < drop[:, 1:].float().mean() < 0.4
    # Evaluation sees every token.
    plain = LongformerClassifier(**kw)
    plain.load_state_dict(model.state_dict())
    torch.testing.assert_close(model.eval()(docs, lengths), plain.eval()(docs, lengths))
    with pytest.raises(ValueError, match="token_dropout"):
        LongformerClassifier(token_dropout=1.0, **kw)


def test_truncated_encoder_keeps_first_tokens_only():
    torch.manual_seed(0)
    enc = LongformerEncoder(30, d_model=16, n_heads=2, n_layers=1, d_ff=32, max_tokens=64, truncate=10,
                            attention={"pattern": "full"}).eval()
    t = torch.randint(1, 30, (1, 50))
    t2 = t.clone()
    t2[0, 10:] = 1
    assert enc(t).shape == (1, 10, 16)
    torch.testing.assert_close(enc(t), enc(t2))


def test_too_long_input_is_rejected():
    enc = LongformerEncoder(30, d_model=16, n_heads=2, n_layers=1, d_ff=32, max_tokens=8)
    with pytest.raises(ValueError, match="max_tokens"):
        enc(torch.ones(1, 9, dtype=torch.long))


def test_char_lm_is_causal_and_bpc_of_uniform_is_log2_vocab():
    torch.manual_seed(0)
    lm = LongformerCharLM(vocab_size=20, d_model=16, n_heads=2, n_layers=2, d_ff=32, window=[4, 4],
                          dilation=[1, 2], max_tokens=64).eval()
    x = torch.randint(1, 20, (1, 30))
    y = x.clone()
    y[0, 20:] = 5
    torch.testing.assert_close(lm(x)[:, :20], lm(y)[:, :20])
    logits = torch.zeros(2, 5, 16)
    assert abs(float(bits_per_char(logits, torch.randint(0, 16, (2, 5)))) - 4.0) < 1e-6
