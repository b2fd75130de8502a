"""``model=mosaicbert`` (Portes et al. 2023) against ``model=longformer_mlm`` at equal
parameters and budget: masked-LM pretraining on IMDB, then Hyperpartisan and IMDB
fine-tuning from each pretraining checkpoint.

    python benchmarks/mosaicbert.py --quick     # shipped samples, a few steps (smoke test)
    python benchmarks/mosaicbert.py             # ../shared/data: task defaults (MLM 1500 steps,
                                                # Hyperpartisan 800, IMDB 1000 per model)

Per model: ``task=mlm`` on the IMDB training reviews (the task's default budget, the same
steps and batches for both), its masked-token accuracy on the test reviews at its own mask
rate (longformer_mlm 15%, mosaicbert 30%) and at a common 15% (the same seeded draws for both),
then ``task=hyperpartisan`` (fixed split) and ``task=imdb`` started from the checkpoint
(``init_from``; classifiers ``longformer`` and ``mosaicbert``) with the tasks' default
budgets, through ``benchmarks/text_accuracy.py``'s ``run_one``. The parameter counts are
those of the pretraining networks (at data.max_tokens=1024, where longformer_mlm's learned
position table and mosaicbert's wider GLU balance). Writes
``benchmarks/results/mosaicbert.json`` (appended) and a section of ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._report import append_json, publish  # noqa: E402
from benchmarks.text_accuracy import run_one  # noqa: E402
from tsformer.train import compose_config, init_weights_from, train  # noqa: E402

PAIRS = {"longformer_mlm": "longformer", "mosaicbert": "mosaicbert"}
"""Pretraining model -> the classifier its checkpoint starts."""
QUIET = ["print_metrics=false", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
         "plots.enabled=false"]
QUICK_MLM = ["trainer.max_steps=20", "trainer.val_check_interval=10", "data.batch_size=8", "data.max_test_docs=32"]
QUICK_CLS = ["trainer.max_steps=10", "trainer.val_check_interval=5"]


@torch.no_grad()
def masked_accuracy(run_dir: Path, mask_prob: float) -> float:
    """Masked-token accuracy of ``run_dir``'s best checkpoint on its test reviews, masking
    ``mask_prob`` of the real tokens with the evaluation's seeded draws (as ``task=mlm``)."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(run_dir / "config.yaml")
    ckpt = run_dir / "checkpoints" / "best.ckpt"
    cfg.data.tokenizer = str(ckpt)
    dm = instantiate(cfg.data, _convert_="all")
    dm.setup("test")
    net = instantiate(cfg.model, _convert_="all", **dm.model_kwargs())
    init_weights_from(net, ckpt)
    net.mask_prob = mask_prob
    net.eval()
    correct = count = 0
    for i, batch in enumerate(dm.test_dataloader()):
        _, c, n = net(batch["tokens"], batch["lengths"], generator=torch.Generator().manual_seed(10_000 + i))
        correct, count = correct + int(c), count + int(n)
    return correct / max(count, 1)


