"""Reader for a user's own CSV: wide or long, with covariates, validated row by row.

Wide format: a time column and one numeric column per series (``target`` null: every
column not declared a covariate), or one ``target`` column among covariates. Long format
(``id_col`` set): one row per (series, time) with the target and covariate columns.

Timestamps are put on a regular grid (frequency inferred or given); gaps and empty
cells stay missing (NaN). Every problem raises :class:`DataError` naming the file and
the row (1-based, the header is row 1) or the column.

Large long files are read in chunks with compact dtypes (series ids as ``category``,
values as ``float32``) so that only a few copies of the data exist at any time.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from tsformer.data.encoding import codec
from tsformer.data.errors import DataError
from tsformer.data.forecasting.readers import iter_frames, read_frame

CHUNK_ROWS = 1_000_000


@dataclass
class UserTable:
    """Series on a common regular grid.

    Attributes:
        index: ``(T,)`` regular DatetimeIndex (with ``freq``).
        values: ``(T, N)`` float32 target, NaN where missing.
        names: the ``N`` series ids.
        known: ``(T, N, K)`` float32 known-in-advance covariates (NaN where missing).
        past: ``(T, N, P)`` float32 past-only covariates.
        static: ``N`` rows of static categorical values (strings), one per static column.
    """

    index: pd.DatetimeIndex
    values: np.ndarray
    names: list[str]
    known: np.ndarray
    past: np.ndarray
    static: list[list[str]] = field(default_factory=list)

    @property
    def freq(self) -> str:
        return self.index.freqstr


def _as_list(x) -> list[str]:
    if x is None:
        return []
    if isinstance(x, str):
        return [x]
    return [str(c) for c in x]


def nearest_name(name: str, columns: list[str]) -> str | None:
    """The column most likely meant: same letters in another order or case, else the closest."""
    low = name.lower()
    for c in columns:
        if c.lower() == low or sorted(c.lower()) == sorted(low):
            return c
    near = difflib.get_close_matches(name, columns, n=1, cutoff=0.5)
    return near[0] if near else None


def _check_columns(source: str, columns: list[str], wanted: dict[str, list[str]]) -> None:
    """Raise naming the config key and the nearest existing column for a missing column."""
    for key, names in wanted.items():
        for c in names:
            if c not in columns:
                near = nearest_name(c, columns)
                hint = f" Did you mean {near!r}?" if near else ""
                raise DataError(f"{source}: no column {c!r} (data.{key}).{hint} Columns are: {columns}")


def _parse_times(source: str, raw: pd.Series, row0: int, time_col: str) -> np.ndarray:
    """``datetime64[ns]`` of a chunk of timestamp strings; raises naming the first bad row."""
    if raw.isna().any():
        row = row0 + int(np.argmax(raw.isna().to_numpy()))
        raise DataError(f"{source}: row {row}: empty timestamp in column {time_col!r}")
    try:
        t = pd.to_datetime(raw, errors="coerce")
    except (ValueError, TypeError):
        try:
            t = pd.to_datetime(raw, errors="coerce", format="mixed")
        except (ValueError, TypeError) as e:  # e.g. "Mixed timezones detected"
            i = _first_other_zone(raw)
            raise DataError(f"{source}: row {row0 + i}: timestamp {raw.iloc[i]!r} in column {time_col!r} does not "
                            f"match the time zone of the rows before it ({e}); give every timestamp the same "
                            "UTC offset") from None
    if not pd.api.types.is_datetime64_any_dtype(t):
        raise DataError(f"{source}: column {time_col!r}: timestamps of mixed kinds (time zones or formats)")
    if getattr(t.dt, "tz", None) is not None:
        t = t.dt.tz_convert(None)
    bad = t.isna().to_numpy()
    if bad.any():
        i = int(np.argmax(bad))
        raise DataError(f"{source}: row {row0 + i}: cannot parse timestamp {raw.iloc[i]!r} in column {time_col!r}")
    return t.to_numpy("datetime64[ns]")


def _first_other_zone(raw: pd.Series) -> int:
    """Index of the first timestamp whose UTC offset differs from the first parsable one's."""
    first = None
    for i, v in enumerate(raw):
        try:
            ts = pd.Timestamp(v)
        except (ValueError, TypeError):
            continue
        off = ts.utcoffset() if ts is not pd.NaT else None
        if first is None:
            first = (off,)
        elif off != first[0]:
            return i
    return 0


