"""Batch forecasts from an exported model.

    python -m tsformer.forecast model=model.tsf input=history.csv output=forecast.csv \\
        quantiles=[0.1,0.5,0.9] horizon=24 device=cpu plot=true

Every series of ``input`` (same columns as the training CSV) is forecast from its last
observed target value, for the trained horizon or a shorter one. Output, long format:
``series,time,mean,0.1,0.5,0.9``. It is written to a temporary file and renamed, so a
killed run never leaves half a forecast file. Known covariates need ``horizon`` future
rows (empty target) in the input. ``decode=jacobi`` (``tsformer/conf/decode/jacobi.yaml``) draws
every path's noise up front and updates all horizon steps per forward pass (Jacobi
iteration), reaching the paths sequential sampling gives with that noise.

Early exit (CALM; a model trained with ``module.exit_heads=true``): each sampled step stops
after the first block whose state has saturated (``measure=state``, the default) or whose
exit classifier is confident (``measure=classifier``), the threshold calibrated on held-out
windows so that each window's quantile loss changes by at most ``tolerance`` (relative)
against the full model, with probability ``1 - delta``; the threshold and the average
layers used go to stderr:

    python -m tsformer.forecast model=model.tsf input=history.csv decode.early_exit.tolerance=0.01 \
        decode.early_exit.calibration=heldout.csv
"""

from __future__ import annotations

import os
import sys
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from tsformer.cli import command
from tsformer.data.errors import DataError
from tsformer.export import (
    ExportError,
    early_exit_options,
    exit_report,
    load_decode,
    load_tsf,
    parse_args,
    require_exit_heads,
)
from tsformer.nn.early_exit import Calibration, EarlyExit
from tsformer.tasks.forecasting import (
    calibrate_forecast_exit,
    fit_forecast_exit_classifier,
    forecast_batch,
    keyed_noise,
    series_seed,
)

DEFAULTS: dict[str, Any] = {
    "model": None,  # the .tsf file written by tsformer.export
    "input": None,  # history CSV, same schema as training
    "output": "forecast.csv",
    "quantiles": [0.1, 0.5, 0.9],
    "mean": True,  # also write the mean of the sample paths
    "horizon": None,  # null: the trained horizon; a shorter one is allowed
    "num_samples": None,  # null: the trained module.num_samples
    "batch_size": 256,  # series per batch
    "device": "cpu",  # cpu | cuda
    "seed": 0,  # sampling seed; each series' noise comes from (seed, series id), whatever the batching
    "devices": 1,  # >1: shard the series over this many processes (device=cpu) or GPUs (device=cuda)
    "unknown_series": None,  # null: the trained data.unknown_series (mean | error | <series id>)
    "on_short": None,  # null: the trained data.on_short (error | skip)
    "progress": True,
    "plot": False,  # PNG plots of history and forecast fan
    "plot_series": None,  # series ids to plot; null: the first 3
    "plot_dir": None,  # null: <output stem>_plots next to the output
    "decode": "sequential",  # tsformer/conf/decode/<name>.yaml: sequential | jacobi (decode.<key>=... sets its keys)
}


def make_datamodule(info: dict, input_path: str | None = None, frame: pd.DataFrame | None = None, **over):
    """The trained data settings and vocabulary, reading ``input_path`` (or ``frame``) for prediction."""
    from tsformer.data.forecasting.csv_datamodule import CSVForecastingDataModule

    data = {k: v for k, v in info["config"]["data"].items() if k not in ("_target_", "path")}
    data.update({k: v for k, v in over.items() if v is not None})
    dm = CSVForecastingDataModule(path=input_path, frame=frame, **data)
    dm.load_state_dict(info["data_state"])
    dm.setup("predict")
    return dm


