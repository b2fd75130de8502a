"""Batch forecasts from an exported model.

    python -m tsformer.forecast model=model.tsf input=history.csv output=forecast.csv \\
        quantiles=[0.1,0.5,0.9] horizon=24 device=cpu plot=true

Every series of ``input`` (same columns as the training CSV) is forecast from its last
observed target value, for the trained horizon or a shorter one. Output, long format:
``series,time,mean,0.1,0.5,0.9``. It is written to a temporary file and renamed, so a
killed run never leaves half a forecast file. Input and output may be CSV or Parquet
(``.parquet``/``.pq``, needs pyarrow: ``pip install tsformer[parquet]``). A long-format
input whose rows are grouped by series in ascending id order is read, forecast and written
``chunk_series`` whole series at a time, so memory stays flat in the number of series; the
forecasts equal reading the whole file (chunks hold whole batches). Any other input (wide,
or series out of order) is read whole. Known covariates need ``horizon`` future
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
import re
import sys
from collections.abc import Iterator
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
    "chunk_series": 4096,  # series per chunk of a long input sorted by series (rounded up to whole batches); 0: whole file
    "reuse_memory": True,  # keep freed buffers in this process's heap (glibc): fewer page faults per step
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



@torch.inference_mode()  # no autograd bookkeeping (version counters, views) in the sampling loop
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


PARQUET_SUFFIXES = (".parquet", ".pq")


def is_parquet(path: str | Path) -> bool:
    """Whether ``path`` names a Parquet file (by its suffix)."""
    return Path(path).suffix.lower() in PARQUET_SUFFIXES


def _parquet(path: str | Path):
    """``pyarrow.parquet``, or a DataError naming ``path`` when pyarrow is missing."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(f"{path}: Parquet needs pyarrow (pip install 'tsformer[parquet]')") from None
    return pq


def read_rows(path: str | Path, columns: list[str], rows: int, dtype: dict | None = None) -> Iterator[pd.DataFrame]:
    """``columns`` of a CSV or Parquet file, about ``rows`` rows at a time, each frame indexed
    by its rows' positions in the file (0: the first data row), so that an error found in a
    chunk can name the file's row (:func:`file_rows`)."""
    if is_parquet(path):
        f = _parquet(path).ParquetFile(path)
        missing = [c for c in columns if c not in f.schema_arrow.names]
        if missing:
            raise DataError(f"{path}: no column(s) {missing}; the file has {f.schema_arrow.names}")
        batches = (b.to_pandas() for b in f.iter_batches(batch_size=rows, columns=columns))
    else:
        batches = pd.read_csv(path, usecols=columns, chunksize=rows, dtype=dtype)
    start = 0
    for df in batches:
        df.index = pd.RangeIndex(start, start + len(df))
        start += len(df)
        yield df


def file_rows(message: str, frame: pd.DataFrame) -> str:
    """``message`` of an error in ``frame`` (a chunk of a file, indexed by file position as
    :func:`read_rows` gives), its ``row N`` numbers (the chunk's own, 2 = its first row, as
    for a file with a header) turned into the file's."""
    def to_file(m: re.Match) -> str:
        i = int(m.group(1)) - 2
        return f"row {int(frame.index[i]) + 2}" if 0 <= i < len(frame) else m.group(0)

    return re.sub(r"\brow (\d+)", to_file, message)


def series_grouped(path: str | Path, id_col: str, rows: int = 1_000_000, columns: list[str] | None = None) -> bool:
    """Whether the rows of ``path`` list each series together, in ascending id order (as
    strings: the order forecasts are written in), which chunked reading needs. Reads the id
    column only, ``rows`` at a time. False too when the file lacks one of ``columns`` or
    cannot be read: reading it whole then reports what is wrong."""
    last = None
    try:
        if is_parquet(path):
            names = _parquet(path).ParquetFile(path).schema_arrow.names
        else:
            names = list(pd.read_csv(path, nrows=0).columns)
        if any(c not in names for c in [id_col, *(columns or [])]):
            return False
        for chunk in read_rows(path, [id_col], rows, {id_col: str}):
            ids = chunk[id_col].astype(str).to_numpy()
            if len(ids) and ((last is not None and ids[0] < last) or bool((ids[1:] < ids[:-1]).any())):
                return False
            last = ids[-1] if len(ids) else last
    except ValueError:  # unparsable (pandas' and pyarrow's errors are ValueErrors)
        return False
    return True


