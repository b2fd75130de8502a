"""CALM early exit (tsformer.nn.early_exit): the never-exit threshold is the full model,
exiting at layer l is l layers and the head, state propagation fills skipped layers'
caches, Learn-then-Test calibration, and training with per-layer heads."""

import copy
import math

import pytest
import torch
from torch import nn

from tsformer.nn.conformer import ConformerCTC
from tsformer.nn.conv_transformer import ConvTransformerForecaster
from tsformer.nn.decoding import generate_tokens
from tsformer.nn.early_exit import (
    NEVER,
    EarlyExit,
    ExitClassifier,
    calibrate_threshold,
    candidate_thresholds,
    ctc_early_exit,
    early_exit_tokens,
    hoeffding_bentkus_pvalue,
    layer_weights,
    quantile_loss_change,
    token_mismatch,
)
from tsformer.nn.longformer import LongformerCharLM


def char_lm(n_layers=4, seed=0):
    torch.manual_seed(seed)
    return LongformerCharLM(vocab_size=23, d_model=16, n_heads=2, n_layers=n_layers, d_ff=32, window=6,
                            dilation=1, max_tokens=64, dropout=0.0).eval()


def truncated(net, n_layers):
    """The same network with its first ``n_layers`` blocks only (shared head unchanged)."""
    small = copy.deepcopy(net)
    blocks = small.encoder.layers if hasattr(small, "encoder") and hasattr(small.encoder, "layers") else None
    if blocks is not None:
        small.encoder.layers = nn.ModuleList(list(blocks)[:n_layers])
    elif hasattr(small, "blocks"):
        small.blocks = nn.ModuleList(list(small.blocks)[:n_layers])
    else:
        small.encoder.blocks = nn.ModuleList(list(small.encoder.blocks)[:n_layers])
    return small


class RowRule(EarlyExit):
    """Row r exits after layer ``exits[r]`` (None: never), whatever the states say."""

    def __init__(self, exits):
        super().__init__("state", 0.5)
        self.exits = exits

    def confidence(self, layer, prev, cur):
        c = torch.zeros(cur.shape[:2])
        for r, e in enumerate(self.exits[: len(c)]):
            if e is not None and layer + 1 >= e:
                c[r] = 1.0
        return c


def test_layer_weights_follow_calm():
    w = layer_weights(4)
    assert torch.allclose(w, torch.tensor([1, 2, 3, 4]) / 10.0) and math.isclose(float(w.sum()), 1.0, rel_tol=1e-6)


@pytest.mark.parametrize("measure", ["softmax", "state"])
@pytest.mark.parametrize("temperature", [0.0, 0.9])
def test_never_exit_equals_the_full_model(measure, temperature):
    net = char_lm()
    prompt = torch.randint(1, 23, (2, 5), generator=torch.Generator().manual_seed(1))
    full = generate_tokens(net, prompt, 9, temperature, torch.Generator().manual_seed(3), True, 64)
    policy = EarlyExit(measure, NEVER, readout=net.readout)
    out = early_exit_tokens(net, prompt, 9, policy, temperature, torch.Generator().manual_seed(3), 64)
    assert torch.equal(out, full)
    assert policy.avg_layers == 4 and policy.positions == 2 * 8
    # The logits themselves are bit-identical, step by step.
    a, b = net.new_cache(2, 20), net.new_cache(2, 20)
    b.early_exit = EarlyExit(measure, NEVER, readout=net.readout)
    assert torch.equal(net(prompt, cache=a), net(prompt, cache=b))
    for t in range(5):
        step = out[:, 5 + t : 6 + t]
        assert torch.equal(net(step, cache=a), net(step, cache=b))


@pytest.mark.parametrize("layer", [1, 2, 3])
@torch.no_grad()
def test_exit_at_layer_l_equals_l_layers_and_the_head(layer):
    net = char_lm()
    small = truncated(net, layer)
    prompt = torch.randint(1, 23, (2, 7), generator=torch.Generator().manual_seed(2))
    policy = EarlyExit("state", exit_layer=layer)
    out = early_exit_tokens(net, prompt, 10, policy)
    # The prompt runs through every layer (its states fill the cache), so the first new
    # token is the full model's; every later one is the l-layer model's.
    assert torch.equal(out[:, :8], generate_tokens(net, prompt, 1, 0.0, None, True, 64))
    assert torch.equal(out, generate_tokens(small, out[:, :8], 9, 0.0, None, True, 64))
    assert policy.avg_layers == layer
    # Each step's logits equal the l-layer model's over the whole text (no cache).
    cache = net.new_cache(2, 32)
    cache.early_exit = EarlyExit("state", exit_layer=layer)
    net(out[:, :7], cache=cache)
    for t in range(7, 12):
        got = net(out[:, t : t + 1], cache=cache)[:, -1]
        torch.testing.assert_close(got, small(out[:, : t + 1])[:, -1], rtol=1e-5, atol=1e-5)


