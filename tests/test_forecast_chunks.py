"""The forecast command in chunks of whole series (issue #19, section 2): the same forecasts
as reading the whole file, CSV and Parquet in and out, and an output that appears whole or
not at all."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from tsformer.data.errors import DataError
from tsformer.data.forecasting.csv_datamodule import CSVForecastingDataModule
from tsformer.export import write_tsf
from tsformer.forecast import forecast, series_chunks, series_grouped
from tsformer.train import compose_config

C, H = 12, 4
COLS = ["mean", "0.1", "0.5", "0.9"]


def history(names: list[str], steps: int = 30, short: tuple[str, ...] = ()) -> pd.DataFrame:
    """Long hourly history, rows grouped by series in the order of ``names``; the series in
    ``short`` get fewer than ``C`` steps."""
    rng = np.random.default_rng(1)
    parts = []
    for i, name in enumerate(names):
        n = 5 if name in short else steps - i % 3  # ragged ends
        t = pd.date_range("2021-01-01", periods=n, freq="h")
        parts.append(pd.DataFrame({"series": name, "time": t.strftime("%Y-%m-%d %H:%M:%S"),
                                   "value": (5 + i + rng.standard_normal(n)).round(4)}))
    return pd.concat(parts, ignore_index=True)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """An untrained tiny forecaster written as a ``.tsf`` file (speed, not accuracy)."""
    tmp = tmp_path_factory.mktemp("chunks")
    cfg = compose_config(["task=csv", "data.path=unused.csv", "data.time_col=time", "data.id_col=series",
                          "data.target=value", f"data.context_length={C}", f"data.horizon={H}", "model.d_model=16",
                          "model.n_heads=2", "model.n_layers=1", "model.d_ff=32", "module.num_samples=8"])
    cfg = OmegaConf.to_container(cfg, resolve=True)
    data = {k: v for k, v in cfg["data"].items() if k not in ("_target_", "path")}
    dm = CSVForecastingDataModule(frame=history([f"S{i:02d}" for i in range(4)]), **data)
    dm.setup("fit")
    torch.manual_seed(0)
    net = instantiate(cfg["model"], _convert_="all", **dm.model_kwargs())
    return write_tsf(net.state_dict(), cfg, dm.state_dict(), tmp / "m.tsf")


def run(model, inp, out, **kw):
    return forecast(model=str(model), input=str(inp), output=str(out), batch_size=2, progress=False, seed=5, **kw)


def test_series_chunks_hold_whole_series(tmp_path):
    df = history([f"S{i:02d}" for i in range(7)])
    df.to_csv(tmp_path / "h.csv", index=False)
    assert series_grouped(tmp_path / "h.csv", "series", rows=7)
    frames = list(series_chunks(tmp_path / "h.csv", "series", ["series", "time", "value"], 3, rows=7,
                                dtype={"series": str, "time": str}))
    assert [f["series"].nunique() for f in frames] == [3, 3, 1]
    pd.testing.assert_frame_equal(pd.concat(frames, ignore_index=True), df)
    assert pd.concat(frames).index.tolist() == list(range(len(df)))  # file positions, for error rows
    df.iloc[::-1].to_csv(tmp_path / "r.csv", index=False)
    assert not series_grouped(tmp_path / "r.csv", "series", rows=7)


def test_chunked_reading_gives_the_whole_file_forecasts(model, tmp_path):
    names = [f"S{i:02d}" for i in range(11)] + ["X9"]  # X9: not seen in training
    df = history(names, short=("S03",))  # a skipped series moves the batch boundaries
    df.to_csv(tmp_path / "h.csv", index=False)
    whole = run(model, tmp_path / "h.csv", tmp_path / "whole.csv", chunk_series=0, on_short="skip")
    chunked = run(model, tmp_path / "h.csv", tmp_path / "chunked.csv", chunk_series=3, on_short="skip")
    assert whole["series"].nunique() == 11 and "S03" not in set(whole["series"])
    a, b = pd.read_csv(tmp_path / "whole.csv"), pd.read_csv(tmp_path / "chunked.csv")
    assert a[["series", "time"]].equals(b[["series", "time"]])
    np.testing.assert_allclose(b[COLS].to_numpy(), a[COLS].to_numpy(), rtol=1e-6)
    np.testing.assert_allclose(chunked[COLS].to_numpy(), whole[COLS].to_numpy(), rtol=1e-6)
    # Parquet in and out: the same table
    pytest.importorskip("pyarrow")
    df.to_parquet(tmp_path / "h.parquet", index=False)
    run(model, tmp_path / "h.parquet", tmp_path / "f.parquet", chunk_series=3, on_short="skip")
    p = pd.read_parquet(tmp_path / "f.parquet")
    assert p["series"].tolist() == a["series"].tolist()
    np.testing.assert_allclose(p[COLS].to_numpy(), a[COLS].to_numpy(), rtol=1e-6)
    # rows out of series order: read whole, same forecasts
    df.sample(frac=1.0, random_state=0).to_csv(tmp_path / "shuffled.csv", index=False)
    s = run(model, tmp_path / "shuffled.csv", tmp_path / "s.csv", chunk_series=3, on_short="skip")
    np.testing.assert_allclose(s[COLS].to_numpy(), whole[COLS].to_numpy(), rtol=1e-6)


def test_an_error_in_a_later_chunk_leaves_no_output(model, tmp_path):
    df = history([f"S{i:02d}" for i in range(8)])
    df["value"] = df["value"].astype(object)
    df.loc[df.index[-3], "value"] = "oops"  # in the last series: found after earlier chunks were written
    df.to_csv(tmp_path / "h.csv", index=False)
    for out in ("f.csv", "f.parquet"):
        if out.endswith("parquet"):
            pytest.importorskip("pyarrow")
        # the row of the file (header: row 1), not of the chunk, as reading the file whole says
        row = len(df) - 3 + 2
        with pytest.raises(DataError, match=rf"h\.csv \(series 'S06' \.\. 'S07'\): row {row}, column 'value'"):
            run(model, tmp_path / "h.csv", tmp_path / out, chunk_series=2)
        assert not (tmp_path / out).exists()
    with pytest.raises(DataError, match=rf"h\.csv: row {row}, column 'value'"):
        run(model, tmp_path / "h.csv", tmp_path / "whole.csv", chunk_series=0)
    (tmp_path / "keep.csv").write_text("old\n")
    with pytest.raises(DataError):
        run(model, tmp_path / "h.csv", tmp_path / "keep.csv", chunk_series=2)
    assert (tmp_path / "keep.csv").read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["h.csv", "keep.csv"]  # no temporary file left
