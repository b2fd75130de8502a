"""Performer / FAVOR+ (Choromanski et al. 2021): unbiased random features, the chunked causal
prefix sums against the quadratic form, redraw schedule, stability, padding, decoding, training."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from tests.nn.recurrent_checks import check_char_lm_decoding, check_forecast_sampling
from tsformer.attention.favor import (
    causal_linear_attention,
    favor_attention,
    gaussian_projection,
    key_shift,
    linear_attention_reference,
    softmax_features,
)
from tsformer.attention.reference import dense_attention
from tsformer.nn.attention import PerformerAttention, build_attention


def _draws(kind: str, orthogonal: bool, q: torch.Tensor, k: torch.Tensor, n: int, m: int = 16) -> torch.Tensor:
    """``n`` independent estimates of ``exp(q . k)`` from ``m`` features."""
    g = torch.Generator().manual_seed(1)
    est = []
    for _ in range(n):
        w = gaussian_projection(m, q.shape[-1], orthogonal, generator=g).double()
        est.append((softmax_features(q, w, kind) * softmax_features(k, w, kind)).sum(-1))
    return torch.stack(est)


@pytest.mark.parametrize("kind", ["positive", "trig"])
@pytest.mark.parametrize("orthogonal", [True, False])
def test_features_estimate_the_softmax_kernel_without_bias(kind, orthogonal):
    g = torch.Generator().manual_seed(0)
    q, k = (torch.randn(3, 8, generator=g, dtype=torch.float64) * 0.3 for _ in range(2))
    est = _draws(kind, orthogonal, q, k, 2000)
    exact = torch.exp((q * k).sum(-1))
    err = 4 * est.std(0) / 2000**0.5  # four standard errors of the mean
    assert ((est.mean(0) - exact).abs() < err).all()
    assert (err < 0.1 * exact).all()  # and the test is tight enough to mean something


def test_orthogonal_features_have_lower_error_than_independent_ones():
    g = torch.Generator().manual_seed(0)
    q, k = (torch.randn(4, 8, generator=g, dtype=torch.float64) * 0.5 for _ in range(2))
    exact = torch.exp((q * k).sum(-1))
    mse = {o: ((_draws("positive", o, q, k, 1500) - exact) ** 2).mean() for o in (True, False)}
    assert mse[True] < mse[False]


def test_projection_rows_are_orthogonal_within_blocks():
    w = gaussian_projection(20, 8, orthogonal=True, generator=torch.Generator().manual_seed(0))
    for block in (w[:8], w[8:16]):
        unit = block / block.norm(dim=1, keepdim=True)
        assert_close(unit @ unit.T, torch.eye(8), atol=1e-5, rtol=0)


def _features(q, k, w):
    s = q.shape[-1] ** -0.25
    return softmax_features(q * s, w, query=True), softmax_features(k * s, w, shift=key_shift(w))


@pytest.mark.parametrize("L", [1, 7, 33, 64])
@pytest.mark.parametrize(("chunk", "block"), [(4, 8), (16, 4096), (64, 64)])
def test_causal_prefix_sums_equal_masked_quadratic_attention(L, chunk, block):
    g = torch.Generator().manual_seed(L)
    q, k, v = (torch.randn(2, 3, L, 8, generator=g).requires_grad_() for _ in range(3))
    w = gaussian_projection(24, 8, generator=g)
    out, _ = favor_attention(q, k, v, w, causal=True, chunk=chunk, block=block)
    want = linear_attention_reference(*_features(q, k, w), v, causal=True)
    assert_close(out, want, rtol=1e-5, atol=1e-6)
    gv = torch.randn_like(out)
    got = torch.autograd.grad(out, (q, k, v), gv)
    ref = torch.autograd.grad(want, (q, k, v), gv)
    for a, b in zip(got, ref):
        assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("L", [1, 9, 40])
def test_bidirectional_blocks_equal_quadratic_attention(L):
    g = torch.Generator().manual_seed(L)
    q, k, v = (torch.randn(1, 2, L, 8, generator=g).requires_grad_() for _ in range(3))
    w = gaussian_projection(16, 8, generator=g)
    out, _ = favor_attention(q, k, v, w, block=8)
    want = linear_attention_reference(*_features(q, k, w), v)
    assert_close(out, want, rtol=1e-5, atol=1e-6)
    got = torch.autograd.grad(out.square().sum(), (q, k, v))
    ref = torch.autograd.grad(want.square().sum(), (q, k, v))
    for a, b in zip(got, ref):
        assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("causal", [False, True])
def test_blocks_with_padding_equal_one_block(causal):
    """The blockwise backward (recomputing one block at a time) against plain autograd."""
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(2, 2, 21, 8, generator=g).requires_grad_() for _ in range(3))
    w = gaussian_projection(16, 8, generator=g)
    valid = torch.arange(21)[None, :] < torch.tensor([[21], [15]])
    outs, grads = [], []
    for block in (8, 4096):
        out, _ = favor_attention(q, k, v, w, causal=causal, valid=valid, chunk=4, block=block)
        outs.append(out)
        grads.append(torch.autograd.grad(out.square().sum(), (q, k, v)))
    assert_close(outs[0], outs[1], rtol=1e-5, atol=1e-6)
    for a, b in zip(*grads):
        assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_carried_state_continues_the_sequence():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 23, 8, generator=g) for _ in range(3))
    qf, kf = _features(q, k, gaussian_projection(16, 8, generator=g))
    whole, _ = causal_linear_attention(qf, kf, v, chunk=4)
    first, state = causal_linear_attention(qf[:, :, :10], kf[:, :, :10], v[:, :, :10], chunk=4)
    rest, _ = causal_linear_attention(qf[:, :, 10:], kf[:, :, 10:], v[:, :, 10:], state, chunk=5)
    assert_close(torch.cat([first, rest], 2), whole)


def test_approximates_softmax_attention_with_many_features():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 32, 16, generator=g, dtype=torch.float64) * 0.5 for _ in range(3))
    w = gaussian_projection(8192, 16, generator=g).double()
    for causal in (False, True):
        mask = torch.ones(32, 32, dtype=torch.bool)
        exact = dense_attention(q, k, v, mask.tril() if causal else mask)
        out, _ = favor_attention(q, k, v, w, causal=causal)
        assert (out - exact).norm() / exact.norm() < 0.1


def test_causal_output_ignores_later_keys_even_huge_ones():
    """The key stabiliser depends on the projection only: a large later key changes nothing before it."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 1, 12, 8, generator=g) for _ in range(3))
    w = gaussian_projection(32, 8, generator=g)
    base, _ = favor_attention(q, k, v, w, causal=True, chunk=16)
    k2 = k.clone()
    k2[:, :, 9] = 40.0  # a huge later key, in the same chunk
    moved, _ = favor_attention(q, k2, v, w, causal=True, chunk=16)
    assert torch.equal(base[:, :, :9], moved[:, :, :9])