def _parse_numeric(source: str, raw: pd.Series, row0: int, col: str, what: str) -> np.ndarray:
    if pd.api.types.is_numeric_dtype(raw):
        return raw.to_numpy(np.float32, na_value=np.nan)
    vals = pd.to_numeric(raw, errors="coerce")
    bad = (vals.isna() & raw.notna() & (raw.astype(str).str.strip() != "")).to_numpy()
    if bad.any():
        i = int(np.argmax(bad))
        raise DataError(f"{source}: row {row0 + i}, column {col!r}: non-numeric {what} value {raw.iloc[i]!r}")
    return vals.to_numpy(np.float32, na_value=np.nan)


def build_grid(source: str, times: np.ndarray, freq: str | None, rows: np.ndarray | None = None) -> pd.DatetimeIndex:
    """The regular index covering ``times`` (``datetime64[ns]``, any order, repeats allowed).

    The frequency is ``freq`` or inferred: pandas' rule on the first distinct timestamps,
    else the most common step; timestamps off that grid raise naming their row.
    """
    uniq = np.unique(times)
    if freq is None:
        inferred = pd.infer_freq(pd.DatetimeIndex(uniq[:1000])) if len(uniq) >= 3 else None
        if inferred is None and len(uniq) >= 2:
            diffs = np.diff(uniq).astype("timedelta64[ns]").astype(np.int64)
            vals, counts = np.unique(diffs, return_counts=True)
            step = pd.Timedelta(int(vals[np.argmax(counts)]), "ns")
            if (diffs % step.value).any():
                raise DataError(
                    f"{source}: cannot infer the frequency: the timestamps are irregular or mix several steps "
                    f"(most common step {step}, but e.g. {pd.Timedelta(int(diffs[(diffs % step.value) != 0][0]), 'ns')} "
                    "also occurs); set data.freq (e.g. data.freq=15min)"
                )
            inferred = pd.tseries.frequencies.to_offset(step).freqstr
        if inferred is None:
            raise DataError(f"{source}: cannot infer the frequency from {len(uniq)} timestamp(s); set data.freq")
        freq = inferred
    try:
        index = pd.date_range(uniq[0], uniq[-1], freq=freq)
    except ValueError as e:
        raise DataError(f"{source}: bad data.freq={freq!r} ({e})") from None
    pos = index.searchsorted(uniq)
    off = (pos >= len(index)) | (index.to_numpy()[np.minimum(pos, len(index) - 1)] != uniq)
    if off.any():
        t = uniq[np.argmax(off)]
        where = ""
        if rows is not None:
            where = f"row {int(rows[np.argmax(times == t)])}: "
        raise DataError(
            f"{source}: {where}timestamp {pd.Timestamp(t)} is not on the {freq} grid starting {index[0]}: "
            "mixed or irregular frequency; set data.freq or fix the timestamps"
        )
    return index


