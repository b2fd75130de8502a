"""Smoke test of benchmarks/forecasting.py on tiny slices: the harness's own code path,
seasonal naive and a one-step tsformer model, without /work/shared."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.conftest import load_benchmark, make_long_csv


def _write_ett_like(path: Path, rows: int = 480, channels: int = 3) -> None:
    """ETT layout (``date`` then channels): noise-free daily cycles, so seasonal naive is exact."""
    idx = pd.date_range("2016-07-01", periods=rows, freq="h")
    df = pd.DataFrame({"date": idx.strftime("%Y-%m-%d %H:%M:%S")})
    for c in range(channels):
        df[f"x{c}"] = (c + 1) * np.sin(2 * np.pi * (idx.hour + c) / 24) + 0.1 * c
    df.to_csv(path, index=False)


def test_long_horizon_harness_tiny_slice(tmp_path, monkeypatch):
    bench = load_benchmark("forecasting")
    _write_ett_like(tmp_path / "tiny.csv")
    monkeypatch.setitem(bench.DATASETS, "tiny", bench.DatasetSpec("long", "tiny.csv", split="ratio", horizons=(8,),
                                                                   context=48))
    out, md = tmp_path / "results", tmp_path / "RESULTS.md"
    # performer and linformer: the issue-16 attention types in the encoder-style PatchForecaster.
    models = ["seasonal_naive", "logsparse", "performer", "linformer"] + (["dlinear"] if bench.gluonts_available() else [])
    rows = bench.main(["--dataset", "tiny", "--models", *models, "--max-steps", "1", "--budget-minutes", "1",
                       "--data-root", str(tmp_path), "--results-dir", str(out), "--results-md", str(md)])
    assert [r["model"] for r in rows] == models
    for r in rows:
        for key in ("model", "dataset", "mse", "mae", "train_seconds", "predict_seconds", "params", "device",
                    "command"):
            assert key in r, key
        assert math.isfinite(r["mse"]) and math.isfinite(r["mae"])
        assert f"--models {r['model']}" in r["command"]
    naive, tsf = rows[0], rows[1]
    assert all(r["params"] > 0 and r["train_steps"] == 1 for r in rows[2:4])
    assert naive["mse"] < 1e-10  # the series repeats every day exactly
    assert tsf["params"] > 0 and tsf["train_steps"] == 1
    saved = json.loads((out / "forecasting-tiny.json").read_text())
    assert [r["model"] for r in saved] == models
    assert "| seasonal_naive | 8 | 48 |" in md.read_text()


@pytest.mark.slow
def test_electricity_harness_tiny_slice(tmp_path):
    bench = load_benchmark("forecasting")
    # 40 days from 2014-08-01: a week of validation and a week of tests from 2014-09-01.
    make_long_csv(tmp_path / "elec.csv", n_series=2, days=40, start="2014-08-01")
    spec = bench.DatasetSpec("electricity", "elec.csv", horizons=(24,), context=48)
    rows = bench.run_benchmark("elec_tiny", ["seasonal_naive", "logsparse"], budget_minutes=1, data_root=tmp_path,
                               max_steps=1, spec=spec, log=lambda *a: None)
    assert [r["model"] for r in rows] == ["seasonal_naive", "logsparse"]
    for r in rows:
        for key in ("rho50", "rho90", "mae", "crps"):
            assert math.isfinite(r[key]) and r[key] >= 0, key
    assert rows[1]["train_steps"] == 1 and rows[1]["params"] > 0
    # The daily shape plus 10 % noise: a week-old value is a good forecast, far from useless.
    assert rows[0]["rho50"] < 0.3


def test_unknown_dataset_and_missing_file_are_clear(tmp_path):
    bench = load_benchmark("forecasting")
    with pytest.raises(ValueError, match="unknown dataset"):
        bench.run_benchmark("nope")
    with pytest.raises(FileNotFoundError, match="ETTh1.csv"):
        bench.run_benchmark("etth1", ["seasonal_naive"], data_root=tmp_path)


def test_published_figures_stand_beside_the_matching_protocol():
    bench = load_benchmark("forecasting")
    row = {"model": "performer", "horizon": 96, "context_length": 96, "mse": 0.5, "mae": 0.4, "train_seconds": 1.0,
           "predict_seconds": 0.1, "params": 10, "command": "x", "date": "d", "device": "cpu"}
    table = bench.markdown_table("etth1", [row])
    assert "Reformer 0.837, Informer 0.865, Autoformer 0.449" in table and "TimesNet" in table
    assert "Published" not in bench.markdown_table("etth1", [{**row, "context_length": 336}])
