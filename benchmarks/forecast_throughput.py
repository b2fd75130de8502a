"""Batch-forecast throughput: series per second for 10,000 synthetic series.

    PYTHONPATH=. python benchmarks/forecast_throughput.py [--series 10000] [--device cpu|cuda]

Context 168, horizon 24, 100 sample paths, the default LogSparse model (tsformer/conf/model/logsparse.yaml,
untrained: speed does not depend on the weights). Times the same path as
``python -m tsformer.forecast`` (data preparation, then batched sampling with quantiles)
and appends the figures to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import platform
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from hydra.utils import instantiate

from tsformer.data.forecasting.csv_datamodule import CSVForecastingDataModule
from tsformer.forecast import predict_frame
from tsformer.train import compose_config

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--series", type=int, default=10_000)
    ap.add_argument("--context", type=int, default=168)
    ap.add_argument("--horizon", type=int, default=24)
    ap.add_argument("--samples", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = ap.parse_args()
    C, H, N = a.context, a.horizon, a.series
    steps = C + 24
    rng = np.random.default_rng(0)
    idx = pd.date_range("2020-01-01", periods=steps, freq="h")
    values = 10 + np.sin(np.arange(steps) / 4)[None] + rng.standard_normal((N, steps))
    frame = pd.DataFrame({"series": np.repeat([f"S{i}" for i in range(N)], steps), "time": np.tile(idx, N),
                          "value": values.reshape(-1).astype(np.float32)})
    t0 = time.perf_counter()
    dm = CSVForecastingDataModule(frame=frame, time_col="time", target="value", id_col="series", context_length=C,
                                  horizon=H, test_windows=0, val_windows=0, eval_batch_size=a.batch_size)
    dm.setup("fit")
    state = dm.state_dict()
    dm = CSVForecastingDataModule(frame=frame, time_col="time", target="value", id_col="series", context_length=C,
                                  horizon=H, eval_batch_size=a.batch_size)
    dm.load_state_dict(state)
    dm.setup("predict")
    prep = time.perf_counter() - t0
    cfg = compose_config(["model=logsparse"]).model
    torch.manual_seed(0)
    net = instantiate(cfg, _convert_="all", **dm.model_kwargs())
    if a.device == "cuda":
        torch.set_float32_matmul_precision("high")
    t0 = time.perf_counter()
    fc, _ = predict_frame(net, dm, [0.1, 0.5, 0.9], a.samples, device=a.device, progress=True)
    if a.device == "cuda":
        torch.cuda.synchronize()
    infer = time.perf_counter() - t0
    assert fc["series"].nunique() == N and len(fc) == N * H
    dev = torch.cuda.get_device_name() if a.device == "cuda" else f"{torch.get_num_threads()} CPU threads"
    line = (f"- {datetime.now():%Y-%m-%d %H:%M} {platform.node()} ({dev}"
            f"{', CPU shared with other engineers' if a.device == 'cpu' else ''}): forecast_throughput "
            f"{N:,} series, context {C}, horizon {H}, {a.samples} sample paths, batch {a.batch_size}: "
            f"{N / infer:.1f} series/s sampling ({infer:.1f} s), {N / (infer + prep):.1f} series/s "
            f"including data preparation ({prep:.1f} s)")
    print(line)
    with open(ROOT / "benchmarks" / "RESULTS.md", "a") as f:
        f.write(line + "\n")


if __name__ == "__main__":
    main()