class RandomRule(EarlyExit):
    """Each row exits after a random layer at each step (seeded), whatever the states say."""

    def __init__(self, seed, p=0.4, skipped="defer"):
        super().__init__("state", 0.5, skipped=skipped)
        self.g = torch.Generator().manual_seed(seed)
        self.p = p

    def confidence(self, layer, prev, cur):
        return (torch.rand(cur.shape[:2], generator=self.g) < self.p).float()


def teacher_forced_tokens(net, out, plen, used):
    """Per generated position, the argmax of the head after the layer each row used there,
    on the full model's states of the text so far (no exit anywhere): ``(B, steps)``."""
    states = net.hidden_states(out[:, :-1])  # position t predicts token t + 1
    layers = torch.stack(used[: out.shape[1] - plen - 1], dim=1)  # (B, steps - 1); the first is the prefill's
    heads = torch.stack([net.readout(h[:, plen:]).argmax(-1) for h in states])  # (n, B, steps - 1)
    return heads.gather(0, (layers - 1)[None])[0]


@pytest.mark.parametrize("seed", [0, 1, 2])
@torch.no_grad()
def test_deferred_skipped_layers_see_the_full_models_states(seed):
    """With skipped="defer" every token is the head, after its exit layer, of the full
    model's states of the text so far: skipped layers are made up later from true inputs,
    so no exit changes what later positions attend to. Rows exit at random layers."""
    net = char_lm()
    prompt = torch.randint(1, 23, (3, 5), generator=torch.Generator().manual_seed(seed))
    policy = RandomRule(seed)
    out = early_exit_tokens(net, prompt, 12, policy)
    used = list(policy.history)
    assert 1 < policy.avg_layers < 4  # exits did happen, at several depths
    assert torch.equal(out[:, 6:], teacher_forced_tokens(net, out, 5, used))


@torch.no_grad()
def test_deferred_positions_are_run_by_the_next_deep_pass_and_by_any_later_feed():
    net = char_lm()
    prompt = torch.randint(1, 23, (2, 6), generator=torch.Generator().manual_seed(7))
    text = torch.randint(1, 23, (2, 6), generator=torch.Generator().manual_seed(8))
    cache = net.new_cache(2, 20)
    cache.early_exit = EarlyExit("state", exit_layer=1, skipped="defer")
    net(prompt, cache=cache)
    for t in range(3):  # three positions that stop after layer 1
        net(text[:, t : t + 1], cache=cache)
    assert [layer.length for layer in cache.layers] == [9, 6, 6, 6]
    assert [None if p is None else p.shape[1] for p in cache.pending] == [None, 3, None, None]
    with pytest.raises(ValueError, match="deferred"):
        cache.truncate(7)
    with pytest.raises(ValueError, match="deferred"):
        cache.snapshot()
    cache.early_exit = EarlyExit("state", exit_layer=2)  # a copying rule still runs what waits
    net(text[:, 3:4], cache=cache)  # layer 2 runs the 3 waiting positions with this one
    assert [layer.length for layer in cache.layers] == [10, 10, 6, 6]
    # A feed of several positions (no early exit there) takes every waiting position along:
    # its logits, and the whole cache, are the full model's.
    got = net(text[:, 4:6], cache=cache)
    full = net.new_cache(2, 20)
    want = net(torch.cat([prompt, text], 1), cache=full)[:, -2:]
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert all(p is None for p in cache.pending) and [layer.length for layer in cache.layers] == [12] * 4
    for a, b in zip(cache.layers, full.layers):
        for x, y in zip(a.keys_values(), b.keys_values()):
            torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-5)
    # Copying the exited state up instead (CALM's state propagation) leaves other keys there.
    copied = net.new_cache(2, 20)
    copied.early_exit = EarlyExit("state", exit_layer=1)
    net(prompt, cache=copied)
    net(text[:, :1], cache=copied)
    assert not torch.allclose(copied.layers[2].keys_values()[0], full.layers[2].keys_values()[0][:, :, :7])


