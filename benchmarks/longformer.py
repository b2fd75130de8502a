"""One Longformer self-attention layer: tsformer vs Hugging Face ``LongformerSelfAttention``.

Hidden 768, 12 heads, window 512 (256 each side), global attention on token 0, batch 1,
fp32 on CPU, at 1024, 4096 and 16384 tokens. For each (impl, length) a fresh process
measures

- ``added_mb``: peak RSS of the process during its first forward+backward call minus its
  RSS just before the call (inputs and weights already allocated);
- ``fwd_ms`` (under ``no_grad``) and ``fwd_bwd_ms``: median of repeated calls after warm-up;
- ``flop_bound_ms``: forward FLOPs (projections: query, key, value, key_global,
  value_global over every token, query_global on the global token; attention: 4 D FLOPs
  per allowed query-key pair and head) at the matmul peak measured here;
  ``flop_bound_fwd_bwd_ms`` is three times that.

    pip install -e ".[bench]"          # transformers (random init, no download)
    python benchmarks/longformer.py [--threads 2] [--lengths 1024 4096 16384] [--kernel sparse]

Writes ``benchmarks/results/longformer.json`` and appends a table to ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
E, H, WINDOW = 768, 12, 512


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak() -> None:
    """Reset VmHWM to the current RSS (Linux >= 4.0), so the peak is the call's own."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def build(impl: str, kernel: str):
    """``(layer, call(x, requires_grad) -> out)`` for one implementation."""
    import torch

    torch.manual_seed(0)
    if impl == "hf":
        from transformers import LongformerConfig
        from transformers.models.longformer.modeling_longformer import LongformerSelfAttention

        cfg = LongformerConfig(hidden_size=E, num_attention_heads=H, attention_window=[WINDOW], num_hidden_layers=1,
                               attention_probs_dropout_prob=0.0)
        layer = LongformerSelfAttention(cfg, layer_id=0)

        def call(x):
            mask = torch.zeros(x.shape[0], x.shape[1])
            mask[:, 0] = 10000.0
            return layer(x, attention_mask=mask, is_index_masked=mask < 0, is_index_global_attn=mask > 0,
                         is_global_attn=True)[0]
    else:
        sys.path.insert(0, str(ROOT))
        from tsformer.nn.attention import LongformerSelfAttention

        layer = LongformerSelfAttention(E, H, window=WINDOW, kernel=kernel)

        def call(x):
            return layer.context(x, None, (0,))

    return layer, call


