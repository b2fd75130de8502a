"""Reversible residual layers (Gomez et al. 2017; Reformer, Kitaev et al. 2020, Sec. 4): the
recomputing backward against ordinary autograd through the same stack (dropout and LSH
hashing on), activations kept flat in depth, decoding, the networks that take it, errors."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from tsformer.nn.blocks import ReversibleCall, merge_pair, run_reversible
from tsformer.nn.conv_transformer import ConvTransformerForecaster
from tsformer.nn.longformer import LongformerCharLM

LSH = {"type": "lsh", "pattern": "causal", "buckets": 4, "lsh_chunk": 2, "dropout": 0.1}


def _stored(blocks, x):
    """The same reversible stack by ordinary autograd (every activation stored)."""
    pair = torch.cat([x, x], -1)
    for block in blocks:
        pair = ReversibleCall(block)(pair)
    return merge_pair(pair)


def _run(lm, tokens, recompute):
    lm.zero_grad()
    torch.manual_seed(3)
    enc = lm.encoder
    x = enc.drop(enc.embed(tokens))
    h = (run_reversible if recompute else _stored)(enc.layers, x)
    out = lm.lm_head(enc.norm(h))
    (out * torch.linspace(-1, 1, out.shape[-1])).pow(2).mean().backward()
    return out.detach(), {n: p.grad.clone() for n, p in lm.named_parameters() if p.grad is not None}, torch.get_rng_state()


@pytest.mark.parametrize("attention", [LSH, {"type": "mhsa", "pattern": "causal", "dropout": 0.1}])
def test_recomputed_gradients_equal_stored_activations_with_dropout(attention):
    torch.manual_seed(0)
    lm = LongformerCharLM(20, d_model=16, n_heads=2, n_layers=3, d_ff=32, dropout=0.2, reversible=True,
                          attention=attention, max_tokens=64, positions="rotary").train()
    tokens = torch.randint(1, 20, (2, 15))
    out, grads, rng = _run(lm, tokens, recompute=True)
    want, want_grads, want_rng = _run(lm, tokens, recompute=False)
    assert_close(out, want, rtol=0, atol=1e-6)
    assert grads.keys() == want_grads.keys(), set(grads) ^ set(want_grads)
    assert len(grads) == len(list(lm.parameters()))
    for name in grads:
        assert_close(grads[name], want_grads[name], rtol=1e-5, atol=1e-5, msg=name)
    assert torch.equal(rng, want_rng)  # the replay leaves the outer generator where the forward left it


def test_dropout_is_really_on_and_replayed():
    """Different seeds give different outputs (dropout draws), so equality above is a replay."""
    torch.manual_seed(0)
    lm = LongformerCharLM(20, d_model=16, n_heads=2, n_layers=2, d_ff=32, dropout=0.3, reversible=True,
                          attention=LSH, max_tokens=64).train()
    tokens = torch.randint(1, 20, (1, 12))
    torch.manual_seed(1)
    a = lm(tokens)
    torch.manual_seed(2)
    assert (a - lm(tokens)).abs().max() > 1e-3


def test_forecaster_input_gradient_and_samples():
    torch.manual_seed(0)
    net = ConvTransformerForecaster(3, 2, d_model=16, n_heads=2, n_layers=3, d_ff=32, dropout=0.1, reversible=True)
    inputs = torch.randn(2, 11, requires_grad=True)
    cov, series = torch.randn(2, 11, 2), torch.tensor([0, 1])
    torch.manual_seed(4)
    mu, sigma = net(inputs, cov, series)
    g = torch.autograd.grad((mu + sigma).sum(), inputs)[0]
    torch.manual_seed(4)
    x = net._embed(inputs, cov, series)
    mu2, sigma2 = net.head(net.ln(_stored(net.blocks, x)))
    assert_close(g, torch.autograd.grad((mu2 + sigma2).sum(), inputs)[0], rtol=1e-5, atol=1e-5)
    net.eval()
    kw = dict(num_samples=3)
    fast = net.sample(inputs.detach()[:, :8], cov[:, :11], series, generator=torch.Generator().manual_seed(1), **kw)
    slow = net.sample_reference(inputs.detach()[:, :8], cov[:, :11], series,
                                generator=torch.Generator().manual_seed(1), **kw)
    assert_close(fast, slow, rtol=1e-4, atol=1e-4)


def test_char_lm_decodes_step_by_step():
    torch.manual_seed(0)
    lm = LongformerCharLM(20, d_model=16, n_heads=2, n_layers=2, d_ff=32, dropout=0.0, reversible=True,
                          attention=LSH, max_tokens=64).eval()
    tokens = torch.randint(1, 20, (2, 13))
    cache = lm.new_cache(2, 13)
    steps = [lm(tokens[:, :5], cache=cache)] + [lm(tokens[:, i : i + 1], cache=cache) for i in range(5, 13)]
    assert_close(torch.cat(steps, 1), lm(tokens), rtol=1e-5, atol=1e-5)


def _saved_bytes(lm, tokens) -> int:
    """Bytes autograd keeps for the backward (activations; parameters excluded)."""
    params = {p.data_ptr() for p in lm.parameters()}
    total = 0

    def pack(t):
        nonlocal total
        if t.data_ptr() not in params:
            total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = lm(tokens).sum()  # what the forward keeps (the backward's recomputation frees as it goes)
    loss.backward()
    return total


def test_activation_memory_is_flat_in_depth():
    tokens = torch.randint(1, 20, (2, 64))
    saved = {}
    for rev in (False, True):
        for n in (1, 4):
            torch.manual_seed(0)
            lm = LongformerCharLM(20, d_model=16, n_heads=2, n_layers=n, d_ff=32, window=8, dilation=1,
                                  reversible=rev, attention=LSH, max_tokens=64)
            saved[rev, n] = _saved_bytes(lm, tokens)
    assert saved[True, 4] == saved[True, 1]  # only the last pair, whatever the depth
    assert saved[False, 4] > 3 * saved[False, 1] * 0.8  # the standard stack grows with depth


def test_errors():
    with pytest.raises(ValueError, match="model.memory cannot be combined with model.reversible"):
        LongformerCharLM(20, d_model=16, n_heads=2, n_layers=1, d_ff=32, reversible=True, positions="rotary",
                         attention={"type": "mhsa", "pattern": "causal"}, memory={"length": 8})


@pytest.mark.slow
def test_trains_in_the_forecasting_task(tmp_path):
    from tests.conftest import make_long_csv
    from tests.test_train import TINY
    from tsformer.train import compose_config, train

    data = tmp_path / "series.csv"
    make_long_csv(data)
    cfg = compose_config(TINY + [f"data.path={data}", f"run_dir={tmp_path / 'run'}", "model.reversible=true",
                                 "model.n_layers=2", "model.attention.type=lsh", "model.attention.pattern=causal",
                                 "model.attention.buckets=4", "model.attention.lsh_chunk=8"])
    metrics = train(cfg)
    assert metrics["test/rho50"] == metrics["test/rho50"] and metrics["train/steps"] == 6
