"""Batch-forecast throughput and memory (issue #19, section 2).

    PYTHONPATH=. python benchmarks/forecast_throughput.py [--quick] [--series 1000] [--compare REV] [--rss]

Throughput: context 168, horizon 24, 100 sample paths, the default LogSparse model
(tsformer/conf/model/logsparse.yaml, untrained: speed does not depend on the weights),
batch 256. Times the same path as ``python -m tsformer.forecast`` (data preparation, then
batched sampling with quantiles), each code version in its own process; ``--compare REV``
also times the package as it was at git revision ``REV`` (extracted with ``git archive``)
side by side, alternating, and checks both give the same forecasts. Prints the FLOPs of
one series' forecast (``torch.utils.flop_counter`` on the sampling of one series), the
matmul rate measured on the shapes that dominate it (rows = batch x paths), the series/s
bound that rate implies and the fraction reached.

``--rss``: peak resident memory of the forecast command (chunked reading and writing) for
10,000 and 100,000 series (``--quick``: 1,000 and 10,000), with a tiny model (d_model 16,
one layer, context 24, horizon 4, 4 sample paths) so that it finishes in minutes.

Figures go to benchmarks/RESULTS.md and benchmarks/results/forecast_throughput.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parent.parent
if any(arg.startswith("--_") for arg in sys.argv[1:]):
    # A timing child imports the package on its PYTHONPATH (the old revision of --compare):
    # this checkout goes last, for `benchmarks` only.
    sys.path.append(str(ROOT))
else:
    sys.path.insert(0, str(ROOT))

from benchmarks._report import append_json, publish  # noqa: E402


def synthetic(n: int, steps: int, seed: int = 0) -> pd.DataFrame:
    """``n`` hourly series of ``steps`` values (long format, sorted by series)."""
    rng = np.random.default_rng(seed)
    idx = pd.date_range("2020-01-01", periods=steps, freq="h")
    values = 10 + np.sin(np.arange(steps) / 4)[None] + rng.standard_normal((n, steps))
    return pd.DataFrame({"series": np.repeat([f"S{i:07d}" for i in range(n)], steps), "time": np.tile(idx, n),
                         "value": values.reshape(-1).astype(np.float32)})


def prepare(a, n: int):
    """The predict data module over :func:`synthetic` series, and the default model."""
    from hydra.utils import instantiate

    from tsformer.data.forecasting.csv_datamodule import CSVForecastingDataModule
    from tsformer.train import compose_config

    frame = synthetic(n, a.context + 24)
    kw = dict(frame=frame, time_col="time", target="value", id_col="series", context_length=a.context,
              horizon=a.horizon)
    dm = CSVForecastingDataModule(**kw, test_windows=0, val_windows=0)
    dm.setup("fit")
    pred = CSVForecastingDataModule(**kw, eval_batch_size=a.batch_size)
    state = dm.state_dict()
    if getattr(a, "_same_noise", False):  # the old inputs too: no stored age scale (it came with per-series noise)
        state = {k: v for k, v in state.items() if k != "age_length"}
    pred.load_state_dict(state)
    pred.setup("predict")
    torch.manual_seed(0)
    net = instantiate(compose_config(["model=logsparse"]).model, _convert_="all", **dm.model_kwargs())
    return pred, net


def child_time(a) -> None:
    """One timing in this process (the code on ``PYTHONPATH``): a JSON line on stdout."""
    import tsformer.forecast
    from tsformer.forecast import predict_frame

    if a.device == "cpu" and hasattr(tsformer.forecast, "reuse_freed_memory"):
        tsformer.forecast.reuse_freed_memory()  # as the command does (versions that have it)
    t0 = time.perf_counter()
    dm, net = prepare(a, a.series)
    prep = time.perf_counter() - t0
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    if a._same_noise:
        fc = sample_one_generator(net, dm, a.samples, a.device)
    else:
        fc, _ = predict_frame(net, dm, [0.1, 0.5, 0.9], a.samples, device=a.device, progress=False)
    if a.device == "cuda":
        torch.cuda.synchronize()
    sec = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    assert fc["series"].nunique() == a.series and len(fc) == a.series * a.horizon
    np.save(a._out, fc[["mean", "0.1", "0.5", "0.9"]].to_numpy(np.float32))
    print(json.dumps({"seconds": sec, "prep_seconds": prep, "user": r1.ru_utime - r0.ru_utime,
                      "sys": r1.ru_stime - r0.ru_stime, "threads": torch.get_num_threads()}))


def sample_one_generator(net, dm, samples: int, device: str) -> pd.DataFrame:
    """The sampling loop of the forecast command as it was before per-series noise: one
    generator seeded with 0 running through the batches (``forecast_batch`` with a generator
    exists in every version), so that an old and a new package draw the same noise and their
    forecasts can be compared exactly."""
    from tsformer.tasks.forecasting import forecast_batch

    gen = torch.Generator(device=device).manual_seed(0)
    qs = torch.tensor([0.1, 0.5, 0.9], device=device)
    rows = []
    with torch.inference_mode():
        net = net.to(device).eval()
        for batch in dm.predict_dataloader():
            s = forecast_batch(net, {k: v.to(device) for k, v in batch.items()}, samples, gen).float()  # (B, S, H)
            q = torch.quantile(s, qs, dim=1).permute(1, 2, 0).reshape(-1, 3)
            rows.append(torch.cat([s.mean(1).reshape(-1, 1), q], dim=1).cpu().numpy())
    names = [dm.table.names[n] for n, _ in dm.predict_items for _ in range(dm.horizon)]
    out = pd.DataFrame(np.concatenate(rows), columns=["mean", "0.1", "0.5", "0.9"])
    out.insert(0, "series", names)
    return out


def flops_per_series(a) -> dict[str, float]:
    """FLOPs of one series' forecast (all paths), by operator, from the sampling code."""
    from torch.utils.flop_counter import FlopCounterMode

    dm, net = prepare(a, 2)
    batch = next(iter(dm.predict_dataloader()))
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        net.eval().sample(batch["inputs"][:1], batch["covariates"][:1], batch["series"][:1], a.samples,
                          generator=torch.Generator().manual_seed(0))
    per_op = {str(k): float(v) for k, v in counter.get_flop_counts()["Global"].items()}
    return {"total": float(counter.get_total_flops()), **per_op}


