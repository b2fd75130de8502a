"""Char-LM generation speed: the decoding cache against re-running the whole prefix.

    PYTHONPATH=. python benchmarks/charlm_generate.py [--steps 2000] [--prompt 100] [--threads 2]

The default char LM (tsformer/conf/model/longformer_lm.yaml, untrained: speed does not depend on the
weights, and greedy decoding makes both paths produce the same text, which is checked)
continues a prompt by ``--steps`` characters, once with the cache (the prompt encoded once,
one position per layer and character) and once recomputing the whole sequence for every new
character (what ``CharLMModule.generate`` did before the cache). Prints characters per
second for both and appends them to benchmarks/RESULTS.md and
benchmarks/results/charlm_generate.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from datetime import datetime
from pathlib import Path

import torch
from hydra.utils import instantiate

from tsformer.nn.decoding import generate_tokens
from tsformer.train import compose_config

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--prompt", type=int, default=100)
    ap.add_argument("--vocab", type=int, default=65)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "charlm_generate.json"))
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    cfg = compose_config(["task=charlm"]).model
    torch.manual_seed(0)
    net = instantiate(cfg, _convert_="all", vocab_size=a.vocab).eval()
    prompt = torch.randint(1, a.vocab, (1, a.prompt), generator=torch.Generator().manual_seed(0))
    max_ctx = net.encoder.max_tokens
    times, outs = {}, {}
    for name, cached in (("cache", True), ("recompute", False)):
        t0 = time.perf_counter()
        outs[name] = generate_tokens(net, prompt, a.steps, temperature=0.0, cache=cached, max_context=max_ctx)
        times[name] = time.perf_counter() - t0
        print(f"{name}: {a.steps / times[name]:.1f} chars/s ({times[name]:.1f} s)", flush=True)
    same = bool(torch.equal(outs["cache"], outs["recompute"]))
    row = {
        "date": f"{datetime.now():%Y-%m-%d %H:%M}", "machine": platform.node(), "threads": a.threads,
        "load_avg": os.getloadavg()[0], "prompt": a.prompt, "steps": a.steps, "model": "longformer_lm",
        "cache_chars_per_s": a.steps / times["cache"], "recompute_chars_per_s": a.steps / times["recompute"],
        "speedup": times["recompute"] / times["cache"], "same_text": same,
    }
    out = Path(a.out)
    rows = json.loads(out.read_text()) if out.exists() else []
    out.write_text(json.dumps(rows + [row], indent=1) + "\n")
    line = (f"- {row['date']} {row['machine']} ({a.threads} CPU threads, load {row['load_avg']:.1f}): "
            f"charlm_generate, default char LM (untrained), prompt {a.prompt}, {a.steps}-character greedy "
            f"continuation: cache {row['cache_chars_per_s']:.1f} chars/s, full recompute "
            f"{row['recompute_chars_per_s']:.1f} chars/s ({row['speedup']:.1f}x); same text: {same}")
    print(line)
    with open(ROOT / "benchmarks" / "RESULTS.md", "a") as f:
        f.write(line + "\n")


if __name__ == "__main__":
    main()