def read_user_csv(
    path: str | Path | None = None,
    *,
    time_col: str,
    target: str | list[str] | None = None,
    id_col: str | None = None,
    freq: str | None = None,
    known_covariates: list[str] | None = None,
    past_covariates: list[str] | None = None,
    static_categoricals: list[str] | None = None,
    frame: pd.DataFrame | None = None,
    chunk_rows: int = CHUNK_ROWS,
    encoding: str = "utf-8",
) -> UserTable:
    """Read and validate a user CSV (or an in-memory ``frame`` with the same columns).

    Args:
        path: the CSV file (``.gz`` accepted).
        time_col: the timestamp column.
        target: the target column (long format; wide: one series), a list of series
            columns (wide), or null (wide: every column not declared a covariate).
        id_col: series id column: long format when set.
        freq: pandas frequency (``15min``, ``1h``, ``D``); inferred when null.
        known_covariates: numeric columns known in advance (also over the horizon).
        past_covariates: numeric columns only known up to the forecast time.
        static_categoricals: columns constant within a series (long format only).
        frame: read this DataFrame instead of ``path``.
        chunk_rows: rows per chunk when reading long files.
        encoding: the file's text encoding (any Python codec); undecodable bytes raise a
            DataError naming the byte offset.
    Returns:
        The :class:`UserTable`.
    """
    known, past, static = _as_list(known_covariates), _as_list(past_covariates), _as_list(static_categoricals)
    if frame is not None:
        source = "<DataFrame>"
        columns = [str(c) for c in frame.columns]
    else:
        if path is None:
            raise DataError("no input: set data.path")
        source = str(path)
        p = Path(path)
        if not p.exists():
            raise DataError(f"{source}: file not found")
        if p.is_dir():
            raise DataError(f"{source}: is a directory, not a CSV file")
        if os.path.getsize(p) == 0:
            raise DataError(f"{source}: the file is empty")
        codec(encoding)  # an unknown codec is a config error before anything is read
        columns = [str(c) for c in read_frame(p, encoding, nrows=0).columns]
    if id_col is None and static:
        raise DataError(f"{source}: data.static_categoricals need long format (set data.id_col)")
    wanted = {"time_col": [time_col]}
    if id_col is not None:
        wanted["id_col"] = [id_col]
        if target is None or not isinstance(target, str):
            raise DataError(f"{source}: long format (data.id_col={id_col}) needs one data.target column")
    wanted.update(target=_as_list(target), known_covariates=known, past_covariates=past, static_categoricals=static)
    _check_columns(source, columns, wanted)
    overlap = set(known) & set(past) | (set(known) | set(past)) & set(_as_list(target))
    if overlap:
        raise DataError(f"{source}: column(s) {sorted(overlap)} declared twice (target / known / past covariates)")
    if id_col is None:
        return _read_wide(source, path, frame, time_col, target, columns, freq, known, past, encoding)
    return _read_long(source, path, frame, time_col, target, id_col, freq, known, past, static, chunk_rows,
                      encoding)


def _read_wide(source, path, frame, time_col, target, columns, freq, known, past, encoding) -> UserTable:
    if target is None:
        targets = [c for c in columns if c not in {time_col, *known, *past}]
    else:
        targets = _as_list(target)
    if not targets:
        raise DataError(f"{source}: no series column left besides {time_col!r} and the covariates")
    df = frame if frame is not None else read_frame(path, encoding, usecols=[time_col, *targets, *known, *past],
                                                    dtype=str)
    if len(df) == 0:
        raise DataError(f"{source}: the file has a header but no rows")
    times = _parse_times(source, df[time_col].reset_index(drop=True), 2, time_col)
    order = np.argsort(times, kind="stable")
    st = times[order]
    dup = st[1:] == st[:-1]
    if dup.any():
        i = int(order[1:][dup].min())
        raise DataError(f"{source}: row {i + 2}: duplicate timestamp {pd.Timestamp(times[i])}")
    index = build_grid(source, times, freq, rows=np.arange(len(times)) + 2)
    pos = index.searchsorted(times)
    T, N = len(index), len(targets)
    values = np.full((T, N), np.nan, dtype=np.float32)
    for j, c in enumerate(targets):
        values[pos, j] = _parse_numeric(source, df[c].reset_index(drop=True), 2, c, "target")
    covs = []
    for group in (known, past):
        arr = np.full((T, N, len(group)), np.nan, dtype=np.float32)
        for k, c in enumerate(group):
            arr[pos, :, k] = _parse_numeric(source, df[c].reset_index(drop=True), 2, c, "covariate")[:, None]
        covs.append(arr)
    return UserTable(index, values, [str(t) for t in targets], covs[0], covs[1], [])


