"""Long-context char LM: ALiBi, adaptive span, all-attention and Transformer-XL against a
rotary baseline, on whole Project Gutenberg books split by book (test: Middlemarch).

    PYTHONPATH=. python benchmarks/longcontext.py [--quick] [--minutes 15] [--data ../shared/data/pgbooks]
        [--parts table extrapolation spans evalspeed forecast pangu]

Parts (each appends its rows to ``benchmarks/results/longcontext.json`` and a table to
``benchmarks/RESULTS.md``):

- ``table``: baseline (mhsa, causal, rotary), ALiBi, adaptive span, all-attention
  (persistent slots instead of feed-forwards, ``N = d_ff`` for equal parameters) and
  Transformer-XL with and without memory, RWKV-4 (time and channel mixing) and PanGu-π (series
  activation and augmented shortcuts), each the same network size (``d_ff`` adjusted so
  parameters agree within 5%) and the same wall-clock training budget (``--minutes``) on 2
  CPU threads; bpc on the first ``--eval-chars`` characters of the test book.
- ``extrapolation``: rotary, ALiBi and learned positions trained at 256 characters,
  evaluated at 256 .. 4096 (non-overlapping windows).
- ``spans``: the adaptive-span run's learned spans (PNG), their mean, the bpc against the
  fixed maximum span (the baseline), and the training-step time they save.
- ``evalspeed``: Transformer-XL evaluation with memory against re-encoding a sliding window
  of the same 2,048-character context for every new position (Dai et al. 2019, Sec. 4.5).
- ``forecast``: ALiBi, adaptive span and RWKV-4 on the electricity sample at the default
  budget, beside ``logsparse``.
- ``pangu`` (not in the default list): the PanGu-π ablation (Wang et al. 2023, Table 4):
  baseline, + series informed activation, + augmented shortcut, both, at equal parameters and
  budget; test bpc and the paper's feature diversity per layer (table and
  ``results/longcontext_pangu.png``).

Each training runs ``python -m tsformer.train`` in its own process (its peak RSS is
``added_mb``, above a process that only imports the package); evaluation runs here on the
run's checkpoint.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tsformer.data.text.books import book_split, read_book  # noqa: E402
from tsformer.data.tokenizers import CharVocab  # noqa: E402

SIZE = ["model.d_model=128", "model.n_heads=4", "model.n_layers=4", "model.window=512", "model.dilation=1",
        "model.dropout=0.1", "model.attention.type=mhsa", "model.attention.pattern=causal"]
D_FF = 512
SPAN = "{max: 512, ramp: 32, penalty: 2.0e-6}"
# PanGu-π (Wang et al. 2023): the series activation (n = 2 terms, the paper's Table 2 choice, and
# the neighbour mix over the 2 previous characters) and one bottleneck shortcut (r = 32, Table 3).
PANGU_SERIES = ["model.ffn=series", "model.series.terms=2", "model.series.context=2"]
PANGU_SHORTCUT = ["model.shortcut=augmented", "model.augmented.branches=1", "model.augmented.reduction=32"]


def variants(train_len: int, span_max: int) -> dict[str, list[str]]:
    span = SPAN.replace("512", str(span_max))
    stream = ["data.stream=true", f"model.memory.length={train_len}"]
    return {
        "baseline_rotary": ["model.attention.positions=rotary"],
        "alibi": ["model.attention.positions=alibi"],
        "adaptive_span": ["model.attention.positions=rotary", f"model.attention.span={span}"],
        "all_attention": ["model.attention.positions=rotary", f"model.attention.persistent={D_FF}", "model.ffn=none"],
        "xl_no_memory": ["model.attention.positions=xl", "data.stream=true", "model.memory.length=0"],
        "xl_memory": ["model.attention.positions=xl", *stream],
        # RWKV-4 (#17): time mixing instead of attention, channel mixing instead of the MLP.
        "rwkv": ["model.attention.type=rwkv", "model.attention.positions=none", "model.ffn=rwkv"],
        # PanGu-π (#17): series informed activation and augmented shortcuts together.
        "pangu": ["model.attention.positions=rotary", *PANGU_SERIES, *PANGU_SHORTCUT],
    }


def pangu_variants() -> dict[str, list[str]]:
    """The PanGu-π ablation (paper, Table 4): baseline, + series activation, + augmented shortcut, both."""
    rotary = ["model.attention.positions=rotary"]
    return {"pangu_baseline": rotary, "pangu_series": [*rotary, *PANGU_SERIES],
            "pangu_augmented": [*rotary, *PANGU_SHORTCUT], "pangu_both": [*rotary, *PANGU_SERIES, *PANGU_SHORTCUT]}


def count_params(overrides: list[str], vocab: int) -> int:
    from hydra.utils import instantiate

    from tsformer.train import compose_config

    cfg = compose_config(["task=pgbooks", *overrides])
    net = instantiate(cfg.model, _convert_="all", vocab_size=vocab)
    return sum(p.numel() for p in net.parameters())


def matched_d_ff(overrides: list[str], vocab: int, target: int) -> int:
    """The d_ff that brings this variant within 5% of ``target`` parameters (all-attention has none)."""
    if "model.ffn=none" in overrides:
        return D_FF
    lo, hi = 16, 2 * D_FF
    while hi - lo > 8:
        mid = (lo + hi) // 2
        if count_params([*overrides, f"model.d_ff={mid}"], vocab) > target:
            hi = mid
        else:
            lo = mid
    return lo


def peak_child(cmd: list[str], env: dict) -> tuple[int, float, str]:
    """Run ``cmd``; return its exit code, peak RSS (MB) and output tail."""
    p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = p.stdout.read()
    _, status, usage = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    return p.returncode, usage.ru_maxrss / 1024, out[-3000:]


def train_run(name: str, overrides: list[str], a, run_root: Path, env: dict) -> dict:
    run = run_root / name
    cmd = [sys.executable, "-m", "tsformer.train", "task=pgbooks", f"data.path={a.data}", *overrides,
           f"run_dir={run}", f"trainer.max_time=00:00:{a.minutes:02d}:00", "trainer.max_steps=-1",
           "trainer.limit_val_batches=0", "trainer.limit_test_batches=1", "trainer.enable_progress_bar=false",
           "trainer.enable_model_summary=false", "print_metrics=false", "module.warmup_steps=100"]
    if a.minutes == 0:
        cmd[cmd.index("trainer.max_time=00:00:00:00")] = f"trainer.max_time=00:00:00:{a.seconds:02d}"
    print(f"[{datetime.now():%H:%M:%S}] train {name}", flush=True)
    code, peak, tail = peak_child(cmd, env)
    if code != 0:
        raise RuntimeError(f"{name} failed:\n{tail}")
    metrics = json.loads((run / "metrics.json").read_text())
    return {"run": str(run), "metrics": metrics, "peak_mb": peak}


def load_net(run: Path):
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(run / "config.yaml")
    ckpt_path = run / "checkpoints" / "last.ckpt"
    if not ckpt_path.exists():
        ckpt_path = run / "checkpoints" / "best.ckpt"
    ckpt = torch.load(ckpt_path, weights_only=True, map_location="cpu")
    vocab = CharVocab(ckpt["char_vocab"])
    net = instantiate(cfg.model, _convert_="all", vocab_size=len(vocab))
    net.load_state_dict({k[4:]: v for k, v in ckpt["state_dict"].items() if k.startswith("net.")})
    return net.eval(), vocab, cfg


def test_ids(a, vocab: CharVocab) -> np.ndarray:
    files = book_split(Path(a.data), None)
    text = "\n\n".join(read_book(f, True) for f in files["test"])
    return vocab.encode(text[: a.eval_chars + 1]).astype(np.int64)


@torch.no_grad()
def evaluate(net, ids: np.ndarray, length: int, memory: int | None = None) -> tuple[float, float]:
    """bpc over every target of ``ids`` and tokens/s. Without ``memory``: non-overlapping
    windows of ``length``. With it: segments of ``length`` with that much memory."""
    x = torch.from_numpy(ids)
    n = len(ids) - 1
    total, count = 0.0, 0
    t0 = time.perf_counter()
    mem = None
    for s in range(0, n, length):
        e = min(n, s + length)
        inp, tgt = x[s:e][None], x[s + 1 : e + 1]
        if memory is not None:
            logits, mem = net.forward_segment(inp, mem, memory)
        else:
            logits = net(inp)
        total += float(torch.nn.functional.cross_entropy(logits[0].float(), tgt, reduction="sum"))
        count += e - s
    return total / count / math.log(2), count / (time.perf_counter() - t0)


def append(rows: list[dict], out: Path) -> None:
    old = json.loads(out.read_text()) if out.exists() else []
    out.write_text(json.dumps(old + rows, indent=1) + "\n")


def md(lines: list[str]) -> None:
    print("\n".join(lines))
    with open(ROOT / "benchmarks" / "RESULTS.md", "a") as f:
        f.write("\n" + "\n".join(lines) + "\n")


def md_table(columns: list[str], cells: list[list]) -> list[str]:
    """A Markdown table's lines."""
    return ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns),
            *("| " + " | ".join(map(str, row)) + " |" for row in cells)]


