"""Readers for the real time-series file formats.

Each reader returns a :class:`SeriesTable`: a regular time index and a ``(T, N)`` matrix
with NaN where a value is missing. Supported:

- long CSV, ``series,time,value`` (column names configurable; the shipped electricity
  sample is ``group,time,kW``);
- UCI ElectricityLoadDiagrams20112014 ``LD2011_2014.txt``: semicolon separated, decimal
  comma, 15-minute kW per client, aggregated to hourly;
- LSTNet matrices (``electricity.txt``, ``traffic.txt``, ``solar_AL.txt``, optionally
  gzipped): comma separated, no header, one column per series, a known start and step.

Files are decoded with ``encoding`` (any Python codec, ``data.encoding``); bytes it cannot
decode, and every other problem, raise a :class:`~tsformer.data.errors.DataError` naming
the file and, where known, the row and column.
"""

from __future__ import annotations

import contextlib
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from tsformer.data.encoding import codec, decoding, open_text
from tsformer.data.errors import DataError

# Start and step of the LSTNet matrices (Lai et al. 2018), as used by GluonTS.
LSTNET_STARTS = {
    "electricity": ("2012-01-01 00:00:00", "1h"),
    "traffic": ("2015-01-01 00:00:00", "1h"),
    "solar_AL": ("2006-01-01 00:00:00", "10min"),
    "exchange_rate": ("1990-01-01", "1D"),
}


@dataclass
class SeriesTable:
    """Regularly sampled multiple series.

    Attributes:
        index: ``(T,)`` regular DatetimeIndex.
        values: ``(T, N)`` float32, NaN where missing.
        names: the ``N`` series ids.
    """

    index: pd.DatetimeIndex
    values: np.ndarray
    names: list[str]

    @property
    def freq(self) -> str:
        return self.index.freqstr

    def __post_init__(self) -> None:
        if self.values.shape != (len(self.index), len(self.names)):
            raise ValueError(f"values shape {self.values.shape} != ({len(self.index)}, {len(self.names)})")


@contextlib.contextmanager
def _csv_errors(path: str | Path, encoding: str) -> Iterator[None]:
    """pandas' reading errors (undecodable bytes, a row with too many fields, a truncated
    gzip stream, an empty file) as :class:`DataError` naming the file and the line."""
    try:
        with decoding(path, encoding):
            yield
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: the file is empty (no header row)") from None
    except pd.errors.ParserError as e:
        raise DataError(f"{path}: malformed CSV: {str(e).strip().removeprefix('Error tokenizing data. ')}") from None
    except OverflowError as e:  # a numeral of hundreds of digits in a numeric column
        raise DataError(f"{path}: a number too large for a float ({e})") from None
    except (EOFError, OSError, zlib.error) as e:  # truncated or corrupt .gz
        if isinstance(e, FileNotFoundError):
            raise
        raise DataError(f"{path}: cannot read the file ({e})") from None


def read_frame(path: str | Path, encoding: str = "utf-8", **kwargs) -> pd.DataFrame:
    """``pandas.read_csv(path, **kwargs)`` decoded with ``encoding``; its errors raised as
    :class:`DataError` naming the file and, where pandas gives one, the line."""
    with _csv_errors(path, encoding):
        return pd.read_csv(path, encoding=codec(encoding), **kwargs)


def iter_frames(path: str | Path, chunksize: int, encoding: str = "utf-8", **kwargs) -> Iterator[pd.DataFrame]:
    """:func:`read_frame` in chunks of ``chunksize`` rows."""
    with _csv_errors(path, encoding), pd.read_csv(path, encoding=codec(encoding), chunksize=chunksize,
                                                  **kwargs) as chunks:
        yield from chunks


def first_line(path: Path, encoding: str = "utf-8") -> str:
    """The file's first line (gzip or plain), or a :class:`DataError` if it cannot be read
    or is empty."""
    try:
        with open_text(path, encoding) as f, decoding(path, encoding):
            first = f.readline()
    except (EOFError, OSError, zlib.error) as e:
        raise DataError(f"{path}: cannot read the file ({e})") from None
    if not first.strip():
        raise DataError(f"{path}: the file is empty")
    return first