def series_chunks(path: str | Path, id_col: str, columns: list[str], n_series: int, rows: int = 200_000,
                  dtype: dict | None = None) -> Iterator[pd.DataFrame]:
    """Frames of ``n_series`` whole series each (the last one fewer) from a file grouped by
    series (:func:`series_grouped`); ``rows``: rows read at a time."""
    acc: list[pd.DataFrame] = []
    acc_series = 0
    carry = None  # rows of the last series read, which may continue in the next rows
    for chunk in read_rows(path, columns, rows, dtype):
        df = chunk if carry is None else pd.concat([carry, chunk])
        ids = df[id_col].astype(str).to_numpy()
        if not len(ids):
            continue
        tail = int(np.searchsorted(ids, ids[-1]))  # sorted ids: where the last series begins
        carry, done, ids = df.iloc[tail:], df.iloc[:tail], ids[:tail]
        starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]]) if len(ids) else np.zeros(0, np.int64)
        while acc_series + len(starts) >= n_series:
            need = n_series - acc_series
            cut = int(starts[need]) if need < len(starts) else len(done)
            yield pd.concat([*acc, done.iloc[:cut]])
            acc, acc_series = [], 0
            done, starts = done.iloc[cut:], starts[need:] - cut
        if len(done):
            acc.append(done)
            acc_series += len(starts)
    if carry is not None and len(carry):
        acc.append(carry)
    if acc:
        yield pd.concat(acc)


