"""sktime adapter: conformance checks, quantiles, and a forecaster built from model.tsf."""

import numpy as np
import pandas as pd
import pytest

from tsformer.sktime import LogSparseForecaster


@pytest.mark.slow
def test_check_estimator():
    from sktime.utils.estimator_checks import check_estimator

    check_estimator(LogSparseForecaster, raise_exceptions=True, verbose=False)


def _panel():
    idx = pd.date_range("2021-01-01", periods=60, freq="h")
    frames = [pd.DataFrame({"y": 5.0 * (k + 1) + np.sin(np.arange(60) / 3)},
                           index=pd.MultiIndex.from_product([[f"s{k}"], idx], names=["id", "time"])) for k in range(2)]
    return pd.concat(frames)


def test_global_fit_predict_quantiles():
    y = _panel()
    f = LogSparseForecaster(context_length=12, horizon=4, d_model=8, n_layers=1, d_ff=16, max_steps=3,
                            num_samples=16)
    f.fit(y, fh=[1, 2, 3])
    q = f.predict_quantiles(alpha=[0.1, 0.9])
    assert q.shape == (6, 2) and (q.iloc[:, 1] >= q.iloc[:, 0]).all()
    assert q.index.get_level_values(0).tolist() == ["s0"] * 3 + ["s1"] * 3
    assert q.index.get_level_values(-1)[0] == pd.Timestamp("2021-01-03 12:00")


def test_from_exported_model(tmp_path):
    from tests.data.test_user_csv import long_frame, write
    from tests.test_export_forecast import SMALL
    from tsformer.export import export
    from tsformer.train import compose_config, train

    data = write(tmp_path, long_frame(n_series=2))
    train(compose_config(["task=csv", f"data.path={data}", "data.time_col=time", "data.id_col=series",
                          "data.target=value", f"run_dir={tmp_path / 'run'}", *SMALL]))
    model = export(tmp_path / "run", tmp_path / "m.tsf")
    f = LogSparseForecaster.from_tsf(str(model), num_samples=8)
    y = pd.Series(10 + np.sin(np.arange(48) / 4), index=pd.date_range("2021-03-01", periods=48, freq="h"))
    pred = f.fit(y).predict(fh=[1, 2, 3, 4, 5, 6])
    assert len(pred) == 6 and np.isfinite(pred.to_numpy()).all()
    assert f.context_length_ == 24
