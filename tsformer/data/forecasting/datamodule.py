"""Windowing, scaling and batching for probabilistic forecasting (DeepAR / Li et al. setup).

Position ``p`` of a window that forecasts from time ``s`` is time ``s - C + p``; its input
is the (scaled) value one step earlier and its target the value at that time, so a model
that is causal over positions is an autoregressive forecaster. Values are scaled per
window by the mean absolute observed value of the conditioning range.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from tsformer.data.errors import DataError
from tsformer.data.forecasting.readers import SeriesTable, read_series
from tsformer.data.samplers import ShardedSampler
from tsformer.metrics import point_forecast_metrics


def time_features(index: pd.DatetimeIndex) -> tuple[np.ndarray, list[str]]:
    """Calendar covariates in ``[-0.5, 0.5]``, chosen by the sampling step.

    Returns:
        ``(T, F)`` float32 array and the ``F`` feature names.
    """
    # (pandas 3's Day offset does not convert to a Timedelta: take the step from the index)
    step = index[1] - index[0] if len(index) > 1 else pd.Timedelta(pd.tseries.frequencies.to_offset(index.freq).nanos)
    feats, names = [], []
    if step < pd.Timedelta("1h"):
        feats.append(index.minute / 59.0 - 0.5)
        names.append("minute_of_hour")
    if step < pd.Timedelta("1D"):
        feats.append(index.hour / 23.0 - 0.5)
        names.append("hour_of_day")
    if step < pd.Timedelta("7D"):
        feats.append(index.dayofweek / 6.0 - 0.5)
        names.append("day_of_week")
    feats.append((index.month - 1) / 11.0 - 0.5)
    names.append("month_of_year")
    return np.stack([np.asarray(f, dtype=np.float32) for f in feats], axis=1), names


def series_starts(values: np.ndarray) -> np.ndarray:
    """Index of each series' first observed non-zero value (leading zeros mean "not yet there")."""
    present = ~np.isnan(values) & (values != 0)
    starts = np.where(present.any(0), present.argmax(0), values.shape[0])
    return starts.astype(np.int64)


def age_feature(length: int, starts: np.ndarray, norm: int | None = None) -> np.ndarray:
    """``(T, N)`` age since series start, ``log10(2 + age)`` squashed into about ``[-0.5, 0.5]``
    by ``log10(2 + norm)`` (default ``norm = length``)."""
    t = np.arange(length)[:, None] - starts[None, :]
    age = np.log10(2.0 + np.clip(t, 0, None)) / np.log10(2.0 + (length if norm is None else norm))
    return (age - 0.5).astype(np.float32)


def window_scale(context: np.ndarray) -> float:
    """Mean absolute observed value of a conditioning range (1.0 if it has none)."""
    obs = context[~np.isnan(context)]
    m = float(np.abs(obs).mean()) if obs.size else 0.0
    return m if m > 1e-8 else 1.0


@dataclass
class Windows:
    """The data all window datasets read from."""

    values: np.ndarray  # (T, N), NaN = missing
    time_feats: np.ndarray  # (T, F)
    age: np.ndarray  # (T, N)
    static: np.ndarray | None = None  # (N, S) static category codes
    series_index: np.ndarray | None = None  # (N,) embedding row of each column (-1: unknown)

    @property
    def num_covariates(self) -> int:
        return self.time_feats.shape[1] + 1

    def covariates(self, n: int, lo: int, hi: int) -> np.ndarray:
        return np.concatenate([self.time_feats[lo:hi], self.age[lo:hi, n, None]], axis=1)

    def ids(self, n: int) -> dict[str, torch.Tensor]:
        """The ``series`` id (and ``static`` codes, when any) of column ``n``."""
        sid = n if self.series_index is None else int(self.series_index[n])
        out = {"series": torch.tensor(sid, dtype=torch.long)}
        if self.static is not None:
            out["static"] = torch.from_numpy(self.static[n].astype(np.int64))
        return out


