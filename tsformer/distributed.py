"""Many series: forecast pandas DataFrames on Spark, Dask or Ray, or shard over processes.

The engines a user already runs do the scheduling; this module gives them one function,
:func:`forecast_frame`, that forecasts a DataFrame of whole series (long format, the
columns ``tsformer-forecast`` reads) with an exported ``.tsf`` model, loaded once per
worker process (:func:`load_model`).

A series' forecast depends on that series only: its noise comes from a generator seeded
by the run's ``seed`` and the series id (:func:`~tsformer.tasks.forecasting.series_seed`),
and its features use the training-time scales (the data state's ``age_length``,
covariate scalers, frequency). So the forecasts of any split of an input into whole
series, concatenated and sorted by series, equal ``tsformer-forecast``'s output for the
whole input with the same ``seed`` (``tests/test_distributed.py`` checks this on a local
Spark). Spark::

    from tsformer.distributed import forecast_frame, output_schema

    spark.conf.set("spark.sql.session.timeZone", "UTC")
    fc = (history.groupBy("bucket")  # e.g. F.abs(F.hash("series")) % 512: many whole series per group
          .applyInPandas(lambda df: forecast_frame(df.drop(columns="bucket"), "model.tsf", seed=0),
                         schema=output_schema()))

``tsformer-forecast ... devices=N`` (:func:`predict_sharded`) shards the series over
``N`` processes (``device=cpu``) or GPUs (``device=cuda``) through Lightning's predict
loop and gathers them in input order: the same output as one process.
"""

from __future__ import annotations

import tempfile
import threading
import warnings
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import BasePredictionWriter
from torch.utils.data import DataLoader, Dataset

from tsformer.data.errors import DataError
from tsformer.export import load_tsf
from tsformer.forecast import DEFAULTS, forecast_settings, make_datamodule, predict_frame
from tsformer.tasks.forecasting import forecast_batch, keyed_noise, series_seed

_MODELS: dict[tuple[str, int, str], tuple[torch.nn.Module, dict[str, Any]]] = {}
_LOCK = threading.Lock()


def load_model(path: str | Path, device: str = "cpu") -> tuple[torch.nn.Module, dict[str, Any]]:
    """:func:`~tsformer.export.load_tsf`, cached per process: a Spark, Dask or Ray worker
    loads the model once, not once per partition. A rewritten file is read again."""
    p = Path(path).resolve()
    if not p.is_file():
        return load_tsf(p, device=device)  # raises ExportError naming the file
    key = (str(p), p.stat().st_mtime_ns, str(device))
    with _LOCK:  # Dask's threaded workers share the process
        if key not in _MODELS:
            _MODELS[key] = load_tsf(p, device=device)
        return _MODELS[key]


def output_columns(quantiles: Sequence[float] = DEFAULTS["quantiles"], mean: bool = True) -> list[str]:
    """Columns of a forecast table: ``series``, ``time``, ``mean`` (with ``mean``), one per quantile."""
    return ["series", "time", *(["mean"] if mean else []), *(str(float(q)) for q in quantiles)]


def output_schema(quantiles: Sequence[float] = DEFAULTS["quantiles"], mean: bool = True) -> str:
    """Spark DDL schema of :func:`forecast_frame`'s output, for ``mapInPandas`` /
    ``applyInPandas``: ``series string, time timestamp, mean float, `0.1` float, ...``
    (``float`` is 32-bit, the forecasts' own precision)."""
    cols = output_columns(quantiles, mean)
    return ", ".join(["series string", "time timestamp", *(f"`{c}` float" for c in cols[2:])])


def empty_forecast(quantiles: Sequence[float] = DEFAULTS["quantiles"], mean: bool = True) -> pd.DataFrame:
    """A forecast table with no rows and the output dtypes (Dask's ``meta``)."""
    cols = output_columns(quantiles, mean)
    return pd.DataFrame({"series": pd.Series([], dtype=object), "time": pd.Series([], dtype="datetime64[ns]"),
                         **{c: pd.Series([], dtype=np.float32) for c in cols[2:]}})


