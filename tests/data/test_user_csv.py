"""task=csv data path: every bad-input message, wide/long round trips, missing values."""

import numpy as np
import pandas as pd
import pytest
import torch

from tsformer.data.errors import DataError
from tsformer.data.forecasting.csv_datamodule import CSVForecastingDataModule
from tsformer.data.forecasting.user_csv import read_user_csv


def long_frame(n_series=2, steps=120, freq="h", seed=0):
    rng = np.random.default_rng(seed)
    idx = pd.date_range("2021-03-01", periods=steps, freq=freq)
    parts = []
    for s in range(n_series):
        y = 10.0 * (s + 1) + np.sin(np.arange(steps) / 4) + 0.1 * rng.standard_normal(steps)
        parts.append(pd.DataFrame({"series": f"S{s}", "time": idx.strftime("%Y-%m-%d %H:%M:%S"), "value": y,
                                   "temp": np.cos(np.arange(steps) / 5), "load": y / 2,
                                   "region": "north" if s == 0 else "south"}))
    return pd.concat(parts, ignore_index=True)


def write(tmp_path, df, name="data.csv"):
    p = tmp_path / name
    df.to_csv(p, index=False)
    return p


def dm(path, **kw):
    args = dict(time_col="time", target="value", id_col="series", context_length=24, horizon=6, batch_size=8)
    args.update(kw)
    return CSVForecastingDataModule(str(path), **args)


# -- bad input: one clear message each -------------------------------------------------
def bad(path, match, **kw):
    with pytest.raises(DataError, match=match):
        dm(path, **kw).setup("fit")


def test_file_not_found(tmp_path):
    bad(tmp_path / "nope.csv", r"nope.csv: file not found")


def test_empty_file(tmp_path):
    (tmp_path / "e.csv").write_text("")
    bad(tmp_path / "e.csv", r"e.csv: the file is empty")
    (tmp_path / "h.csv").write_text("series,time,value\n")
    bad(tmp_path / "h.csv", r"h.csv: the file has a header but no rows")


def test_misspelled_column_suggests_nearest(tmp_path):
    p = write(tmp_path, long_frame())
    bad(p, r"data.csv: no column 'valeu' \(data.target\). Did you mean 'value'\?", target="valeu")
    bad(p, r"no column 'tmep' \(data.known_covariates\). Did you mean 'temp'\?", known_covariates=["tmep"])
    bad(p, r"no column 'Time' \(data.time_col\). Did you mean 'time'\?", time_col="Time")


def test_unparseable_timestamp_names_row(tmp_path):
    df = long_frame()
    df.loc[7, "time"] = "not a date"
    bad(write(tmp_path, df), r"data.csv: row 9: cannot parse timestamp 'not a date' in column 'time'")


def test_duplicate_timestamp_names_row_and_series(tmp_path):
    df = long_frame()
    df = pd.concat([df.iloc[:131], df.iloc[[130]], df.iloc[131:]], ignore_index=True)  # repeat a S1 row
    bad(write(tmp_path, df), r"data.csv: row 133: duplicate timestamp 2021-03-01 10:00:00 for series 'S1'")


def test_irregular_frequency(tmp_path):
    idx = pd.DatetimeIndex(["2021-01-01 00:00", "2021-01-01 01:00", "2021-01-01 01:30", "2021-01-01 03:00",
                            "2021-01-01 03:20", "2021-01-01 05:00"])
    df = pd.DataFrame({"date": idx, "y": np.arange(6.0)})
    with pytest.raises(DataError, match=r"w.csv: cannot infer the frequency.*set data.freq"):
        read_user_csv(write(tmp_path, df, "w.csv"), time_col="date", target="y")
    with pytest.raises(DataError, match=r"w.csv: row 4: timestamp 2021-01-01 01:30:00 is not on the 1h grid"):
        read_user_csv(tmp_path / "w.csv", time_col="date", target="y", freq="1h")


def test_non_numeric_target_names_row_and_column(tmp_path):
    df = long_frame()
    df["value"] = df["value"].astype(object)
    df.loc[3, "value"] = "12,5kW"
    bad(write(tmp_path, df), r"data.csv: row 5, column 'value': non-numeric target value '12,5kW'")


def test_series_too_short(tmp_path):
    df = long_frame()
    df = df[(df.series == "S0") | (df.index < 120 + 20)]
    bad(write(tmp_path, df), r"series 'S1' has 20 steps .*shorter than context_length \+ horizon = 24 \+ 6")


def test_nothing_written_before_validation(tmp_path):
    from tests.test_train import TINY  # noqa: F401  (same tiny settings style)
    from tsformer.train import compose_config, train

    df = long_frame()
    df.loc[3, "time"] = "garbage"
    run = tmp_path / "run"
    cfg = compose_config(["task=csv", f"data.path={write(tmp_path, df)}", "data.time_col=time", "data.id_col=series",
                          "data.target=value", f"run_dir={run}"])
    with pytest.raises(DataError, match="row 5: cannot parse timestamp"):
        train(cfg)
    assert not run.exists()