def test_no_inf_or_nan_with_large_logits_in_bf16():
    torch.manual_seed(0)
    x = (torch.randn(2, 50, 32) * 100).bfloat16().requires_grad_()
    for causal in (True, False):
        layer = PerformerAttention(32, 4, pattern="causal" if causal else "full", features=32).bfloat16()
        with torch.no_grad():
            layer.qkv.weight.mul_(30)
        y = layer(x)
        assert y.dtype == torch.bfloat16 and torch.isfinite(y).all()
        (grad,) = torch.autograd.grad(y.float().sum(), x)
        assert torch.isfinite(grad).all()


def test_redraw_on_schedule_in_training_and_never_in_evaluation():
    torch.manual_seed(0)
    layer = PerformerAttention(16, 2, features=8, redraw=3)
    x = torch.randn(1, 5, 16)
    seen = []
    for _ in range(7):
        layer(x)
        seen.append(layer.projection.clone())
    same = [torch.equal(seen[i], seen[i - 1]) for i in range(1, 7)]
    assert same == [True, True, False, True, True, False]  # new features at passes 4 and 7
    layer.eval()
    before = layer.projection.clone()
    for _ in range(5):
        layer(x)
    assert torch.equal(layer.projection, before)
    state = layer.state_dict()
    assert "projection" in state and int(state["calls"]) == 1  # the features travel with a checkpoint
    every = PerformerAttention(16, 2, features=8, redraw=1)  # a redraw between forward and backward
    (every(x).sum() + every(x).sum()).backward()  # the first graph keeps its own features
    never = PerformerAttention(16, 2, features=8, redraw=0)
    w = never.projection.clone()
    for _ in range(4):
        never(x)
    assert torch.equal(never.projection, w)