def _read_long(source, path, frame, time_col, target, id_col, freq, known, past, static, chunk_rows,
               encoding) -> UserTable:
    usecols = [id_col, time_col, target, *known, *past, *static]
    numeric = [target, *known, *past]
    if frame is not None:
        chunks = [frame[usecols]]
    else:
        # Numbers are read as float32 straight away; a chunk that fails is re-read as
        # text only to find the offending row.
        chunks = iter_frames(
            path, chunk_rows, encoding, usecols=usecols,
            dtype={id_col: "category", time_col: str, **{c: "str" for c in static}},
            converters=None, low_memory=True, engine="c",
        )
    ids, times, vals, stat = [], [], [], []
    row0 = 2
    for chunk in chunks:
        chunk = chunk.reset_index(drop=True)
        if chunk[id_col].isna().any():
            i = int(np.argmax(chunk[id_col].isna().to_numpy()))
            raise DataError(f"{source}: row {row0 + i}: empty series id in column {id_col!r}")
        ids.append(chunk[id_col].astype(str).astype("category") if frame is not None else chunk[id_col])
        times.append(_parse_times(source, chunk[time_col], row0, time_col))
        vals.append(np.stack([_parse_numeric(source, chunk[c], row0, c, "target" if c == target else "covariate")
                              for c in numeric], axis=1))
        if static:
            stat.append(chunk[static].astype(str))
        row0 += len(chunk)
        del chunk
    if row0 == 2:
        raise DataError(f"{source}: the file has a header but no rows")
    cat = pd.api.types.union_categoricals([pd.Categorical(c) for c in ids], sort_categories=True)
    codes = cat.codes.astype(np.int32)
    names = [str(c) for c in cat.categories]
    del ids, cat
    t = np.concatenate(times)
    del times
    index = build_grid(source, t, freq, rows=None)
    pos = index.searchsorted(t).astype(np.int64)
    del t
    T, N = len(index), len(names)
    key = codes.astype(np.int64) * T + pos
    order = np.argsort(key, kind="stable")
    sk = key[order]
    dup = sk[1:] == sk[:-1]
    if dup.any():
        i = int(order[1:][dup].min())
        raise DataError(
            f"{source}: row {i + 2}: duplicate timestamp {index[pos[i]]} for series {names[codes[i]]!r}"
        )
    del key, order, sk, dup
    v = np.concatenate(vals)
    del vals
    values = np.full((T, N), np.nan, dtype=np.float32)
    values[pos, codes] = v[:, 0]
    K, P = len(known), len(past)
    kn = np.full((T, N, K), np.nan, dtype=np.float32)
    pa = np.full((T, N, P), np.nan, dtype=np.float32)
    if K:
        kn[pos, codes] = v[:, 1 : 1 + K]
    if P:
        pa[pos, codes] = v[:, 1 + K :]
    del v
    static_rows: list[list[str]] = []
    if static:
        s = pd.concat(stat, ignore_index=True)
        s.insert(0, "__code", codes)
        for c in static:
            n_distinct = s.groupby("__code")[c].nunique()
            if (n_distinct > 1).any():
                n = int(n_distinct.index[np.argmax(n_distinct.to_numpy() > 1)])
                row = int(np.argmax((codes == n) & (s[c] != s[c][codes == n].iloc[0]).to_numpy())) + 2
                raise DataError(f"{source}: row {row}, column {c!r}: static value changes within series {names[n]!r}")
        first = s.drop_duplicates("__code").set_index("__code").sort_index()
        static_rows = first[static].astype(str).to_numpy().tolist()
    return UserTable(index, values, names, kn, pa, static_rows)


def interpolate_inside(values: np.ndarray) -> np.ndarray:
    """Linear interpolation of NaN gaps between observed values, column by column of ``(T, N)``.

    Values before a series' first or after its last observation stay NaN.
    """
    out = values.copy()
    t = np.arange(values.shape[0])
    for n in range(values.shape[1]):
        col = values[:, n]
        ok = ~np.isnan(col)
        if ok.sum() < 2:
            continue
        lo, hi = np.argmax(ok), len(ok) - 1 - np.argmax(ok[::-1])
        inside = slice(lo, hi + 1)
        out[inside, n] = np.interp(t[inside], t[ok], col[ok])
    return out


def fill_covariates(cov: np.ndarray) -> np.ndarray:
    """Forward then backward fill of covariates ``(T, N, K)`` along time (inputs cannot be masked)."""
    if cov.size == 0:
        return cov
    T, N, K = cov.shape
    df = pd.DataFrame(cov.reshape(T, N * K))
    return df.ffill().bfill().to_numpy(np.float32).reshape(T, N, K)
