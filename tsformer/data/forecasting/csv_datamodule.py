"""Forecasting on a user's own CSV (``task=csv``): covariates, static features, missing values.

Extends :class:`~tsformer.data.forecasting.datamodule.ForecastingDataModule` with

- known-in-advance covariates (standardised, fed at every position, horizon included);
- past-only covariates, lagged by one step like the target and hidden (zero, with an
  availability flag) after the forecast time, so training matches forecasting;
- static categorical series features (codes, 0 = unseen category);
- evaluation on the last ``test_windows`` windows at the end of each series;
- a ``predict`` stage that forecasts from the end of each series of a new file with the
  vocabulary and scalers saved at training time (``state_dict`` / ``load_state_dict``,
  also stored in every Lightning checkpoint).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from torch.utils.data import DataLoader

from tsformer.data.errors import DataError
from tsformer.data.forecasting.datamodule import (
    ForecastingDataModule,
    ForecastWindows,
    TrainWindows,
    Windows,
    age_feature,
    time_features,
)
from tsformer.data.forecasting.user_csv import UserTable, fill_covariates, interpolate_inside, read_user_csv

STATE_VERSION = 1


@dataclass
class CSVWindows(Windows):
    """:class:`Windows` plus known and past-only covariates.

    ``known`` ``(T, N, K)`` and ``past`` ``(T, N, P)`` are standardised and gap-free.
    """

    known: np.ndarray | None = None
    past: np.ndarray | None = None
    horizon: int = 1

    @property
    def num_covariates(self) -> int:
        P = self.past.shape[2]
        return self.time_feats.shape[1] + 1 + self.known.shape[2] + (P + 1 if P else 0)

    def covariates(self, n: int, lo: int, hi: int) -> np.ndarray:
        parts = [self.time_feats[lo:hi], self.age[lo:hi, n, None], self.known[lo:hi, n]]
        P = self.past.shape[2]
        if P:
            # Position p (time lo + p) sees the past covariates of time lo + p - 1, like the
            # target; after the forecast time s = hi - horizon they are unknown.
            past = self.past[lo - 1 : hi - 1, n].copy()
            avail = np.ones((hi - lo, 1), dtype=np.float32)
            cut = hi - self.horizon - lo + 1
            past[cut:] = 0.0
            avail[cut:] = 0.0
            parts += [past, avail]
        return np.concatenate(parts, axis=1).astype(np.float32)


class CSVForecastingDataModule(ForecastingDataModule):
    """A user CSV (wide or long) as a forecasting data set.

    Args:
        path: the CSV file.
        time_col: timestamp column.
        target: target column (long, or one series of a wide file), a list of series
            columns, or null (wide: all columns that are not covariates).
        id_col: series id column (long format); null: wide format.
        freq: pandas frequency string; null: inferred from the timestamps.
        known_covariates: numeric columns known in advance (needed over the horizon too).
        past_covariates: numeric columns known only up to the forecast time.
        static_categoricals: categorical columns constant within a series (long format).
        missing: ``mask`` (missing targets are left out of the loss and the metrics) or
            ``interpolate`` (linear interpolation between observed values).
        context_length, horizon: conditioning and prediction ranges.
        test_windows: rolling test windows at the end of each series (0: none).
        test_stride: spacing of the test and validation windows (default ``horizon``).
        val_windows: validation windows just before the test windows (0: none).
        train_stride, batch_size, eval_batch_size, num_workers: loader settings.
        unknown_series: at forecast time, a series id not seen in training gets ``mean``
            (the average series embedding), ``error``, or the embedding of the named series.
        on_short: at forecast time, a series with less than ``context_length`` steps of
            history: ``error`` or ``skip`` (reported in :attr:`skipped`).
        frame: an in-memory DataFrame read instead of ``path``.
        encoding: the CSV's text encoding (any Python codec).
    """

    def __init__(
        self,
        path: str | None = None,
        time_col: str = "date",
        target: str | list[str] | None = None,
        id_col: str | None = None,
        freq: str | None = None,
        known_covariates: list[str] | None = None,
        past_covariates: list[str] | None = None,
        static_categoricals: list[str] | None = None,
        missing: str = "mask",
        context_length: int = 168,
        horizon: int = 24,
        test_windows: int = 1,
        test_stride: int | None = None,
        val_windows: int = 1,
        train_stride: int = 1,
        batch_size: int = 64,
        eval_batch_size: int = 32,
        num_workers: int = 0,
        unknown_series: str = "mean",
        on_short: str = "error",
        frame: pd.DataFrame | None = None,
        encoding: str = "utf-8",
    ):
        super().__init__(
            path, context_length=context_length, horizon=horizon, test_start="", test_windows=test_windows,
            test_stride=test_stride, val_windows=val_windows, train_stride=train_stride, batch_size=batch_size,
            eval_batch_size=eval_batch_size, num_workers=num_workers,
        )
        if missing not in ("mask", "interpolate"):
            raise DataError(f"data.missing must be mask or interpolate, got {missing!r}")
        if on_short not in ("error", "skip"):
            raise DataError(f"data.on_short must be error or skip, got {on_short!r}")
        if context_length < 1 or horizon < 1:
            raise DataError(f"data.context_length and data.horizon must be >= 1, got {context_length}, {horizon}")
        self.time_col, self.target, self.id_col, self.freq = time_col, target, id_col, freq
        self.known_covariates = list(known_covariates or [])
        self.past_covariates = list(past_covariates or [])
        self.static_categoricals = list(static_categoricals or [])
        self.missing, self.unknown_series, self.on_short = missing, unknown_series, on_short
        self.frame, self.encoding = frame, encoding
        self.vocab: dict | None = None  # set by fit-time setup or load_state_dict
        self.skipped: list[tuple[str, int]] = []
        self.stage: str | None = None

    @property
    def source(self) -> str:
        return "<DataFrame>" if self.frame is not None else str(self.path)

    # -- vocabulary and scalers (saved in checkpoints and exports) -----------------
    def state_dict(self) -> dict:
        return dict(self.vocab or {})

    def load_state_dict(self, state: dict) -> None:
        if state:
            if int(state.get("state_version", 0)) != STATE_VERSION:
                raise DataError(f"data state version {state.get('state_version')} is not {STATE_VERSION}")
            self.vocab = dict(state)

    def _make_vocab(self, table: UserTable) -> dict:
        cov = np.concatenate([table.known, table.past], axis=2)
        mean = np.nan_to_num(np.nanmean(cov, axis=(0, 1)), nan=0.0) if cov.shape[2] else np.zeros(0)
        std = np.nan_to_num(np.nanstd(cov, axis=(0, 1)), nan=1.0) if cov.shape[2] else np.zeros(0)
        std = np.where(std > 1e-8, std, 1.0)
        static_vocab = [sorted({row[i] for row in table.static}) for i in range(len(self.static_categoricals))]
        return {
            "state_version": STATE_VERSION,
            "series_names": list(table.names),
            "static_columns": list(self.static_categoricals),
            "static_vocab": static_vocab,
            "covariate_columns": self.known_covariates + self.past_covariates,
            "covariate_mean": [float(x) for x in mean],
            "covariate_std": [float(x) for x in std],
            "freq": table.freq,
            "context_length": int(self.context_length),
            "horizon": int(self.horizon),
            # the age feature's scale: forecasts then never depend on the input's time span
            "age_length": len(table.index) + 1,
        }

    # -- set-up ----------------------------------------------------------------------
    def _read(self) -> UserTable:
        table = read_user_csv(
            None if self.frame is not None else self.path, time_col=self.time_col, target=self.target,
            id_col=self.id_col, freq=self.freq or (self.vocab or {}).get("freq"),
            known_covariates=self.known_covariates, past_covariates=self.past_covariates,
            static_categoricals=self.static_categoricals, frame=self.frame, encoding=self.encoding,
        )
        if self.vocab is not None and self.vocab.get("freq") and table.freq != self.vocab["freq"]:
            raise DataError(f"{self.source}: frequency {table.freq} differs from the trained {self.vocab['freq']}")
        return table

    def setup(self, stage: str | None = None) -> None:
        if self.table is not None and (stage == "predict") == (self.stage == "predict"):
            return
        self.stage = stage
        table = self._read()
        if stage == "predict":
            if self.vocab is None:
                raise DataError("predict needs the training vocabulary: call load_state_dict first")
        elif self.vocab is None:
            self.vocab = self._make_vocab(table)
        self._build(table, predict=stage == "predict")

    def _build(self, table: UserTable, predict: bool) -> None:
        H = self.horizon
        values = table.values
        if self.missing == "interpolate":
            values = interpolate_inside(values)
        observed = ~np.isnan(values)
        starts = np.where(observed.any(0), observed.argmax(0), len(values))
        ends = len(values) - np.where(observed.any(0), observed[::-1].argmax(0), len(values))
        # One leading empty step, so that every window's lagged first input exists; when
        # predicting, H trailing steps for the horizon's calendar features.
        extra = H if predict else 0
        T = len(values) + 1 + extra
        index = pd.date_range(end=table.index[0], periods=2, freq=table.index.freq)[:1].append(table.index)
        if extra:
            index = index.append(pd.date_range(table.index[-1], periods=extra + 1, freq=table.index.freq)[1:])
        index = pd.DatetimeIndex(index, freq=table.index.freq)
        N = values.shape[1]
        padded = np.full((T, N), np.nan, dtype=np.float32)
        padded[1 : 1 + len(values)] = values
        starts, ends = starts + 1, ends + 1

        cov = np.concatenate([table.known, table.past], axis=2)
        cov = (cov - np.asarray(self.vocab["covariate_mean"], np.float32)) / np.asarray(
            self.vocab["covariate_std"], np.float32
        )
        K = table.known.shape[2]
        cov_p = np.full((T, N, cov.shape[2]), np.nan, dtype=np.float32)
        cov_p[1 : 1 + len(values)] = cov
        self.skipped = []
        if predict:
            keep = self._check_predict(table, padded, starts, ends, cov_p[:, :, :K])
        else:
            self._check_fit(table, starts, ends)
        cov_p = np.nan_to_num(fill_covariates(cov_p), nan=0.0)

        self.table = UserTable(index, padded, table.names, cov_p[:, :, :K], cov_p[:, :, K:], table.static)
        tf, self.feature_names = time_features(index)
        static = None
        if self.static_categoricals:
            maps = [{v: i + 1 for i, v in enumerate(voc)} for voc in self.vocab["static_vocab"]]
            static = np.array([[m.get(v, 0) for m, v in zip(maps, row)] for row in table.static], dtype=np.int64)
        age = age_feature(T, starts, self.vocab.get("age_length"))
        self.windows = CSVWindows(
            padded, tf, age, static=static, series_index=self._series_index(table.names),
            known=cov_p[:, :, :K], past=cov_p[:, :, K:], horizon=H,
        )
        self.series_starts, self.series_ends = starts, ends
        if predict:
            self.predict_items = np.array([(n, ends[n]) for n in keep], dtype=np.int64).reshape(-1, 2)
        else:
            self._plan_from_end(starts, ends)

    def _series_index(self, names: list[str]) -> np.ndarray:
        known = {s: i for i, s in enumerate(self.vocab["series_names"])}
        fb = self.unknown_series
        if fb not in ("mean", "error") and fb not in known:
            raise DataError(f"data.unknown_series={fb!r} is neither mean, error nor a trained series id")
        out = []
        for s in names:
            if s in known:
                out.append(known[s])
            elif fb == "error":
                raise DataError(f"{self.source}: series {s!r} was not seen in training (data.unknown_series=error)")
            else:
                out.append(-1 if fb == "mean" else known[fb])
        return np.asarray(out, dtype=np.int64)

    def _check_fit(self, table: UserTable, starts: np.ndarray, ends: np.ndarray) -> None:
        C, H = self.context_length, self.horizon
        for n, name in enumerate(table.names):
            length = int(ends[n] - starts[n]) if ends[n] > starts[n] else 0
            if length < C + H:
                raise DataError(
                    f"{self.source}: series {name!r} has {length} steps"
                    + (f" ({table.index[starts[n] - 1]} .. {table.index[ends[n] - 2]})" if length else " (no values)")
                    + f", shorter than context_length + horizon = {C} + {H}"
                )

    def _check_predict(self, table, padded, starts, ends, known) -> list[int]:
        C, H = self.context_length, self.horizon
        keep = []
        for n, name in enumerate(table.names):
            length = int(ends[n] - starts[n]) if ends[n] > starts[n] else 0
            if length < C:
                if self.on_short == "error":
                    raise DataError(
                        f"{self.source}: series {name!r} has {length} steps of history, "
                        f"shorter than context_length = {C} (or set on_short=skip)"
                    )
                self.skipped.append((name, length))
                continue
            if known.shape[2]:
                fut = known[ends[n] : ends[n] + H, n]  # padded array: H rows always exist
                if np.isnan(fut).any():
                    k = int(np.argmax(np.isnan(fut).any(0)))
                    t = table.index[0] + (int(ends[n]) - 1 + int(np.argmax(np.isnan(fut[:, k])))) * table.index.freq
                    raise DataError(
                        f"{self.source}: series {name!r}: known covariate {self.known_covariates[k]!r} has no value at "
                        f"{t}; the file needs {H} future rows with known covariates after the last target value"
                    )
            keep.append(n)
        return keep

    def _plan_from_end(self, starts: np.ndarray, ends: np.ndarray) -> None:
        C, H, st = self.context_length, self.horizon, self.test_stride
        test, val, train = [], [], []
        for n in range(len(starts)):
            lo, e = int(starts[n]), int(ends[n])
            t0 = e - H - (self.test_windows - 1) * st if self.test_windows else e - H + st
            ts = [t0 + w * st for w in range(self.test_windows)]
            test += [(n, s) for s in ts if s - C >= lo]
            vs = [t0 - (self.val_windows - w) * st for w in range(self.val_windows)]
            val += [(n, s) for s in vs if s - C >= lo]
            # Training targets end before the first validation (else test) forecast.
            train_end = vs[0] if vs else (t0 if self.test_windows else e)
            train += [(n, s) for s in range(lo + C, train_end - H + 1, self.train_stride)]
        if not train:
            need = C + H + max(self.test_windows + self.val_windows - 1, 0) * st + H
            raise DataError(
                f"{self.source}: no training window left after the {self.val_windows} validation and "
                f"{self.test_windows} test windows; series need about {need} steps, "
                "or lower data.context_length / data.test_windows / data.val_windows"
            )
        self.test_items = np.array(test, dtype=np.int64).reshape(-1, 2)
        self.val_items = np.array(val, dtype=np.int64).reshape(-1, 2)
        self.train_items = np.array(train, dtype=np.int64)

    def model_kwargs(self) -> dict:
        kw = super().model_kwargs()
        kw["num_series"] = len(self.vocab["series_names"])
        if self.static_categoricals:
            kw["static_cardinalities"] = [len(v) + 1 for v in self.vocab["static_vocab"]]
        return kw

    def test_dataloader(self) -> DataLoader:
        if len(self.test_items) == 0:
            return []
        return super().test_dataloader()

    def predict_dataloader(self) -> DataLoader:
        """Windows that forecast from the end of each series (after ``setup("predict")``)."""
        ds = ForecastWindows(self.windows, self.predict_items, self.context_length, self.horizon)
        return DataLoader(ds, batch_size=self.eval_batch_size, num_workers=self.num_workers)

    def forecast_times(self, n: int, s: int, h: int | None = None) -> pd.DatetimeIndex:
        """Timestamps of the ``h`` forecast steps of column ``n`` from padded position ``s``."""
        return self.table.index[s : s + (h or self.horizon)]


__all__ = ["CSVForecastingDataModule", "CSVWindows", "TrainWindows"]