@pytest.mark.parametrize("temperature", [0.0, 0.9])
def test_deferred_never_exit_equals_the_full_model(temperature):
    net = char_lm()
    prompt = torch.randint(1, 23, (2, 5), generator=torch.Generator().manual_seed(1))
    full = generate_tokens(net, prompt, 9, temperature, torch.Generator().manual_seed(3), True, 64)
    policy = EarlyExit("softmax", NEVER, readout=net.readout, skipped="defer")
    out = early_exit_tokens(net, prompt, 9, policy, temperature, torch.Generator().manual_seed(3), 64)
    assert torch.equal(out, full) and policy.avg_layers == 4
    with pytest.raises(ValueError, match="skipped"):
        EarlyExit("softmax", 0.5, skipped="recompute")


@torch.no_grad()
def test_state_propagation_fills_skipped_layers_from_the_exited_state():
    net = char_lm(n_layers=3)
    prompt = torch.randint(1, 23, (1, 6), generator=torch.Generator().manual_seed(4))
    cache = net.new_cache(1, 16)
    cache.early_exit = EarlyExit("state", exit_layer=1)
    net(prompt, cache=cache)
    before = copy.deepcopy(cache)
    nxt = torch.tensor([[5]])
    net(nxt, cache=cache)
    assert [layer.length for layer in cache.layers] == [7, 7, 7]
    h1 = cache.hidden[0]  # the exited state, copied up
    assert all(torch.equal(h, h1) for h in cache.hidden)
    x = net.encoder.embed_tokens(nxt, 6, True)
    torch.testing.assert_close(net.encoder.layers[0](x, cache=before.layers[0]), h1)
    for j in (1, 2):  # the skipped layers' keys and values: those of a full layer run on h1
        net.encoder.layers[j](h1, cache=before.layers[j])
        for got, want in zip(cache.layers[j].keys_values(), before.layers[j].keys_values()):
            assert torch.equal(got[:, :, -1], want[:, :, -1])


def test_rows_exit_on_their_own():
    """Row 0 exits after layer 1, row 1 never: row 0 follows the one-layer model, row 1 the
    full model, though they share every forward pass."""
    net = char_lm()
    prompt = torch.randint(1, 23, (2, 5), generator=torch.Generator().manual_seed(5))
    policy = RowRule([1, None])
    out = early_exit_tokens(net, prompt, 8, policy)
    assert torch.equal(out[:1], generate_tokens(truncated(net, 1), out[:1, :6], 7, 0.0, None, True, 64))
    assert torch.equal(out[1:], generate_tokens(net, prompt[1:], 8, 0.0, None, True, 64))
    assert policy.avg_layers == pytest.approx((1 + 4) / 2)


class ConstantRule(EarlyExit):
    """Every layer's confidence is ``c``: where it exits depends on the threshold alone."""

    def __init__(self, c, threshold, position_temp):
        super().__init__("state", threshold, position_temp=position_temp)
        self.c = c

    def confidence(self, layer, prev, cur):
        return torch.full(cur.shape[:2], self.c)


def test_position_adjusted_threshold_follows_calm_reference():
    rule = EarlyExit("softmax", 0.8, position_temp=4.0)
    assert rule.threshold_at(0, 10) == pytest.approx(0.8)
    assert rule.threshold_at(5, 10) == pytest.approx(0.8 * (0.9 + 0.1 * math.exp(-2.0)))
    assert rule.threshold_at(10, 10) == pytest.approx(0.8 * (0.9 + 0.1 * math.exp(-4.0)))
    assert EarlyExit("softmax", 0.8).threshold_at(9, 10) == 0.8  # constant without position_temp
    assert EarlyExit("softmax", NEVER, position_temp=4.0).threshold_at(9, 10) == NEVER
    with pytest.raises(ValueError, match="position_temp"):
        EarlyExit("softmax", 0.8, position_temp=0.0)


