"""AN4 test WER of Conformer vs Conformer-LSRA at the same parameter count and budget (#20).

    python benchmarks/asr_an4.py                 # the recipe: 45 min each, 2 models x 2 seeds (~3.3 h)
    python benchmarks/asr_an4.py --minutes 10    # a shorter time budget per run
    python benchmarks/asr_an4.py --quick         # a smoke run: 40 steps, one seed, 2-layer encoders

Each run is ``train(cfg)`` with ``task=an4`` (the recipe in ``tsformer/conf/task/an4.yaml``:
45 minutes of training, the learning rate annealed over the time budget, SpecAugment, CTC
prefix beam search fused with a character n-gram LM whose weight and insertion bonus are
tuned on dev, never on test). The best checkpoint is then decoded again three ways on test
(greedy, beam without LM, beam with the tuned LM) to show what the LM brings, and the
training throughput (forward, CTC, backward, AdamW on AN4 batches) is measured apart. Prints
a table, appends it with the machine and date to ``benchmarks/RESULTS.md`` and writes
``benchmarks/results/asr_an4.json`` (``asr_an4_quick.json`` with ``--quick``): one object
per run with ``model``, ``seed``, ``params``, ``steps``, ``train_seconds``, ``test_wer``,
``test_cer``, ``dev_wer``, ``decoding``, ``test_wer_greedy``, ``test_wer_beam_no_lm``,
``lm_weight``, ``insertion_bonus``, ``train_loss_first``/``train_loss_last`` and
``train_steps_per_second``.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from hydra.utils import instantiate  # noqa: E402

from tsformer.metrics import word_errors  # noqa: E402
from tsformer.nn.ctc import ctc_decode  # noqa: E402
from tsformer.train import compose_config, train  # noqa: E402
from tsformer.transcribe import load_recognizer  # noqa: E402


def steps_per_second(cfg, dm, n_steps: int = 30, warmup: int = 5) -> tuple[float, int]:
    """Training steps per second of ``cfg.model`` on AN4 batches (no validation, no
    logging) and its parameter count."""
    net = instantiate(cfg.model, _convert_="all", **dm.model_kwargs()).train()
    n_params = sum(p.numel() for p in net.parameters())
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
    return n_steps / (time.perf_counter() - t0), n_params


@torch.no_grad()
def redecode(ckpt: Path, dm, split: str = "test") -> dict[str, float]:
    """WER of the checkpoint's network on ``split`` with greedy decoding and with beam
    search without the language model (the training run reports it with the LM)."""
    net, _, asr = load_recognizer(ckpt)
    dec = asr["decoding"]
    outs = []
    for u, feats in zip(dm.utts[split], dm.cache[split]):
        lp, lens = net(feats[None], torch.tensor([feats.shape[0]]))
        outs.append((lp, lens, dm.tokenizer.normalize(u.text)))
    return {"greedy": _wer(outs, dm.tokenizer, "greedy", 1),
            "beam_no_lm": _wer(outs, dm.tokenizer, "beam", int(dec["beam_width"]))}


def _wer(outs, tokenizer, method: str, beam: int) -> float:
    e = n = 0
    for lp, lens, ref in outs:
        hyp = tokenizer.decode(ctc_decode(lp, lens, method, beam)[0])
        de, dn = word_errors(ref, hyp)
        e, n = e + de, n + dn
    return e / max(n, 1)


def train_losses(run_dir: Path) -> tuple[float | None, float | None]:
    """First and last logged training loss of a run (its CSV log; None if none was logged)."""
    path = run_dir / "logs" / "metrics.csv"
    losses = []
    if path.exists():
        with open(path) as f:
            losses = [float(r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")]
    return (losses[0], losses[-1]) if losses else (None, None)


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=None, help="training time budget per run (default: the task's 45)")
    ap.add_argument("--steps", type=int, default=None, help="a step cap per run (default: none; quick 40)")
    ap.add_argument("--seeds", type=int, nargs="+", default=None, help="seeds per model (default 0 1; quick 0)")
    ap.add_argument("--quick", action="store_true", help="a smoke run: 40 steps, one seed, 2-layer encoders")
    ap.add_argument("--root", default=None, help="the an4 folder (default: the task's data.root)")
    ap.add_argument("--models", nargs="+", default=["conformer", "conformer_lsra"])
    ap.add_argument("--out", default=str(REPO / "outputs" / "bench_an4"))
    ap.add_argument("overrides", nargs="*", help="extra config overrides for both models, e.g. model.n_layers=2")
    args = ap.parse_args()
    seeds = args.seeds or ([0] if args.quick else [0, 1])
    extra = list(args.overrides)
    if args.quick:
        extra = ["model.n_layers=2", "module.warmup_steps=10", "trainer.log_every_n_steps=5", "module.decoding.tune.lm_weight=[0.0,0.5]",
                 "module.decoding.tune.insertion_bonus=[0.0,1.0]", *extra]
    steps = args.steps or (40 if args.quick else None)
    records = []
    for model in args.models:
        for seed in seeds:
            run_dir = Path(args.out) / f"{model}-seed{seed}"
            overrides = ["task=an4", f"model={model}", f"seed={seed}", f"run_dir={run_dir}",
                         "trainer.enable_progress_bar=false", "print_metrics=false", "plots.enabled=false"]
            if args.minutes:
                m_, s_ = divmod(int(round(args.minutes * 60)), 60)
                overrides.append(f"trainer.max_time='00:{m_ // 60:02d}:{m_ % 60:02d}:{s_:02d}'")
            if steps:
                overrides += [f"trainer.max_steps={steps}", f"trainer.val_check_interval={max(steps // 4, 1)}"]
            if args.root:
                overrides.append(f"data.root={args.root}")
            cfg = compose_config(overrides + extra)
            dm = instantiate(cfg.data, _convert_="all")
            dm.setup("fit")
            sps, n_params = steps_per_second(cfg, dm)
            m = train(cfg)
            dec = cfg.module.decoding
            again = redecode(run_dir / "checkpoints" / "best.ckpt", dm)
            w, b = m.get("decoding/lm_weight"), m.get("decoding/insertion_bonus")
            if dec.method == "beam" and w is not None:
                decoding = (f"beam {dec.beam_width} + char {dec.lm_order}-gram LM (weight {w:g}, bonus {b:g}"
                            f"{', tuned on dev' if dec.get('tune') else ''})")
            else:
                decoding = f"{dec.method}" + (f" {dec.beam_width}" if dec.method == "beam" else "")
            first, last = train_losses(run_dir)
            records.append({"model": model, "seed": seed, "params": n_params, "steps": int(m["train/steps"]),
                            "train_seconds": m["train/seconds"], "test_wer": m["test/wer"], "test_cer": m["test/cer"],
                            "dev_wer": m.get("dev/wer"), "decoding": decoding,
                            "test_wer_greedy": again["greedy"], "test_wer_beam_no_lm": again["beam_no_lm"],
                            "lm_weight": w, "insertion_bonus": b, "train_loss_first": first, "train_loss_last": last,
                            "train_steps_per_second": sps, "date": f"{dt.datetime.now():%Y-%m-%d %H:%M}",
                            "torch_threads": torch.get_num_threads(), "machine": platform.node()})
            print(records[-1], flush=True)

    threads = torch.get_num_threads()
    budget = (f"{args.minutes:g} min" if args.minutes else "the task's 45 min") + (f", at most {steps} steps" if steps
                                                                                    else "")
    lines = [f"\n### AN4 (Sphinx cepstra), conformer vs conformer_lsra, {budget} each"
             f"{' (--quick: a smoke run, not a result)' if args.quick else ''}\n",
             f"{dt.datetime.now():%Y-%m-%d %H:%M}, {platform.processor() or platform.machine()}, "
             f"{os.cpu_count()} CPUs visible, torch threads {threads} (CPU shared with other jobs: timings are "
             f"indicative), `python benchmarks/asr_an4.py {' '.join(sys.argv[1:])}`. Test decoding: "
             f"{records[0]['decoding'] if records else '-'}; the greedy and no-LM columns re-decode the same "
             "checkpoint; steps/s: forward + CTC + backward + AdamW on AN4 training batches (data.batch_size), measured apart from "
             "the training run.\n",
             "| model | seed | params | test WER | test CER | dev WER | test WER greedy | test WER beam, no LM "
             "| LM weight / bonus | steps | train s | train loss first -> last | train steps/s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        lm = "-" if r["lm_weight"] is None else f"{r['lm_weight']:g} / {r['insertion_bonus']:g}"
        lines.append(f"| {r['model']} | {r['seed']} | {r['params']:,} | {100 * r['test_wer']:.2f}% | "
                     f"{100 * r['test_cer']:.2f}% | {100 * (r['dev_wer'] or float('nan')):.2f}% | "
                     f"{100 * r['test_wer_greedy']:.2f}% | {100 * r['test_wer_beam_no_lm']:.2f}% | {lm} | "
                     f"{r['steps']} | {r['train_seconds']:.0f} | {_num(r['train_loss_first'])} -> "
                     f"{_num(r['train_loss_last'])} | {r['train_steps_per_second']:.2f} |")
    lines.append("")
    for model in args.models:
        wers = [r["test_wer"] for r in records if r["model"] == model]
        if wers:
            lines.append(f"- {model}: mean test WER {100 * statistics.mean(wers):.2f}% over {len(wers)} seed(s) "
                         f"({', '.join(f'{100 * x:.2f}%' for x in wers)})")
    text = "\n".join(lines) + "\n"
    print(text)
    (REPO / "benchmarks" / "results").mkdir(exist_ok=True)
    name = "asr_an4_quick.json" if args.quick else "asr_an4.json"
    # Merge into the runs kept there, by (model, seed): a run of one model or seed (the full
    # recipe is 3 h of CPU) replaces its own entries and keeps the others.
    out = REPO / "benchmarks" / "results" / name
    kept = json.loads(out.read_text()) if out.exists() else []
    done = {(r["model"], r["seed"]) for r in records}
    merged = [r for r in kept if (r.get("model"), r.get("seed")) not in done] + records
    out.write_text(json.dumps(merged, indent=1) + "\n")
    with open(REPO / "benchmarks" / "RESULTS.md", "a") as f:
        f.write(text)


if __name__ == "__main__":
    main()