class TrainWindows(Dataset):
    """Windows of ``context + horizon`` steps (teacher-forced), every ``stride`` steps.

    Item keys: ``inputs`` (L,) lagged scaled values, ``target`` (L,) scaled values,
    ``observed`` (L,) 1 where the target is known, ``covariates`` (L, F+1), ``series`` (),
    ``scale`` (), and ``loss_from`` () the first position counted in validation.
    """

    def __init__(self, w: Windows, items: np.ndarray, context: int, horizon: int):
        self.w, self.items, self.context, self.horizon = w, items, context, horizon

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        n, s = (int(x) for x in self.items[i])  # s = first forecast time
        C, H = self.context, self.horizon
        lo = s - C
        raw = self.w.values[lo - 1 : s + H, n]  # one extra step for the first input
        scale = window_scale(raw[1 : C + 1])
        z = raw / scale
        observed = ~np.isnan(z[1:])
        z = np.nan_to_num(z, nan=0.0)
        return {
            "inputs": torch.from_numpy(z[:-1].astype(np.float32)),
            "target": torch.from_numpy(z[1:].astype(np.float32)),
            "observed": torch.from_numpy(observed.astype(np.float32)),
            "covariates": torch.from_numpy(self.w.covariates(n, lo, s + H)),
            **self.w.ids(n),
            "scale": torch.tensor(scale, dtype=torch.float32),
        }


class ForecastWindows(Dataset):
    """Conditioning range plus future covariates, for sampling forecasts.

    Item keys: ``inputs`` (C+1,) lagged scaled values known at forecast time,
    ``covariates`` (C+H, F+1), ``series`` (), ``scale`` (), ``future`` (H,) raw values
    (NaN where missing or unknown), ``start`` () index of the first forecast step.
    """

    def __init__(self, w: Windows, items: np.ndarray, context: int, horizon: int):
        self.w, self.items, self.context, self.horizon = w, items, context, horizon

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        n, s = (int(x) for x in self.items[i])
        C, H = self.context, self.horizon
        T = self.w.values.shape[0]
        lo = s - C
        past = self.w.values[lo - 1 : s, n]
        scale = window_scale(past[1:])
        future = np.full(H, np.nan, dtype=np.float32)
        avail = max(0, min(H, T - s))
        future[:avail] = self.w.values[s : s + avail, n]
        return {
            "inputs": torch.from_numpy(np.nan_to_num(past / scale, nan=0.0).astype(np.float32)),
            "covariates": torch.from_numpy(self.w.covariates(n, lo, s + H)),
            **self.w.ids(n),
            "scale": torch.tensor(scale, dtype=torch.float32),
            "future": torch.from_numpy(future),
            "start": torch.tensor(s, dtype=torch.long),
        }