def test_position_adjusted_threshold_counts_generated_positions():
    """Confidence 0.95 against 0.9 + 0.1 exp(-0.4 t): the first step (t=1, 0.967) runs every
    layer, every later step (t >= 2, <= 0.945) exits after layer 1, whatever the prompt length."""
    net = char_lm()
    for plen in (3, 7):
        prompt = torch.randint(1, 23, (2, plen), generator=torch.Generator().manual_seed(plen))
        policy = ConstantRule(0.95, 1.0, position_temp=4.0)
        early_exit_tokens(net, prompt, 10, policy)
        assert [int(h[0]) for h in policy.history] == [4] + [1] * 8
        fixed = ConstantRule(0.95, 1.0, position_temp=None)
        early_exit_tokens(net, prompt, 10, fixed)
        assert fixed.avg_layers == 4  # 0.95 never reaches the constant 1.0


def test_softmax_measure_needs_token_outputs():
    net = forecaster()
    inputs, cov, series = forecast_inputs()
    with pytest.raises(ValueError, match="token outputs"):
        net.sample(inputs, cov, series, 3, early_exit=EarlyExit("softmax", 0.5, readout=net.readout))
    with pytest.raises(ValueError, match="measure"):
        EarlyExit("entropy")


def forecaster(n_layers=3):
    torch.manual_seed(0)
    return ConvTransformerForecaster(num_series=3, num_covariates=2, d_model=16, n_heads=2, n_layers=n_layers,
                                     d_ff=32, dropout=0.0).eval()


def forecast_inputs(B=2, C=10, H=5):
    g = torch.Generator().manual_seed(0)
    return torch.randn(B, C + 1, generator=g), torch.randn(B, C + H, 2, generator=g), torch.tensor([0, 2])


def test_forecast_sampling_never_exit_and_exit_at_layer():
    net = forecaster()
    inputs, cov, series = forecast_inputs()
    noise = torch.randn(2, 4, 5, generator=torch.Generator().manual_seed(1))
    full = net.sample(inputs, cov, series, 4, noise=noise)
    policy = EarlyExit("state", NEVER)
    assert torch.equal(net.sample(inputs, cov, series, 4, noise=noise, early_exit=policy), full)
    assert policy.avg_layers == 3
    # Exit after block 1 for every sampled step (the context runs every block).
    policy = EarlyExit("state", exit_layer=1)
    got = net.sample(inputs, cov, series, 4, noise=noise, early_exit=policy)
    small = truncated(net, 1)
    S = 4
    x = inputs.repeat_interleave(S, 0)
    c, sid = cov.repeat_interleave(S, 0), series.repeat_interleave(S, 0)
    eps = noise.reshape(2 * S, 5)
    for h in range(5):  # reference: the first step from all blocks, later steps from block 1
        mu, sigma = (net if h == 0 else small)(x, c[:, : 10 + 1 + h], sid)
        draw = mu[:, -1] + sigma[:, -1] * eps[:, h]
        torch.testing.assert_close(got.reshape(2 * S, 5)[:, h], draw, rtol=1e-4, atol=1e-5)
        x = torch.cat([x, draw[:, None]], 1)


def test_ctc_exit_per_utterance():
    torch.manual_seed(0)
    net = ConformerCTC(input_dim=20, vocab_size=7, d_model=16, n_heads=2, n_layers=3, d_ff=32, conv_kernel=3,
                       subsampling_channels=4).eval()
    feats = torch.randn(3, 40, 20)
    lengths = torch.tensor([40, 31, 22])
    ref, ref_len = net(feats, lengths)
    out, out_len, used = ctc_early_exit(net, feats, lengths, EarlyExit("softmax", NEVER, readout=net.readout))
    torch.testing.assert_close(out, ref)
    assert torch.equal(out_len, ref_len)
    assert used.tolist() == [3, 3, 3]
    small, _ = truncated(net, 2)(feats, lengths)
    out, _, used = ctc_early_exit(net, feats, lengths, EarlyExit("state", exit_layer=2))
    assert used.tolist() == [2, 2, 2]
    torch.testing.assert_close(out, small)
    # Utterance 2 exits after layer 1 (and leaves the batch), the others run through.
    out, _, used = ctc_early_exit(net, feats, lengths, RowRule([None, None, 1]))
    assert used.tolist() == [3, 3, 1]
    one, _ = truncated(net, 1)(feats, lengths)
    torch.testing.assert_close(out[2], one[2])
    torch.testing.assert_close(out[:2], ref[:2])