def forecast_frame(
    df: pd.DataFrame,
    model: str | Path,
    *,
    quantiles: Sequence[float] = DEFAULTS["quantiles"],
    mean: bool = True,
    horizon: int | None = None,
    num_samples: int | None = None,
    batch_size: int = DEFAULTS["batch_size"],
    device: str = "cpu",
    seed: int = 0,
    unknown_series: str | None = None,
    on_short: str | None = None,
    decode: str | dict = "sequential",
) -> pd.DataFrame:
    """Forecast the whole series of ``df`` with the exported ``model``, as ``tsformer-forecast``
    does for a file with these rows (the keyword arguments are the command's keys).

    ``df`` holds whole series: every row of a series it forecasts (a partition made by
    ``groupBy``/``applyInPandas``, ``repartition`` + :func:`forecast_batches`, Dask's
    ``shuffle(on=<series column>)`` or Ray's ``groupby``). The result for a series does not
    depend on the other rows of ``df``, so any split gives the command's forecasts.

    Returns:
        The long forecast table (:func:`output_columns`), series in sorted order.
    """
    net, info = load_model(model, device)
    args = {**DEFAULTS, "quantiles": list(quantiles), "horizon": horizon, "num_samples": num_samples, "decode": decode}
    h, qs, samples, dec = forecast_settings(args, info)
    if len(df) == 0:
        return empty_forecast(qs, mean)
    if "age_length" not in info["data_state"]:
        warnings.warn(f"{model}: exported before the data state kept age_length; forecasts depend on the time "
                      "span of each DataFrame (retrain to make them independent of the partitioning)", stacklevel=2)
    dm = make_datamodule(info, frame=df, horizon=h, eval_batch_size=int(batch_size), unknown_series=unknown_series,
                         on_short=on_short)
    fc, _ = predict_frame(net, dm, qs, samples, include_mean=mean, seed=seed, device=device, decode=dec)
    return fc


def forecast_batches(batches: Iterable[pd.DataFrame], model: str | Path, **kwargs) -> Iterator[pd.DataFrame]:
    """:func:`forecast_frame` over a stream of DataFrames whose rows are grouped by series
    (a series may continue into the next one), for Spark's ``mapInPandas``::

        history.repartition(64, "series").sortWithinPartitions("series", "time") \\
            .mapInPandas(lambda it: forecast_batches(it, "model.tsf"), schema=output_schema())

    Complete series are forecast ``batch_size`` at a time. ``kwargs``: those of
    :func:`forecast_frame`.

    Raises:
        DataError: a wide-format model (no series column), or a series whose rows are
            not together.
    """
    id_col = load_model(model, kwargs.get("device", "cpu"))[1]["config"]["data"].get("id_col")
    if not id_col:
        raise DataError(f"{model}: a wide-format model has no series column; use forecast_frame on whole frames")
    per_call = int(kwargs.get("batch_size", DEFAULTS["batch_size"]))
    pending: list[pd.DataFrame] = []
    n_pending = 0
    seen: set[str] = set()
    carry: pd.DataFrame | None = None
    for b in batches:
        b = b if carry is None else pd.concat([carry, b], ignore_index=True)
        if len(b) == 0:
            continue
        ids = b[id_col].astype(str).to_numpy()
        first = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])  # where each run of one series begins
        runs = ids[first]
        split = sorted(seen.intersection(runs) | set(runs[pd.Series(runs).duplicated().to_numpy()]))
        if split:
            raise DataError(f"series {split[0]!r}: its rows are not together in this partition; repartition by "
                            f"{id_col!r} and sortWithinPartitions({id_col!r}), or use groupBy(...).applyInPandas")
        seen.update(runs[:-1])  # the last series may continue in the next batch
        carry = b.iloc[first[-1]:]
        if first[-1]:
            pending.append(b.iloc[: first[-1]])
            n_pending += len(runs) - 1
        if n_pending >= per_call:
            yield forecast_frame(pd.concat(pending, ignore_index=True), model, **kwargs)
            pending, n_pending = [], 0
    if carry is not None:
        pending.append(carry)
    if pending:
        yield forecast_frame(pd.concat(pending, ignore_index=True), model, **kwargs)


# -- devices=N: Lightning's predict loop --------------------------------------------------
class _Numbered(Dataset):
    """A predict data set whose items also carry their position (``item``)."""

    def __init__(self, ds: Dataset):
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {**self.ds[i], "item": torch.tensor(i, dtype=torch.long)}


