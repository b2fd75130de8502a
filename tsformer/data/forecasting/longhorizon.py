"""Long-horizon forecasting benchmark data: the Informer / Autoformer protocol.

Zhou et al., AAAI 2021 (Informer) and Wu et al., NeurIPS 2021 (Autoformer) fixed the
splits that later papers (PatchTST, iTransformer, DLinear) report on:

- ETTh1: 12 / 4 / 4 months of hourly rows (``12*30*24`` train, then ``4*30*24`` each);
- ETTm1: the same span in 15-minute rows (each border times 4);
- other datasets (exchange rate, ...): 70 / 10 / 20 % of the rows.

Each split's inputs may start ``context`` rows before its first forecast row, values are
standardised per channel with the training split's mean and standard deviation, and
test windows slide with stride 1. Metrics are MSE and MAE on the standardised scale,
averaged over every window, horizon step and channel.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from tsformer.data.errors import DataError
from tsformer.data.forecasting.readers import first_line, read_frame


@dataclass
class LongHorizonData:
    """A standardised multivariate series and its split borders.

    Attributes:
        values: ``(T, N)`` float32 standardised values.
        names: the ``N`` channel names.
        mean, std: ``(N,)`` training statistics used for standardisation.
        borders: ``{"train"|"val"|"test": (first_forecast_row, end_row)}``; forecasts of a
            split cover rows in ``[first, end)``; their inputs may reach back before ``first``.
        freq_steps_per_day: rows per day (seasonal-naive season), 1 for daily data.
    """

    values: np.ndarray
    names: list[str]
    mean: np.ndarray
    std: np.ndarray
    borders: dict[str, tuple[int, int]]
    steps_per_day: int

    def window_starts(self, split: str, context: int, horizon: int) -> np.ndarray:
        """Row index of the first forecast step of every window of ``split`` (stride 1).

        The inputs of a window starting at ``s`` are rows ``s - context .. s - 1``. As in
        the reference code, the first window of a split has its inputs just before the
        split's first row, hence a split's forecasts start at its border.
        """
        first, end = self.borders[split]
        lo = max(first, context)
        starts = np.arange(lo, end - horizon + 1, dtype=np.int64)
        if len(starts) == 0:
            raise DataError(
                f"split {split!r} (rows {first}..{end}) has no window of context {context} + horizon {horizon}"
            )
        return starts


def _ett_borders(T: int, unit: int) -> dict[str, tuple[int, int]]:
    m = 30 * 24 * unit  # one "month" of rows
    b = {"train": (0, 12 * m), "val": (12 * m, 16 * m), "test": (16 * m, 20 * m)}
    if T < 20 * m:
        raise DataError(f"the ETT protocol needs {20 * m} rows, the file has {T}")
    return b


def _ratio_borders(T: int, train: float = 0.7, test: float = 0.2) -> dict[str, tuple[int, int]]:
    n_train, n_test = int(T * train), int(T * test)
    n_val = T - n_train - n_test
    return {"train": (0, n_train), "val": (n_train, n_train + n_val), "test": (T - n_test, T)}


def read_matrix(path: str | Path, encoding: str = "utf-8") -> tuple[np.ndarray, list[str], pd.DatetimeIndex | None]:
    """Read an ETT-style CSV (``date`` column then channels) or an LSTNet headerless matrix.

    Raises:
        DataError: naming the file and, where it applies, the row and column.

    Returns:
        ``(T, N)`` float64 values, channel names, and the timestamps (None for LSTNet).
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    first = first_line(path, encoding)
    if first.lower().startswith("date"):
        df = read_frame(path, encoding)
        if df.shape[1] < 2 or df.empty:
            raise DataError(f"{path}: expected a date column, channel columns and rows; found {list(df.columns)}, "
                            f"{len(df)} row(s)")
        try:
            stamps = pd.to_datetime(df.iloc[:, 0], errors="coerce")
        except (ValueError, TypeError) as e:  # e.g. "Mixed timezones detected"
            raise DataError(f"{path}: column {df.columns[0]!r}: cannot parse the timestamps ({e})") from None
        if stamps.isna().any():
            r = int(np.argmax(stamps.isna().to_numpy()))
            raise DataError(f"{path}: row {r + 2}, column {df.columns[0]!r}: cannot parse the timestamp "
                            f"{df.iloc[r, 0]!r}")
        index = pd.DatetimeIndex(stamps)
        data = df.iloc[:, 1:]
        names = [str(c) for c in data.columns]
    else:
        data = read_frame(path, encoding, header=None)
        index = None
        names = [f"c{i}" for i in range(data.shape[1])]
    data = data.apply(pd.to_numeric, errors="coerce")  # text cells become NaN, reported below
    values = data.to_numpy(dtype=np.float64, na_value=np.nan)
    bad = np.argwhere(~np.isfinite(values))
    if len(bad):
        r, c = bad[0]
        raise DataError(f"{path}: row {int(r) + 2}, column {names[c]!r}: not a finite number")
    return values, names, index


def load_long_horizon(path: str | Path, split: str = "ratio", steps_per_day: int | None = None,
                      encoding: str = "utf-8") -> LongHorizonData:
    """Read, split and standardise a long-horizon benchmark file.

    Args:
        path: ETT CSV (``.gz`` accepted) or LSTNet matrix.
        split: ``ett_hour`` (12/4/4 months of hours), ``ett_minute`` (the same in
            15-minute rows) or ``ratio`` (70/10/20 %).
        steps_per_day: rows per day; inferred from the timestamps (1 without them).
        encoding: the file's text encoding (any Python codec).
    """
    values, names, index = read_matrix(path, encoding)
    T = len(values)
    if split == "ett_hour":
        borders = _ett_borders(T, 1)
    elif split == "ett_minute":
        borders = _ett_borders(T, 4)
    elif split == "ratio":
        borders = _ratio_borders(T)
    else:
        raise ValueError(f"unknown split {split!r}; choose ett_hour, ett_minute or ratio")
    train = values[borders["train"][0] : borders["train"][1]]
    mean, std = train.mean(0), train.std(0)
    std = np.where(std > 1e-12, std, 1.0)
    if steps_per_day is None:
        if index is not None and len(index) > 1:
            steps_per_day = max(1, int(round(pd.Timedelta("1D") / (index[1] - index[0]))))
        else:
            steps_per_day = 1
    z = ((values - mean) / std).astype(np.float32)
    return LongHorizonData(z, names, mean.astype(np.float32), std.astype(np.float32), borders, steps_per_day)
