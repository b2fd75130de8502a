"""Unpadding (``model.unpad``, MosaicBERT: Portes et al. 2023): masked-LM training tokens per
second of ``model=longformer_mlm`` with and without it, on IMDB reviews batched as the text
tasks batch them, with length bucketing on (``BucketBatchSampler``'s sorted pools, the
tasks' default) and off (plain random batches, ``pool=1``), and the training losses of the
two (equal up to fp32 rounding: the same weights, batches and masks).

    python benchmarks/unpad.py --quick          # the shipped 120-review sample, a few steps
    python benchmarks/unpad.py                  # ../shared/data/imdb, 40 steps per setting

The unpadded and padded runs of one bucketing setting step through the same batches in
turn, so both see the same background load. ``tokens/s`` counts real tokens (padding
excluded); ``padded share`` is the share of the ``B x L`` positions that are padding.
Dropout is off so that the two runs compute the same function. Writes
``benchmarks/results/unpad.json`` (appended) and a section of ``benchmarks/RESULTS.md``.
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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._report import append_json, publish  # noqa: E402
from tsformer.data.samplers import BucketBatchSampler  # noqa: E402
from tsformer.data.text.classification import TextClassificationDataModule, collate_docs  # noqa: E402


def load_docs(path: str, max_tokens: int, max_docs: int | None):
    """The training split of IMDB, tokenized as ``task=mlm`` does (SentencePiece 8000)."""
    dm = TextClassificationDataModule(path, format="imdb", max_tokens=max_tokens, vocab_size=8000, val_fraction=0.05,
                                      max_train_docs=max_docs, min_classes=1, baseline=False)
    dm.setup("fit")
    return dm.datasets["train"], dm.tokenizer.vocab_size


def build(vocab: int, max_tokens: int, unpad: bool, overrides: list[str]):
    from hydra.utils import instantiate

    from tsformer.train import compose_config

    cfg = compose_config(["task=mlm", "model=longformer_mlm", f"data.max_tokens={max_tokens}", "model.dropout=0.0",
                          f"model.unpad={str(unpad).lower()}", *overrides])
    torch.manual_seed(0)
    return instantiate(cfg.model, _convert_="all", vocab_size=vocab)


def run_setting(ds, vocab: int, args, pool: int) -> dict:
    """Train padded and unpadded twins step by step on the same batches; time and losses."""
    sampler = BucketBatchSampler(ds.lengths(), args.batch, shuffle=True, seed=0, pool=pool)
    order: list[list[int]] = []
    while len(order) < args.steps + args.warmup:  # as many epochs as the steps need (each reshuffled)
        order += list(iter(sampler))
    batches = [collate_docs([ds[i] for i in idx]) for idx in order[: args.steps + args.warmup]]
    runs = {}
    for unpad in (False, True):
        net = build(vocab, args.max_tokens, unpad, args.override)
        runs[unpad] = {"net": net, "opt": torch.optim.AdamW(net.parameters(), lr=1e-3), "seconds": 0.0,
                       "losses": []}
    real = padded = 0
    for step, b in enumerate(batches):
        timed = step >= args.warmup
        if timed:
            real += int(b["lengths"].sum())
            padded += b["tokens"].numel()
        for r in runs.values():
            t0 = time.perf_counter()
            gen = torch.Generator().manual_seed(step)  # the same masked positions in both runs
            nll, _, n = r["net"](b["tokens"], b["lengths"], generator=gen)
            loss = nll / n.clamp_min(1)
            r["opt"].zero_grad(set_to_none=True)
            loss.backward()
            r["opt"].step()
            if timed:
                r["seconds"] += time.perf_counter() - t0
            r["losses"].append(loss.item())
    out = {"bucketing": pool > 1, "steps": args.steps, "real_tokens": real, "padded_share": 1 - real / padded}
    for unpad, r in runs.items():
        key = "unpad" if unpad else "padded"
        out[f"{key}_tokens_per_s"] = real / r["seconds"]
        out[f"{key}_losses"] = r["losses"]
    out["speedup"] = out["unpad_tokens_per_s"] / out["padded_tokens_per_s"]
    out["max_loss_diff"] = max(abs(a - b) for a, b in zip(out["padded_losses"], out["unpad_losses"]))
    print(f"bucketing {'on ' if pool > 1 else 'off'}: padding {out['padded_share']:.0%} of positions, "
          f"{out['padded_tokens_per_s']:.0f} -> {out['unpad_tokens_per_s']:.0f} tokens/s ({out['speedup']:.2f}x), "
          f"max |loss difference| {out['max_loss_diff']:.2e}", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="the shipped IMDB sample, 6 timed steps per setting")
    ap.add_argument("--data", default=None, help="IMDB archive or folder (default: ../shared/data/imdb, or the "
                                                 "shipped sample with --quick)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per setting (40; 6 with --quick)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--batch", type=int, default=16, help="documents per batch (task=mlm's default)")
    ap.add_argument("--max-tokens", type=int, default=1024, help="document cap (task=mlm's and task=imdb's)")
    ap.add_argument("--max-docs", type=int, default=None, help="training reviews tokenized (default: all; 3000 "
                                                               "for the full set, enough for the batches drawn)")
    ap.add_argument("--override", nargs="*", default=[], help="extra model overrides, e.g. model.d_model=256")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/unpad.json"))
    ap.add_argument("--no-append", action="store_true", help="do not append to RESULTS.md")
    args = ap.parse_args()
    if args.data is None:
        args.data = str(ROOT / "data/imdb/aclImdb_sample.tar.gz") if args.quick else \
            str(ROOT.parent / "shared/data/imdb/aclImdb_labeled.tar.gz")
    args.steps = args.steps or (6 if args.quick else 40)
    max_docs = args.max_docs or (None if args.quick else 3000)

    start = time.perf_counter()
    ds, vocab = load_docs(args.data, args.max_tokens, max_docs)
    lengths = ds.lengths()
    print(f"{len(lengths)} training reviews, tokens per review: mean {lengths.mean():.0f}, "
          f"median {int(sorted(lengths)[len(lengths) // 2])}, max {lengths.max()}", flush=True)
    settings = [run_setting(ds, vocab, args, pool) for pool in (50, 1)]

    device = f"CPU ({os.cpu_count()} cores, torch threads {torch.get_num_threads()}, load {os.getloadavg()[0]:.1f})"
    stamp = datetime.now().strftime("%Y-%m-%d %H:%M")
    entry = {"date": stamp, "device": device, "host": platform.node(), "quick": args.quick, "data": args.data,
             "batch": args.batch, "max_tokens": args.max_tokens, "overrides": args.override,
             "mean_tokens": float(lengths.mean()), "settings": settings,
             "seconds": round(time.perf_counter() - start, 1)}
    append_json(args.out, entry)

    lines = [f"\n### unpad: model=longformer_mlm training tokens/s with and without model.unpad "
             f"({'--quick, ' if args.quick else ''}{stamp}, {device}, {platform.node()}; {Path(args.data).name}, "
             f"{len(lengths)} reviews of mean {lengths.mean():.0f} tokens, batch {args.batch}, cap {args.max_tokens}, "
             f"{args.steps} timed steps)\n",
             "| bucketing | padded share | padded tokens/s | unpadded tokens/s | speed-up | max loss difference |",
             "|---|---|---|---|---|---|"]
    for s in settings:
        lines.append(f"| {'on' if s['bucketing'] else 'off'} | {s['padded_share']:.1%} | {s['padded_tokens_per_s']:.0f} | "
                     f"{s['unpad_tokens_per_s']:.0f} | {s['speedup']:.2f}x | {s['max_loss_diff']:.1e} |")
    publish("\n".join(lines) + "\n", append=not args.no_append)


if __name__ == "__main__":
    main()
