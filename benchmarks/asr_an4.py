"""AN4 test WER and training throughput of Conformer vs Conformer-LSRA at the same budget.

    python benchmarks/asr_an4.py [--steps 1000] [--root ../shared/data/an4_cepstra/an4]

For each model: ``train(cfg)`` with ``task=an4`` and the same step budget (test WER/CER
with the task's decoder), plus a separate throughput measurement of training steps per
second (forward, CTC loss, backward, AdamW) on real AN4 batches. Prints a table and
appends it, with the machine and date, to ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from hydra.utils import instantiate  # noqa: E402

from tsformer.train import compose_config, train  # noqa: E402


def steps_per_second(cfg, n_steps: int = 30, warmup: int = 5) -> float:
    """Training steps per second of ``cfg.model`` on AN4 batches (no validation, no logging)."""
    dm = instantiate(cfg.data, _convert_="all")
    dm.setup("fit")
    net = instantiate(cfg.model, _convert_="all", **dm.model_kwargs()).train()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    batches = iter(dm.train_dataloader())
    torch.manual_seed(0)
    t0 = None
    for i in range(warmup + n_steps):
        if i == warmup:
            t0 = time.perf_counter()
        try:
            b = next(batches)
        except StopIteration:
            batches = iter(dm.train_dataloader())
            b = next(batches)
        lp, lens = net(b["feats"], b["feat_lens"])
        loss = F.ctc_loss(lp.transpose(0, 1), b["targets"], lens, b["target_lens"], zero_infinity=True)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return n_steps / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--root", default=None)
    ap.add_argument("--models", nargs="+", default=["conformer", "conformer_lsra"])
    ap.add_argument("--out", default=str(REPO / "outputs" / "bench_an4"))
    ap.add_argument("overrides", nargs="*", help="extra config overrides for both models, e.g. model.n_layers=2")
    args = ap.parse_args()
    rows = []
    for model in args.models:
        overrides = ["task=an4", f"model={model}", f"trainer.max_steps={args.steps}",
                     f"trainer.val_check_interval={max(args.steps // 4, 1)}", f"run_dir={args.out}/{model}",
                     "trainer.enable_progress_bar=false", "print_metrics=false"]
        overrides += args.overrides
        if args.root:
            overrides.append(f"data.root={args.root}")
        cfg = compose_config(overrides)
        sps = steps_per_second(cfg)
        m = train(cfg)
        n_params = sum(p.numel() for p in instantiate(
            cfg.model, _convert_="all", input_dim=13, vocab_size=30).parameters())
        rows.append((model, n_params, m["test/wer"], m["test/cer"], m.get("dev/wer", float("nan")), sps,
                     m["train/steps"], m["train/seconds"]))
        print(rows[-1], flush=True)

    threads = torch.get_num_threads()
    header = (f"\n## AN4 (Sphinx cepstra), conformer vs conformer_lsra, {args.steps} steps each\n\n"
              f"{dt.datetime.now():%Y-%m-%d %H:%M}, {platform.processor() or platform.machine()}, "
              f"{os.cpu_count()} CPUs visible, torch threads {threads} (CPU shared with other jobs: "
              f"timings are indicative), `python benchmarks/asr_an4.py --steps {args.steps} {' '.join(args.overrides)}`. "
              "Test decoding: CTC prefix beam search (width 8); steps/s: forward + CTC + backward + AdamW "
              "on AN4 batches of 16, measured apart from the training run.\n\n"
              "| model | params | test WER | test CER | dev WER | train steps/s | steps | train s (incl. validation) |\n"
              "|---|---|---|---|---|---|---|---|\n")
    table = "".join(f"| {r[0]} | {r[1]:,} | {100 * r[2]:.2f}% | {100 * r[3]:.2f}% | {100 * r[4]:.2f}% | {r[5]:.2f} | "
                    f"{r[6]} | {r[7]:.0f} |\n" for r in rows)
    print(header + table)
    with open(REPO / "benchmarks" / "RESULTS.md", "a") as f:
        f.write(header + table)


if __name__ == "__main__":
    main()
