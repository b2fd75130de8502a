"""PanGu-π (Wang et al. 2023): the series informed activation (``model.ffn=series``), augmented
shortcuts (``model.shortcut=augmented``), causality with both, the feature-diversity measure,
and a few training steps of each in ``train(cfg)``."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from tests.conftest import assert_decoding_matches, make_long_csv
from tests.test_train import TINY as FORECAST_TINY
from tsformer.nn.longformer import LongformerCharLM
from tsformer.nn.pangu import (
    AugmentedShortcut,
    SeriesActivation,
    effective_dimension,
    feature_diversity,
    make_series,
    make_shortcut,
)
from tsformer.train import compose_config, train

QUIET = ["trainer.enable_progress_bar=false", "trainer.enable_model_summary=false", "print_metrics=false"]
BOTH = {"ffn": "series", "series": {"terms": 3, "context": 2}, "shortcut": "augmented",
        "augmented": {"branches": 2, "reduction": 4}}


def _series_reference(act: SeriesActivation, x: torch.Tensor) -> torch.Tensor:
    """Eq. 7 and the causal neighbour mix written out, position by position and term by term."""
    B, L, W = x.shape
    u = torch.zeros_like(x)
    for i in range(act.terms):
        u = u + act.weight[i] * F.gelu(act.scale[i] * x + act.bias[i])
    if not act.context:
        return u
    y = torch.zeros_like(x)
    for t in range(L):
        for j in range(act.context + 1):
            if t - j >= 0:
                y[:, t] += act.mix[j] * u[:, t - j]
    return y


def _randomised(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype))
    return module


def test_one_term_is_the_base_activation():
    act = SeriesActivation(6, terms=1)
    x = torch.randn(2, 5, 6) * 3
    y, past = act(x)
    assert past is None
    assert torch.equal(y, F.gelu(x))  # a = 1, b = 0
    # More terms (and a neighbour mix) start as the plain activation too, their shifts distinct.
    act3 = SeriesActivation(6, terms=3, context=2)
    assert torch.equal(act3(x)[0], F.gelu(x))
    assert len(set(act3.bias[:, 0].tolist())) == 3


@pytest.mark.parametrize(("terms", "context", "L"), [(1, 0, 1), (2, 0, 7), (3, 1, 1), (2, 3, 2), (4, 2, 9)])
def test_series_equals_the_written_out_sum(terms, context, L):
    act = _randomised(SeriesActivation(5, terms, context).double(), seed=terms * 10 + context)
    x = torch.randn(2, L, 5, dtype=torch.float64, requires_grad=True)
    y, _ = act(x)
    want = _series_reference(act, x)
    assert_close(y, want)
    g1 = torch.autograd.grad(y.square().sum(), [x, *act.parameters()])
    g2 = torch.autograd.grad(want.square().sum(), [x, *act.parameters()])
    for a, b in zip(g1, g2):
        assert_close(a, b)
    # Position by position with the carried past gives the same as the whole sequence.
    past, parts = None, []
    for t in range(L):
        yt, past = act(x[:, t : t + 1], past)
        parts.append(yt)
    assert_close(torch.cat(parts, 1), y)


def test_augmented_shortcut_forms():
    z = torch.randn(2, 4, 16)
    eq5 = AugmentedShortcut(16, branches=3, reduction=None)
    thetas = eq5.theta.weight.view(3, 16, 16)
    assert_close(eq5(z), sum(F.gelu(z @ t.T) for t in thetas))  # Eq. 5: sum_i GELU(z Theta_i)
    bott = _randomised(AugmentedShortcut(16, branches=2, reduction=4))
    assert bott.down.out_features == 2 * 4
    # Two bottlenecks summed: one hidden layer of both widths.
    h = F.gelu(bott.down(z))
    W, b = bott.up.weight, bott.up.bias
    assert_close(bott(z), h[..., :4] @ W[:, :4].T + h[..., 4:] @ W[:, 4:].T + b)
    assert make_shortcut("identity", 16) is None and make_shortcut("augmented", 16, {"branches": 0}) is None
    with pytest.raises(ValueError, match="model.shortcut='dense'"):
        make_shortcut("dense", 16)
    with pytest.raises(ValueError, match=r"model.augmented takes .* not \['width'\]"):
        make_shortcut("augmented", 16, {"width": 3})
    with pytest.raises(ValueError, match="model.series.terms=0"):
        make_series(8, 16, 0.0, True, {"terms": 0})
    with pytest.raises(ValueError, match="model.series.context=-1"):
        make_series(8, 16, 0.0, True, {"context": -1})


def _lm(**parts) -> LongformerCharLM:
    torch.manual_seed(0)
    return LongformerCharLM(vocab_size=12, d_model=16, n_heads=2, n_layers=2, d_ff=32, window=[6, 6], max_tokens=64,
                            dropout=0.0, attention={"type": "mhsa", "pattern": "causal", "positions": "rotary"},
                            **parts).eval()


def test_zero_branches_equal_the_plain_block():
    plain, zero = _lm(), _lm(shortcut="augmented", augmented={"branches": 0, "reduction": 4})
    assert sum(p.numel() for p in zero.parameters()) == sum(p.numel() for p in plain.parameters())
    zero.load_state_dict(plain.state_dict())
    tokens = torch.randint(0, 12, (2, 20))
    assert torch.equal(zero(tokens), plain(tokens))
    # Bottleneck branches start with a zero output layer: the plain block, until trained.
    aug = _lm(shortcut="augmented", augmented={"branches": 2, "reduction": 4})
    aug.load_state_dict(plain.state_dict(), strict=False)
    assert torch.equal(aug(tokens), plain(tokens))


@pytest.mark.parametrize("parts", [{"ffn": "series", "series": {"terms": 2, "context": 3}},
                                   {"shortcut": "augmented", "augmented": {"branches": 2, "reduction": 4}}, BOTH],
                         ids=["series", "augmented", "both"])
def test_causal_models_stay_causal(parts):
    lm = _lm(**parts)
    for m in lm.modules():  # away from the identity-like init, so every path carries signal
        if isinstance(m, (SeriesActivation, AugmentedShortcut)):
            _randomised(m, seed=3)
    tokens = torch.randint(1, 12, (2, 24))
    base = lm(tokens)
    for t in (0, 5, 23):
        changed = tokens.clone()
        changed[:, t] = (changed[:, t] % 11) + 1
        out = lm(changed)
        assert torch.equal(out[:, :t], base[:, :t])
        assert not torch.allclose(out[:, t:], base[:, t:])


def test_series_context_decodes_through_the_cache():
    from tsformer.nn.decoding import generate_tokens

    lm = _lm(**BOTH)
    for m in lm.modules():
        if isinstance(m, (SeriesActivation, AugmentedShortcut)):
            _randomised(m, seed=4)
    tokens = torch.randint(0, 12, (2, 30))
    assert_decoding_matches(lm, tokens, 9)
    prompt = tokens[:, :4]
    greedy = generate_tokens(lm, prompt, 16, temperature=0.0, max_context=64)
    assert torch.equal(greedy, generate_tokens(lm, prompt, 16, temperature=0.0, cache=False, max_context=64))


def test_feature_diversity():
    h = torch.randn(3, 10, 8)
    # d_M(H) = min_x ||H - 1 x^T||_F: the mean token minimises it; no other x does better.
    d = feature_diversity(h, relative=False)
    for x in (torch.zeros(8), h[0, 0], h[0].median(0).values):
        assert d[0] <= (h[0] - x).norm() + 1e-6
    assert_close(d[0], (h[0] - h[0].mean(0)).norm())
    same = torch.randn(2, 1, 8).expand(2, 10, 8)
    assert_close(feature_diversity(same), torch.zeros(2), atol=1e-6, rtol=0)
    centred = h - h.mean(1, keepdim=True)
    assert_close(feature_diversity(centred), torch.ones(3))
    # Effective dimension: features on 2 directions need at most 2 components.
    flat = torch.randn(200, 2) @ torch.randn(2, 8)
    assert effective_dimension(flat, 0.8) <= 2 and effective_dimension(torch.randn(400, 8), 0.99) == 8


@pytest.mark.parametrize("option", [["model.ffn=series", "model.series.context=2"],
                                    ["model.shortcut=augmented", "model.augmented.reduction=8"]],
                         ids=["series", "augmented"])
def test_each_option_trains_on_the_char_lm(tmp_path, option):
    cfg = compose_config(["task=pgbooks", "data.context=64", "data.train_samples=16", "data.batch_size=8",
                          "data.eval_batch_size=64", "trainer.max_steps=2", "trainer.val_check_interval=2",
                          "model.d_model=32", "model.n_heads=4", "model.d_ff=64", "model.window=[8,8,16]",
                          *option, f"run_dir={tmp_path / 'run'}", *QUIET])
    assert 0 < train(cfg)["test/bpc"] < 10


def test_both_options_train_in_the_forecaster(tmp_path):
    data = tmp_path / "series.csv"
    make_long_csv(data)
    cfg = compose_config(FORECAST_TINY + ["model.ffn=series", "model.shortcut=augmented", "model.augmented.reduction=4",
                                          f"data.path={data}", f"run_dir={tmp_path / 'run'}"])
    assert "test/rho50" in train(cfg)
