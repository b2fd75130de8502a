"""Faster decoding (#18): Jacobi and lookahead decoding against sequential decoding with the
cache, on a trained char LM (pgbooks) and a trained forecaster (electricity sample).

    PYTHONPATH=. python benchmarks/decoding.py [--quick] [--run <char-LM run dir>]
        [--data ../shared/data/pgbooks] [--minutes 15] [--parts jacobi lookahead calm] [--device cpu]

Parts (rows appended to ``benchmarks/results/decoding.json``, a table to
``benchmarks/RESULTS.md``):

- ``jacobi``: Jacobi iteration (Santilli et al. 2023) for greedy char-LM generation (blocks
  of ``--block`` characters) and for forecast sampling (all horizon steps per pass, noise
  drawn up front).
- ``lookahead``: lookahead decoding (Fu et al. 2024) for greedy char-LM generation.
- ``calm``: confident early exit, rows from ``benchmarks/_calm.py`` (``run_calm(args)``)
  when that module exists.

Every row: ``task``, ``method``, ``setting``, ``quality`` (char LM: share of generated
characters equal to the book's own continuation; forecasts: ND of the sample median),
``consistency`` (char LM: share of prompts whose text is identical to sequential decoding;
forecasts: share of sample values within 1e-5 relative of sequential sampling with the same
noise), ``avg_layers``, ``passes_per_token`` (forward passes, the prompt's or context's
included, per generated position), ``wall_s``, ``speedup`` (sequential wall time / this
one's), ``device``.

Models: the char LM is trained here on the pgbooks books (``--minutes``, the
``task=pgbooks`` default network) unless ``--run`` gives one; prompts are taken at evenly
spaced places of the test book; the forecaster is the ``task=electricity`` default trained
for 400 steps unless ``--forecast-run`` gives one. ``--quick``: a small char LM trained for
40 s on the shipped excerpt (``data/pgbooks_excerpt``), a small forecaster trained for 30
steps on the shipped electricity sample, a few short prompts.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from tsformer.data.text.books import book_split, read_book  # noqa: E402
from tsformer.nn.decoding import generate_tokens, jacobi_tokens, lookahead_tokens  # noqa: E402

QUICK_LM = ["model.d_model=64", "model.n_heads=4", "model.n_layers=2", "model.d_ff=192", "model.window=[32,64]",
            "model.dilation=[1,1]", "model.max_tokens=1024", "data.context=128", "data.batch_size=16"]

QUICK_FORECAST = ["trainer.max_steps=30", "data.context_length=48", "data.val_windows=1", "data.test_windows=2",
                  "data.batch_size=16", "model.d_model=32", "model.n_layers=2", "model.d_ff=64"]


def train(name: str, overrides: list[str], run: Path, env: dict) -> Path:
    """``python -m tsformer.train`` in its own process; returns the run directory."""
    cmd = [sys.executable, "-m", "tsformer.train", *overrides, f"run_dir={run}", "trainer.enable_progress_bar=false",
           "trainer.enable_model_summary=false", "print_metrics=false"]
    print(f"[{datetime.now():%H:%M:%S}] train {name}: {' '.join(overrides)}", flush=True)
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"training {name} failed:\n{(p.stdout + p.stderr)[-3000:]}")
    return run


class PassCounter:
    """Counts forward passes: calls of a network's first layer (every decoder's pass runs it
    once, the prompt's or context's included)."""

    def __init__(self, layer: torch.nn.Module):
        self.n = 0
        self.handle = layer.register_forward_pre_hook(lambda *_: self._add())

    def _add(self) -> None:
        self.n += 1

    def take(self) -> int:
        n, self.n = self.n, 0
        return n


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def charlm_rows(a, run: Path, methods: list[str]) -> list[dict]:
    """Greedy continuations of prompts from the test book, every method against sequential."""
    from tsformer.generate import load_char_lm

    net, vocab = load_char_lm(run, a.device)
    files = book_split(Path(a.data), None)
    text = "\n\n".join(read_book(f, True) for f in files["test"])
    ids = torch.as_tensor(vocab.encode(text), dtype=torch.long)
    span = len(ids) - a.prompt - a.length - 1
    starts = [int(span * (i + 0.5) / a.prompts) for i in range(a.prompts)]
    prompts = [ids[s : s + a.prompt][None].to(a.device) for s in starts]
    truth = [ids[s + a.prompt : s + a.prompt + a.length] for s in starts]
    max_tokens = net.encoder.max_tokens
    counter = PassCounter(net.encoder.layers[0])
    decoders = {
        "sequential": ("cache", lambda p: generate_tokens(net, p, a.length, 0.0, max_context=max_tokens)),
        "jacobi": (f"block={a.block}", lambda p: jacobi_tokens(net, p, a.length, block=a.block,
                                                               max_context=max_tokens)[0]),
        "lookahead": (f"W={a.window},N={a.ngram},G={a.pool}",
                      lambda p: lookahead_tokens(net, p, a.length, window=a.window, ngram=a.ngram, pool=a.pool,
                                                 max_context=max_tokens)[0]),
    }
    outs, rows = {}, []
    for method in ["sequential", *[m for m in methods if m != "sequential"]]:
        setting, run_one = decoders[method]
        generate_tokens(net, prompts[0][:, :8], 4, 0.0)  # warm-up
        counter.take()
        sync(a.device)
        t0 = time.perf_counter()
        outs[method] = [run_one(p)[0, a.prompt :].cpu() for p in prompts]
        sync(a.device)
        wall = time.perf_counter() - t0
        passes = counter.take()
        same = sum(torch.equal(o, s) for o, s in zip(outs[method], outs["sequential"])) / len(prompts)
        acc = sum(float((o == t).float().mean()) for o, t in zip(outs[method], truth)) / len(prompts)
        rows.append({
            "task": "charlm", "method": method,
            "setting": f"greedy, {setting}, {a.prompts} prompts x {a.prompt} chars, {a.length} generated",
            "quality": round(acc, 4), "consistency": same, "avg_layers": float(len(net.encoder.layers)),
            "passes_per_token": round(passes / (a.prompts * a.length), 4), "wall_s": round(wall, 3),
        })
        print(f"charlm {method}: {rows[-1]}", flush=True)
    seq = rows[0]["wall_s"]
    for r in rows:
        r["speedup"] = round(seq / r["wall_s"], 3)
    counter.handle.remove()
    sample = vocab.decode(outs["sequential"][0].tolist())
    print(f"greedy continuation of prompt 0: {sample!r}")
    return rows


def forecast_rows(a, run: Path) -> list[dict]:
    """Test-window sample paths: Jacobi against sequential sampling with the same noise."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from tsformer.tasks.forecasting import forecast_batch

    cfg = OmegaConf.load(run / "config.yaml")
    dm = instantiate(cfg.data, _convert_="all")
    dm.setup("test")
    net = instantiate(cfg.model, _convert_="all", **dm.model_kwargs())
    ckpt_path = next(p for p in (run / "checkpoints" / "last.ckpt", run / "checkpoints" / "best.ckpt") if p.exists())
    ckpt = torch.load(ckpt_path, weights_only=True, map_location="cpu")
    net.load_state_dict({k[4:]: v for k, v in ckpt["state_dict"].items() if k.startswith("net.")})
    net = net.to(a.device).eval()
    batches = [{k: v.to(a.device) for k, v in b.items()} for _, b in zip(range(a.forecast_batches),
                                                                          dm.test_dataloader())]
    counter = PassCounter(net.blocks[0])
    S = a.samples
    results, rows = {}, []
    for method, decode in (("sequential", None), ("jacobi", {"method": "jacobi", "block": None, "rtol": 0.0})):
        counter.take()
        sync(a.device)
        t0 = time.perf_counter()
        with torch.no_grad():
            results[method] = [forecast_batch(net, b, S, seed=0, decode=decode).float().cpu() for b in batches]
        sync(a.device)
        wall = time.perf_counter() - t0
        passes = counter.take()
        s = torch.cat(results[method])
        ref = torch.cat(results["sequential"])
        truth = torch.cat([b["future"].float().cpu() for b in batches])
        nd = float((s.median(1).values - truth).abs().sum() / truth.abs().sum())
        close = float(torch.isclose(s, ref, rtol=1e-5, atol=1e-5 * float(ref.abs().mean())).float().mean())
        H = s.shape[-1]
        rows.append({
            "task": "forecast", "method": method,
            "setting": f"{S} paths, horizon {H}, {len(s)} test windows, pre-drawn noise" +
                       (", all steps per pass, exact acceptance" if decode else ""),
            "quality": round(nd, 4), "consistency": close, "avg_layers": float(len(net.blocks)),
            "passes_per_token": round(passes / (len(batches) * H), 4), "wall_s": round(wall, 3),
        })
        print(f"forecast {method}: {rows[-1]}", flush=True)
    for r in rows:
        r["speedup"] = round(rows[0]["wall_s"] / r["wall_s"], 3)
    counter.handle.remove()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small models trained briefly on shipped data (minutes)")
    ap.add_argument("--run", default=None, help="a trained char-LM run directory (default: train one here)")
    ap.add_argument("--forecast-run", default=None, help="a trained forecaster run (default: train one here)")
    ap.add_argument("--data", default=None, help="folder of books (default ../shared/data/pgbooks; quick: the excerpt)")
    ap.add_argument("--minutes", type=int, default=15, help="char-LM training budget when training here")
    ap.add_argument("--parts", nargs="+", default=["jacobi", "lookahead", "calm"])
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--prompt", type=int, default=256, help="prompt characters")
    ap.add_argument("--length", type=int, default=256, help="characters generated per prompt")
    ap.add_argument("--block", type=int, default=16, help="Jacobi block")
    ap.add_argument("--window", type=int, default=8)
    ap.add_argument("--ngram", type=int, default=4)
    ap.add_argument("--pool", type=int, default=8)
    ap.add_argument("--samples", type=int, default=100, help="forecast sample paths")
    ap.add_argument("--forecast-batches", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "decoding.json"))
    a = ap.parse_args()
    if a.quick:
        a.data = a.data or str(ROOT / "data" / "pgbooks_excerpt")
        a.prompts, a.prompt, a.length, a.samples, a.forecast_batches = 4, 96, 96, 32, 1
    a.data = str(Path(a.data or ROOT.parent / "shared" / "data" / "pgbooks").resolve())
    torch.set_num_threads(a.threads)
    env = {**os.environ, "OMP_NUM_THREADS": str(a.threads), "PYTHONPATH": str(ROOT)}
    run_root = ROOT / "outputs" / "decoding" / datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    rows: list[dict] = []
    lm_methods = [m for m in ("jacobi", "lookahead") if m in a.parts]
    lm_about = f"run {a.run}"
    if lm_methods:
        run = Path(a.run) if a.run else None
        if run is None:
            budget = "00:00:00:40" if a.quick else f"00:00:{a.minutes:02d}:00"
            over = ["task=pgbooks", f"data.path={a.data}", f"trainer.max_time={budget}", "trainer.max_steps=-1",
                    "trainer.limit_val_batches=0", "trainer.limit_test_batches=1"]
            run = train("char LM", over + (QUICK_LM if a.quick else []), run_root / "charlm", env)
            lm_about = f"task=pgbooks{' (quick sizes)' if a.quick else ''}, {budget} training on {a.data}"
        rows += charlm_rows(a, run, lm_methods)
    if "jacobi" in a.parts:
        frun = Path(a.forecast_run) if a.forecast_run else None
        if frun is None:
            over = ["task=electricity", "trainer.max_steps=400", "trainer.limit_val_batches=0",
                    "trainer.limit_test_batches=1", "logger=csv"]
            frun = train("forecaster", over + (QUICK_FORECAST if a.quick else []), run_root / "forecast", env)
        rows += forecast_rows(a, frun)
    if "calm" in a.parts:
        try:
            from _calm import run_calm
        except ImportError:
            print("calm: benchmarks/_calm.py not found (the early-exit part is not in this tree); skipped")
        else:
            rows += run_calm(a)
    if not rows:
        return
    stamp = {"date": f"{datetime.now():%Y-%m-%d %H:%M}", "machine": platform.node(), "threads": a.threads,
             "load_avg": round(os.getloadavg()[0], 2), "quick": a.quick}
    device = torch.cuda.get_device_name() if a.device.startswith("cuda") else f"cpu ({a.threads} threads)"
    for r in rows:
        r.setdefault("device", device)
        r.update({k: v for k, v in stamp.items() if k not in r})
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    old = json.loads(out.read_text()) if out.exists() else []
    out.write_text(json.dumps(old + rows, indent=1) + "\n")
    lines = [f"### decoding ({'--quick, ' if a.quick else ''}{stamp['date']}, {stamp['machine']}, {device}, "
             f"load {stamp['load_avg']:.1f}; char LM: {lm_about})", "",
             "| task | method | setting | quality | consistency | avg layers | passes/token | wall s | speedup |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['task']} | {r['method']} | {r['setting']} | {r['quality']} | {r['consistency']} | "
                     f"{r['avg_layers']} | {r['passes_per_token']} | {r['wall_s']} | {r['speedup']} |")
    seq = next((r for r in rows if r["task"] == "charlm" and r["method"] == "sequential"), None)
    look = next((r for r in rows if r["task"] == "charlm" and r["method"] == "lookahead"), None)
    if seq and look:
        ratio = seq["passes_per_token"] / look["passes_per_token"]
        lines += ["", f"Lookahead: {ratio:.2f}x fewer forward passes per character than sequential decoding "
                      f"(goal >= 1.5x on the pgbooks test book, greedy: {'met' if ratio >= 1.5 else 'NOT met'}"
                      f"{'; quick model, not the goal setting' if a.quick else ''}); identical text for "
                      f"{look['consistency']:.0%} of prompts; wall-clock {look['speedup']:.2f}x of sequential."]
    print("\n".join(lines))
    with open(ROOT / "benchmarks" / "RESULTS.md", "a") as f:
        f.write("\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