def matmul_rates(rows: int, d: int = 64, d_ff: int = 128, k: int = 3, reps: int = 20) -> dict[str, float]:
    """GFLOP/s of ``torch.mm`` (into a preallocated output) on the step's shapes:
    ``rows = batch x paths`` by the convolution (``k d -> 2 d``), feed-forward and
    projection widths; best of ``reps``."""
    out = {}
    for kk, n in ((k * d, 2 * d), (d, d_ff), (d_ff, d), (d, d)):
        x, w, y = torch.randn(rows, kk), torch.randn(kk, n), torch.empty(rows, n)
        torch.mm(x, w, out=y)
        best = float("inf")
        for _ in range(reps):
            t0 = time.perf_counter()
            torch.mm(x, w, out=y)
            best = min(best, time.perf_counter() - t0)
        out[f"{rows}x{kk}x{n}"] = 2 * rows * kk * n / best / 1e9
    return out


def old_package(rev: str, tmp: Path) -> Path:
    """The ``tsformer`` package at git revision ``rev``, extracted under ``tmp``."""
    dest = tmp / f"rev-{rev}"
    dest.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "tsformer"], check=True, capture_output=True)
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    return dest


def run_child(flags: list[str], pythonpath: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(pythonpath)}
    p = subprocess.run([sys.executable, __file__, *flags], env=env, capture_output=True, text=True)
    if p.returncode:
        raise SystemExit(f"benchmark child failed:\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def throughput(a, tmp: Path) -> tuple[dict, list[str]]:
    # (name, package, flags): with --compare, old and new sample with the same draws (one
    # generator, the old scheme) so that their forecasts must agree; "new" alone is the
    # command's own path (per-series noise).
    versions = [("new", ROOT, [])]
    if a.compare:
        versions = [(f"old ({a.compare})", old_package(a.compare, tmp), ["--_same-noise"]),
                    ("new, same draws", ROOT, ["--_same-noise"]), *versions]
    base = [f"--{k.replace('_', '-')}={getattr(a, k)}" for k in ("series", "context", "horizon", "samples",
                                                                  "batch_size", "device")]
    runs: dict[str, list[dict]] = {name: [] for name, _, _ in versions}
    for _ in range(a.repeats):
        for i, (name, path, flags) in enumerate(versions):
            r = run_child([*base, "--_time", f"--_out={tmp / f'fc{i}.npy'}", *flags], path)
            r["series_per_s"] = a.series / r["seconds"]
            runs[name].append(r)
            print(f"{name}: {r['series_per_s']:.1f} series/s ({r['seconds']:.1f} s, user {r['user']:.1f} s, "
                  f"sys {r['sys']:.1f} s)", flush=True)
    new = max(runs["new"], key=lambda r: r["series_per_s"])
    flops = flops_per_series(a)
    rates = matmul_rates(min(a.batch_size, a.series) * a.samples)
    peak = max(rates.values())
    bound = peak * 1e9 / flops["total"]
    entry = {"series": a.series, "context": a.context, "horizon": a.horizon, "samples": a.samples,
             "batch_size": a.batch_size, "device": a.device, "runs": runs, "flops_per_series": flops,
             "matmul_gflops": rates, "bound_series_per_s": bound, "series_per_s": new["series_per_s"],
             "fraction_of_bound": new["series_per_s"] / bound}
    lines = [f"`{a.cmd}`: {a.series:,} series, context {a.context}, horizon {a.horizon}, {a.samples} sample paths, "
             f"batch {a.batch_size}, {new['threads']} threads, load {os.getloadavg()[0]:.1f} (CPU shared with other "
             "engineers' jobs: absolute figures are low; the ratio is measured side by side).", ""]
    for name, rs in runs.items():
        best = max(r["series_per_s"] for r in rs)
        each = ", ".join(f"{r['series_per_s']:.1f}" for r in rs)
        lines.append(f"- {name}: {each} series/s (best {best:.1f}; "
                     f"user {rs[-1]['user']:.1f} s, system {rs[-1]['sys']:.1f} s in the last run)")
    if a.compare:
        old = max(r["series_per_s"] for r in runs[versions[0][0]])
        same = max(r["series_per_s"] for r in runs[versions[1][0]])
        diff = float(np.abs(np.load(tmp / "fc0.npy") - np.load(tmp / "fc1.npy")).max())
        entry.update(speedup=same / old, max_abs_diff=diff)
        lines.append(f"- new / old with the same draws: {entry['speedup']:.2f}x; forecasts (mean, 10/50/90%) "
                     f"equal within {diff:.1e}; the command's own path (per-series noise): "
                     f"{new['series_per_s'] / old:.2f}x")
    lines.append(f"- FLOPs per series (flop_counter on the sampling of one series, {a.samples} paths): "
                 f"{flops['total'] / 1e9:.3f} GFLOP; matmul rate on the dominant shapes: "
                 + ", ".join(f"{k} {v:.1f}" for k, v in rates.items())
                 + f" GFLOP/s; bound at {peak:.1f} GFLOP/s: {bound:.1f} series/s; reached "
                 f"{entry['fraction_of_bound']:.0%} of it")
    return entry, lines


def tiny_model(path: Path, context: int, horizon: int, samples: int) -> None:
    """An untrained tiny forecaster as a ``.tsf`` file (for the memory runs)."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from tsformer.data.forecasting.csv_datamodule import CSVForecastingDataModule
    from tsformer.export import write_tsf
    from tsformer.train import compose_config

    cfg = compose_config(["task=csv", "data.path=unused.csv", "data.time_col=time", "data.id_col=series",
                          "data.target=value", f"data.context_length={context}", f"data.horizon={horizon}",
                          "model.d_model=16", "model.n_heads=2", "model.n_layers=1", "model.d_ff=32",
                          f"module.num_samples={samples}"])
    cfg = OmegaConf.to_container(cfg, resolve=True)
    dm = CSVForecastingDataModule(frame=synthetic(4, context + 4 * horizon + 8),
                                  **{k: v for k, v in cfg["data"].items() if k not in ("_target_", "path")})
    dm.setup("fit")
    torch.manual_seed(0)
    net = instantiate(cfg["model"], _convert_="all", **dm.model_kwargs())
    write_tsf(net.state_dict(), cfg, dm.state_dict(), path)


def child_rss(a) -> None:
    """The forecast command on ``a._input`` in this process: peak RSS as a JSON line."""
    from tsformer.forecast import DEFAULTS, run_forecast

    t0 = time.perf_counter()
    n, _ = run_forecast({**DEFAULTS, "model": a._model, "input": a._input, "output": a._out, "progress": False,
                         "batch_size": a.batch_size})
    print(json.dumps({"series": n, "seconds": time.perf_counter() - t0,
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def memory(a, tmp: Path) -> tuple[dict, list[str]]:
    sizes = [1_000, 10_000] if a.quick else [10_000, 100_000]
    C, H, S, steps = 24, 4, 4, 30
    model = tmp / "tiny.tsf"
    tiny_model(model, C, H, S)
    out = {}
    for n in sizes:
        inp = tmp / f"h{n}.csv"
        for lo in range(0, n, 5_000):  # written in blocks: the parent stays small too
            block = synthetic(min(5_000, n - lo), steps, seed=lo)
            block["series"] = np.repeat([f"S{i:07d}" for i in range(lo, lo + min(5_000, n - lo))], steps)
            block.to_csv(inp, mode="a", header=lo == 0, index=False)
        r = run_child(["--_rss", f"--_model={model}", f"--_input={inp}", f"--_out={tmp / f'f{n}.csv'}",
                       f"--batch-size={a.batch_size}"], ROOT)
        assert r["series"] == n
        out[n] = r
        print(f"{n:,} series: peak RSS {r['peak_rss_mb']:.0f} MB ({r['seconds']:.0f} s)", flush=True)
        inp.unlink()
    lo, hi = out[sizes[0]]["peak_rss_mb"], out[sizes[1]]["peak_rss_mb"]
    entry = {"rss": {str(k): v for k, v in out.items()}, "rss_ratio": hi / lo,
             "rss_model": f"d_model 16, 1 layer, context {C}, horizon {H}, {S} paths, {steps} steps per series"}
    lines = [f"- memory (`--rss`): the forecast command (chunked CSV in and out, default chunk_series) with a tiny "
             f"model ({entry['rss_model']}), batch {a.batch_size}: peak RSS "
             + ", ".join(f"{k:,} series {v['peak_rss_mb']:.0f} MB ({v['seconds']:.0f} s)" for k, v in out.items())
             + f": {hi / lo:.2f}x"]
    return entry, lines


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="256 series, batch 128; --rss: 1k and 10k series")
    ap.add_argument("--series", type=int, default=1_000)
    ap.add_argument("--context", type=int, default=168)
    ap.add_argument("--horizon", type=int, default=24)
    ap.add_argument("--samples", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--compare", default=None, help="also time the package at this git revision")
    ap.add_argument("--rss", action="store_true", help="also measure peak RSS for 10k and 100k series")
    ap.add_argument("--rss-only", action="store_true")
    ap.add_argument("--no-append", action="store_true", help="print only; do not add to RESULTS.md / JSON")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/forecast_throughput.json"))
    for hidden in ("--_out", "--_model", "--_input"):
        ap.add_argument(hidden, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--_time", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--_rss", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--_same-noise", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a._time:
        return child_time(a)
    if a._rss:
        return child_rss(a)
    a.cmd = "python benchmarks/forecast_throughput.py " + " ".join(sys.argv[1:])
    if a.quick:
        a.series, a.batch_size = min(a.series, 256), min(a.batch_size, 128)
    dev = torch.cuda.get_device_name() if a.device == "cuda" else f"{torch.get_num_threads()} CPU threads"
    entry = {"date": f"{datetime.now():%Y-%m-%d %H:%M}", "machine": platform.node(), "device": dev,
             "load": os.getloadavg()[0], "quick": a.quick}
    lines = [f"### forecast_throughput, {entry['date']}, {platform.node()} ({dev}, load {entry['load']:.1f})", ""]
    with tempfile.TemporaryDirectory() as tmp:
        if not a.rss_only:
            e, ls = throughput(a, Path(tmp))
            entry.update(e)
            lines += ls
        if a.rss or a.rss_only:
            e, ls = memory(a, Path(tmp))
            entry.update(e)
            lines += ls
    if not a.no_append:
        append_json(a.out, entry)
    publish("\n" + "\n".join(lines) + "\n", append=not a.no_append)


if __name__ == "__main__":
    main()
