"""Sphinx cepstra files (``.mfc``): a big-endian int32 count ``N`` followed by ``N``
big-endian float32, ``dim`` coefficients per frame (13 for the Sphinx MFCCs of AN4)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tsformer.data.errors import DataError


def read_sphinx_cepstra(path: str | Path, dim: int = 13) -> np.ndarray:
    """``(T, dim)`` float32 frames of a Sphinx feature file; DataError naming it if malformed."""
    raw = Path(path).read_bytes() if Path(path).is_file() else None
    if raw is None:
        raise DataError(f"{path}: feature file not found")
    if len(raw) < 4:
        raise DataError(f"{path}: too short for a Sphinx cepstra header")
    n = int(np.frombuffer(raw[:4], dtype=">i4")[0])
    if n <= 0 or len(raw) != 4 + 4 * n or n % dim:
        raise DataError(f"{path}: header says {n} values but file has {(len(raw) - 4) / 4:g}, or not a multiple of {dim}")
    x = np.frombuffer(raw[4:], dtype=">f4").astype(np.float32).reshape(-1, dim)
    if not np.isfinite(x).all():
        raise DataError(f"{path}: non-finite cepstral values")
    return x


def write_sphinx_cepstra(path: str | Path, feats: np.ndarray) -> None:
    """Write ``(T, dim)`` frames in the Sphinx cepstra format (for fixtures and tools)."""
    flat = np.asarray(feats, dtype=">f4").reshape(-1)
    Path(path).write_bytes(np.array([flat.size], dtype=">i4").tobytes() + flat.tobytes())