def header(a, what: str) -> str:
    load = os.getloadavg()[0]
    budget = f"{a.minutes} min" if a.minutes else f"{a.seconds} s"
    return (f"### longcontext {what} ({'--quick, ' if a.quick else ''}{datetime.now():%Y-%m-%d %H:%M}, "
            f"{platform.node()}, {a.threads} threads, load {load:.1f}, training budget {budget} each, "
            f"data {a.data})")


def table_setup(a) -> tuple[list[str], int, int]:
    """The table's shared overrides, the vocabulary size and the baseline's parameter count."""
    from tsformer.data.text.charlm import CharLMDataModule

    dm = CharLMDataModule(a.data, context=a.train_len)
    dm.setup()
    vocab_size = len(dm.vocab)
    base = [*SIZE, f"data.context={a.train_len}", f"data.batch_size={a.batch}", f"data.eval_batch_size={a.batch}"]
    target = count_params([*base, f"model.d_ff={D_FF}", "model.attention.positions=rotary"], vocab_size)
    return base, vocab_size, target


def table_row(name: str, over: list[str], a, env, run_root, setup) -> tuple[dict, dict, object, np.ndarray]:
    """Train one variant at the baseline's parameter count (``d_ff`` matched) and budget; its
    row (test bpc, speed, memory), the run, the trained network and the test ids."""
    base, vocab_size, target = setup
    d_ff = matched_d_ff([*base, *over], vocab_size, target)
    over = [*base, *over, f"model.d_ff={d_ff}"]
    params = count_params(over, vocab_size)
    res = train_run(name, over, a, run_root, env)
    net, vocab, cfg = load_net(Path(res["run"]))
    ids = test_ids(a, vocab)
    mem = a.train_len if name == "xl_memory" else (0 if name == "xl_no_memory" else None)
    bpc, eval_tps = evaluate(net, ids, a.train_len, mem)
    m = res["metrics"]
    steps = int(m.get("train/steps", 0))
    row = {"model": name, "corpus": "pgbooks", "params": params, "train_len": a.train_len,
           "eval_len": a.train_len + (mem or 0), "bpc": round(bpc, 4),
           "train_seconds": m.get("train/seconds"), "train_steps": steps,
           "train_tokens_per_s": round(steps * a.batch * a.train_len / max(1e-9, m.get("train/seconds", 1)), 1),
           "eval_tokens_per_s": round(eval_tps, 1), "added_mb": round(res["peak_mb"] - a.base_mb, 1),
           "eval_chars": len(ids) - 1, "d_ff": d_ff, "quick": a.quick}
    return row, res, net, ids