def test_calibration_returns_the_most_permissive_valid_threshold():
    cands = [0.99, 0.9, 0.8, 0.7, 0.6]
    n = 1000
    # Risks 0, 0.5%, 1%, 3.5% and 20% against a 5% tolerance with n = 1000: the first four
    # are valid at delta 0.1 (3.5%: p = e P(Bin(1000, 0.05) <= 35) ~ 0.039), the fifth is not.
    risks = [0.0, 0.005, 0.01, 0.035, 0.2]
    losses = [torch.cat([torch.ones(round(r * n)), torch.zeros(n - round(r * n))]) for r in risks]
    cal = calibrate_threshold(cands, losses, tolerance=0.05, delta=0.1)
    assert cal.threshold == 0.7 and cal.valid and len(cal.tested) == 5
    assert [t for t, _, p in cal.tested if p <= 0.1] == [0.99, 0.9, 0.8, 0.7]
    # Stricter delta: 3.5% is no longer shown to be below 5%.
    assert calibrate_threshold(cands, losses, tolerance=0.05, delta=0.01).threshold == 0.8
    # Fixed-sequence testing stops at the first failure even if later candidates pass.
    calls = []
    seq = {0.99: 0.0, 0.9: 0.3, 0.8: 0.0}

    def fn(t):
        calls.append(t)
        return [seq[t]] * n

    cal = calibrate_threshold([0.99, 0.9, 0.8], fn, 0.05, 0.1)
    assert cal.threshold == 0.99 and calls == [0.99, 0.9]
    # Nothing valid: never exit. Too few examples cannot show anything either.
    assert calibrate_threshold([0.9], [[0.5] * n], 0.05, 0.1).threshold == NEVER
    assert calibrate_threshold([0.9], [[0.0] * 10], 0.05, 0.1).threshold == NEVER
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        calibrate_threshold([0.9], [[2.0]], 0.05, 0.1)


def test_hoeffding_bentkus_pvalue():
    from scipy.stats import binom

    from tsformer.nn.early_exit import _binom_cdf

    for k, n, p in [(0, 10, 0.1), (3, 50, 0.05), (40, 1000, 0.05), (999, 1000, 0.5)]:
        assert _binom_cdf(k, n, p) == pytest.approx(binom.cdf(k, n, p), rel=1e-9)
    ps = [hoeffding_bentkus_pvalue(r, 500, 0.05) for r in (0.0, 0.01, 0.03, 0.05, 0.1)]
    assert ps == sorted(ps) and ps[0] < 1e-6 and ps[-1] == 1.0
    assert hoeffding_bentkus_pvalue(0.0, 2000, 0.01) < hoeffding_bentkus_pvalue(0.0, 200, 0.01)


def test_candidates_and_inconsistency_measures():
    c = candidate_thresholds(10)
    assert c == sorted(c, reverse=True) and c[0] > 0.999 and c[-1] == 0.0
    a = torch.tensor([[1, 2, 3, 4], [1, 2, 3, 4]])
    assert token_mismatch(a, torch.tensor([[1, 2, 3, 4], [1, 0, 0, 4]])).tolist() == [0.0, 0.5]
    s = torch.randn(2, 50, 4)
    target = torch.randn(2, 4)
    assert quantile_loss_change(s, s, target).tolist() == [0.0, 0.0]
    assert (quantile_loss_change(s + 100, s, target) == 1).all()
    from tsformer.nn.early_exit import held_out_prompts

    p = held_out_prompts(torch.arange(100), 5, 10, room=3)
    assert p.shape == (5, 10) and (p.diff(dim=1) == 1).all() and int(p[:, -1].max()) <= 96
    with pytest.raises(ValueError, match="too short"):
        held_out_prompts(torch.arange(12), 2, 10, room=3)


def test_exit_classifier_learns_consistency():
    torch.manual_seed(0)
    states = [torch.randn(200, 8), torch.randn(200, 8)]
    labels = [(nn.functional.layer_norm(s, (8,))[:, 0] > 0).float() for s in states]  # linearly separable
    torch.manual_seed(1)
    clf = ExitClassifier(8, 3).fit(states, labels, steps=200, lr=0.05)
    for i, (s, y) in enumerate(zip(states, labels)):
        assert ((clf(s, i) > 0.5).float() == y).float().mean() > 0.9
    # Commands gather the states under no_grad or inference_mode and fit there: same result.
    for ctx in (torch.no_grad, torch.inference_mode):
        torch.manual_seed(1)
        again = ExitClassifier(8, 3)
        with ctx():
            frozen = [s.clone() for s in states]
            again.fit(frozen, labels, steps=200, lr=0.05)
        for a, b in zip(again.parameters(), clf.parameters()):
            torch.testing.assert_close(a, b)
    net = char_lm(n_layers=3)
    prompt = torch.randint(1, 23, (1, 4))
    policy = EarlyExit("classifier", 0.5, classifier=ExitClassifier(16, 3))
    out = early_exit_tokens(net, prompt, 5, policy)
    assert out.shape == (1, 9) and 1 <= policy.avg_layers <= 3


