"""Benchmark of the attention kernels (issue 3): time, peak memory and FLOP bound.

For each pattern, kernel and length (B=1, H=8, D=64, fp32) it measures the forward time
(inference, ``torch.no_grad``), the forward+backward time (``out.sum().backward()``), the
memory one forward+backward call adds, and the FLOP bound: pattern non-zeros x 4D flops
per head (``QK^T`` and ``PV``), forward, at the matmul peak measured on the machine.

- ``reference`` is timed as dense masked SDPA
  (``scaled_dot_product_attention`` with the pattern's boolean mask): the same math as
  the reference kernel (the tests' ground truth) on PyTorch's fused path, which is the
  baseline the issue quotes. ``auto`` is timed as what it picks for that call.
- ``added_mb`` is measured in a fresh process per (kernel, pattern, length) for
  ``run(q, k, v).sum().backward()`` (the output is not held by the caller): peak RSS
  (``VmHWM``, reset through ``/proc/self/clear_refs`` after a compile warm-up when there is
  one; ``ru_maxrss`` otherwise) minus RSS just before the call; on CUDA
  ``max_memory_allocated`` minus the allocation before the call. Where a kernel has no
  backward (``flex`` on CPU) time and memory are of the forward only.
- A kernel whose estimated memory would not fit is skipped, and the table says so. Rows
  measured so far are kept in ``<out>.partial.json`` until the run ends.
- Approximate attention (issue 16), ``--kernels performer linformer lsh``: ``performer``
  is FAVOR+ (:func:`tsformer.attention.favor.favor_attention`, 256 positive orthogonal
  features, bidirectional for ``full``, prefix sums for ``causal``) and ``linformer`` is
  ``E K``, ``E V`` (k = 256 rows) then SDPA (``full`` only), both on the same q, k, v;
  ``lsh`` is the Reformer layer built through the registry (``build_attention``, its
  defaults), timed as a whole layer on ``x = (B, L, H D)``, its projections included; ``x``
  is ``q``'s storage viewed as ``(B, L, H D)``, so the layer's input is, like the kernels'
  ``q, k, v``, allocated before the call (a transposed copy made inside the call would be
  counted, and kept for the backward). A type that is not installed (``lsh`` before it
  merges) is reported and skipped.

Usage::

    python benchmarks/attention.py                 # L = 1024, 4096, 8192, 16384, all patterns
    python benchmarks/attention.py --quick         # L = 8192, logsparse and window w=512
    python benchmarks/attention.py --device cuda --append
    python benchmarks/attention.py --kernels sparse --seq-lens 8192 16384 32768 65536 --append
    python benchmarks/attention.py --kernels reference performer linformer lsh --patterns full causal \
        --seq-lens 1024 4096 8192 16384 32768 65536 --append

Writes ``benchmarks/results/attention.json`` (``--out``): a list of objects with keys
``pattern, kernel, seq_len, fwd_ms, fwd_bwd_ms, added_mb, flop_bound_ms, device``, prints
a table, and appends it with the date and machine to ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tsformer.attention import (  # noqa: E402
    Causal,
    Full,
    LogSparse,
    Pattern,
    SlidingWindow,
    attention,
    choose_kernel,
    get_kernel,
    nnz,
)

B, H, D = 1, 8, 64
PATTERNS: dict[str, Pattern] = {
    "full": Full(),
    "causal": Causal(),
    "logsparse": LogSparse(),
    "window512": SlidingWindow(512),
}
QUICK_PATTERNS = ["logsparse", "window512"]
KERNELS = ["reference", "flex", "sparse", "auto"]
APPROXIMATE = ["performer", "linformer", "lsh"]
"""Attention types with parameters of their own (issue 16), not in the default run."""
FEATURES, LINFORMER_K = 256, 256
SEQ_LENS = [1024, 4096, 8192, 16384]
ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- machine


def machine_name(device: str) -> str:
    """Device model and core count, e.g. ``AMD EPYC 9B14 (2 cores)`` or the GPU name."""
    if device.startswith("cuda"):
        return torch.cuda.get_device_name()
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model} ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def matmul_peak_flops(device: str) -> float:
    """Best fp32 matmul rate (FLOP/s) over a few square products."""
    n = 4096 if device.startswith("cuda") else 2048
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    best = 0.0
    for _ in range(4):
        sync(device)
        t = time.perf_counter()
        a @ b
        sync(device)
        best = max(best, 2 * n**3 / (time.perf_counter() - t))
    return best


def flop_bound_ms(pattern: Pattern, L: int, peak: float) -> float:
    """Forward FLOPs (non-zeros x 4D per head) at the matmul peak, in ms."""
    return nnz(pattern, L) * 4 * D * H * B / peak * 1e3


# ----------------------------------------------------------------------------- kernels

_MASKS: dict[tuple, torch.Tensor] = {}


def run(kernel: str, q, k, v, pattern: Pattern) -> torch.Tensor:
    """One attention call; ``reference`` as dense masked SDPA (see module docstring)."""
    if kernel == "reference":
        key = (pattern, q.shape[-2], str(q.device))
        if key not in _MASKS:
            _MASKS.clear()
            _MASKS[key] = pattern.to_dense(q.shape[-2], device=q.device)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=_MASKS[key])
    if kernel in APPROXIMATE:
        return run_approximate(kernel, q, k, v, pattern)
    return attention(q, k, v, pattern, kernel=kernel)


_PARTS: dict[tuple, object] = {}


def _part(key: tuple, make):
    """A fixed random projection or layer per (kind, length, pattern), built once (untimed)."""
    if key not in _PARTS:
        _PARTS.clear()
        torch.manual_seed(0)
        _PARTS[key] = make()
    return _PARTS[key]


def lsh_layer(pattern_name: str, device: str):
    """The Reformer layer through the registry, or None where the type is not installed."""
    try:
        import tsformer.nn.attention.lsh  # noqa: F401  (registers ``lsh`` once merged)
    except ImportError:
        return None
    from tsformer.nn.attention import ATTENTION_LAYERS, build_attention

    if "lsh" not in ATTENTION_LAYERS:
        return None
    return build_attention({"type": "lsh", "pattern": pattern_name}, H * D, H).to(device)


def run_approximate(kernel: str, q, k, v, pattern: Pattern) -> torch.Tensor:
    """``performer``, ``linformer`` or ``lsh`` on ``(B, H, L, D)`` (see module docstring)."""
    L, dev = q.shape[-2], q.device
    causal = isinstance(pattern, Causal)
    if kernel == "performer":
        from tsformer.attention.favor import favor_attention, gaussian_projection

        w = _part(("performer", str(dev)), lambda: gaussian_projection(FEATURES, D, device=dev))
        return favor_attention(q, k, v, w, causal=causal)[0]
    if kernel == "linformer":
        E = _part(("linformer", L, str(dev)), lambda: torch.randn(LINFORMER_K, L, device=dev) / LINFORMER_K**0.5)
        return F.scaled_dot_product_attention(q, torch.matmul(E, k), torch.matmul(E, v))
    name = "causal" if causal else "full"
    layer = _part(("lsh", name, str(dev)), lambda: lsh_layer(name, str(dev)))
    return layer(q.view(q.shape[0], L, H * D))  # q's storage as the layer input (no copy; random either way)


def resolved(kernel: str, pattern: Pattern, L: int, device: str, grad: bool) -> str:
    """The kernel that actually runs (``auto`` resolved)."""
    if kernel != "auto":
        return kernel
    q = torch.empty(B, H, L, D, device=device, requires_grad=grad)
    with torch.set_grad_enabled(grad):
        return choose_kernel(q, q, q, pattern)


def unsupported(kernel: str, pattern: Pattern, L: int, device: str, grad: bool) -> str | None:
    if kernel in ("reference", "auto"):
        return None
    if kernel in APPROXIMATE:
        serves = ("full",) if kernel == "linformer" else ("full", "causal")
        name = next((n for n, p in PATTERNS.items() if p == pattern), str(pattern))
        if name not in serves:
            return f"{kernel} serves patterns {list(serves)}, not {name}"
        if kernel == "lsh" and lsh_layer(name, device) is None:
            return "lsh: not available (tsformer.nn.attention.lsh is not installed)"
        return None
    q = torch.empty(B, H, L, D, device=device, requires_grad=grad)
    with torch.set_grad_enabled(grad):
        return get_kernel(kernel).supports(q, q, q, pattern)


def estimate_bytes(kernel: str, pattern: Pattern, L: int, grad: bool) -> int:
    """Rough peak added memory of one call, to skip what would not fit."""
    act = B * H * L * D * 4
    base = act * (4 if grad else 1)  # output (+ three input grads)
    if kernel == "reference":
        # Bool mask and the fused kernel's working set: measured 5.45 GB at L=32768 with the
        # backward (about 5 bytes per score), 1.45 GB at 16384.
        return base + L * L * (6 if grad else 2)
    if kernel == "flex":
        return base + L * L  # block-mask creation evaluates the mask densely
    if kernel in APPROXIMATE:
        return base + 512 * 2**20  # features of one checkpointed block, projections, buckets
    return base + 64 * 2**20


def available_bytes(device: str) -> int:
    if device.startswith("cuda"):
        return torch.cuda.mem_get_info()[0]
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable"):
            return int(line.split()[1]) * 1024
    return 8 * 2**30


def inputs(L: int, device: str, grad: bool):
    g = torch.Generator(device=device).manual_seed(0)
    return [torch.randn(B, H, L, D, device=device, generator=g).requires_grad_(grad) for _ in range(3)]


def time_ms(fn, device: str, repeats: int, budget_s: float = 8.0) -> float:
    """Best of ``repeats`` timed calls after one warm-up (fewer when one call is slow)."""
    fn()
    best = float("inf")
    spent = 0.0
    for _ in range(repeats):
        sync(device)
        t = time.perf_counter()
        fn()
        sync(device)
        dt = time.perf_counter() - t
        best, spent = min(best, dt), spent + dt
        if spent > budget_s:
            break
    return best * 1e3


def time_case(kernel: str, pattern: Pattern, L: int, device: str, repeats: int, grad: bool) -> float:
    q, k, v = inputs(L, device, grad)
    if not grad:
        def fwd():
            with torch.no_grad():
                run(kernel, q, k, v, pattern)

        return time_ms(fwd, device, repeats)

    def fwd_bwd():
        run(kernel, q, k, v, pattern).sum().backward()
        q.grad = k.grad = v.grad = None

    return time_ms(fwd_bwd, device, repeats)


# ----------------------------------------------------------------------------- memory


def _status_bytes(key: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def memory_child(kernel: str, pattern_name: str, L: int, device: str, grad: bool) -> float:
    """Added MB of one call in this (fresh) process."""
    pattern = PATTERNS[pattern_name]
    q, k, v = inputs(L, device, grad)

    def call():
        # The caller keeps no reference to the output: whatever a kernel saves for backward
        # (the window kernel keeps it, the log-sparse kernel does not) is what counts.
        if grad:
            run(kernel, q, k, v, pattern).sum().backward()
        else:
            run(kernel, q, k, v, pattern)

    if kernel in APPROXIMATE:  # build the projections (or the layer) outside the measurement
        with torch.no_grad():
            run(kernel, q[..., :1, :].contiguous(), k[..., :1, :].contiguous(), v[..., :1, :].contiguous(), pattern)
            run(kernel, q.detach(), k.detach(), v.detach(), pattern) if kernel == "linformer" else None
        gc.collect()
    warm = resolved(kernel, pattern, L, device, grad) == "flex"
    if warm:  # keep the compiler's own memory out of the kernel's
        with torch.set_grad_enabled(grad):
            call()
        q.grad = k.grad = v.grad = None
        gc.collect()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        with torch.set_grad_enabled(grad):
            call()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    reset = _reset_peak_rss()
    if warm and not reset:
        return float("nan")
    before = _status_bytes("VmRSS") or 0
    with torch.set_grad_enabled(grad):
        call()
    peak = _status_bytes("VmHWM") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return (peak - before) / 2**20


def measure_memory(kernel: str, pattern_name: str, L: int, device: str, grad: bool) -> float | None:
    cmd = [sys.executable, __file__, "--_memory", kernel, pattern_name, str(L), device, str(int(grad))]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=True)
        return json.loads(res.stdout.strip().splitlines()[-1])["added_mb"]
    except (subprocess.SubprocessError, ValueError, IndexError, KeyError) as e:
        print(f"  memory measurement failed for {kernel}/{pattern_name}/{L}: {e}", file=sys.stderr)
        return None


# ----------------------------------------------------------------------------- main


def bench(args) -> tuple[list[dict], list[str]]:
    device = args.device
    peak = matmul_peak_flops(device)
    notes = [f"matmul peak measured: {peak / 1e9:.0f} GFLOP/s fp32"]
    if hasattr(os, "getloadavg") and not device.startswith("cuda"):
        # A shared CPU skews every time here; ratios within one run stay comparable.
        notes.append(f"load average at start: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print("; ".join(notes))
    rows = []
    partial = Path(args.out).with_suffix(".partial.json")
    noted: set[tuple[str, str]] = set()
    for L in args.seq_lens:
        for pname in args.patterns:
            pattern = PATTERNS[pname]
            bound = flop_bound_ms(pattern, L, peak)
            for kernel in args.kernels:
                row = dict(pattern=pname, kernel=kernel, seq_len=L, fwd_ms=None, fwd_bwd_ms=None,
                           added_mb=None, flop_bound_ms=round(bound, 3), device=device)
                tag = f"{pname:10s} {kernel:9s} L={L:6d}"
                if kernel in APPROXIMATE:
                    why = unsupported(kernel, pattern, L, device, grad=True)
                    if why is not None:  # not a measurement: no row
                        if (kernel, pname) not in noted:
                            noted.add((kernel, pname))
                            notes.append(f"{kernel}/{pname}: skipped ({why})")
                            print(f"{tag}  SKIPPED ({why})")
                        continue
                need = estimate_bytes(kernel, pattern, L, grad=True)
                if need > 0.8 * available_bytes(device):
                    notes.append(f"skipped {kernel}/{pname}/L={L}: needs ~{need / 2**30:.1f} GiB, would not fit")
                    print(f"{tag}  SKIPPED (would not fit in memory)")
                    rows.append(row)
                    continue
                if unsupported(kernel, pattern, L, device, grad=False) is None:
                    row["fwd_ms"] = round(time_case(kernel, pattern, L, device, args.repeats, grad=False), 2)
                why_not = unsupported(kernel, pattern, L, device, grad=True)
                if why_not is None:
                    row["fwd_bwd_ms"] = round(time_case(kernel, pattern, L, device, args.repeats, grad=True), 2)
                elif (kernel, pname) not in noted:
                    noted.add((kernel, pname))
                    notes.append(f"{kernel}/{pname}: no forward+backward ({why_not})")
                if not args.no_memory:
                    grad = why_not is None
                    row["added_mb"] = measure_memory(kernel, pname, L, device, grad)
                    if row["added_mb"] is not None:
                        row["added_mb"] = round(row["added_mb"], 1)
                if kernel == "auto":
                    notes.append(
                        f"auto/{pname}/L={L}: forward -> {resolved(kernel, pattern, L, device, False)}, "
                        f"forward+backward -> {resolved(kernel, pattern, L, device, True)}"
                    )
                print(f"{tag}  fwd {row['fwd_ms']} ms  fwd+bwd {row['fwd_bwd_ms']} ms  "
                      f"added {row['added_mb']} MB  bound {row['flop_bound_ms']} ms", flush=True)
                rows.append(row)
                # A run of an hour can be killed (out of memory, time): keep what it measured.
                partial.write_text(json.dumps(rows, indent=1) + "\n")
    partial.unlink(missing_ok=True)
    return rows, notes


def _fmt(x, nd=1) -> str:
    return "-" if x is None else f"{x:.{nd}f}"


def table(rows: list[dict]) -> str:
    lines = [
        "| pattern | kernel | L | fwd ms | fwd+bwd ms | added MB | FLOP bound ms | fwd / bound |"
        " fwd+bwd speedup vs reference |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    ref = {(r["pattern"], r["seq_len"], r["device"]): r for r in rows if r["kernel"] == "reference"}
    for r in rows:
        base = ref.get((r["pattern"], r["seq_len"], r["device"]))
        speed = None
        if base and base["fwd_bwd_ms"] and r["fwd_bwd_ms"]:
            speed = base["fwd_bwd_ms"] / r["fwd_bwd_ms"]
        ratio = r["fwd_ms"] / r["flop_bound_ms"] if r["fwd_ms"] and r["flop_bound_ms"] else None
        lines.append(
            f"| {r['pattern']} | {r['kernel']} | {r['seq_len']} | {_fmt(r['fwd_ms'])} | {_fmt(r['fwd_bwd_ms'])} "
            f"| {_fmt(r['added_mb'])} | {_fmt(r['flop_bound_ms'], 2)} | {_fmt(ratio)} | "
            f"{'-' if speed is None else f'{speed:.1f}x'} |"
        )
    return "\n".join(lines)


def targets(rows: list[dict]) -> list[str]:
    """Issue 3 targets at L=8192 for the rows of this run."""
    out = []
    by = {(r["pattern"], r["kernel"], r["seq_len"]): r for r in rows}
    L = 8192

    def get(p, k, key):
        r = by.get((p, k, L))
        return None if r is None else r[key]

    for p, need in (("logsparse", 25.0), ("window512", 6.0)):
        ref, sp = get(p, "reference", "fwd_bwd_ms"), get(p, "sparse", "fwd_bwd_ms")
        if ref and sp:
            out.append(f"{p} fwd+bwd sparse vs reference: {ref / sp:.1f}x (target >= {need:g}x): "
                       f"{'met' if ref / sp >= need else 'NOT met'}")
    sf, ff = get("logsparse", "sparse", "fwd_ms"), get("logsparse", "flex", "fwd_ms")
    if sf and ff:
        out.append(f"logsparse forward sparse {sf:.1f} ms vs flex {ff:.1f} ms (target: sparse faster): "
                   f"{'met' if sf < ff else 'NOT met'}")
    sf, ff = get("window512", "sparse", "fwd_ms"), get("window512", "flex", "fwd_ms")
    if sf and ff:
        out.append(f"window512 forward sparse {sf:.1f} ms vs flex {ff:.1f} ms = {sf / ff:.2f}x "
                   f"(target <= 1.25x): {'met' if sf <= 1.25 * ff else 'NOT met'}")
    for p in ("logsparse", "window512"):
        a = get(p, "auto", "fwd_ms")
        cands = [x for x in (get(p, "sparse", "fwd_ms"), get(p, "flex", "fwd_ms")) if x]
        if a and cands:
            out.append(f"{p} forward auto {a:.1f} ms vs best of sparse/flex {min(cands):.1f} ms")
    return out


def approximate_targets(rows: list[dict]) -> list[str]:
    """Issue 16 goals: fwd+bwd at L=65536 within 1 GiB added, faster than ``reference`` from L=4096."""
    out = []
    by = {(r["pattern"], r["kernel"], r["seq_len"]): r for r in rows}
    for (p, kern, L), r in sorted(by.items()):
        if kern not in APPROXIMATE:
            continue
        if L == 65536 and r["added_mb"] is not None:
            out.append(f"{kern}/{p} fwd+bwd at L=65536 adds {r['added_mb']:.0f} MB (goal <= 1024): "
                       f"{'met' if r['added_mb'] <= 1024 else 'NOT met'}")
        ref = by.get((p, "reference", L))
        if L >= 4096 and r["fwd_bwd_ms"]:
            if ref is None or not ref["fwd_bwd_ms"]:
                out.append(f"{kern}/{p} L={L}: reference not measured, no speed comparison")
            else:
                x = ref["fwd_bwd_ms"] / r["fwd_bwd_ms"]
                out.append(f"{kern}/{p} L={L} fwd+bwd {x:.1f}x reference (goal > 1): {'met' if x > 1 else 'NOT met'}")
    return out


def write_results(rows: list[dict], notes: list[str], args) -> None:
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.append and out.exists():
        new = {(r["pattern"], r["kernel"], r["seq_len"], r["device"]) for r in rows}
        old = [r for r in json.loads(out.read_text())
               if (r["pattern"], r["kernel"], r["seq_len"], r["device"]) not in new]
        all_rows = old + rows
    else:
        all_rows = rows
    out.write_text(json.dumps(all_rows, indent=1) + "\n")
    tab = table(rows)
    goals = targets(rows) + approximate_targets(rows)
    print()
    print(tab)
    for line in notes + goals:
        print(line)
    if args.no_md:
        return
    md = Path(args.results_md)
    if not md.exists():
        md.write_text("# Benchmark results\n\nAppended by the scripts in `benchmarks/`; newest last.\n")
    stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    cmd = "python benchmarks/attention.py " + " ".join(sys.argv[1:])
    text = [
        "",
        f"## Attention kernels, {stamp}, {machine_name(args.device)}",
        "",
        f"`{cmd}`: B={B}, H={H}, D={D}, fp32, device `{args.device}`. `reference` is dense masked SDPA; "
        "`added MB` is forward+backward (forward only where there is no backward); fwd / bound is "
        "the forward time over its FLOP bound.",
        "",
        tab,
        "",
    ]
    text += [f"- {line}" for line in notes + goals]
    with md.open("a") as f:
        f.write("\n".join(text) + "\n")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--quick", action="store_true", help="L=8192, logsparse and window w=512 only")
    p.add_argument("--seq-lens", type=int, nargs="+", default=None)
    p.add_argument("--patterns", nargs="+", choices=list(PATTERNS), default=None)
    p.add_argument("--kernels", nargs="+", choices=KERNELS + APPROXIMATE, default=KERNELS)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/attention.json"))
    p.add_argument("--results-md", default=str(ROOT / "benchmarks/RESULTS.md"))
    p.add_argument("--append", action="store_true", help="merge into --out instead of replacing it")
    p.add_argument("--no-md", action="store_true", help="do not append to RESULTS.md")
    p.add_argument("--no-memory", action="store_true", help="skip the per-case memory subprocesses")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--_memory", nargs=5, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args._memory:
        kernel, pname, L, device, grad = args._memory
        print(json.dumps({"added_mb": memory_child(kernel, pname, int(L), device, grad == "1")}))
        return
    if args.quick:
        args.seq_lens = args.seq_lens or [8192]
        args.patterns = args.patterns or QUICK_PATTERNS
    args.seq_lens = args.seq_lens or SEQ_LENS
    args.patterns = args.patterns or list(PATTERNS)
    rows, notes = bench(args)
    write_results(rows, notes, args)


if __name__ == "__main__":
    main()
