"""Reversible residual layers (Gomez et al. 2017; Kitaev et al. 2020, Reformer, Sec. 4):
training memory against depth, reversible vs the standard residual stack.

A character LM (:class:`~tsformer.nn.longformer.LongformerCharLM`, LSH attention, causal)
at depths 1, 4 and 12, one forward+backward of a batch, in three forms:

- ``standard``: ``model.reversible=false``, the usual pre-norm residual stack;
- ``reversible_stored``: the reversible network run by ordinary autograd (every activation
  kept): the same function as the next row, the "equal outputs" reference;
- ``reversible``: ``model.reversible=true``, activations recomputed in the backward.

For each, in a fresh process: ``saved_mb``, the bytes autograd keeps for the backward
(``torch.autograd.graph.saved_tensors_hooks`` over the forward; parameters excluded: exact
and independent of the allocator), ``peak_added_mb``, the peak RSS during the
forward+backward minus the RSS before it (or ``torch.cuda.max_memory_allocated`` growth on
a GPU), and the step time. The reversible rows also report the largest difference of
output and gradients from ``reversible_stored`` (same seed, dropout on).

    python benchmarks/reversible.py --quick        # length 128, d_model 32 (about a minute on idle cores)
    python benchmarks/reversible.py                # length 2048, d_model 256, batch 4

Writes ``benchmarks/results/reversible.json`` and appends a table to ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._report import publish  # noqa: E402

QUICK = dict(length=128, d_model=32, heads=4, batch=2, buckets=8, chunk=16)
FULL = dict(length=2048, d_model=256, heads=4, batch=4, buckets=32, chunk=64)
FORMS = ("standard", "reversible_stored", "reversible")


def _status(key: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) / 1024
    return float("nan")


def build(cfg: dict, depth: int, reversible: bool):
    from tsformer.nn.longformer import LongformerCharLM

    return LongformerCharLM(256, d_model=cfg["d_model"], n_heads=cfg["heads"], n_layers=depth,
                            d_ff=4 * cfg["d_model"], dropout=0.1, max_tokens=cfg["length"], positions="rotary",
                            reversible=reversible, attention={"type": "lsh", "pattern": "causal",
                                                              "buckets": cfg["buckets"], "lsh_chunk": cfg["chunk"]})


def step(model, tokens, form: str):
    """Loss of one forward (activations of the chosen form) and the hook-counted saved bytes."""
    import torch

    from tsformer.nn.blocks import ReversibleCall, merge_pair

    params = {p.data_ptr() for p in model.parameters()}
    saved = 0

    def pack(t):
        nonlocal saved
        if t.data_ptr() not in params:
            saved += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        if form == "reversible_stored":
            enc = model.encoder
            pair = enc.drop(enc.embed(tokens))
            pair = torch.cat([pair, pair], -1)
            for layer in enc.layers:
                pair = ReversibleCall(layer)(pair)
            logits = model.lm_head(enc.norm(merge_pair(pair)))
        else:
            logits = model(tokens)
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), tokens[:, 1:].flatten())
    return logits, loss, saved


def child(cfg: dict, depth: int, form: str, device: str, threads: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = build(cfg, depth, form != "standard").to(device)
    tokens = torch.randint(1, 256, (cfg["batch"], cfg["length"]), generator=torch.Generator().manual_seed(1)).to(device)
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        with open("/proc/self/clear_refs", "w") as f:  # VmHWM back to the current RSS
            f.write("5")
        base = _status("VmRSS:")
    torch.manual_seed(3)
    t0 = time.perf_counter()
    logits, loss, saved = step(model, tokens, form)
    loss.backward()
    if cuda:
        torch.cuda.synchronize()
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        peak = _status("VmHWM:") - base
    row = {"depth": depth, "form": form, "saved_mb": round(saved / 2**20, 2), "peak_added_mb": round(peak, 1),
           "step_ms": round(1000 * (time.perf_counter() - t0), 1)}
    if form == "reversible":  # against the same network with every activation stored
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        model.zero_grad()
        torch.manual_seed(3)
        ref_logits, ref_loss, _ = step(model, tokens, "reversible_stored")
        ref_loss.backward()
        row["max_output_diff"] = float((logits - ref_logits).abs().max())
        row["max_grad_diff"] = max(float((grads[n] - p.grad).abs().max()) for n, p in model.named_parameters()
                                   if p.grad is not None)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="length 128, d_model 32 (about a minute on idle cores)")
    ap.add_argument("--depths", type=int, nargs="+", default=[1, 4, 12])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--no-record", action="store_true", help="print only")
    args = ap.parse_args()
    cfg = dict(QUICK if args.quick else FULL)
    if args.child:
        depth, form = args.child.split(":")
        print(json.dumps(child(cfg, int(depth), form, args.device, args.threads)))
        return
    rows = []
    t0 = time.perf_counter()
    for depth in args.depths:
        for form in FORMS:
            cmd = [sys.executable, __file__, "--child", f"{depth}:{form}", "--threads", str(args.threads),
                   "--device", args.device] + (["--quick"] if args.quick else [])
            out = subprocess.run(cmd, capture_output=True, text=True, check=True)
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(rows[-1], flush=True)
    if args.no_record:
        return
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M")
    machine = f"{platform.node() or platform.machine()}, {args.device}, {args.threads} threads, load {os.getloadavg()[0]:.1f}"
    (ROOT / "benchmarks/results/reversible.json").write_text(json.dumps(
        {"date": stamp, "machine": machine, "quick": args.quick, "config": cfg, "rows": rows}, indent=1) + "\n")
    get = {(r["depth"], r["form"]): r for r in rows}
    lines = [f"\n### Reversible layers: training memory against depth ({'--quick, ' if args.quick else ''}{stamp}, "
             f"{machine})\n",
             f"Char LM, LSH attention (causal, {cfg['buckets']} buckets, chunk {cfg['chunk']}), length {cfg['length']}, "
             f"batch {cfg['batch']}, d_model {cfg['d_model']}, d_ff {4 * cfg['d_model']}, dropout 0.1; one "
             f"forward+backward. Saved = bytes autograd keeps for the backward; peak = added peak memory "
             f"({'CUDA allocator' if args.device.startswith('cuda') else 'RSS'}); {time.perf_counter() - t0:.0f} s.\n",
             "| depth | standard saved MB | reversible (stored) saved MB | reversible saved MB | standard peak MB "
             "| reversible peak MB | reversible step ms / standard | max output / grad diff |",
             "|---|---|---|---|---|---|---|---|"]
    for d in args.depths:
        s, st, r = get[d, "standard"], get[d, "reversible_stored"], get[d, "reversible"]
        lines.append(f"| {d} | {s['saved_mb']} | {st['saved_mb']} | {r['saved_mb']} | {s['peak_added_mb']} | "
                     f"{r['peak_added_mb']} | {r['step_ms'] / s['step_ms']:.2f} | "
                     f"{r['max_output_diff']:.1e} / {r['max_grad_diff']:.1e} |")
    publish("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