QUIET = ["trainer.enable_progress_bar=false", "trainer.enable_model_summary=false", "print_metrics=false",
         "plots=false"]


def test_charlm_trains_with_per_layer_heads(tmp_path):
    from tsformer.train import compose_config, train

    text = tmp_path / "t.txt"
    text.write_text("to be or not to be, that is the question.\n" * 40)
    cfg = compose_config(["task=charlm", f"data.path={text}", "data.context=32", "data.train_samples=16",
                          "data.batch_size=8", "trainer.max_steps=2", "trainer.val_check_interval=2",
                          "model.d_model=16", "model.n_heads=2", "model.d_ff=32", "model.window=[8,8,8]",
                          "module.exit_heads=true", f"run_dir={tmp_path / 'run'}", *QUIET])
    metrics = train(cfg)
    assert 0 < metrics["test/bpc"] < 10


def test_forecaster_trains_with_per_layer_heads(tmp_path):
    from tests.conftest import make_long_csv
    from tests.test_train import TINY
    from tsformer.train import compose_config, train

    data = tmp_path / "series.csv"
    make_long_csv(data)
    over = [o for o in TINY if not o.startswith(("model.n_layers", "trainer.max_steps"))]
    cfg = compose_config(over + ["model.n_layers=2", "trainer.max_steps=3", "module.exit_heads=true",
                                 f"data.path={data}", f"run_dir={tmp_path / 'run'}", "plots=false"])
    metrics = train(cfg)
    assert metrics["train/steps"] == 3 and metrics["test/crps"] == metrics["test/crps"]


def test_exit_heads_need_per_layer_outputs():
    from tsformer.tasks.forecasting import ForecastingModule

    with pytest.raises(ValueError, match="exit_heads"):
        ForecastingModule(nn.Linear(2, 2), exit_heads=True)


def test_token_calibration_end_to_end():
    from tsformer.nn.early_exit import calibrate_token_exit, exit_classifier_data, tokens_agree

    net = char_lm(n_layers=3)
    prompts = torch.randint(1, 23, (60, 6), generator=torch.Generator().manual_seed(6))
    rule, cal = calibrate_token_exit(net, prompts, 4, "softmax", 0.5, 0.1, candidates=[0.99, 0.5, 0.0])
    assert [t for t, _, _ in cal.tested][: len(cal.tested)] == [0.99, 0.5, 0.0][: len(cal.tested)]
    assert rule.threshold == cal.threshold and cal.n == 60
    # The accepted thresholds' empirical risks are below the tolerance.
    assert all(r <= 0.5 for t, r, p in cal.tested if p <= 0.1)
    states, labels = exit_classifier_data(net, tokens_agree, prompts)
    assert len(states) == 2 and states[0].shape == (360, 16) and labels[0].shape == (360,)


def test_forecast_calibration_and_classifier():
    from tsformer.tasks.forecasting import (
        calibrate_forecast_exit,
        fit_forecast_exit_classifier,
        forecast_batch,
    )

    net = forecaster()
    inputs, cov, series = forecast_inputs(B=8)
    batch = {"inputs": inputs, "covariates": cov, "series": torch.arange(8) % 3, "scale": torch.ones(8),
             "future": torch.randn(8, 5, generator=torch.Generator().manual_seed(2))}
    g = torch.Generator().manual_seed(0)
    plain = forecast_batch(net, batch, 6, torch.Generator().manual_seed(0))
    assert torch.equal(forecast_batch(net, batch, 6, g, early_exit=EarlyExit("state", NEVER)), plain)
    clf = fit_forecast_exit_classifier(net, [batch], steps=20)
    for measure, extra in (("state", None), ("classifier", clf)):
        rule, cal = calibrate_forecast_exit(net, [batch], 6, measure, 0.9, 0.5, classifier=extra,
                                            candidates=[0.999, 0.9, 0.0])
        assert cal.n == 8 and rule.measure == measure and cal.tested
