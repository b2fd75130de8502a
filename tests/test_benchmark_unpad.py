"""benchmarks/unpad.py: padded and unpadded twins step through the same batches with equal
losses, bucketing on and off (tiny model, made-up documents)."""

from __future__ import annotations

import argparse

import numpy as np

from tests.conftest import load_benchmark
from tsformer.data.text.classification import TokenizedDocs


def test_run_setting_times_both_and_losses_agree():
    bench = load_benchmark("unpad")
    rng = np.random.default_rng(0)
    docs = [list(rng.integers(3, 40, size=int(n))) for n in rng.integers(1, 60, size=24)]
    ds = TokenizedDocs(docs, np.zeros(len(docs)), max_tokens=64)
    args = argparse.Namespace(batch=4, steps=3, warmup=1, max_tokens=64,
                              override=["model.d_model=16", "model.n_heads=2", "model.d_ff=32", "model.window=[4,8]"])
    for pool in (50, 1):
        out = bench.run_setting(ds, 40, args, pool)
        assert out["bucketing"] == (pool > 1) and len(out["padded_losses"]) == len(out["unpad_losses"]) == 4
        assert out["max_loss_diff"] < 1e-4 and out["unpad_tokens_per_s"] > 0 and 0 <= out["padded_share"] < 1
        assert out["real_tokens"] > 0