def part_table(a, env, run_root, out) -> dict[str, dict]:
    setup = table_setup(a)
    rows, runs = [], {}
    for name, over in variants(a.train_len, a.train_len).items():
        if a.variants and name not in a.variants:
            continue
        row, res, net, _ = table_row(name, over, a, env, run_root, setup)
        if name == "adaptive_span":
            spans = torch.cat([lay.attn.span.spans() for lay in net.encoder.layers]).detach()
            row["mean_span"], row["max_span"] = round(float(spans.mean()), 2), round(float(spans.max()), 2)
        rows.append(row)
        runs[name] = {"run": res["run"], "row": row}
        print(row, flush=True)
    append(rows, out)
    lines = [header(a, "char-LM table"), "", *md_table(
        ["model", "params", "train len", "eval len", "test bpc", "steps", "train tok/s", "eval tok/s", "added MB"],
        [[r["model"], f"{r['params']:,}", r["train_len"], r["eval_len"], f"{r['bpc']:.3f}", r["train_steps"],
          f"{r['train_tokens_per_s']:.0f}", f"{r['eval_tokens_per_s']:.0f}", f"{r['added_mb']:.0f}"] for r in rows])]
    by = {r["model"]: r for r in rows}
    if {"xl_memory", "xl_no_memory"} <= set(by):
        lines.append("")
        lines.append(f"Transformer-XL with memory {by['xl_memory']['bpc']:.3f} bpc vs without "
                     f"{by['xl_no_memory']['bpc']:.3f} at segment {a.train_len}: goal (with < without) "
                     f"{'met' if by['xl_memory']['bpc'] < by['xl_no_memory']['bpc'] else 'NOT met'}.")
    md(lines)
    return runs