def child(impl: str, L: int, kernel: str, threads: int, repeats: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    layer, call = build(impl, kernel)
    x = torch.randn(1, L, E)
    xg = x.clone().requires_grad_(True)
    grad = torch.randn(1, L, E)
    # Memory: the first forward+backward of a fresh process.
    before = rss_mb()
    reset_peak()
    call(xg).backward(grad)
    added = peak_mb() - before
    layer.zero_grad(set_to_none=True)
    xg.grad = None

    def timed(fn, n):
        out = []
        for _ in range(n):
            t = time.perf_counter()
            fn()
            out.append((time.perf_counter() - t) * 1000)
        return statistics.median(out)

    def fwd():
        with torch.no_grad():
            call(x)

    def fwd_bwd():
        call(xg).backward(grad)
        layer.zero_grad(set_to_none=True)
        xg.grad = None

    fwd()  # warm-up (compiles, caches)
    fwd_ms = timed(fwd, repeats)
    fwd_bwd_ms = timed(fwd_bwd, repeats)
    return {"impl": impl, "seq_len": L, "fwd_ms": round(fwd_ms, 1), "fwd_bwd_ms": round(fwd_bwd_ms, 1),
            "added_mb": round(added, 1), "rss_before_mb": round(before, 1)}


def matmul_peak_gflops(threads: int) -> float:
    """Best fp32 GEMM rate over a few projection-like shapes (GFLOP/s)."""
    import torch

    torch.set_num_threads(threads)
    best = 0.0
    for m, k, n in ((4096, 768, 768), (4096, 768, 3840), (2048, 2048, 2048)):
        a, b = torch.randn(m, k), torch.randn(k, n)
        torch.mm(a, b)
        reps = 5
        t = time.perf_counter()
        for _ in range(reps):
            torch.mm(a, b)
        dt = (time.perf_counter() - t) / reps
        best = max(best, 2 * m * k * n / dt / 1e9)
    return best


def forward_flops(L: int) -> float:
    sys.path.insert(0, str(ROOT))
    from tsformer.attention import SlidingWindow, nnz

    D = E // H
    proj = 2 * L * E * E * 5 + 2 * 1 * E * E
    pairs = nnz(SlidingWindow(WINDOW).with_globals((0,)), L)
    return proj + 4 * D * H * pairs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096, 16384])
    ap.add_argument("--impls", nargs="+", default=["tsformer", "hf"])
    ap.add_argument("--kernel", default="sparse", help="tsformer attention kernel (sparse, auto, ...)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--child", nargs=2, metavar=("IMPL", "LEN"), help=argparse.SUPPRESS)
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/longformer.json"))
    ap.add_argument("--no-append", action="store_true")
    args = ap.parse_args()

    if args.child:
        impl, L = args.child[0], int(args.child[1])
        print(json.dumps(child(impl, L, args.kernel, args.threads, args.repeats if L < 16384 else 1)))
        return

    stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {args.threads} threads"
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    def save(rows: list[dict]) -> None:  # after every row: an interrupted run keeps what it measured
        tmp = out.with_name(f".{out.name}.tmp")
        tmp.write_text(json.dumps({"date": stamp, "machine": machine, "matmul_peak_gflops": round(peak, 1),
                                   "load_avg_1min": round(os.getloadavg()[0], 1), "hidden": E, "heads": H,
                                   "window": WINDOW, "global_tokens": 1, "results": rows}, indent=2))
        os.replace(tmp, out)

    peak = matmul_peak_gflops(args.threads)
    print(f"matmul peak: {peak:.1f} GFLOP/s ({args.threads} threads)", flush=True)
    rows = []
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    for L in args.lengths:
        bound = forward_flops(L) / (peak * 1e9) * 1000
        for impl in args.impls:
            cmd = [sys.executable, __file__, "--child", impl, str(L), "--kernel", args.kernel,
                   "--threads", str(args.threads), "--repeats", str(args.repeats)]
            p = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if p.returncode != 0:
                print(f"{impl} L={L} failed:\n{p.stderr[-2000:]}", file=sys.stderr)
                continue
            row = json.loads(p.stdout.strip().splitlines()[-1])
            if impl == "tsformer":
                row["kernel"] = args.kernel
            row["flop_bound_ms"] = round(bound, 1)
            row["flop_bound_fwd_bwd_ms"] = round(3 * bound, 1)
            row["load_avg_1min"] = round(os.getloadavg()[0], 1)
            rows.append(row)
            save(rows)
            print(json.dumps(row), flush=True)

    lines = [f"\n## Longformer self-attention layer vs Hugging Face ({stamp}; {machine})\n",
             f"`python benchmarks/longformer.py --threads {args.threads} --kernel {args.kernel}`: hidden 768, "
             f"12 heads, w=512, 1 global token, batch 1, fp32, CPU; matmul peak {peak:.1f} GFLOP/s.\n",
             "| impl | tokens | fwd ms | fwd+bwd ms | added MB (fwd+bwd) | FLOP bound fwd ms | fwd / bound | load avg |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['impl']} | {r['seq_len']} | {r['fwd_ms']} | {r['fwd_bwd_ms']} | {r['added_mb']} | "
                     f"{r['flop_bound_ms']} | {r['fwd_ms'] / r['flop_bound_ms']:.2f} | {r['load_avg_1min']} |")
    by = {(r["impl"], r["seq_len"]): r for r in rows}
    for L in args.lengths:
        a, b = by.get(("tsformer", L)), by.get(("hf", L))
        if a and b:
            lines.append(f"\nAt {L} tokens: forward {b['fwd_ms'] / a['fwd_ms']:.2f}x, forward+backward "
                         f"{b['fwd_bwd_ms'] / a['fwd_bwd_ms']:.2f}x faster than HF; added memory "
                         f"{a['added_mb'] / max(b['added_mb'], 1e-9):.2f} of HF's.")
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.no_append:
        with open(ROOT / "benchmarks/RESULTS.md", "a") as f:
            f.write(text)


if __name__ == "__main__":
    main()
