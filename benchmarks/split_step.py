"""Split attention at forecast-step shapes: suffix keys read in place against gathered.

    PYTHONPATH=. python benchmarks/split_step.py [--batch 256] [--paths 100] [--threads 1]

One LogSparse decoding of a horizon of 24 steps after a context of 168, as the default
forecaster runs it (4 heads of 16, batch 256 series x 100 sample paths): at every step each
path's single query attends to the shared context and its own suffix through
:func:`tsformer.attention.split.split_attention`. Times the two ways the kernel has of
reading the few suffix keys a LogSparse query sees: in place, one key column at a time (the
CPU path), and gathered with ``index_select`` into a batched matmul (the path on other
devices, forced here with ``_LOOP_KEYS = -1``). Both give the same output (checked).
Best of ``--repeats``; the section goes to ``benchmarks/RESULTS.md`` as
"split attention: suffix keys in place".
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from datetime import datetime
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import tsformer.attention.split as split  # noqa: E402
from benchmarks._report import publish  # noqa: E402
from tsformer.attention.patterns import LogSparse  # noqa: E402


def horizon_seconds(args, loop_keys: int) -> tuple[float, torch.Tensor]:
    """Seconds for one pass over the horizon's steps (best of repeats) and the last output."""
    g = torch.Generator().manual_seed(0)
    B, R, H, D, P, N = args.batch, args.paths, 4, 16, args.context, args.horizon
    pk, pv = torch.randn(B, H, P, D, generator=g), torch.randn(B, H, P, D, generator=g)
    sk, sv = torch.randn(B, N, R, H, D, generator=g), torch.randn(B, N, R, H, D, generator=g)
    qs = [torch.randn(B, R, H, 1, D, generator=g) for _ in range(N)]
    split._LOOP_KEYS, saved = loop_keys, split._LOOP_KEYS
    try:
        best, out = float("inf"), None
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            for n in range(1, N + 1):
                out = split.split_attention(qs[n - 1], pk, pv, sk, sv, LogSparse(), suffix_len=n)
            best = min(best, time.perf_counter() - t0)
    finally:
        split._LOOP_KEYS = saved
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--paths", type=int, default=100)
    ap.add_argument("--context", type=int, default=168)
    ap.add_argument("--horizon", type=int, default=24)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-append", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    with torch.inference_mode():
        t_loop, o_loop = horizon_seconds(a, split._LOOP_KEYS)
        t_gather, o_gather = horizon_seconds(a, -1)
    torch.testing.assert_close(o_loop, o_gather)
    text = (f"\n### split attention: suffix keys in place ({datetime.now():%Y-%m-%d %H:%M}, {platform.node()}, "
            f"{a.threads} thread(s), load {os.getloadavg()[0]:.1f})\n\n"
            f"`PYTHONPATH=. python benchmarks/split_step.py`: {a.horizon} LogSparse steps after a context of "
            f"{a.context}, {a.batch} series x {a.paths} paths, 4 heads of 16, best of {a.repeats}; same output.\n\n"
            "| suffix keys | s per horizon | per step ms |\n|---|---|---|\n"
            f"| gathered (index_select + batched matmul) | {t_gather:.3f} | {1e3 * t_gather / a.horizon:.1f} |\n"
            f"| read in place (CPU path) | {t_loop:.3f} | {1e3 * t_loop / a.horizon:.1f} |\n\n"
            f"In place is {t_gather / t_loop:.2f}x faster (one attention layer; the forecaster has 3).\n")
    publish(text, append=not a.no_append)


if __name__ == "__main__":
    main()