def part_extrapolation(a, env, run_root, out) -> None:
    base = [*SIZE, f"model.d_ff={D_FF}", "data.context=256", f"data.batch_size={a.batch}", "model.max_tokens=4096"]
    lengths = [256, 512, 1024, 2048, 4096]
    rows = []
    for pos in ["rotary", "alibi", "learned"]:
        res = train_run(f"extrapolate_{pos}", [*base, f"model.attention.positions={pos}"], a, run_root, env)
        net, vocab, _ = load_net(Path(res["run"]))
        ids = test_ids(a, vocab)
        for L in lengths:
            bpc, tps = evaluate(net, ids, L)
            rows.append({"model": f"extrapolate_{pos}", "corpus": "pgbooks", "train_len": 256, "eval_len": L,
                         "bpc": round(bpc, 4), "eval_tokens_per_s": round(tps, 1),
                         "train_seconds": res["metrics"].get("train/seconds"), "quick": a.quick})
            print(rows[-1], flush=True)
    append(rows, out)
    lines = [header(a, "extrapolation (train 256)"), "", "| positions | " + " | ".join(map(str, lengths)) + " |",
             "|---|" + "---|" * len(lengths)]
    for pos in ["rotary", "alibi", "learned"]:
        b = [r["bpc"] for r in rows if r["model"] == f"extrapolate_{pos}"]
        lines.append(f"| {pos} | " + " | ".join(f"{x:.3f}" for x in b) + " |")
    ali = [r["bpc"] for r in rows if r["model"] == "extrapolate_alibi"]
    lines += ["", f"ALiBi at 4096 {ali[-1]:.3f} vs 256 {ali[0]:.3f}: goal (no worse) "
                  f"{'met' if ali[-1] <= ali[0] else 'NOT met'}."]
    md(lines)


