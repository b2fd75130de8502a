"""The Reformer duplication task (Kitaev et al. 2020, "Reformer: The Efficient Transformer",
ICLR, Sec. 5 "Synthetic task"): copy accuracy of a one-layer LSH-attention model trained with
1 and 2 hash rounds and evaluated with 1, 2, 4 and 8.

Each example is ``0 w 0 w``: ``w`` random symbols from ``1..N``, a separator, then ``w``
again; a causal language model must predict the second copy, which it can only do by
attending from each position of the second half to the matching position of the first
(one layer: no induction circuit, the attention itself has to find it). The paper uses
``N = 127``, length 1024 (``w`` of 511 symbols), one layer with ``d_model = d_ff = 256``
and 4 heads, and trains 150K steps; LSH models trained and evaluated with more rounds copy
almost perfectly. Here: the same network (:class:`~tsformer.nn.longformer.LongformerCharLM`
with ``model.attention.type=lsh``, learned positions), the separator as its own symbol
``N + 1`` (id 0 is padding in the toolkit), loss and accuracy on the second copy only
(teacher forcing, as the paper's accuracy), a fixed seeded evaluation set.

Settings (CPU):

- ``--quick``: ``w`` of 31 symbols (length 64), ``N = 31``, ``d_model = 64``, 4 heads, 8
  buckets, chunk 8, 160 steps of batch 32 per training setting: about 1-2 minutes in all
  on 2 idle cores (several times that on a loaded machine).
- default (full): ``w`` of 255 symbols (length 512, half the paper's), ``N = 127``,
  ``d_model = d_ff = 256``, 4 heads, 32 buckets, chunk 32, 3000 steps of batch 16.

    python benchmarks/duplication.py --quick
    python benchmarks/duplication.py [--steps 3000] [--length 512] [--threads 2]

Writes ``benchmarks/results/duplication.json`` (rows ``rounds_train``, ``rounds_eval``,
``seq_len``, ``accuracy``) and appends a table to ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._report import publish  # noqa: E402
from tsformer.nn.longformer import LongformerCharLM  # noqa: E402

QUICK = dict(length=64, symbols=31, d_model=64, heads=4, buckets=8, chunk=8, steps=160, batch=32, lr=3e-3)
FULL = dict(length=512, symbols=127, d_model=256, heads=4, buckets=32, chunk=32, steps=3000, batch=16, lr=1e-3)


def make_batch(n: int, batch: int, symbols: int, generator: torch.Generator) -> torch.Tensor:
    """``(batch, 2 n + 2)`` sequences ``sep w sep w`` (separator ``symbols + 1``)."""
    w = torch.randint(1, symbols + 1, (batch, n), generator=generator)
    sep = torch.full((batch, 1), symbols + 1)
    return torch.cat([sep, w, sep, w], dim=1)


def copy_logits(model: LongformerCharLM, seq: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits predicting the second copy (positions ``n + 1 .. 2 n``) and its symbols."""
    logits = model(seq)
    return logits[:, n + 1 : 2 * n + 1], seq[:, n + 2 :]


def set_rounds(model: LongformerCharLM, rounds: int, eval_rounds: int | None = None) -> None:
    for layer in model.encoder.layers:
        layer.attn.rounds = rounds
        layer.attn.eval_rounds = rounds if eval_rounds is None else eval_rounds