@torch.no_grad()
def predict_frame(
    net: torch.nn.Module,
    dm,
    quantiles: list[float],
    num_samples: int,
    *,
    include_mean: bool = True,
    seed: int = 0,
    device: str = "cpu",
    progress: bool = False,
    keep_samples: bool = False,
    decode: dict | None = None,
    early_exit: EarlyExit | None = None,
) -> tuple[pd.DataFrame, np.ndarray | None]:
    """Forecast every predict item of ``dm`` (after ``setup("predict")``).

    ``decode``: decoding options (:func:`tsformer.export.load_decode`). Each series' noise
    comes from its own generator seeded by ``seed`` and the series id
    (:func:`~tsformer.tasks.forecasting.series_seed`), so its forecast does not depend on
    which other series share the input, the batch or the process. ``early_exit``: a CALM
    rule for the sampled steps (:func:`calibrate`).

    Returns:
        The long forecast table (``series``, ``time``, ``mean``, one column per quantile)
        and, with ``keep_samples``, the ``(N, S, H)`` sample paths.
    """
    from tqdm.auto import tqdm

    net = net.to(device).eval()
    qs = torch.tensor(quantiles, dtype=torch.float32, device=device)
    H = dm.horizon
    names, times, means, quants, samples = [], [], [], [], []
    items = dm.predict_items
    done = 0
    for batch in tqdm(dm.predict_dataloader(), disable=not progress, desc="forecast", unit="batch"):
        batch = {k: v.to(device) for k, v in batch.items()}
        seeds = [series_seed(seed, dm.table.names[n]) for n, _ in items[done : done + len(batch["inputs"])]]
        noise = keyed_noise(seeds, num_samples, H, device)
        s = forecast_batch(net, batch, num_samples, decode=decode, early_exit=early_exit, noise=noise).float()  # (B, S, H)
        if len(quantiles):
            quants.append(torch.quantile(s, qs, dim=1).permute(1, 2, 0).cpu().numpy())  # (B, H, Q)
        means.append(s.mean(1).cpu().numpy())
        if keep_samples:
            samples.append(s.cpu().numpy())
        for n, start in items[done : done + len(s)]:
            names.extend([dm.table.names[n]] * H)
            times.append(dm.forecast_times(n, start, H))
        done += len(s)
    cols: dict[str, Any] = {"series": names, "time": np.concatenate(times) if times else []}
    if include_mean:
        cols["mean"] = np.concatenate(means).reshape(-1) if means else []
    if quants:
        q = np.concatenate(quants).reshape(-1, len(quantiles))
        for i, rho in enumerate(quantiles):
            cols[str(rho)] = q[:, i]
    elif len(quantiles):
        for rho in quantiles:
            cols[str(rho)] = []
    return pd.DataFrame(cols), (np.concatenate(samples) if keep_samples and samples else None)


def calibration_batches(info: dict, path: str, horizon: int, examples: int, batch_size: int = 256,
                        device: str = "cpu") -> list[dict[str, torch.Tensor]]:
    """Forecast windows with known futures from a held-out series CSV (the training schema),
    for calibrating early exit: per series, non-overlapping windows of ``horizon`` steps,
    the latest first, taken in turn over the series up to ``examples``; windows with a
    missing future value are left out.

    Raises:
        DataError: the file does not fit the model, or holds no complete window.
    """
    from tsformer.data.forecasting.csv_datamodule import CSVForecastingDataModule
    from tsformer.data.forecasting.datamodule import ForecastWindows

    data = {k: v for k, v in info["config"]["data"].items() if k not in ("_target_", "path")}
    data.update(horizon=horizon, test_windows=0, val_windows=0, train_stride=horizon)
    dm = CSVForecastingDataModule(path=path, **data)
    dm.load_state_dict(info["data_state"])
    dm.setup("fit")
    per_series: dict[int, list[tuple[int, int]]] = {}
    for n, t in dm.train_items.tolist():
        if np.isfinite(dm.windows.values[t : t + horizon, n]).all():
            per_series.setdefault(n, []).append((n, t))
    queues = [lst[::-1] for lst in per_series.values()]
    items = [q[i] for i in range(max(map(len, queues), default=0)) for q in queues if i < len(q)][:examples]
    if not items:
        raise DataError(f"{path}: no window of context_length {dm.context_length} + horizon {horizon} steps with "
                        "every future value observed, to calibrate early exit on")
    ds = ForecastWindows(dm.windows, np.asarray(items, dtype=np.int64), dm.context_length, horizon)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size)
    return [{k: v.to(device) for k, v in b.items()} for b in loader]