def detect_format(path: str | Path, encoding: str = "utf-8") -> str:
    """Guess ``long``, ``uci`` or ``lstnet`` from the file's first line."""
    first = first_line(Path(path), encoding)
    if first.startswith('"";') or (";" in first and "MT_" in first):
        return "uci"
    cells = first.strip().split(",")
    try:
        [float(c) for c in cells]
        return "lstnet"
    except ValueError:
        return "long"


def read_series(
    path: str | Path,
    format: str = "auto",
    *,
    freq: str | None = None,
    start: str | None = None,
    id_col: str | None = None,
    time_col: str | None = None,
    value_col: str | None = None,
    aggregate: str = "mean",
    dataset: str | None = None,
    encoding: str = "utf-8",
) -> SeriesTable:
    """Read a series file in any supported format.

    Args:
        path: the file (``.gz`` accepted).
        format: ``auto``, ``long``, ``uci`` or ``lstnet``.
        freq: target frequency (``1h``); inferred for long CSV, hourly for UCI.
        start: first timestamp of an LSTNet matrix (default from ``dataset``).
        id_col, time_col, value_col: long-format column names (default: the first three).
        aggregate: how UCI 15-minute values become hourly (``mean`` keeps kW, ``sum``).
        dataset: LSTNet dataset name, for its default start and step.
        encoding: the file's text encoding (any Python codec).
    """
    path = Path(path)
    if not path.exists():
        hint = ""
        if dataset:
            hint = f" Put the {dataset} file there or point data.path at it."
        raise DataError(f"{path}: file not found.{hint}")
    if path.is_dir():
        raise DataError(f"{path}: is a folder, not a series file")
    fmt = detect_format(path, encoding) if format == "auto" else format
    if fmt == "long":
        return read_long_csv(path, id_col=id_col, time_col=time_col, value_col=value_col, freq=freq,
                             encoding=encoding)
    if fmt == "uci":
        return read_uci_electricity(path, freq=freq or "1h", aggregate=aggregate, encoding=encoding)
    if fmt == "lstnet":
        if start is None or freq is None:
            key = dataset or next((k for k in LSTNET_STARTS if k in path.name), None)
            if key is None:
                raise DataError(f"{path}: LSTNet matrix without a known start; set data.start and data.freq")
            start = start or LSTNET_STARTS[key][0]
            freq = freq or LSTNET_STARTS[key][1]
        return read_lstnet(path, start=start, freq=freq, encoding=encoding)
    raise DataError(f"{path}: unknown format {format!r}; choose auto, long, uci or lstnet")


def read_long_csv(
    path: Path,
    *,
    id_col: str | None = None,
    time_col: str | None = None,
    value_col: str | None = None,
    freq: str | None = None,
    encoding: str = "utf-8",
) -> SeriesTable:
    """Long CSV, one row per (series, time, value). Empty cells are missing values."""
    df = read_frame(path, encoding)
    if df.empty:
        raise DataError(f"{path}: the file has a header but no rows")
    cols = list(df.columns)
    if len(cols) < 3 and not (id_col and time_col and value_col):
        raise DataError(f"{path}: expected columns series,time,value; found {cols}")
    id_col = id_col or cols[0]
    time_col = time_col or cols[1]
    value_col = value_col or cols[2]
    for c in (id_col, time_col, value_col):
        if c not in df.columns:
            raise DataError(f"{path}: no column {c!r}; columns are {cols}")
    try:
        times = pd.to_datetime(df[time_col])
    except (ValueError, TypeError) as e:
        bad = _first_bad(df[time_col], lambda s: pd.to_datetime(s))
        raise DataError(f"{path}: row {bad}: cannot parse time {df[time_col].iloc[bad - 2]!r} ({e})") from None
    if times.isna().any():
        row = int(np.argmax(times.isna().to_numpy())) + 2
        raise DataError(f"{path}: row {row}: empty time in column {time_col!r}")
    values = pd.to_numeric(df[value_col], errors="coerce")
    bad = values.isna() & df[value_col].notna()
    if bad.any():
        row = int(np.argmax(bad.to_numpy())) + 2
        raise DataError(f"{path}: row {row}: non-numeric {value_col!r} value {df[value_col].iloc[row - 2]!r}")
    frame = pd.DataFrame({"id": df[id_col].astype(str), "time": times, "value": values})
    dup = frame.duplicated(["id", "time"])
    if dup.any():
        row = int(np.argmax(dup.to_numpy())) + 2
        raise DataError(f"{path}: row {row}: duplicate time {frame['time'].iloc[row - 2]} for series {frame['id'].iloc[row - 2]!r}")
    wide = frame.pivot(index="time", columns="id", values="value").sort_index()
    if freq is None and len(wide) < 3:  # pandas needs three timestamps to infer a frequency
        raise DataError(f"{path}: {len(wide)} distinct time(s) in column {time_col!r}, too few to infer "
                        "the frequency (3 needed); give more rows or set data.freq")
    freq = freq or pd.infer_freq(wide.index[: min(len(wide), 1000)])
    if freq is None:
        raise DataError(f"{path}: cannot infer the frequency of {time_col!r}; set data.freq")
    full = pd.date_range(wide.index[0], wide.index[-1], freq=freq)
    wide = wide.reindex(full)
    return SeriesTable(full, wide.to_numpy(np.float32), [str(c) for c in wide.columns])


