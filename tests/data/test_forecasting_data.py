import numpy as np
import pandas as pd
import pytest
import torch

from tsformer.data.errors import DataError
from tsformer.data.forecasting.datamodule import (
    ForecastingDataModule,
    age_feature,
    series_starts,
    time_features,
    window_scale,
)


def _dm(path, **kw):
    args = dict(context_length=48, horizon=12, test_start="2014-08-05 00:00", test_windows=3, test_stride=12,
                val_windows=2, batch_size=8)
    args.update(kw)
    dm = ForecastingDataModule(str(path), **args)
    dm.setup("fit")
    return dm


def test_time_features_range_and_names():
    idx = pd.date_range("2014-01-01", periods=24 * 8, freq="h")
    f, names = time_features(idx)
    assert names == ["hour_of_day", "day_of_week", "month_of_year"]
    assert f.shape == (len(idx), 3) and f.min() >= -0.5 and f.max() <= 0.5
    assert f[0, 0] == -0.5 and f[23, 0] == 0.5


def test_scaling_and_starts():
    assert window_scale(np.array([1.0, -3.0, np.nan])) == 2.0
    assert window_scale(np.array([np.nan, 0.0])) == 1.0
    v = np.array([[0, np.nan], [0, 1.0], [2.0, 3.0]])
    np.testing.assert_array_equal(series_starts(v), [2, 1])
    age = age_feature(3, np.array([2, 1]))
    assert age[0, 0] == age[2, 0] and age[2, 1] > age[1, 1]


def test_window_layout(long_csv):
    dm = _dm(long_csv)
    item = dm.train_dataloader().dataset[0]
    L = 48 + 12
    assert item["inputs"].shape == (L,) and item["target"].shape == (L,)
    assert item["covariates"].shape == (L, dm.num_covariates)
    # the input at position p is the target at p - 1 (teacher forcing)
    torch.testing.assert_close(item["inputs"][1:], item["target"][:-1])
    # scaled by the mean absolute value of the conditioning range
    n, s = dm.train_items[0]
    raw = dm.table.values[s - 48 : s, n]
    torch.testing.assert_close(item["scale"], torch.tensor(np.abs(raw).mean(), dtype=torch.float32))


def test_splits_do_not_leak(long_csv):
    dm = _dm(long_csv)
    t0 = dm.table.index.searchsorted(pd.Timestamp("2014-08-05"))
    val_first = t0 - 2 * 12
    # training targets end before the first validation forecast
    assert (dm.train_items[:, 1] + 12 <= val_first).all()
    assert sorted(set(dm.test_items[:, 1])) == [t0, t0 + 12, t0 + 24]
    test = dm.test_dataloader().dataset[0]
    n, s = dm.test_items[0]
    np.testing.assert_allclose(test["future"].numpy(), dm.table.values[s : s + 12, n])
    assert test["inputs"].shape == (49,) and test["covariates"].shape == (60, dm.num_covariates)


def test_missing_values_are_masked(tmp_path):
    from tests.conftest import make_long_csv

    path = tmp_path / "m.csv"
    df = make_long_csv(path, n_series=1)
    df.loc[100, "value"] = np.nan
    df.to_csv(path, index=False)
    dm = _dm(path, train_stride=1)
    ds = dm.train_dataloader().dataset
    hits = [i for i, (n, s) in enumerate(ds.items) if s - 48 <= 100 < s + 12]
    item = ds[hits[0]]
    n, s = ds.items[hits[0]]
    pos = 100 - (s - 48)
    assert item["observed"][pos] == 0 and item["target"][pos] == 0


def test_seasonal_naive_is_last_week(long_csv):
    dm = _dm(long_csv)
    fc, act = dm.seasonal_naive()
    n, s = dm.test_items[0]
    np.testing.assert_allclose(fc[0], dm.table.values[s - 168 : s - 168 + 12, n])
    np.testing.assert_allclose(act[0], dm.table.values[s : s + 12, n])
    # The data module reports it as the run's baseline figures.
    b = dm.baselines()
    assert b["baseline/seasonal_naive/mae"] == pytest.approx(np.abs(fc - act).mean(), rel=1e-5)
    assert {"baseline/seasonal_naive/rho50", "baseline/seasonal_naive/rho90"} <= set(b)


def test_test_start_outside_data(long_csv):
    with pytest.raises(DataError, match="outside the data"):
        _dm(long_csv, test_start="2020-01-01")


def test_too_short_for_context(long_csv):
    with pytest.raises(DataError, match="no training window"):
        _dm(long_csv, context_length=5000)