class _ShardPredictor(pl.LightningModule):
    """Samples each batch of its shard with per-series noise (seeds ``seeds[item]``) and
    returns the items' mean and quantiles."""

    def __init__(self, net: torch.nn.Module, num_samples: int, horizon: int, quantiles: list[float],
                 seeds: np.ndarray, decode: dict | None):
        super().__init__()
        self.net, self.num_samples, self.horizon = net, num_samples, horizon
        self.quantiles, self.seeds, self.decode = quantiles, seeds, decode

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        item = batch.pop("item")
        noise = keyed_noise(self.seeds[item.cpu().numpy()].tolist(), self.num_samples, self.horizon, self.device)
        s = forecast_batch(self.net, batch, self.num_samples, decode=self.decode, noise=noise).float()  # (B, S, H)
        out = {"item": item.cpu(), "mean": s.mean(1).cpu()}
        if self.quantiles:
            qs = torch.tensor(self.quantiles, dtype=torch.float32, device=s.device)
            out["q"] = torch.quantile(s, qs, dim=1).permute(1, 2, 0).cpu()  # (B, H, Q)
        return out


class _ShardWriter(BasePredictionWriter):
    """Each rank saves its predictions to ``<folder>/rank<r>.pt``; the launching process gathers them."""

    def __init__(self, folder: str):
        super().__init__(write_interval="epoch")
        self.folder = folder

    def write_on_epoch_end(self, trainer, pl_module, predictions, batch_indices) -> None:
        torch.save(predictions, Path(self.folder) / f"rank{trainer.global_rank}.pt")


def predict_sharded(
    net: torch.nn.Module,
    dm,
    quantiles: list[float],
    num_samples: int,
    *,
    devices: int,
    include_mean: bool = True,
    seed: int = 0,
    device: str = "cpu",
    progress: bool = False,
    decode: dict | None = None,
) -> tuple[pd.DataFrame, None]:
    """:func:`~tsformer.forecast.predict_frame` with the series sharded over ``devices``
    processes (``device=cpu``, gloo) or GPUs (``device=cuda``, nccl): Lightning's predict
    loop with the ``ddp_spawn`` strategy; each rank writes its forecasts, this process
    gathers them in input order. The output equals one process's."""
    from tsformer.data.forecasting.datamodule import ForecastWindows

    items = dm.predict_items
    H = dm.horizon
    seeds = np.array([series_seed(seed, dm.table.names[n]) for n, _ in items], dtype=np.int64)
    ds = _Numbered(ForecastWindows(dm.windows, items, dm.context_length, H))
    loader = DataLoader(ds, batch_size=dm.eval_batch_size, num_workers=dm.num_workers)
    module = _ShardPredictor(net.cpu(), num_samples, H, [float(q) for q in quantiles], seeds, decode)
    with tempfile.TemporaryDirectory(prefix="tsformer-shards-") as folder:
        trainer = pl.Trainer(
            accelerator="gpu" if device == "cuda" else "cpu", devices=int(devices), strategy="ddp_spawn",
            logger=False, enable_checkpointing=False, enable_model_summary=False, enable_progress_bar=progress,
            default_root_dir=folder, callbacks=[_ShardWriter(folder)],
        )
        trainer.predict(module, dataloaders=loader, return_predictions=False)
        parts = [p for f in sorted(Path(folder).glob("rank*.pt")) for p in torch.load(f, weights_only=True)]
    got = torch.cat([p["item"] for p in parts]) if parts else torch.zeros(0, dtype=torch.long)
    order = torch.argsort(got)
    if not torch.equal(got[order], torch.arange(len(items))):
        raise RuntimeError(f"devices={devices}: the ranks returned items {sorted(set(got.tolist()))[:10]}..., "
                           f"not each of the {len(items)} series once")
    cols: dict[str, Any] = {
        "series": np.repeat(np.asarray(dm.table.names, dtype=object)[items[:, 0]], H),
        "time": np.asarray(dm.table.index[(items[:, 1, None] + np.arange(H)).reshape(-1)]),
    }
    if include_mean:
        cols["mean"] = torch.cat([p["mean"] for p in parts])[order].reshape(-1).numpy() if parts else []
    if quantiles:
        q = torch.cat([p["q"] for p in parts])[order].reshape(-1, len(quantiles)).numpy() if parts else None
        for i, rho in enumerate(quantiles):
            cols[str(rho)] = q[:, i] if q is not None else []
    return pd.DataFrame(cols), None


__all__ = ["empty_forecast", "forecast_batches", "forecast_frame", "load_model", "output_columns", "output_schema",
           "predict_sharded"]