def part_spans(a, runs) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run = Path(runs["adaptive_span"]["run"])
    net, _, _ = load_net(run)
    spans = np.stack([lay.attn.span.spans().detach().numpy() for lay in net.encoder.layers])  # (layers, heads)
    mx = net.encoder.layers[0].attn.span.max
    fig, ax = plt.subplots(figsize=(6, 3))
    L, H = spans.shape
    for h in range(H):
        ax.bar(np.arange(L) + h / (H + 1), spans[:, h], width=1 / (H + 1), label=f"head {h}")
    ax.set_xlabel("layer")
    ax.set_ylabel("learned span (characters)")
    ax.set_xticks(np.arange(L) + 0.4, [str(i) for i in range(L)])
    ax.axhline(mx, color="grey", lw=0.8, ls="--")
    ax.legend(fontsize=7)
    png = ROOT / "benchmarks" / "results" / f"longcontext_spans{'_quick' if a.quick else ''}.png"
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    # Step time at the learned spans against the full span (the same weights, z = 1).
    x = torch.randint(1, 50, (a.batch, a.train_len))
    net.train()

    def step_time() -> float:
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            net(x).float().logsumexp(-1).mean().backward()
            times.append(time.perf_counter() - t0)
        return sorted(times)[1]

    learned = step_time()
    with torch.no_grad():
        for lay in net.encoder.layers:
            lay.attn.span.z.fill_(1.0)
    full = step_time()
    row_span = runs["adaptive_span"]["row"]
    base = runs["baseline_rotary"]["row"]
    mean = float(spans.mean())
    rel = row_span["bpc"] / base["bpc"] - 1
    md([header(a, "learned spans"), "",
        f"Mean span {mean:.1f} of max {mx} ({mean / mx:.1%}; goal <= 25%: {'met' if mean <= mx / 4 else 'NOT met'}); "
        f"bpc {row_span['bpc']:.3f} vs the fixed maximum span {base['bpc']:.3f} ({rel:+.1%}; goal at most 1% worse: "
        f"{'met' if rel <= 0.01 else 'NOT met'}); training step {learned * 1e3:.0f} ms at the learned spans vs "
        f"{full * 1e3:.0f} ms at the full span ({full / learned:.2f}x). Spans per layer and head: "
        f"`{png.relative_to(ROOT)}` ({np.round(spans, 1).tolist()})."])


