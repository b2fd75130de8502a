"""AN4 test WER and training throughput of Conformer vs Conformer-LSRA at the same budget.

    python benchmarks/asr_an4.py [--steps 2000] [--seeds 0 1] [--root ../shared/data/an4_cepstra/an4]
    python benchmarks/asr_an4.py --quick        # 50 steps, one seed: a smoke run

For each model: ``train(cfg)`` with ``task=an4`` and the same step budget (test WER/CER
with the task's decoder), plus a separate throughput measurement of training steps per
second (forward, CTC loss, backward, AdamW) on real AN4 batches, for every seed. Prints a
table, appends it with the machine and date to ``benchmarks/RESULTS.md`` and writes
``benchmarks/results/asr_an4.json`` (``asr_an4_quick.json`` with ``--quick``): one object
per run with ``model``, ``seed``, ``params``, ``steps``, ``train_seconds``, ``test_wer``,
``test_cer``, ``dev_wer``, ``decoding`` and ``train_steps_per_second``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
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
    ap.add_argument("--steps", type=int, default=None, help="training steps per run (default: the task's; quick 50)")
    ap.add_argument("--seeds", type=int, nargs="+", default=None, help="seeds per model (default 0 1; quick 0)")
    ap.add_argument("--quick", action="store_true", help="a smoke run: 50 steps, one seed")
    ap.add_argument("--root", default=None)
    ap.add_argument("--models", nargs="+", default=["conformer", "conformer_lsra"])
    ap.add_argument("--out", default=str(REPO / "outputs" / "bench_an4"))
    ap.add_argument("overrides", nargs="*", help="extra config overrides for both models, e.g. model.n_layers=2")
    args = ap.parse_args()
    seeds = args.seeds or ([0] if args.quick else [0, 1])
    rows, records = [], []
    for model in args.models:
        for seed in seeds:
            overrides = ["task=an4", f"model={model}", f"seed={seed}", f"run_dir={args.out}/{model}-seed{seed}",
                         "trainer.enable_progress_bar=false", "print_metrics=false"]
            steps = args.steps or (50 if args.quick else None)
            if steps:
                overrides += [f"trainer.max_steps={steps}", f"trainer.val_check_interval={max(steps // 4, 1)}"]
            overrides += args.overrides
            if args.root:
                overrides.append(f"data.root={args.root}")
            cfg = compose_config(overrides)
            sps = steps_per_second(cfg)
            m = train(cfg)
            n_params = sum(p.numel() for p in instantiate(
                cfg.model, _convert_="all", input_dim=13, vocab_size=30).parameters())
            dec = cfg.module.decoding
            decoding = f"{dec.method}" + (f" {dec.beam_width}" if dec.method == "beam" else "")
            records.append({"model": model, "seed": seed, "params": n_params, "steps": int(m["train/steps"]),
                            "train_seconds": m["train/seconds"], "test_wer": m["test/wer"], "test_cer": m["test/cer"],
                            "dev_wer": m.get("dev/wer"), "decoding": decoding, "train_steps_per_second": sps})
            rows.append((f"{model} (seed {seed})", n_params, m["test/wer"], m["test/cer"],
                         m.get("dev/wer", float("nan")), sps, m["train/steps"], m["train/seconds"]))
            print(records[-1], flush=True)

    threads = torch.get_num_threads()
    steps_txt = rows[0][6] if rows else 0
    header = (f"\n### AN4 (Sphinx cepstra), conformer vs conformer_lsra, {steps_txt} steps each"
              f"{' (--quick)' if args.quick else ''}\n\n"
              f"{dt.datetime.now():%Y-%m-%d %H:%M}, {platform.processor() or platform.machine()}, "
              f"{os.cpu_count()} CPUs visible, torch threads {threads} (CPU shared with other jobs: "
              f"timings are indicative), `python benchmarks/asr_an4.py {' '.join(sys.argv[1:])}`. "
              f"Test decoding: {records[0]['decoding'] if records else '-'}; steps/s: forward + CTC + backward + "
              "AdamW on AN4 batches of 16, measured apart from the training run.\n\n"
              "| model | params | test WER | test CER | dev WER | train steps/s | steps | train s (incl. validation) |\n"
              "|---|---|---|---|---|---|---|---|\n")
    table = "".join(f"| {r[0]} | {r[1]:,} | {100 * r[2]:.2f}% | {100 * r[3]:.2f}% | {100 * r[4]:.2f}% | {r[5]:.2f} | "
                    f"{r[6]} | {r[7]:.0f} |\n" for r in rows)
    print(header + table)
    (REPO / "benchmarks" / "results").mkdir(exist_ok=True)
    name = "asr_an4_quick.json" if args.quick else "asr_an4.json"
    (REPO / "benchmarks" / "results" / name).write_text(json.dumps(records, indent=1) + "\n")
    with open(REPO / "benchmarks" / "RESULTS.md", "a") as f:
        f.write(header + table)


if __name__ == "__main__":
    main()
