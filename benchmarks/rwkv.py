"""RWKV-4 generation memory and speed: the recurrent mode against a cached Transformer.

    PYTHONPATH=. python benchmarks/rwkv.py [--quick] [--tokens 1024 2048 4096 8192 16384] [--threads 1]

Two character LMs of the same width and depth (``LongformerCharLM``, untrained: speed and memory
do not depend on the weights): RWKV-4 (``model.attention.type=rwkv``, ``model.ffn=rwkv``, Peng
et al. 2023), decoding through its constant per-layer state, and a causal Transformer
(``mhsa``, rotary positions, MLP) decoding through its key/value cache. Each generates
``tokens`` characters after a one-character prompt (sampled, ``generate_tokens`` with the
shared :class:`~tsformer.nn.decoding.DecodeCache`), every setting in a fresh child process:
``added_mb`` is the growth of that process's resident memory during generation (its peak
resident set, reset through ``/proc/self/clear_refs`` just before, minus the resident set
then; this sees torch's allocations, which ``tracemalloc`` does not), ``tokens_per_s`` the
whole generation's rate and ``last_tokens_per_s`` that of its last tenth (constant per-token
time shows there). ``--quick``: up to 2,048 characters.

Goal (issue #17): RWKV's memory flat in the number of tokens and its per-token time constant,
while the Transformer's grow. Rows go to ``benchmarks/results/rwkv.json`` and a table to
``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WIDTH = {"d_model": 128, "n_heads": 4, "n_layers": 4, "d_ff": 512, "dropout": 0.0}
MODELS = {
    "rwkv": {"ffn": "rwkv", "attention": {"type": "rwkv", "pattern": "causal", "positions": "none"}},
    "transformer": {"ffn": "mlp", "attention": {"type": "mhsa", "pattern": "causal", "positions": "rotary"}},
}
VOCAB = 64


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _peak_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(model: str, tokens: int, threads: int) -> dict:
    """One setting, measured in this (fresh) process."""
    import torch

    from tsformer.nn.decoding import generate_tokens
    from tsformer.nn.longformer import LongformerCharLM

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    net = LongformerCharLM(VOCAB, window=tokens + 1, max_tokens=tokens + 1, **WIDTH, **MODELS[model]).eval()
    prompt = torch.randint(1, VOCAB, (1, 1), generator=torch.Generator().manual_seed(0))
    generate_tokens(net, prompt, 8, generator=torch.Generator().manual_seed(1))  # warm-up: allocator, kernels
    stamps: list[float] = []  # the end of every call: the prefill, then one per generated token
    net.register_forward_hook(lambda m, args, out: stamps.append(time.perf_counter()))
    try:  # reset the peak resident set to the current one (Linux >= 4.0)
        Path("/proc/self/clear_refs").write_text("5")
        reset = True
    except OSError:
        reset = False
    before = _rss_mb()
    t0 = time.perf_counter()
    generate_tokens(net, prompt, tokens, generator=torch.Generator().manual_seed(2), max_context=tokens + 1)
    whole = time.perf_counter() - t0
    cut = len(stamps) - 1 - tokens // 10  # the call before the last tenth
    last = (stamps[-1] - stamps[cut]) / (len(stamps) - 1 - cut)
    return {"model": model, "tokens": tokens, "added_mb": round(_peak_mb() - before, 1),
            "tokens_per_s": round(tokens / whole, 1), "last_tokens_per_s": round(1 / last, 1),
            "peak_reset": reset, "params": sum(p.numel() for p in net.parameters())}


def run_child(model: str, tokens: int, threads: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", model, str(tokens), "--threads", str(threads)]
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"{model} at {tokens} tokens failed:\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="up to 2,048 tokens")
    ap.add_argument("--tokens", type=int, nargs="+", default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--child", nargs=2, metavar=("MODEL", "TOKENS"), help=argparse.SUPPRESS)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "rwkv.json"))
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child(a.child[0], int(a.child[1]), a.threads)))
        return
    tokens = a.tokens or ([256, 512, 1024, 2048] if a.quick else [1024, 2048, 4096, 8192, 16384])
    rows = []
    for model in MODELS:
        for n in tokens:
            row = run_child(model, n, a.threads)
            row.update({"quick": a.quick, "threads": a.threads, "date": f"{datetime.now():%Y-%m-%d %H:%M}",
                        "machine": platform.node(), "load_avg": round(os.getloadavg()[0], 1)})
            rows.append(row)
            print(row, flush=True)
    out = Path(a.out)
    old = json.loads(out.read_text()) if out.exists() else []
    out.write_text(json.dumps(old + rows, indent=1) + "\n")
    by = {(r["model"], r["tokens"]): r for r in rows}
    lo, hi = tokens[0], tokens[-1]
    lines = [f"### rwkv generation ({'--quick, ' if a.quick else ''}{datetime.now():%Y-%m-%d %H:%M}, "
             f"{platform.node()}, {a.threads} threads, load {os.getloadavg()[0]:.1f})", "",
             f"Untrained char LMs, d_model {WIDTH['d_model']}, {WIDTH['n_layers']} layers, one-character prompt, "
             "sampled; added MB: resident-memory growth during generation; last tok/s: the last tenth.", "",
             "| model | tokens | added MB | tok/s | last tok/s |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['tokens']:,} | {r['added_mb']:.1f} | {r['tokens_per_s']:.0f} | "
                     f"{r['last_tokens_per_s']:.0f} |")
    grow = {m: (by[(m, hi)]["added_mb"] - by[(m, lo)]["added_mb"],
                by[(m, lo)]["last_tokens_per_s"] / max(1e-9, by[(m, hi)]["last_tokens_per_s"])) for m in MODELS}
    lines += ["", f"From {lo:,} to {hi:,} tokens: RWKV memory {grow['rwkv'][0]:+.1f} MB, last-tenth per-token time "
                  f"x{grow['rwkv'][1]:.2f}; Transformer {grow['transformer'][0]:+.1f} MB, x{grow['transformer'][1]:.2f}."]
    print("\n".join(lines))
    with open(ROOT / "benchmarks" / "RESULTS.md", "a") as f:
        f.write("\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