@torch.no_grad()
def layer_diversity(net, ids: np.ndarray, length: int, windows: int = 8) -> tuple[list[float], list[int]]:
    """Per layer of the char LM (0: the embeddings, then each block's output): PanGu-π's relative
    feature diversity ``d_M(H) / ||H||_F`` averaged over ``windows`` test windows of ``length``
    characters, and the effective dimension ``d(0.8)`` of all their token features (Sec. 3, 5.2)."""
    from tsformer.nn.pangu import effective_dimension, feature_diversity

    n = min(windows, (len(ids) - 1) // length)
    x = torch.from_numpy(ids[: n * length].reshape(n, length))
    feats: list[torch.Tensor] = []
    layers = net.encoder.layers
    hooks = [layers[0].register_forward_pre_hook(lambda m, args: feats.append(args[0]))]
    hooks += [lay.register_forward_hook(lambda m, args, out: feats.append(out)) for lay in layers]
    try:
        net(x)
    finally:
        for h in hooks:
            h.remove()
    return ([round(float(feature_diversity(f).mean()), 4) for f in feats],
            [effective_dimension(f, 0.8) for f in feats])


def part_pangu(a, env, run_root, out) -> None:
    """PanGu-π ablation: test bpc and feature diversity per layer, a table and a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    setup = table_setup(a)
    rows = []
    for name, over in pangu_variants().items():
        row, _, net, ids = table_row(name, over, a, env, run_root, setup)
        row["diversity"], row["effective_dim"] = layer_diversity(net, ids, a.train_len)
        rows.append(row)
        print(row, flush=True)
    append(rows, out)
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    for r in rows:
        label = f"{r['model'].removeprefix('pangu_')} ({r['bpc']:.3f} bpc)"
        axes[0].plot(r["diversity"], marker="o", label=label)
        axes[1].plot(r["effective_dim"], marker="o", label=label)
    axes[0].set_ylabel("relative diversity d_M(H) / ||H||")
    axes[1].set_ylabel("effective dimension d(0.8)")
    for ax in axes:
        ax.set_xlabel("layer (0: embeddings)")
        ax.set_xticks(range(len(rows[0]["diversity"])))
    axes[0].legend(fontsize=7)
    png = ROOT / "benchmarks" / "results" / f"longcontext_pangu{'_quick' if a.quick else ''}.png"
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    lines = [header(a, "PanGu-π ablation"), "", *md_table(
        ["model", "params", "test bpc", "steps", "train tok/s", "diversity per layer (0 = embeddings)",
         "d(0.8) per layer"],
        [[r["model"], f"{r['params']:,}", f"{r['bpc']:.3f}", r["train_steps"], f"{r['train_tokens_per_s']:.0f}",
          " ".join(f"{d:.3f}" for d in r["diversity"]), " ".join(map(str, r["effective_dim"]))] for r in rows])]
    lines += ["", f"Diversity: PanGu-π's d_M(H) = min_x ||H - 1 x^T||_F over each test window's token features, "
                  f"divided by ||H||_F; d(0.8): principal components for 80% of the variance. Plot: "
                  f"`{png.relative_to(ROOT)}`."]
    md(lines)


def part_evalspeed(a, runs, out) -> None:
    net, vocab, _ = load_net(Path(runs["xl_memory"]["run"]))
    ids = test_ids(a, vocab)
    ctx, seg = 2048, a.train_len
    n = min(a.evalspeed_positions, len(ids) - ctx - 1)
    x = torch.from_numpy(ids)
    # Sliding window: every position re-encodes the 2,048 characters before it.
    with torch.no_grad():
        t0 = time.perf_counter()
        total = 0.0
        for p in range(ctx, ctx + n):
            logits = net(x[p - ctx + 1 : p + 1][None])
            total += float(torch.nn.functional.cross_entropy(logits[0, -1:].float(), x[p + 1 : p + 2], reduction="sum"))
        slide_s = time.perf_counter() - t0
    slide_bpc, slide_tps = total / n / math.log(2), n / slide_s
    # Memory: segments of `seg` with 2048 - seg remembered; the same positions scored.
    with torch.no_grad():
        mem, total, count = None, 0.0, 0
        t0 = time.perf_counter()
        for s in range(0, ctx + n, seg):
            e = min(ctx + n, s + seg)
            logits, mem = net.forward_segment(x[s:e][None], mem, ctx - seg)
            lo = max(s, ctx)
            if e > lo:
                total += float(torch.nn.functional.cross_entropy(logits[0, lo - s : e - s].float(), x[lo + 1 : e + 1],
                                                                  reduction="sum"))
                count += e - lo
        mem_s = time.perf_counter() - t0
    mem_bpc, mem_tps = total / count / math.log(2), (ctx + n) / mem_s
    speedup = mem_tps / slide_tps
    append([{"model": "xl_eval_speed", "corpus": "pgbooks", "train_len": seg, "eval_len": ctx,
             "sliding_tokens_per_s": round(slide_tps, 2), "memory_tokens_per_s": round(mem_tps, 1),
             "speedup": round(speedup, 1), "sliding_bpc": round(slide_bpc, 4), "memory_bpc": round(mem_bpc, 4),
             "positions": n, "quick": a.quick}], out)
    md([header(a, "Transformer-XL evaluation speed"), "",
        f"2,048-character context, {n} positions: sliding window {slide_tps:.2f} chars/s (bpc {slide_bpc:.3f}), "
        f"memory (segment {seg}, memory {ctx - seg}) {mem_tps:.0f} chars/s (bpc {mem_bpc:.3f}): {speedup:.0f}x "
        f"(goal >= 50x: {'met' if speedup >= 50 else 'NOT met'}; paper: up to 1,874x on GPU)."])


def part_forecast(a, env, run_root, out) -> None:
    rows = []
    extra = ["trainer.max_steps=60"] if a.quick else []
    for name, over in {"logsparse": [], "alibi": ["model.attention.positions=alibi"],
                       "adaptive_span": ["model.attention.pattern=causal", f"model.attention.span={SPAN}"],
                       # RWKV-4 blocks (#17); forecasts sampled through the recurrent state.
                       "rwkv": ["model.attention.type=rwkv", "model.attention.pattern=causal",
                                "model.ffn=rwkv"]}.items():
        run = run_root / f"electricity_{name}"
        cmd = [sys.executable, "-m", "tsformer.train", "task=electricity", "model=logsparse", *over, *extra,
               f"run_dir={run}", "trainer.enable_progress_bar=false", "print_metrics=false"]
        print(f"[{datetime.now():%H:%M:%S}] electricity {name}", flush=True)
        code, peak, tail = peak_child(cmd, env)
        if code != 0:
            raise RuntimeError(f"electricity {name} failed:\n{tail}")
        m = json.loads((run / "metrics.json").read_text())
        rows.append({"model": f"electricity_{name}", "corpus": "electricity_sample", "rho50": m.get("test/rho50"),
                     "rho90": m.get("test/rho90"), "crps": m.get("test/crps"), "train_seconds": m.get("train/seconds"),
                     "train_steps": m.get("train/steps"), "quick": a.quick})
    append(rows, out)
    lines = [header(a, "electricity sample, " + ("60 steps" if a.quick else "the task's default 800 steps")), "",
             "| model | test rho50 | test rho90 | CRPS | steps | train s |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['rho50']:.4f} | {r['rho90']:.4f} | {r['crps']:.4f} | {r['train_steps']} | "
                     f"{r['train_seconds']:.0f} |")
    md(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="the reduced version (under 10 minutes)")
    ap.add_argument("--data", default=None, help="folder of books (default ../shared/data/pgbooks, quick: the excerpt)")
    ap.add_argument("--minutes", type=int, default=15, help="training budget per variant")
    ap.add_argument("--parts", nargs="+", default=["table", "extrapolation", "spans", "evalspeed", "forecast"])
    ap.add_argument("--variants", nargs="+", default=None, help="table rows to run (default: all)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "longcontext.json"))
    a = ap.parse_args()
    a.train_len, a.batch, a.seconds = 512, 8, 0
    a.eval_chars, a.evalspeed_positions = 262_144, 256
    if a.quick:
        a.data = a.data or str(ROOT / "data" / "pgbooks_excerpt")
        a.minutes, a.seconds, a.train_len, a.batch = 0, 30, 128, 8
        a.eval_chars, a.evalspeed_positions = 16_384, 32
    a.data = str(Path(a.data or ROOT.parent / "shared" / "data" / "pgbooks").resolve())
    torch.set_num_threads(a.threads)
    env = {**os.environ, "OMP_NUM_THREADS": str(a.threads), "PYTHONPATH": str(ROOT)}
    _, a.base_mb, _ = peak_child([sys.executable, "-c", "import tsformer.train"], env)
    run_root = ROOT / "outputs" / "longcontext" / datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    out = Path(a.out)
    runs = {}
    if {"table", "spans", "evalspeed"} & set(a.parts):
        runs = part_table(a, env, run_root, out)
    if "spans" in a.parts and {"adaptive_span", "baseline_rotary"} <= set(runs):
        part_spans(a, runs)
    if "evalspeed" in a.parts and "xl_memory" in runs:
        part_evalspeed(a, runs, out)
    if "extrapolation" in a.parts:
        part_extrapolation(a, env, run_root, out)
    if "forecast" in a.parts:
        part_forecast(a, env, run_root, out)
    if "pangu" in a.parts:
        part_pangu(a, env, run_root, out)


if __name__ == "__main__":
    main()
