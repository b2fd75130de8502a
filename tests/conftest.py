"""Shared fixtures: small series files written in the real formats."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch


def _has_cuda() -> bool:
    return torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    if _has_cuda():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip)


def make_long_csv(path, n_series=2, days=40, noise=0.1, seed=0, start="2014-07-01", cols=("series", "time", "value")):
    """Hourly daily-seasonal series in long format; returns the DataFrame written."""
    rng = np.random.default_rng(seed)
    idx = pd.date_range(start, periods=days * 24, freq="h")
    rows = []
    for s in range(n_series):
        level = 5.0 * (s + 1)
        y = level * (1 + 0.5 * np.sin(2 * np.pi * idx.hour / 24)) + noise * level * rng.standard_normal(len(idx))
        rows.append(pd.DataFrame({cols[0]: f"S{s}", cols[1]: idx.strftime("%Y-%m-%d %H:%M:%S"), cols[2]: y}))
    df = pd.concat(rows, ignore_index=True)
    df.to_csv(path, index=False)
    return df


@pytest.fixture
def long_csv(tmp_path):
    path = tmp_path / "series.csv"
    make_long_csv(path)
    return path
