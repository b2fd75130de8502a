"""RWKV-4 (Peng et al. 2023): the WKV formula, its stable recurrent and parallel forms, and
the same weights decoding step by step on the shared cache."""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from tests.nn.recurrent_checks import check_char_lm_decoding, check_forecast_sampling
from tsformer.nn.attention.rwkv import wkv_chunked, wkv_recurrent


def _naive(w, u, k, v):
    """The paper's formula written out (float64, no stabilisation: small inputs only)."""
    B, T, C = k.shape
    out = torch.zeros(B, T, C, dtype=torch.float64)
    for t in range(T):
        num = torch.exp(u + k[:, t]) * v[:, t]
        den = torch.exp(u + k[:, t])
        for i in range(t):
            e = torch.exp((t - 1 - i) * w + k[:, i])
            num, den = num + e * v[:, i], den + e
        out[:, t] = num / den
    return out


def _inputs(B, T, C, scale=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = -torch.exp(torch.randn(C, generator=g, dtype=torch.float64))
    u = torch.randn(C, generator=g, dtype=torch.float64)
    k = torch.randn(B, T, C, generator=g, dtype=torch.float64) * scale
    v = torch.randn(B, T, C, generator=g, dtype=torch.float64)
    return w, u, k, v


def test_recurrence_equals_the_papers_formula():
    w, u, k, v = _inputs(2, 9, 5)
    y, _ = wkv_recurrent(w, u, k, v)
    assert_close(y, _naive(w, u, k, v))


@pytest.mark.parametrize(("T", "chunk"), [(1, 4), (7, 3), (33, 8), (64, 32)])
def test_parallel_chunks_equal_the_recurrence(T, chunk):
    w, u, k, v = _inputs(2, T, 6, seed=T)
    y_rec, s_rec = wkv_recurrent(w, u, k, v)
    y_par, s_par = wkv_chunked(w, u, k, v, chunk=chunk)
    assert_close(y_par, y_rec)
    # The carried state continues identically.
    w2, u2, k2, v2 = _inputs(2, 5, 6, seed=T + 100)
    assert_close(wkv_chunked(w, u, k2, v2, s_par, chunk)[0], wkv_recurrent(w, u, k2, v2, s_rec)[0])


@pytest.mark.parametrize("T", [3000, pytest.param(16384, marks=pytest.mark.slow)])
def test_stable_on_long_sequences_with_large_keys(T):
    w64, u64, k64, v64 = _inputs(1, T, 4, scale=60.0)  # e^{60 k} would overflow without the running max
    want, _ = wkv_recurrent(w64, u64, k64, v64)
    w, u, k, v = (t.float() for t in (w64, u64, k64, v64))
    y_par, _ = wkv_chunked(w, u, k, v, chunk=64)
    y_rec, _ = wkv_recurrent(w, u, k, v)
    assert torch.isfinite(y_par).all() and torch.isfinite(y_rec).all()
    assert_close(y_par.double(), want, rtol=2e-3, atol=2e-3)  # fp32 rounding over T steps
    assert_close(y_rec.double(), want, rtol=2e-3, atol=2e-3)
    grads = torch.autograd.grad(wkv_chunked(w, u, k.requires_grad_(), v, chunk=64)[0].sum(), k)
    assert torch.isfinite(grads[0]).all()


@pytest.mark.parametrize("ffn", ["rwkv", "mlp"])
def test_char_lm_parallel_training_equals_recurrent_decoding(ffn):
    check_char_lm_decoding({"type": "rwkv", "pattern": "causal", "positions": "none"}, ffn)


def test_forecast_sampling_on_the_recurrent_state():
    check_forecast_sampling({"type": "rwkv"}, ffn="rwkv")


def test_refusals_say_why():
    from tsformer.nn.attention import build_attention

    with pytest.raises(ValueError, match="takes no positions"):
        build_attention({"type": "rwkv", "positions": "rotary"}, 16, 2)
    with pytest.raises(ValueError, match="cannot take pattern 'full'"):
        build_attention({"type": "rwkv", "pattern": "full"}, 16, 2)


# The forecaster's default LogSparse pattern does not fit RWKV (a recurrence sees every earlier step).
RWKV_FORECASTER = ["model=logsparse", "model.attention.type=rwkv", "model.attention.pattern=causal", "model.ffn=rwkv"]


def test_rwkv_backbone_trains_on_electricity(tmp_path):
    from tests.conftest import make_long_csv
    from tests.test_train import TINY
    from tsformer.train import compose_config, train

    data = tmp_path / "series.csv"
    make_long_csv(data)
    metrics = train(compose_config([*TINY, *RWKV_FORECASTER, f"data.path={data}", f"run_dir={tmp_path / 'run'}"]))
    assert math.isfinite(metrics["test/crps"])


@pytest.mark.slow
def test_rwkv_backbone_trains_forecasts_and_evaluates(tmp_path):
    """The forecaster (``model=logsparse``) with RWKV-4 blocks on a CSV task: a few training
    steps, test metrics from forecasts sampled through the recurrent state, then export and
    the forecast command."""
    import pandas as pd

    from tests.conftest import make_long_csv
    from tests.test_export_forecast import SMALL
    from tsformer.export import export
    from tsformer.forecast import forecast
    from tsformer.train import compose_config, train

    data = tmp_path / "series.csv"
    make_long_csv(data, days=20)
    run = tmp_path / "run"
    cfg = compose_config(["task=csv", f"data.path={data}", "data.time_col=time", "data.id_col=series",
                          "data.target=value", *SMALL, *RWKV_FORECASTER, f"run_dir={run}"])
    metrics = train(cfg)
    assert all(math.isfinite(metrics[k]) for k in ("test/rho50", "test/rho90", "test/crps"))
    export(run, tmp_path / "model.tsf")
    fc = forecast(model=str(tmp_path / "model.tsf"), input=str(data), output=str(tmp_path / "f.csv"), seed=0,
                  progress=False)
    disk = pd.read_csv(tmp_path / "f.csv")
    assert len(disk) == len(fc) == 2 * 6 and disk[["mean", "0.1", "0.5", "0.9"]].notna().all().all()