def run_model(pre: str, args, work: Path) -> dict:
    """Pretrain ``pre``, score it, fine-tune its classifier on both tasks."""
    run = work / f"mlm_{pre}"
    quick = QUICK_MLM if args.quick else []
    m = train(compose_config(["task=mlm", f"model={pre}", f"data.path={args.imdb}", f"run_dir={run}", *QUIET, *quick,
                              *args.override]))
    from hydra.utils import instantiate

    cfg = compose_config(["task=mlm", f"model={pre}", *args.override])
    net = instantiate(cfg.model, _convert_="all", vocab_size=8000)
    out = {"model": pre, "classifier": PAIRS[pre], "params_at_vocab_8000": sum(p.numel() for p in net.parameters()),
           "mask_prob": float(cfg.model.mask_prob), "mlm/test_loss": m["test/mlm_loss"],
           "mlm/test_accuracy": m["test/mlm_accuracy"], "mlm/test_accuracy_at_15": masked_accuracy(run, 0.15),
           "mlm/seconds": m["train/seconds"], "mlm/steps": m["train/steps"]}
    print(pre, {k: v for k, v in out.items() if k.startswith("mlm")}, flush=True)
    ckpt = run / "checkpoints" / "best.ckpt"
    for task, path in (("hyperpartisan", args.hyperpartisan), ("imdb", args.imdb)):
        r = run_one(task, PAIRS[pre], [f"data.path={path}", f"init_from={ckpt}", "plots.enabled=false",
                                       *(QUICK_CLS if args.quick else []), *args.override])
        out.update({f"{task}/{k}": v for k, v in r.items()})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="the shipped IMDB and Hyperpartisan samples, a few steps")
    ap.add_argument("--imdb", default=None, help="IMDB archive (default: ../shared/data/imdb; the shipped sample "
                                                 "with --quick)")
    ap.add_argument("--hyperpartisan", default=None, help="SemEval folder (default: ../shared/data/hyperpartisan; "
                                                          "the shipped excerpt with --quick)")
    ap.add_argument("--models", nargs="+", default=list(PAIRS), choices=list(PAIRS))
    ap.add_argument("--override", nargs="*", default=[], help="overrides for every run (e.g. trainer=gpu)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/mosaicbert.json"))
    ap.add_argument("--no-append", action="store_true", help="do not append to RESULTS.md")
    args = ap.parse_args()
    shipped = ROOT / "data"
    args.imdb = args.imdb or str(shipped / "imdb/aclImdb_sample.tar.gz" if args.quick
                                 else ROOT.parent / "shared/data/imdb/aclImdb_labeled.tar.gz")
    args.hyperpartisan = args.hyperpartisan or str(shipped / "hyperpartisan" if args.quick
                                                   else ROOT.parent / "shared/data/hyperpartisan")

    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        rows = [run_model(pre, args, Path(tmp)) for pre in args.models]
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() and "trainer=gpu" in args.override \
        else f"CPU ({os.cpu_count()} cores, torch threads {torch.get_num_threads()}, load {os.getloadavg()[0]:.1f})"
    stamp = datetime.now().strftime("%Y-%m-%d %H:%M")
    append_json(args.out, {"date": stamp, "device": device, "host": platform.node(), "quick": args.quick,
                           "imdb": args.imdb, "hyperpartisan": args.hyperpartisan, "overrides": args.override,
                           "results": rows, "seconds": round(time.perf_counter() - start, 1)})

    lines = [f"\n### mosaicbert vs longformer_mlm ({'--quick: shipped samples, a few steps; a smoke test, not a ranking, ' if args.quick else ''}"
             f"{stamp}, {device}, {platform.node()}; {time.perf_counter() - start:.0f} s in all)\n",
             "| model | params | mask rate | MLM test acc (own rate) | MLM test acc at 15% | MLM loss | MLM steps | MLM s | "
             "Hyperpartisan acc | F1 | IMDB acc | F1 | fine-tune s (H + I) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['params_at_vocab_8000']:,} | {r['mask_prob']:.0%} | "
                     f"{r['mlm/test_accuracy']:.4f} | {r['mlm/test_accuracy_at_15']:.4f} | {r['mlm/test_loss']:.3f} | "
                     f"{r['mlm/steps']} | {r['mlm/seconds']:.0f} | {r['hyperpartisan/test/accuracy']:.4f} | "
                     f"{r['hyperpartisan/test/f1']:.4f} | {r['imdb/test/accuracy']:.4f} | {r['imdb/test/f1']:.4f} | "
                     f"{r['hyperpartisan/train/seconds']:.0f} + {r['imdb/train/seconds']:.0f} |")
    budget = "20 MLM steps of 8 reviews, 10 fine-tuning steps" if args.quick else "the tasks' default budgets"
    lines.append("\nParameters at a vocabulary of 8,000 and data.max_tokens=1024 (the MLM stage); both pretrain with "
                 f"the same steps and batches; budgets: {budget}.")
    publish("\n".join(lines) + "\n", append=not args.no_append)


if __name__ == "__main__":
    main()
