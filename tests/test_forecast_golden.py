"""Golden forecasts: batch sampling for a fixed seed gives the paths recorded from the
sampling code as it was before the fast path (issue #19, section 2), within fp32 tolerance.

The golden file was written by ``python tests/test_forecast_golden.py`` from that code;
rerun it only when a forecast is meant to change. The draws are those of that code too: one
generator seeded with 0 running through the batches. (The forecast command has since given
each series noise of its own, keyed by seed and series id, so that a series' forecast does
not depend on its partition (section 3), and scales the age feature by the training span
(``age_length``); those change which draws and inputs a path gets, not how a path is
computed from them, which is what this test holds fixed.)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from hydra.utils import instantiate

from tsformer.data.forecasting.csv_datamodule import CSVForecastingDataModule
from tsformer.tasks.forecasting import forecast_batch
from tsformer.train import compose_config

GOLDEN = Path(__file__).parent / "golden" / "forecast_logsparse.npz"
CONTEXT, HORIZON, SERIES, SAMPLES, BATCH = 168, 24, 5, 16, 2


def golden_frame(n: int = SERIES, steps: int = CONTEXT + 30, seed: int = 0) -> pd.DataFrame:
    """``n`` hourly series of ``steps`` values, long format (``series, time, value``)."""
    rng = np.random.default_rng(seed)
    idx = pd.date_range("2020-01-01", periods=steps, freq="h")
    values = 10 + np.sin(np.arange(steps) / 4)[None] * (1 + np.arange(n))[:, None] + rng.standard_normal((n, steps))
    return pd.DataFrame({"series": np.repeat([f"S{i}" for i in range(n)], steps), "time": np.tile(idx, n),
                         "value": values.reshape(-1).astype(np.float32)})


def golden_forecast(batch_size: int = BATCH) -> tuple[pd.DataFrame, np.ndarray]:
    """The default LogSparse model (weights from seed 0) forecasting :func:`golden_frame`
    with seed 0: the forecast table and the ``(N, S, H)`` sample paths."""
    frame = golden_frame()
    kw = dict(frame=frame, time_col="time", target="value", id_col="series", context_length=CONTEXT,
              horizon=HORIZON)
    dm = CSVForecastingDataModule(**kw, test_windows=0, val_windows=0)
    dm.setup("fit")
    pred = CSVForecastingDataModule(**kw, eval_batch_size=batch_size)
    # The age feature's scale as that code had it (the input's own span: no stored age_length).
    pred.load_state_dict({k: v for k, v in dm.state_dict().items() if k != "age_length"})
    pred.setup("predict")
    torch.manual_seed(0)
    net = instantiate(compose_config(["model=logsparse"]).model, _convert_="all", **dm.model_kwargs())
    gen = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        s = torch.cat([forecast_batch(net.eval(), b, SAMPLES, gen).float() for b in pred.predict_dataloader()])
    qs = torch.quantile(s, torch.tensor([0.1, 0.5, 0.9]), dim=1).permute(1, 2, 0).reshape(-1, 3)  # (N H, 3)
    table = np.concatenate([s.mean(1).reshape(-1, 1).numpy(), qs.numpy()], axis=1)
    fc = pd.DataFrame(table, columns=["mean", "0.1", "0.5", "0.9"])
    return fc, s.numpy()


def test_forecast_equals_golden():
    want = np.load(GOLDEN)
    fc, samples = golden_forecast()
    np.testing.assert_allclose(samples, want["samples"], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(fc[["mean", "0.1", "0.5", "0.9"]].to_numpy(), want["table"], rtol=1e-4, atol=1e-4)


if __name__ == "__main__":
    fc, samples = golden_forecast()
    GOLDEN.parent.mkdir(exist_ok=True)
    np.savez_compressed(GOLDEN, samples=samples.astype(np.float32),
                        table=fc[["mean", "0.1", "0.5", "0.9"]].to_numpy().astype(np.float32))
    print(f"wrote {GOLDEN}: samples {samples.shape}")
