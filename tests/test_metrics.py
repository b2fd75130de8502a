import math

import numpy as np
import torch

from tsformer.metrics import ForecastAccumulator, crps_from_samples, point_forecast_metrics, rho_risk


def test_rho_risk_by_hand():
    y = torch.tensor([10.0, 20.0, 30.0])
    yhat = torch.tensor([12.0, 18.0, 30.0])
    # rho=0.5: QL = 0.5*|err| -> (1 + 1 + 0) ; R = 2*2/60
    assert math.isclose(rho_risk(y, yhat, 0.5), 4 / 60, rel_tol=1e-6)
    # rho=0.9: over-forecast 2 -> (1-0.9)*2 = 0.2; under-forecast 2 -> 0.9*2 = 1.8; R = 2*2.0/60
    assert math.isclose(rho_risk(y, yhat, 0.9), 4.0 / 60, rel_tol=1e-6)
    yhat2 = torch.tensor([8.0, 20.0, 30.0])  # one under-forecast by 2
    assert math.isclose(rho_risk(y, yhat2, 0.9), 2 * 1.8 / 60, rel_tol=1e-6)


def test_nan_targets_ignored():
    y = torch.tensor([10.0, float("nan"), 30.0])
    yhat = torch.tensor([12.0, 100.0, 30.0])
    assert math.isclose(rho_risk(y, yhat, 0.5), 2 * 1.0 / 40, rel_tol=1e-6)


def test_crps_by_hand():
    # Samples {0, 2}, y = 1: E|X-y| = 1, E|X-X'| = (0+2+2+0)/4 = 1 -> CRPS = 1 - 0.5 = 0.5
    c = crps_from_samples(torch.tensor(1.0), torch.tensor([0.0, 2.0]))
    assert math.isclose(float(c), 0.5)
    # A point forecast's CRPS is its absolute error.
    c = crps_from_samples(torch.tensor([3.0]), torch.full((5, 1), 1.0))
    assert math.isclose(float(c), 2.0)


def test_crps_of_normal_samples_matches_closed_form():
    torch.manual_seed(0)
    s = torch.randn(20000, 1, dtype=torch.float64)
    y = torch.tensor([0.0], dtype=torch.float64)
    # CRPS(N(0,1), 0) = 2*phi(0) - 1/sqrt(pi) = 0.2337
    expected = 2 / math.sqrt(2 * math.pi) - 1 / math.sqrt(math.pi)
    assert abs(float(crps_from_samples(y, s)) - expected) < 0.01


def test_accumulator_independent_of_batching():
    rng = np.random.default_rng(0)
    y = torch.tensor(rng.normal(10, 2, (8, 6)))
    s = torch.tensor(rng.normal(10, 2, (50, 8, 6)))
    q50, q90 = s.quantile(0.5, 0), s.quantile(0.9, 0)
    a = ForecastAccumulator()
    a.update(y, q50, q90, s)
    b = ForecastAccumulator()
    for i in range(0, 8, 3):
        b.update(y[i : i + 3], q50[i : i + 3], q90[i : i + 3], s[:, i : i + 3])
    for k, v in a.compute().items():
        assert math.isclose(v, b.compute()[k], rel_tol=1e-9)
    assert math.isclose(a.compute()["rho50"], rho_risk(y, q50, 0.5), rel_tol=1e-9)


def test_point_forecast_metrics():
    m = point_forecast_metrics(np.array([[1.0, 2.0]]), np.array([[2.0, 2.0]]))
    assert math.isclose(m["mae"], 0.5) and math.isclose(m["crps"], 0.5)
    assert math.isclose(m["rho50"], 2 * 0.5 / 3)