def _first_bad(col: pd.Series, parse) -> int:
    for i, v in enumerate(col):
        try:
            parse(v)
        except (ValueError, TypeError):
            return i + 2
    return 2


def read_uci_electricity(path: Path, *, freq: str = "1h", aggregate: str = "mean",
                         encoding: str = "utf-8") -> SeriesTable:
    """UCI ``LD2011_2014.txt``: ``"";"MT_001";...`` header, rows ``"2011-01-01 00:15:00";0;...``.

    Timestamps mark the end of each 15-minute interval, so 00:15..01:00 form hour 00:00.
    UCI stores zeros at the daylight-saving hour; they are kept as zeros.
    """
    df = read_frame(path, encoding, sep=";", decimal=",", index_col=0, low_memory=False)
    if df.empty:
        raise DataError(f"{path}: the file has a header but no rows")
    try:
        df.index = pd.to_datetime(df.index)
    except (ValueError, TypeError):
        bad = _first_bad(pd.Series(df.index), lambda s: pd.to_datetime(s))
        raise DataError(f"{path}: row {bad}: cannot parse the timestamp") from None
    if df.index.isna().any():  # an empty timestamp parses to NaT, which resampling cannot place
        raise DataError(f"{path}: row {int(np.argmax(df.index.isna())) + 2}: empty timestamp")
    nonnum = [c for c in df.columns if not pd.api.types.is_numeric_dtype(df[c])]
    if nonnum:
        c = nonnum[0]
        col = df[c].astype(str).str.replace(",", ".", regex=False)
        row = int(np.argmax(pd.to_numeric(col, errors="coerce").isna().to_numpy())) + 2
        raise DataError(f"{path}: row {row}, column {c!r}: non-numeric value")
    if aggregate not in ("mean", "sum"):
        raise DataError(f"aggregate must be mean or sum, got {aggregate!r}")
    shifted = df.copy()
    shifted.index = shifted.index - pd.Timedelta("15min")
    res = shifted.resample(freq)
    hourly = res.mean() if aggregate == "mean" else res.sum(min_count=1)
    return SeriesTable(pd.DatetimeIndex(hourly.index, freq=freq), hourly.to_numpy(np.float32), [str(c) for c in hourly.columns])


def read_lstnet(path: Path, *, start: str, freq: str, encoding: str = "utf-8") -> SeriesTable:
    """LSTNet matrix: comma separated numbers, no header, rows are time steps."""
    try:
        values = read_frame(path, encoding, header=None, dtype=np.float32).to_numpy()
    except DataError:
        raise
    except ValueError as e:
        raise DataError(f"{path}: not a numeric LSTNet matrix ({e})") from None
    if values.size == 0:
        raise DataError(f"{path}: the file is empty")
    index = pd.date_range(start, periods=values.shape[0], freq=freq)
    return SeriesTable(index, values, [str(i) for i in range(values.shape[1])])