def train_one(cfg: dict, rounds: int, seed: int, device: str, eval_rounds: list[int], eval_batches: int) -> list[dict]:
    torch.manual_seed(seed)
    L, n = cfg["length"], cfg["length"] // 2 - 1
    model = LongformerCharLM(cfg["symbols"] + 2, d_model=cfg["d_model"], n_heads=cfg["heads"], n_layers=1,
                             d_ff=cfg["d_model"], dropout=0.0, max_tokens=L, positions="learned",
                             attention={"type": "lsh", "pattern": "causal", "buckets": cfg["buckets"],
                                        "lsh_chunk": cfg["chunk"], "rounds": rounds}).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg["lr"], total_steps=cfg["steps"], pct_start=0.1)
    g = torch.Generator().manual_seed(seed + 1)
    t0 = time.perf_counter()
    for step in range(cfg["steps"]):
        logits, target = copy_logits(model, make_batch(n, cfg["batch"], cfg["symbols"], g).to(device), n)
        loss = F.cross_entropy(logits.flatten(0, 1), target.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % max(1, cfg["steps"] // 5) == 0 or step == cfg["steps"] - 1:
            print(f"  rounds {rounds} step {step:5d} loss {loss.item():.3f} ({time.perf_counter() - t0:.0f} s)", flush=True)
    train_s = time.perf_counter() - t0
    model.eval()
    rows = []
    for r in eval_rounds:
        set_rounds(model, rounds, r)
        ge = torch.Generator().manual_seed(10_000 + seed)  # the same evaluation set for every setting
        right = total = 0
        with torch.no_grad():
            for _ in range(eval_batches):
                logits, target = copy_logits(model, make_batch(n, cfg["batch"], cfg["symbols"], ge).to(device), n)
                right += int((logits.argmax(-1) == target).sum())
                total += target.numel()
        rows.append({"rounds_train": rounds, "rounds_eval": r, "seq_len": L, "accuracy": round(right / total, 4),
                     "steps": cfg["steps"], "train_seconds": round(train_s, 1), "seed": seed})
        print(f"  trained with {rounds}, evaluated with {r} rounds: accuracy {right / total:.4f}", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="length 64, small model, 160 steps per setting (1-2 minutes)")
    ap.add_argument("--steps", type=int, help="training steps per setting")
    ap.add_argument("--length", type=int, help="sequence length 2 |w| + 2 (even)")
    ap.add_argument("--train-rounds", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--eval-rounds", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--eval-batches", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--no-record", action="store_true", help="print only; write no JSON or RESULTS.md")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = dict(QUICK if args.quick else FULL)
    if args.steps:
        cfg["steps"] = args.steps
    if args.length:
        if args.length % 2 or args.length < 4:
            ap.error(f"--length must be even and >= 4 (2 |w| + 2), got {args.length}")
        cfg["length"] = args.length
    print(f"duplication task: {cfg}", flush=True)
    t0 = time.perf_counter()
    rows = []
    for r in args.train_rounds:
        rows += train_one(cfg, r, args.seed, args.device, args.eval_rounds, args.eval_batches)
    total = time.perf_counter() - t0
    if args.no_record:
        return
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M")
    load = os.getloadavg()[0]
    machine = f"{platform.node() or platform.machine()}, {args.device}, {args.threads} threads, load {load:.1f}"
    out = ROOT / "benchmarks/results/duplication.json"
    out.write_text(json.dumps({"date": stamp, "machine": machine, "quick": args.quick, "config": cfg,
                               "seconds": round(total, 1), "rows": rows}, indent=1) + "\n")
    evals = args.eval_rounds
    lines = [f"\n### Reformer duplication task ({'--quick, ' if args.quick else ''}{stamp}, {machine})\n",
             f"One-layer LSH model, length {cfg['length']}, N = {cfg['symbols']}, d_model {cfg['d_model']}, "
             f"{cfg['heads']} heads, {cfg['buckets']} buckets, chunk {cfg['chunk']}, {cfg['steps']} steps of batch "
             f"{cfg['batch']}; copy accuracy on the second half ({len(rows) // len(evals)} trainings, {total:.0f} s).\n",
             "| trained with | " + " | ".join(f"eval {r} rounds" for r in evals) + " |",
             "|---|" + "---|" * len(evals)]
    for r in args.train_rounds:
        accs = [row["accuracy"] for row in rows if row["rounds_train"] == r]
        lines.append(f"| {r} rounds | " + " | ".join(f"{a:.3f}" for a in accs) + " |")
    four = [row["accuracy"] for row in rows if row["rounds_eval"] == 4]
    if four:
        best = max(four)
        lines.append(f"\nBest accuracy evaluated with 4 rounds: {best:.3f} (goal >= 0.95: {'met' if best >= 0.95 else 'not met'}).")
    publish("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