@pytest.mark.parametrize("pattern", ["full", "causal"])
def test_padding_does_not_change_real_positions(pattern):
    torch.manual_seed(0)
    layer = build_attention({"type": "performer", "pattern": pattern, "features": 16}, 16, 2).eval()
    x = torch.randn(1, 13, 16)
    alone = layer(x, torch.tensor([13]))
    padded = torch.cat([x, 50 * torch.randn(1, 20, 16)], 1)  # garbage in the padding
    assert_close(layer(padded, torch.tensor([13]))[:, :13], alone, rtol=1e-5, atol=1e-5)


def test_char_lm_decoding_on_the_recurrent_state_equals_the_parallel_pass():
    lm = check_char_lm_decoding({"type": "performer", "positions": "rotary", "features": 16})
    assert lm.encoder.layers[0].attn.causal  # a decoder takes the causal form by itself


def test_forecast_sampling_on_the_recurrent_state():
    check_forecast_sampling({"type": "performer", "features": 16})


def test_refusals_say_why():
    with pytest.raises(ValueError, match="no score-bias positions"):
        build_attention({"type": "performer", "positions": "alibi"}, 16, 2)
    with pytest.raises(ValueError, match="cannot take pattern 'window'"):
        build_attention({"type": "performer", "pattern": "window"}, 16, 2)
    with pytest.raises(ValueError, match="trig.*cannot be causal"):
        build_attention({"type": "performer", "feature_kind": "trig"}, 16, 2, causal=True)
    with pytest.raises(ValueError, match="no attention probabilities"):
        build_attention({"type": "performer", "dropout": 0.1}, 16, 2)
    with pytest.raises(ValueError, match="feature_kind='sine'"):
        build_attention({"type": "performer", "feature_kind": "sine"}, 16, 2)
    with pytest.raises(ValueError, match="no incremental decoding"):
        from tsformer.nn.decoding import KVCache

        build_attention({"type": "performer"}, 16, 2)(torch.randn(1, 3, 16), cache=KVCache(1, 1, 8))


def test_trains_in_train_cfg_as_a_char_lm(tmp_path):
    from tsformer.train import compose_config, train

    text = tmp_path / "t.txt"
    text.write_text("to be or not to be, that is the question.\n" * 60)
    cfg = compose_config([
        "task=charlm", f"data.path={text}", "data.context=32", "data.train_samples=32", "data.batch_size=4",
        "data.eval_batch_size=8", "model.attention.type=performer", "model.attention.pattern=causal",
        "model.attention.features=16", "model.attention.redraw=2", "trainer.max_steps=3",
        "trainer.val_check_interval=3", "model.d_model=32", "model.n_heads=4", "model.d_ff=64",
        "model.window=[8,8,16]", f"run_dir={tmp_path / 'run'}", "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false", "print_metrics=false", "logger=csv"])
    assert 0 < train(cfg)["test/bpc"] < 8
