"""How closely the approximate attention types reproduce exact softmax attention (issue 16).

For each method and setting it measures the relative error of the attention output,
``||out - exact||_F / ||exact||_F``, over several seeds (B=1, H=4 heads of D=64,
bidirectional):

- ``performer``: FAVOR+ (Choromanski et al. 2021) over the number of features ``m``, with
  ``orthogonal`` vs ``iid`` rows and ``positive`` vs ``trig`` features
  (:func:`tsformer.attention.favor.favor_attention`), against ``softmax(q k^T / sqrt(d)) v``.
- ``linformer``: ``softmax(q (E k)^T / sqrt(d)) E v`` (Wang et al. 2020) with ``E`` drawn as
  the layer initialises it (``N(0, 1/k)``, not learned) over ``k``, against the same.
- ``lsh``: the Reformer layer (Kitaev et al. 2020), built through the registry, over
  ``buckets`` and ``rounds``, against the same layer with one bucket and one chunk holding
  the whole sequence (exact shared-QK attention under its self-masking rule). Skipped,
  with a message, while ``tsformer.nn.attention.lsh`` is not installed.

Settings:

- ``random_s1`` / ``random_s05``: q, k, v ~ N(0, s^2) entries, s = 1 (logits of unit
  standard deviation) and 0.5.
- ``trained``: q, k, v taken (at the second layer's ``qkv`` projection) from a small
  character LM (d_model=128, 2 heads of 64, 2 layers, no positions) trained here for a few
  hundred steps on the shipped excerpt ``data/pgbooks_excerpt`` (training books), on a
  held-out passage (``dracula``). The LSH layer keeps its own random projections and reads
  that LM's hidden states at the same layer.
- ``kernel_small`` / ``kernel_large``: the kernel itself rather than attention: pairs with
  ``|q| = |k| = 1.5`` (scaled, as attention feeds them) at an angle drawn in ``[pi/2, pi]``
  (softmax kernel ``exp(q . k) <= 1``: small scores) or ``[0, pi/2]``; the error is the root
  mean square of ``(estimate - exact) / exact`` over 512 pairs (``seq_len`` is null there).
  This is the regime of the paper's Fig. 2/Lemma 2 comparison of positive and trigonometric
  features.

Writes ``benchmarks/results/approximation.json`` (rows ``method, setting, seq_len,
rel_error, seed`` plus ``features``/``k``/``buckets``/``rounds``), prints a table of means
and says whether the paper's orderings show; appends both to ``benchmarks/RESULTS.md``.

Usage::

    python benchmarks/approximation.py --quick     # fewer sizes, 2 seeds, 60 training steps
    python benchmarks/approximation.py             # 5 seeds, L=1024, 400 training steps
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tsformer.attention.favor import favor_attention, gaussian_projection, softmax_features  # noqa: E402
from tsformer.attention.reference import dense_attention  # noqa: E402

H, D = 4, 64


def rel_error(out: torch.Tensor, exact: torch.Tensor) -> float:
    return float((out - exact).norm() / exact.norm())


def exact_attention(q, k, v) -> torch.Tensor:
    return dense_attention(q, k, v, torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool))


# ----------------------------------------------------------------------------- inputs


def random_qkv(L: int, scale: float, seed: int):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(1, H, L, D, generator=g, dtype=torch.float64) * scale for _ in range(3)]


def train_char_lm(steps: int, context: int = 256, seed: int = 0, batch: int = 16):
    """A tiny causal char LM on the shipped excerpt's training books; returns it and a
    held-out token sequence from the validation book."""
    from tsformer.data.text.books import read_book
    from tsformer.nn.longformer import LongformerCharLM

    folder = ROOT / "data" / "pgbooks_excerpt"
    train_text = "\n\n".join(read_book(folder / f"{b}.txt") for b in ("pride_and_prejudice", "bleak_house"))
    held = read_book(folder / "dracula.txt")
    vocab = sorted(set(train_text) | set(held))
    index = {c: i for i, c in enumerate(vocab)}
    data = torch.tensor([index[c] for c in train_text])
    torch.manual_seed(seed)
    lm = LongformerCharLM(vocab_size=len(vocab), d_model=H * D // 2, n_heads=H // 2, n_layers=2, d_ff=256,
                          window=[context, context], max_tokens=4096, dropout=0.0, positions="none",
                          attention={"type": "mhsa", "pattern": "causal", "positions": "none", "kernel": "sdpa"})
    opt = torch.optim.Adam(lm.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        starts = torch.randint(0, len(data) - context - 1, (batch,), generator=g)
        xb = torch.stack([data[s : s + context + 1] for s in starts.tolist()])
        logits = lm(xb[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), xb[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    held_tokens = torch.tensor([index[c] for c in held])
    return lm.eval(), held_tokens, float(loss.detach()) / math.log(2)


def trained_inputs(lm, tokens: torch.Tensor, L: int, seed: int):
    """``(q, k, v)`` ``(1, H', L, D)`` of the LM's second layer on a held-out passage, and that
    layer's input ``x`` ``(1, L, d_model)``."""
    g = torch.Generator().manual_seed(seed)
    s = int(torch.randint(0, len(tokens) - L, (1,), generator=g))
    seen = {}
    attn = lm.encoder.layers[1].attn
    h1 = attn.qkv.register_forward_hook(lambda m, i, o: seen.update(x=i[0], qkv=o))
    with torch.no_grad():
        lm(tokens[s : s + L][None])
    h1.remove()
    B, n_heads = 1, attn.n_heads
    q, k, v = seen["qkv"].view(B, L, 3, n_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    return [t.double() for t in (q, k, v)], seen["x"]


# ----------------------------------------------------------------------------- methods


def performer_rows(q, k, v, exact, setting, seed, feature_counts, L):
    rows = []
    for m in feature_counts:
        for kind in ("positive", "trig"):
            for orth in (True, False):
                g = torch.Generator().manual_seed(1000 * seed + m)
                w = gaussian_projection(m, D, orth, generator=g).double()
                out, _ = favor_attention(q, k, v, w, kind=kind)
                rows.append(dict(method=f"performer_{kind}_{'orthogonal' if orth else 'iid'}", setting=setting,
                                 seq_len=L, rel_error=rel_error(out, exact), seed=seed, features=m))
    return rows


def linformer_rows(q, k, v, exact, setting, seed, ks, L):
    rows = []
    for kk in ks:
        g = torch.Generator().manual_seed(1000 * seed + kk)
        E = torch.randn(kk, L, generator=g, dtype=torch.float64) / math.sqrt(kk)
        out = exact_attention(q, torch.matmul(E, k), torch.matmul(E, v))
        rows.append(dict(method="linformer", setting=setting, seq_len=L, rel_error=rel_error(out, exact), seed=seed,
                         k=kk))
    return rows


def lsh_available() -> str | None:
    """None, or why the LSH layer cannot be used."""
    try:
        import tsformer.nn.attention.lsh  # noqa: F401
    except ImportError as e:
        return f"not available ({e})"
    from tsformer.nn.attention import ATTENTION_LAYERS

    return None if "lsh" in ATTENTION_LAYERS else "not available (type 'lsh' is not registered)"


def lsh_rows(x, setting, seed, grid, L):
    """The LSH layer over (buckets, rounds) against its one-bucket, one-chunk twin on ``x``."""
    from tsformer.nn.attention import build_attention

    torch.manual_seed(seed)
    d_model = x.shape[-1]
    n_heads = d_model // D
    exact_layer = build_attention({"type": "lsh", "buckets": 1, "rounds": 1, "lsh_chunk": L, "kernel": "reference"},
                                  d_model, n_heads).double().eval()
    state = exact_layer.state_dict()
    with torch.no_grad():
        exact = exact_layer(x.double())
    rows = []
    for b, r in grid:
        layer = build_attention({"type": "lsh", "buckets": b, "rounds": r}, d_model, n_heads).double().eval()
        layer.load_state_dict({k: t for k, t in state.items() if k != "hash_seed"}, strict=False)
        with torch.no_grad():
            out = layer(x.double())
        rows.append(dict(method="lsh", setting=setting, seq_len=L, rel_error=rel_error(out, exact), seed=seed,
                         buckets=b, rounds=r))
    return rows


def kernel_rows(setting: str, seed: int, feature_counts, pairs: int = 512):
    """Relative RMS error of the kernel estimate ``phi(q) . phi(k)`` against ``exp(q . k)``."""
    g = torch.Generator().manual_seed(seed)
    lo, hi = (math.pi / 2, math.pi) if setting == "kernel_small" else (0.0, math.pi / 2)
    u = torch.nn.functional.normalize(torch.randn(pairs, D, generator=g, dtype=torch.float64), dim=-1)
    w_ = torch.randn(pairs, D, generator=g, dtype=torch.float64)
    w_ = torch.nn.functional.normalize(w_ - (w_ * u).sum(-1, keepdim=True) * u, dim=-1)  # orthogonal to u
    theta = lo + (hi - lo) * torch.rand(pairs, 1, generator=g, dtype=torch.float64)
    r = 1.5
    q, k = r * u, r * (torch.cos(theta) * u + torch.sin(theta) * w_)
    exact = torch.exp((q * k).sum(-1))
    rows = []
    for m in feature_counts:
        for kind in ("positive", "trig"):
            for orth in (True, False):
                w = gaussian_projection(m, D, orth, generator=torch.Generator().manual_seed(1000 * seed + m)).double()
                est = (softmax_features(q, w, kind) * softmax_features(k, w, kind)).sum(-1)
                err = float(((est - exact) / exact).square().mean().sqrt())
                rows.append(dict(method=f"performer_{kind}_{'orthogonal' if orth else 'iid'}", setting=setting,
                                 seq_len=None, rel_error=err, seed=seed, features=m))
    return rows


# ----------------------------------------------------------------------------- report


def size_of(r: dict) -> str:
    if "features" in r:
        return f"m={r['features']}"
    if "k" in r:
        return f"k={r['k']}"
    return f"b={r['buckets']},r={r['rounds']}"


def summarise(rows: list[dict]) -> tuple[str, list[str]]:
    """A markdown table of mean errors over seeds and plain statements about the orderings."""
    means: dict[tuple, list[float]] = defaultdict(list)
    for r in rows:
        means[(r["setting"], r["method"], size_of(r), r["seq_len"])].append(r["rel_error"])
    lines = ["| setting | method | size | L | mean rel. error | seeds |", "|---|---|---|---:|---:|---:|"]
    for (s, m, z, L), v in sorted(means.items(), key=lambda kv: (kv[0][0], kv[0][1], _order(kv[0][2]))):
        lines.append(f"| {s} | {m} | {z} | {'-' if L is None else L} | {sum(v) / len(v):.4g} | {len(v)} |")
    avg = {key: sum(v) / len(v) for key, v in means.items()}
    verdicts = []
    settings = sorted({r["setting"] for r in rows})
    for s in settings:
        for kind in ("positive", "trig"):
            pairs = [(z, avg[(s, f"performer_{kind}_orthogonal", z, L)], avg[(s, f"performer_{kind}_iid", z, L)])
                     for (s2, m, z, L) in avg if s2 == s and m == f"performer_{kind}_orthogonal"
                     and (s, f"performer_{kind}_iid", z, L) in avg]
            if pairs:
                wins = [z for z, o, i in pairs if o < i]
                verdicts.append(f"{s}, {kind}: orthogonal below independent at {len(wins)}/{len(pairs)} feature counts"
                                + ("" if len(wins) == len(pairs) else
                                   f" (not at {sorted(set(z for z, _, _ in pairs) - set(wins), key=_order)})"))
        pairs = [(z, avg[(s, "performer_positive_orthogonal", z, L)], avg[(s, "performer_trig_orthogonal", z, L)])
                 for (s2, m, z, L) in avg if s2 == s and m == "performer_positive_orthogonal"
                 and (s, "performer_trig_orthogonal", z, L) in avg]
        if pairs:
            wins = [z for z, p, t in pairs if p < t]
            verdicts.append(f"{s}: positive below trigonometric (orthogonal) at {len(wins)}/{len(pairs)} feature counts"
                            + ("" if len(wins) == len(pairs) else
                               f" (not at {sorted(set(z for z, _, _ in pairs) - set(wins), key=_order)})"))
    return "\n".join(lines), verdicts


def _order(size: str) -> tuple:
    return tuple(int(t.split("=")[1]) for t in size.split(","))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="fewer sizes, 2 seeds, L=256, 60 training steps of batch 8 (aimed at 1-2 min idle; not timed)")
    p.add_argument("--seeds", type=int, default=None)
    p.add_argument("--seq-len", type=int, default=None)
    p.add_argument("--train-steps", type=int, default=None)
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/approximation.json"))
    p.add_argument("--results-md", default=str(ROOT / "benchmarks/RESULTS.md"))
    p.add_argument("--no-md", action="store_true")
    args = p.parse_args(argv)
    quick = args.quick
    seeds = args.seeds or (2 if quick else 5)
    L = args.seq_len or (256 if quick else 1024)
    steps = args.train_steps if args.train_steps is not None else (60 if quick else 400)
    feature_counts = [16, 64, 256] if quick else [16, 32, 64, 128, 256, 512]
    ks = [16, 64, 256] if quick else [16, 32, 64, 128, 256, 512]
    ks = [k for k in ks if k <= L]
    lsh_grid = [(4, 1), (4, 4), (16, 1), (16, 4)] if quick else [(b, r) for b in (4, 8, 16, 32) for r in (1, 2, 4, 8)]
    start = time.perf_counter()
    lsh_missing = lsh_available()
    if lsh_missing:
        print(f"lsh: {lsh_missing}; skipped")
    rows: list[dict] = []
    for setting, scale in (("random_s1", 1.0), ("random_s05", 0.5)):
        for seed in range(seeds):
            q, k, v = random_qkv(L, scale, seed)
            exact = exact_attention(q, k, v)
            rows += performer_rows(q, k, v, exact, setting, seed, feature_counts, L)
            rows += linformer_rows(q, k, v, exact, setting, seed, ks, L)
            if not lsh_missing:
                x = torch.randn(1, L, H * D, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * scale
                rows += lsh_rows(x, setting, seed, lsh_grid, L)
    t = time.perf_counter()
    batch = 8 if quick else 16
    lm, held, bits = train_char_lm(steps, batch=batch)
    note = (f"trained: char LM, {steps} steps of batch {batch} on data/pgbooks_excerpt, last training loss "
            f"{bits:.2f} bits/char")
    print(f"{note} ({time.perf_counter() - t:.0f} s)")
    for seed in range(seeds):
        (q, k, v), x = trained_inputs(lm, held, L, seed)
        exact = exact_attention(q, k, v)
        rows += performer_rows(q, k, v, exact, "trained", seed, feature_counts, L)
        rows += linformer_rows(q, k, v, exact, "trained", seed, ks, L)
        if not lsh_missing:
            xx = torch.cat([x, x], -1) if x.shape[-1] < H * D else x  # the LSH layer's width: H heads of D
            rows += lsh_rows(xx, "trained", seed, lsh_grid, L)
    for setting in ("kernel_small", "kernel_large"):
        for seed in range(seeds):
            rows += kernel_rows(setting, seed, feature_counts)
    table, verdicts = summarise(rows)
    print(table)
    for line in verdicts:
        print(line)
    elapsed = time.perf_counter() - start
    print(f"{len(rows)} rows in {elapsed:.0f} s")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=1) + "\n")
    if args.no_md:
        return
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from attention import machine_name

    text = ["", f"### Attention approximation error, {stamp}, {machine_name('cpu')}", "",
            f"`python benchmarks/approximation.py {' '.join(sys.argv[1:] if argv is None else argv)}` "
            f"({elapsed:.0f} s): relative error of the attention output against exact softmax, "
            f"B=1, H={H}, D={D}, bidirectional, mean over {seeds} seeds. {note}."
            + (f" lsh: {lsh_missing}." if lsh_missing else ""), "", table, ""]
    text += [f"- {line}" for line in verdicts]
    with Path(args.results_md).open("a") as f:
        f.write("\n".join(text) + "\n")


if __name__ == "__main__":
    main()
