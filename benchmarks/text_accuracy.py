"""Accuracy of ``longformer``, ``transformer_truncated`` and TF-IDF + LR on Hyperpartisan
(fixed stratified split and stratified 5-fold CV) and IMDB (official split).

    python benchmarks/text_accuracy.py --suite hyperpartisan_split hyperpartisan_cv imdb \
        --hyperpartisan ../shared/data/hyperpartisan --imdb ../shared/data/imdb/aclImdb_labeled.tar.gz

Each run is ``tsformer.train.train`` with the task's default settings plus ``--override``s;
TF-IDF + LR comes from the same run's ``baseline/tfidf_lr/*`` (same split). Writes
``benchmarks/results/text_accuracy.json`` and appends a table to ``benchmarks/RESULTS.md``;
until the suite ends, each finished run is also kept in ``<out>.partial.json``. Besides the
test figures, each run records ``best/val/accuracy``, the validation score of the checkpoint
that was tested: the score to choose recipes by without touching test data, where the
validation set is large enough (Hyperpartisan's 52 articles per fold were not: RESULTS.md).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tsformer.train import compose_config, train  # noqa: E402

MODELS = ("longformer", "transformer_truncated")


def run_one(task: str, model: str, overrides: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = compose_config([f"task={task}", f"model={model}", f"run_dir={tmp}", "print_metrics=false",
                              "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false", *overrides])
        m = train(cfg)
    keep = ("test/accuracy", "test/f1", "baseline/tfidf_lr/accuracy", "baseline/tfidf_lr/f1", "train/seconds",
            "train/steps", "best/val/accuracy")
    out = {k: m[k] for k in keep if k in m}
    print(task, model, overrides, json.dumps(out), flush=True)
    return out


def report(entries: list[dict]) -> str:
    """A markdown table of the runs in ``entries`` (as stored in the JSON output)."""
    lines = ["\n## Long-document classification accuracy\n",
             "| suite | model | test accuracy | test macro-F1 | TF-IDF+LR accuracy | TF-IDF+LR F1 | val accuracy | "
             "train s | device, date | overrides |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for e in entries:
        for r in e["results"]:
            acc = f"{r['test/accuracy']:.4f}" + (f" ± {r['test/accuracy_std']:.4f}" if "test/accuracy_std" in r else "")
            bacc = f"{r['baseline/tfidf_lr/accuracy']:.4f}" + (
                f" ± {r['baseline/tfidf_lr/accuracy_std']:.4f}" if "baseline/tfidf_lr/accuracy_std" in r else "")
            secs = f"{r['train/seconds']:.0f}" + (" per fold" if "folds" in r else "")
            val = f"{r['best/val/accuracy']:.4f}" if "best/val/accuracy" in r else "-"
            lines.append(f"| {r['suite']} | {r['model']} | {acc} | {r['test/f1']:.4f} | {bacc} | "
                         f"{r['baseline/tfidf_lr/f1']:.4f} | {val} | {secs} | {e['device']}, {e['date']} | "
                         f"{' '.join(e['overrides']) or '(defaults)'} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--suite", nargs="+", default=["hyperpartisan_split", "hyperpartisan_cv", "imdb"],
                    choices=["hyperpartisan_split", "hyperpartisan_cv", "imdb"])
    ap.add_argument("--hyperpartisan", default=str(ROOT.parent / "shared/data/hyperpartisan"))
    ap.add_argument("--imdb", default=str(ROOT.parent / "shared/data/imdb/aclImdb_labeled.tar.gz"))
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--no-append", action="store_true", help="do not append to RESULTS.md")
    ap.add_argument("--override", nargs="*", default=[], help="extra config overrides for every run")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/text_accuracy.json"))
    ap.add_argument("--report", nargs="+", metavar="JSON",
                    help="only merge these result files into --out and append their table to RESULTS.md")
    args = ap.parse_args()

    if args.report:
        entries = [e for f in args.report for e in json.loads(Path(f).read_text())]
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.tmp")
        tmp.write_text(json.dumps(entries, indent=2))
        os.replace(tmp, out)
        text = report(entries)
        print(text)
        if not args.no_append:
            with open(ROOT / "benchmarks/RESULTS.md", "a") as f:
                f.write(text)
        return

    results: list[dict] = []
    partial = Path(args.out).with_suffix(".partial.json")

    def run(task: str, model: str, overrides: list[str]) -> dict:
        # Every finished run is kept on disk, so a crash later in a long suite loses nothing.
        r = run_one(task, model, overrides)
        done = json.loads(partial.read_text()) if partial.exists() else []
        partial.parent.mkdir(parents=True, exist_ok=True)
        partial.write_text(json.dumps(done + [{"task": task, "model": model, "overrides": overrides, **r}], indent=2))
        return r

    for suite in args.suite:
        for model in args.models:
            if suite == "hyperpartisan_split":
                r = run("hyperpartisan", model, [f"data.path={args.hyperpartisan}", *args.override])
                results.append({"suite": suite, "model": model, **r})
            elif suite == "hyperpartisan_cv":
                folds = [run("hyperpartisan", model, [f"data.path={args.hyperpartisan}", f"data.folds={args.folds}",
                                                      f"data.fold={k}", *args.override]) for k in range(args.folds)]
                agg = {k: statistics.mean(f[k] for f in folds) for k in folds[0]}
                agg.update({f"{k}_std": statistics.pstdev(f[k] for f in folds) for k in ("test/accuracy",
                                                                                      "baseline/tfidf_lr/accuracy")})
                results.append({"suite": suite, "model": model, "folds": folds, **agg})
            else:
                r = run("imdb", model, [f"data.path={args.imdb}", *args.override])
                results.append({"suite": suite, "model": model, **r})

    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() and "trainer=gpu" in args.override \
        else f"CPU ({os.cpu_count()} cores, torch threads {torch.get_num_threads()})"
    stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    old = json.loads(out.read_text()) if out.exists() else []
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps(old + [{"date": stamp, "device": device, "host": platform.node(),
                                      "overrides": args.override, "results": results}], indent=2))
    os.replace(tmp, out)
    partial.unlink(missing_ok=True)

    text = report([{"date": stamp, "device": device, "overrides": args.override, "results": results}])
    print(text)
    if not args.no_append:
        with open(ROOT / "benchmarks/RESULTS.md", "a") as f:
            f.write(text)


if __name__ == "__main__":
    main()
