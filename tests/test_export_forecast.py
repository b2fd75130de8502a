"""Export -> batch forecast: same forecasts as the trained model, safe files, clear errors."""

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from tests.data.test_user_csv import long_frame, write
from tsformer.data.errors import DataError
from tsformer.data.forecasting.csv_datamodule import CSVForecastingDataModule
from tsformer.export import ExportError, export, load_tsf
from tsformer.forecast import forecast, main, predict_frame
from tsformer.train import REPO_ROOT, compose_config, train

SMALL = ["data.context_length=24", "data.horizon=6", "data.batch_size=16", "model.d_model=16", "model.n_heads=2",
         "model.n_layers=1", "model.d_ff=32", "module.num_samples=16", "trainer.max_steps=4",
         "trainer.val_check_interval=2", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
         "print_metrics=false"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fc")
    df = long_frame(n_series=3)
    df.loc[40:42, "value"] = np.nan
    data = write(tmp, df)
    run = tmp / "run"
    cfg = compose_config(["task=csv", f"data.path={data}", "data.time_col=time", "data.id_col=series",
                          "data.target=value", "data.static_categoricals=[region]", f"run_dir={run}", *SMALL])
    metrics = train(cfg)
    return tmp, data, run, cfg, metrics


def test_train_on_csv_reports_metrics(trained):
    _, _, run, _, metrics = trained
    assert np.isfinite(metrics["test/rho50"]) and np.isfinite(metrics["baseline/seasonal_naive/rho50"])
    assert (run / "checkpoints" / "best.ckpt").exists()


def test_export_then_forecast_reproduces_the_trained_model(trained):
    tmp, data, run, cfg, _ = trained
    out = tmp / "model.tsf"
    export(run, out)
    # in memory: the training-time data module and the checkpoint's network
    from hydra.utils import instantiate

    dm = instantiate(cfg.data, _convert_="all")
    dm.setup("fit")
    net = instantiate(cfg.model, _convert_="all", **dm.model_kwargs())
    ckpt = torch.load(run / "checkpoints" / "best.ckpt", weights_only=True)
    net.load_state_dict({k[4:]: v for k, v in ckpt["state_dict"].items() if k.startswith("net.")})
    pred = CSVForecastingDataModule(**{k: v for k, v in cfg.data.items() if k != "_target_"})
    pred.load_state_dict(dm.state_dict())
    pred.setup("predict")
    mem, _ = predict_frame(net, pred, [0.1, 0.5, 0.9], 16, seed=3)
    # from the file, through the command
    fc = forecast(model=str(out), input=str(data), output=str(tmp / "f.csv"), seed=3, progress=False)
    disk = pd.read_csv(tmp / "f.csv")
    assert list(disk.columns) == ["series", "time", "mean", "0.1", "0.5", "0.9"]
    assert disk["series"].tolist() == ["S0"] * 6 + ["S1"] * 6 + ["S2"] * 6
    assert disk["time"].iloc[0] == "2021-03-06 00:00:00"  # one step after the last row
    np.testing.assert_allclose(disk[["mean", "0.1", "0.5", "0.9"]].to_numpy(), mem[["mean", "0.1", "0.5", "0.9"]],
                               rtol=1e-5)
    np.testing.assert_allclose(fc["0.5"], mem["0.5"])


def test_tsf_holds_everything_and_loads_without_pickle(trained):
    tmp, _, run, _, _ = trained
    out = export(run, tmp / "m2.tsf")
    from safetensors import safe_open

    with safe_open(str(out), framework="pt") as f:
        meta = f.metadata()
    assert meta["format"] == "tsformer-forecaster" and meta["tsformer_version"]
    state = json.loads(meta["data_state"])
    assert state["series_names"] == ["S0", "S1", "S2"] and state["static_vocab"] == [["north", "south"]]
    assert json.loads(meta["config"])["model"]["_target_"].endswith("ConvTransformerForecaster")
    net, info = load_tsf(out)
    assert info["data_state"]["freq"] == "h"


def test_incompatible_version_is_a_clear_error(trained, tmp_path):
    _, _, run, _, _ = trained
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    src = export(run, tmp_path / "m.tsf")
    with safe_open(str(src), framework="pt") as f:
        meta = f.metadata()
    save_file(load_file(str(src)), str(tmp_path / "old.tsf"), metadata={**meta, "format_version": "99"})
    with pytest.raises(ExportError, match="format version 99; this tsformer .* reads format version 1"):
        load_tsf(tmp_path / "old.tsf")
    (tmp_path / "junk.tsf").write_bytes(b"\x80\x04not safetensors")
    with pytest.raises(ExportError, match="not a tsformer model file"):
        load_tsf(tmp_path / "junk.tsf")


def test_shorter_horizon_unknown_series_and_short_series(trained, tmp_path):
    tmp, _, run, _, _ = trained
    model = export(run, tmp_path / "m.tsf")
    df = long_frame(n_series=3)
    df.loc[df.series == "S2", "series"] = "NEW"
    short = long_frame(n_series=1).iloc[:10].assign(series="TINY")
    hist = write(tmp_path, pd.concat([df, short]), "hist.csv")
    fc = forecast(model=str(model), input=str(hist), output=str(tmp_path / "o.csv"), horizon=3, on_short="skip",
                  quantiles=[0.5], progress=False)
    assert sorted(fc.series.unique()) == ["NEW", "S0", "S1"] and len(fc) == 9 and list(fc.columns)[-1] == "0.5"
    with pytest.raises(DataError, match=r"series 'TINY' has 10 steps of history, shorter than context_length = 24"):
        forecast(model=str(model), input=str(hist), output=str(tmp_path / "o2.csv"), progress=False)
    with pytest.raises(DataError, match="series 'NEW' was not seen in training"):
        forecast(model=str(model), input=str(hist), output=str(tmp_path / "o3.csv"), unknown_series="error",
                 on_short="skip", progress=False)
    with pytest.raises(DataError, match="horizon=7: must be between 1 and the trained horizon 6"):
        forecast(model=str(model), input=str(hist), output=str(tmp_path / "o4.csv"), horizon=7, progress=False)
    assert not (tmp_path / "o2.csv").exists()


def test_plots(trained, tmp_path):
    tmp, data, run, _, _ = trained
    model = export(run, tmp_path / "m.tsf")
    assert main([f"model={model}", f"input={data}", f"output={tmp_path / 'f.csv'}", "plot=true",
                 "plot_series=[S1]", "progress=false"]) == 0
    png = tmp_path / "f_plots" / "S1.png"
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_interrupted_write_leaves_no_partial_forecast(trained, tmp_path, monkeypatch):
    tmp, data, run, _, _ = trained
    model = export(run, tmp_path / "m.tsf")
    out = tmp_path / "forecast.csv"
    out.write_text("previous forecast\n")
    real = pd.DataFrame.to_csv

    def half_then_die(self, f, *a, **k):
        real(self.iloc[: len(self) // 2], f, *a, **k)
        raise KeyboardInterrupt

    monkeypatch.setattr(pd.DataFrame, "to_csv", half_then_die)
    with pytest.raises(KeyboardInterrupt):
        forecast(model=str(model), input=str(data), output=str(out), progress=False)
    assert out.read_text() == "previous forecast\n"  # old file untouched, no half file
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


@pytest.mark.slow
def test_killed_process_leaves_no_forecast_file(trained, tmp_path):
    """A SIGKILL during the run never leaves forecast.csv (the rename is the last step)."""
    tmp, data, run, _, _ = trained
    model = export(run, tmp_path / "m.tsf")
    out = tmp_path / "forecast.csv"
    code = (
        "import sys, time, pandas as pd\n"
        "real = pd.DataFrame.to_csv\n"
        "def slow(self, f, *a, **k):\n"
        "    real(self.iloc[:5], f, *a, **k); f.flush(); print('WRITING', flush=True); time.sleep(60)\n"
        "pd.DataFrame.to_csv = slow\n"
        "from tsformer.forecast import main\n"
        f"main(['model={model}', 'input={data}', 'output={out}', 'progress=false'])\n"
    )
    p = subprocess.Popen([sys.executable, "-c", code], cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True,
                         env={"PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert p.stdout.readline().strip() == "WRITING"
    tmps = [q for q in tmp_path.iterdir() if q.name.startswith(".forecast.csv.tmp")]
    assert tmps and tmps[0].stat().st_size > 0  # it was mid-write
    p.kill()
    p.wait()
    assert not out.exists()


def test_forecast_decode_jacobi_equals_sequential_sampling_with_the_same_noise(trained, tmp_path):
    """decode=jacobi draws every path's noise up front; decode.block=1 is sequential sampling
    with that noise, so the two agree to 1e-5 relative (#18)."""
    tmp, data, run, _, _ = trained
    model = tmp / "model_dec.tsf"
    export(run, model)
    common = [f"model={model}", f"input={data}", "progress=false", "seed=4", "decode=jacobi"]
    assert main([*common, f"output={tmp_path / 'j.csv'}"]) == 0
    assert main([*common, f"output={tmp_path / 's.csv'}", "decode.block=1"]) == 0
    jac, seq = pd.read_csv(tmp_path / "j.csv"), pd.read_csv(tmp_path / "s.csv")
    cols = ["mean", "0.1", "0.5", "0.9"]
    np.testing.assert_allclose(jac[cols].to_numpy(), seq[cols].to_numpy(), rtol=1e-5, atol=1e-6)
    with pytest.raises(SystemExit, match="forecasts decode sequential or jacobi"):
        forecast(model=str(model), input=str(data), output=str(tmp_path / "l.csv"), decode="lookahead")