def calibrate(net: torch.nn.Module, info: dict, opts: dict, horizon: int, num_samples: int, seed: int = 0,
              batch_size: int = 256, device: str = "cpu") -> tuple[EarlyExit, Calibration | None]:
    """The early-exit rule of ``opts`` (:func:`tsformer.export.early_exit_options`): the given
    threshold, or one calibrated by Learn-then-Test on the windows of the held-out CSV
    ``opts["calibration"]`` (:func:`calibration_batches`), a window's inconsistency being the
    relative change of its quantile loss against the full model's forecast from the same
    noise (:func:`tsformer.tasks.forecasting.calibrate_forecast_exit`). The ``classifier``
    measure first fits its classifier on half of the windows and calibrates on the other half."""
    measure, given = opts["measure"], opts["threshold"]
    if given is not None and measure != "classifier":
        return EarlyExit(measure, given, readout=net.readout), None
    if not opts["calibration"]:
        raise SystemExit("decode.early_exit.measure=classifier is trained on held-out windows: set "
                         "decode.early_exit.calibration=<series CSV>")
    n = opts["examples"] * (2 if measure == "classifier" else 1)
    batches = calibration_batches(info, opts["calibration"], horizon, n, batch_size, device)
    classifier = None
    if measure == "classifier":
        flat = {k: torch.cat([b[k] for b in batches]) for k in batches[0]}
        half = max(1, len(flat["series"]) // 2)
        fit = [{k: v[:half] for k, v in flat.items()}]
        batches = [{k: v[half:] for k, v in flat.items()}] if len(flat["series"]) > 1 else fit
        classifier = fit_forecast_exit_classifier(net, fit)
        if given is not None:
            return EarlyExit(measure, given, readout=net.readout, classifier=classifier), None
    return calibrate_forecast_exit(net, batches, num_samples, measure, opts["tolerance"], opts["delta"], seed,
                                   classifier=classifier)


def write_csv_atomic(df: pd.DataFrame, path: str | Path) -> None:
    """Write ``df`` to a temporary file beside ``path``, then rename: never half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w", newline="") as f:
            df.to_csv(f, index=False, date_format="%Y-%m-%d %H:%M:%S")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def plot_forecasts(dm, fc: pd.DataFrame, series: list[str], out_dir: Path, quantiles: list[float]) -> list[Path]:
    """One PNG per series: the recent history, the median (or mean) and the quantile fan."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    col = {name: n for n, name in enumerate(dm.table.names)}
    written = []
    qs = sorted(quantiles)
    for name in series:
        if name not in col:
            raise DataError(f"plot_series: no series {name!r} in the input")
        n = col[name]
        f = fc[fc["series"] == name]
        if f.empty:
            continue
        end = int(dm.series_ends[n])
        lo = max(0, end - max(3 * dm.horizon, dm.context_length))
        fig, ax = plt.subplots(figsize=(9, 3.5))
        ax.plot(dm.table.index[lo:end], dm.table.values[lo:end, n], color="k", lw=1, label="history")
        t = pd.to_datetime(f["time"])
        for i in range(len(qs) // 2):
            a, b = str(qs[i]), str(qs[-1 - i])
            ax.fill_between(t, f[a], f[b], color="C0", alpha=0.2 + 0.2 * i, lw=0, label=f"{a}-{b}")
        mid = "0.5" if "0.5" in f else ("mean" if "mean" in f else None)
        if mid:
            ax.plot(t, f[mid], color="C0", lw=1.5, label=mid)
        ax.set_title(str(name))
        ax.legend(loc="upper left", fontsize=8)
        fig.autofmt_xdate()
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in str(name))
        p = out_dir / f"{safe}.png"
        tmp = out_dir / f".{safe}.tmp.png"
        fig.savefig(tmp, dpi=100, bbox_inches="tight")
        plt.close(fig)
        os.replace(tmp, p)
        written.append(p)
    return written


def forecast_settings(args: dict[str, Any], info: dict) -> tuple[int, list[float], int, dict]:
    """``(horizon, quantiles, num_samples, decode)`` of the command's arguments (over
    :data:`DEFAULTS`), checked against the exported model's ``info`` (:func:`load_tsf`)."""
    decode = args["decode"] if isinstance(args["decode"], dict) else load_decode(str(args["decode"] or "sequential"))
    if decode.get("method") not in ("sequential", "jacobi"):
        raise SystemExit(f"decode.method={decode.get('method')!r}: forecasts decode sequential or jacobi")
    trained_h = int(info["data_state"]["horizon"])
    h = int(args["horizon"] or trained_h)
    if not 1 <= h <= trained_h:
        raise DataError(f"horizon={h}: must be between 1 and the trained horizon {trained_h}")
    quantiles = [float(q) for q in (args["quantiles"] or [])]
    if any(not 0 < q < 1 for q in quantiles):
        raise DataError(f"quantiles must lie strictly between 0 and 1, got {quantiles}")
    num_samples = int(args["num_samples"] or info["config"].get("module", {}).get("num_samples", 100))
    return h, quantiles, num_samples, decode


def forecast(**kwargs) -> pd.DataFrame:
    """Run the forecast command with keyword arguments (see :data:`DEFAULTS`)."""
    args = {**DEFAULTS, **kwargs}
    if not args["model"] or not args["input"]:
        raise SystemExit("usage: python -m tsformer.forecast model=model.tsf input=history.csv output=forecast.csv")
    device = args["device"]
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("device=cuda but no CUDA device is available")
    net, info = load_tsf(args["model"], device=device)
    h, quantiles, num_samples, decode = forecast_settings(args, info)
    exits = early_exit_options(decode, "state", ("state", "classifier"), "forecasts (Gaussian outputs, not tokens)")
    dm = make_datamodule(
        info, args["input"], horizon=h, eval_batch_size=int(args["batch_size"]),
        unknown_series=args["unknown_series"], on_short=args["on_short"],
    )
    for name, length in dm.skipped:
        print(f"skipped series {name!r}: {length} steps of history < context_length {dm.context_length}",
              file=sys.stderr)
    policy, cal = None, None
    if exits is not None:
        require_exit_heads(bool((info["config"].get("module") or {}).get("exit_heads")), args["model"])
        policy, cal = calibrate(net, info, exits, h, num_samples, int(args["seed"]), int(args["batch_size"]), device)
        policy.reset()
    if int(args["devices"]) > 1:  # the same forecasts, series sharded over processes (tsformer.distributed)
        if policy is not None:
            raise SystemExit("decode.early_exit with devices>1 is not supported: forecast with devices=1")
        from tsformer.distributed import predict_sharded

        predict = partial(predict_sharded, devices=int(args["devices"]))
    else:
        predict = partial(predict_frame, early_exit=policy)
    fc, _ = predict(net, dm, quantiles, num_samples, include_mean=bool(args["mean"]), seed=args["seed"],
                    device=device, progress=bool(args["progress"]), decode=decode)
    if policy is not None:
        print(exit_report(exits, policy, cal, exits["calibration"], "windows"), file=sys.stderr)
    write_csv_atomic(fc, args["output"])
    if args["plot"]:
        out = Path(args["output"])
        plot_dir = Path(args["plot_dir"]) if args["plot_dir"] else out.with_name(f"{out.stem}_plots")
        series = args["plot_series"] or [dm.table.names[n] for n, _ in dm.predict_items[:3]]
        plot_forecasts(dm, fc, [str(s) for s in series], plot_dir, quantiles)
    return fc


@command(DEFAULTS, __doc__)
def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv, DEFAULTS, usage=__doc__)
    try:
        fc = forecast(**args)
    except (DataError, ExportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args['output']}: {fc['series'].nunique()} series x {len(fc) // max(fc['series'].nunique(), 1)} steps")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