# -- round trips ------------------------------------------------------------------------
def test_long_and_wide_give_the_same_table(tmp_path):
    df = long_frame(n_series=3)
    df.loc[5, "value"] = np.nan  # an empty cell
    df = df.drop(index=[10, 11])  # a gap in the timestamps of S0
    long_t = read_user_csv(write(tmp_path, df), time_col="time", target="value", id_col="series")
    wide = df.pivot(index="time", columns="series", values="value").reset_index()
    wide_t = read_user_csv(write(tmp_path, wide, "wide.csv"), time_col="time")
    assert long_t.names == wide_t.names == ["S0", "S1", "S2"]
    assert long_t.freq == wide_t.freq == "h"
    np.testing.assert_array_equal(long_t.values, wide_t.values)
    assert np.isnan(long_t.values[5, 0]) and np.isnan(long_t.values[10:12, 0]).all()
    orig = df.pivot(index="time", columns="series", values="value").to_numpy(np.float32)
    np.testing.assert_array_equal(np.isnan(orig), np.isnan(long_t.values[: len(orig)]) & np.isnan(orig))


def test_wide_target_among_covariates(tmp_path):
    idx = pd.date_range("2020-01-01", periods=50, freq="15min")
    df = pd.DataFrame({"date": idx, "HUFL": np.arange(50.0), "OT": np.arange(50.0) * 2})
    t = read_user_csv(write(tmp_path, df), time_col="date", target="OT", known_covariates=["HUFL"])
    assert t.names == ["OT"] and t.freq == "15min" and t.known.shape == (50, 1, 1)
    np.testing.assert_array_equal(t.values[:, 0], np.arange(50.0) * 2)
    t = read_user_csv(tmp_path / "data.csv", time_col="date", target="OT", freq="15min")
    assert t.freq == "15min"


def test_chunked_reading_matches_one_chunk(tmp_path):
    p = write(tmp_path, long_frame(n_series=3))
    a = read_user_csv(p, time_col="time", target="value", id_col="series", known_covariates=["temp"])
    b = read_user_csv(p, time_col="time", target="value", id_col="series", known_covariates=["temp"], chunk_rows=7)
    np.testing.assert_array_equal(a.values, b.values)
    np.testing.assert_array_equal(a.known, b.known)


# -- missing values -------------------------------------------------------------------------
def test_missing_values_are_masked_not_zero_filled(tmp_path):
    df = long_frame(n_series=1)
    df.loc[30:33, "value"] = np.nan
    m = dm(write(tmp_path, df), test_windows=1, val_windows=0)
    m.setup("fit")
    ds = m.train_dataloader().dataset
    # the training window whose targets cover 30..33 masks exactly those steps
    i = next(i for i, (n, s) in enumerate(ds.items) if s - 24 == 30 - 24 + 1 - 1)
    item = ds[i]
    pos = np.arange(30, 34) - (ds.items[i][1] - 24) + 1  # padded row = csv row + 1
    assert (item["observed"][pos] == 0).all() and item["observed"].sum() == len(item["observed"]) - 4
    # the loss ignores them: changing the target there changes nothing
    from tsformer.nn.likelihoods import GaussianHead

    mu, sigma = torch.zeros(1, 30), torch.ones(1, 30)
    t2 = item["target"].clone()
    t2[pos] = 1e6
    assert GaussianHead.nll(mu, sigma, item["target"][None], item["observed"][None]) == GaussianHead.nll(
        mu, sigma, t2[None], item["observed"][None])


def test_missing_in_test_window_is_nan_in_metrics(tmp_path):
    df = long_frame(n_series=1)
    df.loc[117, "value"] = np.nan  # inside the last (test) window
    m = dm(write(tmp_path, df), test_windows=1, val_windows=0)
    m.setup("fit")
    fut = m.test_dataloader().dataset[0]["future"]
    assert torch.isnan(fut).sum() == 1  # metrics skip NaN targets


def test_interpolate_policy(tmp_path):
    df = long_frame(n_series=1)
    df.loc[30, "value"] = np.nan
    m = dm(write(tmp_path, df), missing="interpolate", test_windows=1, val_windows=0)
    m.setup("fit")
    v = m.table.values[:, 0]
    assert v[31] == pytest.approx((df.value[29] + df.value[31]) / 2)


def test_covariates_and_static_features(tmp_path):
    df = long_frame(n_series=2)
    m = dm(write(tmp_path, df), known_covariates=["temp"], past_covariates=["load"], static_categoricals=["region"],
           test_windows=1, val_windows=1)
    m.setup("fit")
    kw = m.model_kwargs()
    assert kw["num_covariates"] == len(m.feature_names) + 1 + 1 + 2  # calendar, age, known, past + flag
    assert kw["static_cardinalities"] == [3]
    item = m.train_dataloader().dataset[0]
    assert item["static"].tolist() in ([1], [2])
    cov = item["covariates"]
    assert (cov[25:, -1] == 0).all() and (cov[:25, -1] == 1).all()  # past covariates hidden after forecast time
    assert (cov[25:, -2] == 0).all()

    from tsformer.nn.conv_transformer import ConvTransformerForecaster

    net = ConvTransformerForecaster(**kw, d_model=8, n_heads=2, n_layers=1, d_ff=16)
    b = next(iter(m.train_dataloader()))
    mu, _ = net(b["inputs"], b["covariates"], b["series"], b["static"])
    assert mu.shape == b["target"].shape