class ForecastingDataModule(pl.LightningDataModule):
    """Reads a series file and serves train, validation and rolling test windows.

    Evaluation follows Li et al. (NeurIPS 2019): ``test_windows`` rolling forecasts of
    ``horizon`` steps, the first from ``test_start``, each next one ``test_stride`` steps
    later. Validation uses the ``val_windows`` rolling windows just before ``test_start``;
    training windows end before the first validation forecast.

    Args:
        path: the series file (see :func:`tsformer.data.forecasting.readers.read_series`).
        context_length: conditioning range ``C``.
        horizon: prediction range ``H``.
        test_start: timestamp of the first test forecast.
        test_windows, test_stride: number of rolling test forecasts and their spacing.
        val_windows: rolling validation forecasts before ``test_start`` (0: none).
        train_stride: spacing of training window starts.
        batch_size, num_workers: loader settings.
        reader: extra keyword arguments for ``read_series``.
        encoding: the file's text encoding (any Python codec).
    """

    def __init__(
        self,
        path: str,
        context_length: int = 168,
        horizon: int = 24,
        test_start: str = "2014-09-01 00:00",
        test_windows: int = 7,
        test_stride: int | None = None,
        val_windows: int = 7,
        train_stride: int = 1,
        batch_size: int = 64,
        eval_batch_size: int = 32,
        num_workers: int = 0,
        reader: dict | None = None,
        seed: int = 0,
        encoding: str = "utf-8",
    ):
        super().__init__()
        self.path = path
        self.context_length = context_length
        self.horizon = horizon
        self.test_start = test_start
        self.test_windows = test_windows
        self.test_stride = test_stride or horizon
        self.val_windows = val_windows
        self.train_stride = train_stride
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.reader = {"encoding": encoding, **dict(reader or {})}
        self.seed = seed
        self.table: SeriesTable | None = None
        self.resume_batches = 0  # batches of the current epoch already trained (set on resume)

    # -- set-up ---------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self.table is not None:
            return
        self.table = read_series(self.path, **self.reader)
        tf, self.feature_names = time_features(self.table.index)
        starts = series_starts(self.table.values)
        self.windows = Windows(self.table.values, tf, age_feature(len(self.table.index), starts))
        self._plan(starts)

    def _plan(self, starts: np.ndarray) -> None:
        C, H = self.context_length, self.horizon
        index, T = self.table.index, len(self.table.index)
        ts = pd.Timestamp(self.test_start)
        if ts < index[0] or ts > index[-1]:
            raise DataError(
                f"{self.path}: test_start {self.test_start} is outside the data ({index[0]} .. {index[-1]})"
            )
        t0 = int(index.searchsorted(ts))
        test_starts = [t0 + w * self.test_stride for w in range(self.test_windows)]
        test_starts = [s for s in test_starts if s + H <= T]
        if not test_starts:
            raise DataError(f"{self.path}: no complete {H}-step test window from {self.test_start}")
        val_starts = [t0 - (self.val_windows - w) * self.test_stride for w in range(self.val_windows)]
        train_end = val_starts[0] if val_starts else t0  # last forecast step of training < train_end
        N = self.table.values.shape[1]
        self.test_items = np.array([(n, s) for s in test_starts for n in range(N) if s - C - 1 >= 0], dtype=np.int64)
        self.val_items = np.array(
            [(n, s) for s in val_starts for n in range(N) if s - C - 1 >= max(0, starts[n] - 1)], dtype=np.int64
        ).reshape(-1, 2)
        train = []
        for n in range(N):
            first = max(int(starts[n]) + C + 1, C + 1)
            train.extend((n, s) for s in range(first, train_end - H + 1, self.train_stride))
        if not train:
            raise DataError(
                f"{self.path}: no training window of {C}+{H} steps before {index[min(train_end, T - 1)]}; "
                "shorten context_length or move test_start"
            )
        if len(self.test_items) == 0:
            raise DataError(f"{self.path}: test windows need {C + 1} steps of history before {self.test_start}")
        self.train_items = np.array(train, dtype=np.int64)

    # -- what the model needs to know ----------------------------------------
    @property
    def num_series(self) -> int:
        return len(self.table.names)

    @property
    def num_covariates(self) -> int:
        return self.windows.num_covariates

    def model_kwargs(self) -> dict:
        """Data-dependent constructor arguments of the network."""
        return {"num_series": self.num_series, "num_covariates": self.num_covariates}

    # -- loaders ----------------------------------------------------------------
    def train_dataloader(self) -> DataLoader:
        ds = TrainWindows(self.windows, self.train_items, self.context_length, self.horizon)
        sampler = ShardedSampler(len(ds), shuffle=True, seed=self.seed)
        if self.resume_batches:
            sampler.skip(self.resume_batches * self.batch_size)
            self.resume_batches = 0
        return DataLoader(ds, batch_size=self.batch_size, sampler=sampler, drop_last=len(ds) > self.batch_size,
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0)

    def _eval_loader(self, ds: Dataset) -> DataLoader:
        sampler = ShardedSampler(len(ds), shuffle=False)
        return DataLoader(ds, batch_size=self.eval_batch_size, sampler=sampler, num_workers=self.num_workers)

    def val_dataloader(self) -> DataLoader | list:
        if len(self.val_items) == 0:
            return []
        return self._eval_loader(TrainWindows(self.windows, self.val_items, self.context_length, self.horizon))

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader(ForecastWindows(self.windows, self.test_items, self.context_length, self.horizon))

    # -- baselines --------------------------------------------------------------
    def seasonal_naive(self, season: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Seasonal-naive forecasts of the test windows: the value one season earlier.

        Where that value is missing, the value one more season back is used.

        Returns:
            ``(forecasts, actuals)``, each ``(num_test_windows, H)``.
        """
        season = season or self.default_season()
        v = self.table.values
        fc, act = [], []
        for n, s in self.test_items:
            t = np.arange(s, s + self.horizon)
            f = np.full(self.horizon, np.nan, dtype=np.float32)
            for back in range(1, 4):
                src = t - back * season
                ok = np.isnan(f) & (src >= 0)
                f[ok] = v[src[ok], n]
            fc.append(np.nan_to_num(f, nan=0.0))
            act.append(v[s : s + self.horizon, n])
        return np.stack(fc), np.stack(act)

    def baselines(self) -> dict[str, float]:
        """Seasonal-naive metrics on the test windows, keyed ``baseline/seasonal_naive/*``
        (``train`` adds them to the run's metrics)."""
        fc, act = self.seasonal_naive()
        return {f"baseline/seasonal_naive/{k}": v for k, v in point_forecast_metrics(act, fc).items()}

    def default_season(self) -> int:
        """One week of steps for sub-daily data, else 7 steps (daily) or 1."""
        step = self.table.index[1] - self.table.index[0]
        week = pd.Timedelta("7D")
        return int(week / step) if step <= pd.Timedelta("1D") else 1