class AtomicTableWriter:
    """A table written chunk by chunk to a temporary file beside ``path`` (CSV, or Parquet
    by the suffix), renamed onto ``path`` when the ``with`` block ends without an error;
    on an error the temporary file is removed and ``path`` left as it was."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        self.parquet = is_parquet(self.path)
        self._file = None
        self._writer = None
        self._empty: pd.DataFrame | None = None
        self.rows = 0

    def __enter__(self) -> AtomicTableWriter:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.parquet:
            _parquet(self.path)
        else:
            self._file = open(self.tmp, "w", newline="")
        return self

    def write(self, df: pd.DataFrame) -> None:
        """Append the rows of ``df`` (the first frame fixes the columns)."""
        if not len(df):
            self._empty = df if self._empty is None else self._empty
            return
        if self.parquet:
            import pyarrow as pa

            table = pa.Table.from_pandas(df, preserve_index=False)
            if self._writer is None:
                self._writer = _parquet(self.path).ParquetWriter(self.tmp, table.schema)
            self._writer.write_table(table.cast(self._writer.schema))
        else:
            df.to_csv(self._file, header=self.rows == 0, index=False, date_format="%Y-%m-%d %H:%M:%S")
        self.rows += len(df)

    def __exit__(self, kind, err, tb) -> None:
        try:
            if kind is None and self.rows == 0 and self._empty is not None:  # no forecast: the header only
                if self.parquet:
                    self._empty.to_parquet(self.tmp, index=False)
                else:
                    self._empty.to_csv(self._file, index=False)
            if self._writer is not None:
                self._writer.close()
            if self._file is not None:
                self._file.flush()
                os.fsync(self._file.fileno())
                self._file.close()
            if kind is None:
                os.replace(self.tmp, self.path)
        finally:
            if self._file is not None and not self._file.closed:
                self._file.close()
            self.tmp.unlink(missing_ok=True)


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
    """Run the forecast command with keyword arguments (see :data:`DEFAULTS`); returns the
    whole forecast table (held in memory: the command itself does not keep it)."""
    parts: list[pd.DataFrame] = []
    run_forecast({**DEFAULTS, **kwargs}, parts.append)
    return pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]


def reuse_freed_memory() -> bool:
    """Ask glibc's allocator to keep freed memory for reuse instead of handing it back to the
    kernel (``mallopt``: no mmap threshold, no trimming, 256 MB of top padding).

    Each sampling step allocates and frees activations of batch x paths rows (tens of MB); by
    default glibc maps buffers that large afresh and unmaps them on free, so every step pays
    for the kernel zeroing new pages: measured on 2 CPU cores (512 series, 100 paths), 4.4 s of
    system time out of 10.2 s, and 1.4x the sampling speed with the heap kept. The cost is a
    process that does not return its peak memory to the system until it exits, which suits a
    command; a long-lived worker (Spark, Dask) may prefer not to call it. Returns whether it
    took effect (False off glibc).
    """
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3  # glibc's malloc.h
    ok = libc.mallopt(M_MMAP_THRESHOLD, 2**31 - 1) == 1
    ok &= libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1) == 1
    return bool(ok & (libc.mallopt(M_TOP_PAD, 256 * 2**20) == 1))


def run_forecast(args: dict[str, Any], keep=None) -> tuple[int, int]:
    """The forecast command on full ``args``: chunk by chunk of whole series when the input
    allows (:func:`series_grouped`), each chunk's table appended to the output and handed
    to ``keep`` if given. Returns the number of series forecast and the horizon."""
    if not args["model"] or not args["input"]:
        raise SystemExit("usage: python -m tsformer.forecast model=model.tsf input=history.csv output=forecast.csv")
    device = args["device"]
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("device=cuda but no CUDA device is available")
    if args.get("reuse_memory", True) and device == "cpu":
        reuse_freed_memory()
    net, info = load_tsf(args["model"], device=device)
    h, quantiles, num_samples, decode = forecast_settings(args, info)
    exits = early_exit_options(decode, "state", ("state", "classifier"), "forecasts (Gaussian outputs, not tokens)")
    batch = int(args["batch_size"])
    policy, cal = None, None
    if exits is not None:
        require_exit_heads(bool((info["config"].get("module") or {}).get("exit_heads")), args["model"])
        policy, cal = calibrate(net, info, exits, h, num_samples, int(args["seed"]), batch, device)
        policy.reset()
    devices = int(args["devices"])
    if devices > 1:  # the same forecasts, series sharded over processes (tsformer.distributed)
        if policy is not None:
            raise SystemExit("decode.early_exit with devices>1 is not supported: forecast with devices=1")
        from tsformer.distributed import predict_sharded

        predict = partial(predict_sharded, devices=devices)
    else:
        predict = partial(predict_frame, early_exit=policy)
    path = str(args["input"])
    data = info["config"]["data"]
    id_col = data.get("id_col")
    chunk = int(args["chunk_series"] or 0)
    cols = [id_col, data.get("time_col"), data.get("target"), *(data.get("known_covariates") or []),
            *(data.get("past_covariates") or []), *(data.get("static_categoricals") or [])]
    if chunk > 0 and devices == 1 and id_col and Path(path).is_file() and series_grouped(path, id_col, columns=cols):
        chunk = -(-chunk // batch) * batch  # whole batches: the same batches as reading the whole file
        text = {c: str for c in (id_col, data["time_col"], *(data.get("static_categoricals") or []))}
        frames: Iterator[pd.DataFrame | None] = series_chunks(path, id_col, cols, chunk, dtype=text)
    else:
        frames = iter([None])  # the whole file
    n_series, carry, first_chunk = 0, None, True
    unplotted = {str(x) for x in args["plot_series"] or []}
    out = Path(args["output"])
    plot_dir = Path(args["plot_dir"]) if args["plot_dir"] else out.with_name(f"{out.stem}_plots")
    with AtomicTableWriter(out) as writer:
        nxt = next(frames, None)
        while True:
            frame, nxt = nxt, next(frames, None)
            last = nxt is None
            if frame is not None and carry is not None:
                frame = pd.concat([carry, frame])  # file positions kept in the index
            where = path
            if frame is None and is_parquet(path):  # whole Parquet file: the reader takes a frame
                frame = _parquet(path).read_table(path).to_pandas()
            elif frame is not None:
                where = f"{path} (series {frame[id_col].iloc[0]!r} .. {frame[id_col].iloc[-1]!r})"
            try:
                dm = make_datamodule(
                    info, None if frame is not None else path, frame=frame, horizon=h, eval_batch_size=batch,
                    unknown_series=args["unknown_series"], on_short=args["on_short"],
                )
            except DataError as e:  # a chunk's errors name the file, not the in-memory chunk
                if frame is None:
                    raise
                raise DataError(file_rows(str(e).replace("<DataFrame>", where, 1), frame)) from None
            for name, length in dm.skipped:
                print(f"skipped series {name!r}: {length} steps of history < context_length {dm.context_length}",
                      file=sys.stderr)
            items = dm.predict_items
            if not last and len(items) % batch:
                # Series past the last whole batch wait for the next chunk: the same batches as
                # reading the whole file (each series' draws are its own either way).
                cut = len(items) - len(items) % batch
                names = {dm.table.names[n] for n, _ in items[cut:]}
                carry = frame[frame[id_col].astype(str).isin(names)]
                dm.predict_items = items[:cut]
            else:
                carry = None
            fc, _ = predict(net, dm, quantiles, num_samples, include_mean=bool(args["mean"]), seed=args["seed"],
                            device=device, progress=bool(args["progress"]), decode=decode)
            writer.write(fc)
            if keep is not None:
                keep(fc)
            n_series += len(dm.predict_items)
            if args["plot"]:
                chosen = args["plot_series"] or ([dm.table.names[n] for n, _ in dm.predict_items[:3]]
                                                 if first_chunk else [])
                here = [str(x) for x in chosen if str(x) in set(dm.table.names)]
                if here:
                    plot_forecasts(dm, fc, here, plot_dir, quantiles)
                    unplotted -= set(here)
            first_chunk = False
            del dm, fc
            if last:
                break
    if policy is not None:
        print(exit_report(exits, policy, cal, exits["calibration"], "windows"), file=sys.stderr)
    if args["plot"] and unplotted:
        raise DataError(f"plot_series: no series {sorted(unplotted)[0]!r} in the input")
    return n_series, h


@command(DEFAULTS, __doc__)
def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv, DEFAULTS, usage=__doc__)
    try:
        n, h = run_forecast({**DEFAULTS, **args})
    except (DataError, ExportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args['output']}: {n} series x {h} steps")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
