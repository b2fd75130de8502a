"""Shared fixtures: small series files written in the real formats; benchmark scripts as modules."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

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


def load_benchmark(name: str):
    """``benchmarks/<name>.py`` imported as module ``bench_<name>`` (the folder is not a package)."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", Path(__file__).resolve().parent.parent
                                                  / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


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


def assert_decoding_matches(lm, tokens, prefix: int) -> None:
    """A causal LM's logits equal with and without its decoding cache: the first ``prefix``
    tokens at once, then one token per call."""
    from torch.testing import assert_close

    B, L = tokens.shape
    with torch.no_grad():
        full = lm(tokens)
        cache = lm.new_cache(B, L)
        steps = [lm(tokens[:, :prefix], cache=cache)] + [lm(tokens[:, t : t + 1], cache=cache) for t in range(prefix, L)]
    assert_close(torch.cat(steps, 1), full, rtol=1e-4, atol=1e-5)
