"""Forecasting accuracy and speed of tsformer against peers, on one protocol and one budget.

    python benchmarks/forecasting.py --dataset electricity_sample --budget-minutes 2
    python benchmarks/forecasting.py --dataset etth1 --models logsparse transformer --horizons 96 \
        --context 96 336 720 2048 --budget-minutes 1

Writes ``benchmarks/results/forecasting-NAME.json`` (a list of rows with ``model``,
``dataset``, each metric, ``train_seconds``, ``predict_seconds``, ``params``, ``device``
and the exact ``command`` that reproduces the row; rows of earlier runs with other
settings are kept) and appends a table, with date and machine, to
``benchmarks/RESULTS.md``.

Protocols:

- ``electricity_sample``: the 3 UCI clients, Li et al. (NeurIPS 2019): 7 rolling daily
  forecasts (horizon 24) from 2014-09-01 per client; R0.5, R0.9, MAE and CRPS (100 sample
  paths). tsformer models run through ``tsformer.train.train(cfg)``; every model is scored
  by ``tsformer.metrics`` on the same 21 windows.
- ``etth1``, ``ettm1``, ``exchange_rate``: the Informer/Autoformer long-horizon protocol
  (:mod:`tsformer.data.forecasting.longhorizon`): MSE and MAE on the standardised scale over all test
  windows (stride 1), horizon steps and channels. tsformer models are channel-independent
  :class:`tsformer.nn.patch_forecaster.PatchForecaster` networks trained by MSE.

Models: ``seasonal_naive``, tsformer ``logsparse`` and ``transformer`` (full attention),
the approximate attention types of issue 16 (``performer``, ``linformer``, ``lsh``: the same
networks with ``model.attention.type`` set, options in :data:`APPROXIMATE_ATTENTION`), and
the GluonTS peers ``deepar``, ``patchtst``, ``dlinear`` (``pip install '.[bench]'``).
On the long-horizon protocol every tsformer model is the encoder-style PatchForecaster, so
all three types fit; on ``electricity_sample`` the network is the causal decoder
(ConvTransformerForecaster), which Linformer cannot serve: that row is reported as refused.
Where published figures exist for the protocol (:data:`PUBLISHED`), the RESULTS.md table
lists them beside the measured rows.

    python benchmarks/forecasting.py --dataset etth1 --models performer linformer lsh \
        --horizons 96 --context 96 --budget-minutes 5
``--budget-minutes`` caps the training time of each (model, context, horizon) run.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import shlex
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO_ROOT))

from tsformer.data.forecasting.longhorizon import LongHorizonData, load_long_horizon  # noqa: E402
from tsformer.metrics import ForecastAccumulator, point_forecast_metrics  # noqa: E402

APPROXIMATE_ATTENTION: dict[str, dict[str, Any]] = {
    # model.attention for the issue-16 types. The patch forecaster sees few positions
    # ((look-back - 16) / 8 + 2 = 12 patches at look-back 96), so Linformer projects to
    # fewer rows, LSH uses few buckets and short chunks, and Performer fewer features (the
    # patch forecaster's heads are 4 wide: 256 features would cost 20x the attention).
    "performer": {"type": "performer", "features": 32},
    "linformer": {"type": "linformer", "k": 8},
    "lsh": {"type": "lsh", "buckets": 2, "rounds": 4, "lsh_chunk": 8},
}
TSFORMER_MODELS = ("logsparse", "transformer", *APPROXIMATE_ATTENTION)
GLUONTS_MODELS = ("deepar", "patchtst", "dlinear")
ALL_MODELS = ("seasonal_naive", *TSFORMER_MODELS, *GLUONTS_MODELS)

PUBLISHED: dict[tuple[str, int, int], dict[str, float]] = {
    # MSE at look-back 96, horizon 96, from the full long-term forecasting results in the
    # appendix of TimesNet (Wu et al. 2023, "TimesNet: Temporal 2D-Variation Modeling for
    # General Time Series Analysis", ICLR), which reran these baselines on that protocol.
    ("etth1", 96, 96): {"Reformer": 0.837, "Informer": 0.865, "Autoformer": 0.449},
    ("ettm1", 96, 96): {"Reformer": 0.538, "Informer": 0.672, "Autoformer": 0.505},
}
PUBLISHED_SOURCE = "TimesNet (Wu et al. 2023, ICLR), appendix, full long-term forecasting results"


@dataclass
class DatasetSpec:
    """Where a benchmark dataset lives and which protocol it uses."""

    kind: str  # "electricity" | "long"
    path: str  # relative to the data root
    split: str = "ratio"  # long-horizon split (see tsformer.data.forecasting.longhorizon)
    freq: str = "h"  # pandas frequency, for GluonTS
    horizons: tuple[int, ...] = (96, 192, 336, 720)
    context: int = 336


DATASETS: dict[str, DatasetSpec] = {
    "electricity_sample": DatasetSpec(
        "electricity", "electricity_uci_sample/df_electricity_sample.csv.gz", horizons=(24,), context=168
    ),
    "etth1": DatasetSpec("long", "ett/ETTh1.csv", split="ett_hour", freq="h"),
    "ettm1": DatasetSpec("long", "ett/ETTm1.csv.gz", split="ett_minute", freq="15min"),
    "exchange_rate": DatasetSpec("long", "exchange_rate/exchange_rate.txt.gz", split="ratio", freq="D"),
}


def device_description() -> str:
    """CPU model, cores visible and torch threads: the 'same machine' column."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"cpu: {cpu}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}"


def count_params(net: torch.nn.Module) -> int:
    return int(sum(p.numel() for p in net.parameters()))


def seed_all(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# --------------------------------------------------------------------------- electricity
def _electricity_cfg(model: str, data_path: str, context: int, budget_s: float, seed: int, run_dir: str,
                     max_steps: int | None):
    from tsformer.train import compose_config

    approx = APPROXIMATE_ATTENTION.get(model)
    overrides = [
        "task=electricity",
        f"model={'logsparse' if approx else model}",
        f"data.path={data_path}",
        f"data.context_length={context}",
        f"seed={seed}",
        f"run_dir={run_dir}",
        "print_metrics=false",
        "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false",
    ]
    if approx:  # the LogSparse forecaster with this attention type (a decoder: causal)
        overrides += [f"model.attention.{k}={v}" for k, v in approx.items()]
        overrides += ["model.attention.pattern=causal"]
    if max_steps is not None:
        overrides += [f"trainer.max_steps={max_steps}", f"trainer.val_check_interval={max(1, min(200, max_steps))}",
                      "module.warmup_steps=0", f"checkpoint.every_n_steps={max(1, max_steps)}"]
    if budget_s:
        secs = int(math.ceil(budget_s))
        overrides.append(f"trainer.max_time='00:{secs // 3600:02d}:{secs // 60 % 60:02d}:{secs % 60:02d}'")
    return compose_config(overrides)


def electricity_tsformer(model: str, data_path: str, context: int, budget_s: float, seed: int,
                         max_steps: int | None = None) -> dict[str, Any]:
    """Train and test a tsformer forecaster through ``train(cfg)``; its metrics and sizes."""
    from hydra.utils import instantiate

    from tsformer.train import train

    with tempfile.TemporaryDirectory(prefix="tsformer-bench-") as run_dir:
        cfg = _electricity_cfg(model, data_path, context, budget_s, seed, run_dir, max_steps)
        dm = instantiate(cfg.data, _convert_="all")
        dm.setup("fit")
        params = count_params(instantiate(cfg.model, _convert_="all", **dm.model_kwargs()))
        start = time.perf_counter()
        m = train(cfg)
        total = time.perf_counter() - start
    return {
        "rho50": m["test/rho50"], "rho90": m["test/rho90"], "mae": m["test/mae"], "crps": m["test/crps"],
        "train_seconds": m["train/seconds"], "predict_seconds": round(total - m["train/seconds"], 3),
        "train_steps": m["train/steps"], "params": params,
    }


def _electricity_datamodule(data_path: str, context: int):
    from tsformer.data.forecasting.datamodule import ForecastingDataModule

    dm = ForecastingDataModule(data_path, context_length=context, horizon=24, test_start="2014-09-01 00:00",
                               test_windows=7, test_stride=24, val_windows=7,
                               reader={"format": "auto", "dataset": "electricity", "aggregate": "mean"})
    dm.setup("fit")
    return dm


def electricity_seasonal_naive(data_path: str, context: int) -> dict[str, Any]:
    """Value one week earlier, on the same 21 test windows as ``train(cfg)``."""
    dm = _electricity_datamodule(data_path, context)
    start = time.perf_counter()
    fc, act = dm.seasonal_naive()
    m = point_forecast_metrics(act, fc)
    return {"rho50": m["rho50"], "rho90": m["rho90"], "mae": m["mae"], "crps": m["crps"], "train_seconds": 0.0,
            "predict_seconds": round(time.perf_counter() - start, 3), "params": 0}


def _scratch_dir() -> str:
    import atexit
    import shutil

    path = tempfile.mkdtemp(prefix="tsformer-gluonts-")
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def _gluonts_estimator(model: str, freq: str, horizon: int, context: int, budget_s: float, seed: int,
                       max_steps: int | None):
    """A GluonTS torch estimator at its documented defaults, adapted for horizon, context, budget."""
    # GluonTS's trainer adds a checkpoint callback that writes under default_root_dir (the
    # working directory unless set): keep it in a scratch dir removed at exit.
    trainer_kwargs: dict[str, Any] = {"accelerator": "cpu", "enable_progress_bar": False,
                                      "enable_model_summary": False, "logger": False, "deterministic": False,
                                      "default_root_dir": _scratch_dir()}
    if budget_s:
        trainer_kwargs["max_time"] = {"seconds": int(math.ceil(budget_s))}
    if max_steps is not None:
        trainer_kwargs["max_steps"] = max_steps
        trainer_kwargs["max_epochs"] = max(1, math.ceil(max_steps / 50))
    if model == "deepar":
        from gluonts.torch.model.deepar import DeepAREstimator

        return DeepAREstimator(freq=freq, prediction_length=horizon, context_length=context,
                               trainer_kwargs=trainer_kwargs)
    if model == "patchtst":
        from gluonts.torch.model.patch_tst import PatchTSTEstimator

        # patch_len is required by GluonTS; 16 with stride 8 is the PatchTST paper's choice.
        return PatchTSTEstimator(prediction_length=horizon, context_length=context, patch_len=16,
                                 trainer_kwargs=trainer_kwargs)
    if model == "dlinear":
        from gluonts.torch.model.d_linear import DLinearEstimator

        return DLinearEstimator(prediction_length=horizon, context_length=context, trainer_kwargs=trainer_kwargs)
    raise ValueError(f"unknown GluonTS model {model!r}; choose one of {GLUONTS_MODELS}")


def _forecast_samples(f, num_samples: int = 100) -> np.ndarray:
    """``(S, H)`` sample paths of a GluonTS forecast (drawn from its distribution if needed)."""
    if hasattr(f, "samples"):
        return np.asarray(f.samples, dtype=np.float64)
    return f.distribution.sample((num_samples,)).cpu().numpy().astype(np.float64)


def electricity_gluonts(model: str, data_path: str, context: int, budget_s: float, seed: int,
                        max_steps: int | None = None) -> dict[str, Any]:
    """Train a GluonTS estimator on the data before the validation days; test on the 21 windows."""
    import pandas as pd
    from gluonts.dataset.common import ListDataset

    dm = _electricity_datamodule(data_path, context)
    v, index = dm.table.values, dm.table.index
    t0 = int(index.searchsorted(pd.Timestamp("2014-09-01 00:00")))
    val_start = t0 - 7 * 24  # tsformer's training windows end here too
    start = pd.Period(index[0], freq="h")
    N = v.shape[1]
    train_ds = ListDataset([{"target": v[:val_start, n], "start": start} for n in range(N)], freq="h")
    val_ds = ListDataset([{"target": v[:t0, n], "start": start} for n in range(N)], freq="h")
    items = [(n, int(s)) for n, s in dm.test_items]
    test_ds = ListDataset([{"target": v[:s, n], "start": start} for n, s in items], freq="h")

    seed_all(seed)
    est = _gluonts_estimator(model, "h", 24, context, budget_s, seed, max_steps)
    t = time.perf_counter()
    predictor = est.train(train_ds, validation_data=val_ds)
    train_seconds = time.perf_counter() - t
    seed_all(seed)
    t = time.perf_counter()
    forecasts = list(predictor.predict(test_ds))
    samples = np.stack([_forecast_samples(f) for f in forecasts], axis=1)  # (S, W, H)
    predict_seconds = time.perf_counter() - t
    y = torch.tensor(np.stack([v[s : s + 24, n] for n, s in items]), dtype=torch.float64)
    st = torch.tensor(samples)
    q = torch.quantile(st, torch.tensor([0.5, 0.9], dtype=st.dtype), dim=0)
    acc = ForecastAccumulator()
    acc.update(y, q[0], q[1], st)
    m = acc.compute()
    return {"rho50": m["rho50"], "rho90": m["rho90"], "mae": m["mae"], "crps": m["crps"],
            "train_seconds": round(train_seconds, 3), "predict_seconds": round(predict_seconds, 3),
            "params": count_params(predictor.prediction_net)}


# --------------------------------------------------------------------------- long horizon
def _gather(values: torch.Tensor, starts: torch.Tensor, chans: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    """``values[s + lo : s + hi, c]`` for each (s, c): ``(B, hi - lo)``."""
    idx = starts[:, None] + torch.arange(lo, hi)[None, :]
    return values[idx, chans[:, None]]


def _pairs(starts: np.ndarray, n_channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    s = np.repeat(starts, n_channels)
    c = np.tile(np.arange(n_channels), len(starts))
    return torch.from_numpy(s), torch.from_numpy(c)


def _eval_point(predict, values: torch.Tensor, s: torch.Tensor, c: torch.Tensor, context: int, horizon: int,
                batch: int = 2048) -> dict[str, float]:
    sse = sae = 0.0
    n = 0
    for i in range(0, len(s), batch):
        x = _gather(values, s[i : i + batch], c[i : i + batch], -context, 0)
        y = _gather(values, s[i : i + batch], c[i : i + batch], 0, horizon)
        f = predict(x).double()
        d = f - y.double()
        sse += float((d * d).sum())
        sae += float(d.abs().sum())
        n += d.numel()
    return {"mse": sse / n, "mae": sae / n}


def long_seasonal_naive(data: LongHorizonData, context: int, horizon: int) -> dict[str, Any]:
    """Repeat the last season (one day; the last value for daily data) of the look-back."""
    season = data.steps_per_day if data.steps_per_day > 1 else 1
    L = max(context, season)
    values = torch.from_numpy(data.values)
    s, c = _pairs(data.window_starts("test", L, horizon), values.shape[1])
    reps = math.ceil(horizon / season)

    def predict(x: torch.Tensor) -> torch.Tensor:
        return x[:, -season:].repeat(1, reps)[:, :horizon]

    t = time.perf_counter()
    m = _eval_point(predict, values, s, c, L, horizon)
    return {**m, "train_seconds": 0.0, "predict_seconds": round(time.perf_counter() - t, 3), "params": 0}


PATCH_DEFAULTS: dict[str, Any] = {
    # PatchTST's ETTh1 sizes (small and strongly regularised: ETTh1 overfits quickly).
    "patch_len": 16, "stride": 8, "d_model": 16, "n_heads": 4, "n_layers": 2, "d_ff": 128,
    "dropout": 0.3, "linear_skip": True,
}


def long_tsformer(model: str, data: LongHorizonData, context: int, horizon: int, budget_s: float, seed: int,
                  max_steps: int | None = None, batch_size: int = 128, lr: float = 1e-3,
                  val_every: int = 200, val_max: int = 4096, **overrides: Any) -> dict[str, Any]:
    """Train a channel-independent :class:`PatchForecaster` by MSE within the budget.

    The learning rate follows a cosine decay over the budget (of time, or of ``max_steps``);
    the state with the best validation MSE (on a fixed subset of at most ``val_max``
    validation windows, checked every ``val_every`` steps) is tested.
    """
    from tsformer.nn.patch_forecaster import PatchForecaster

    if model not in TSFORMER_MODELS:
        raise ValueError(f"unknown tsformer model {model!r}; choose one of {TSFORMER_MODELS}")
    seed_all(seed)
    pattern = "logsparse" if model == "logsparse" else "full"
    kw = {**PATCH_DEFAULTS, **overrides}
    attention = {"pattern": pattern, "kernel": "auto", **APPROXIMATE_ATTENTION.get(model, {})}
    net = PatchForecaster(context, horizon, attention=attention, **kw)
    values = torch.from_numpy(data.values)
    N = values.shape[1]
    ts, tc = _pairs(data.window_starts("train", context, horizon), N)
    vs, vc = _pairs(data.window_starts("val", context, horizon), N)
    g = torch.Generator().manual_seed(seed)
    if len(vs) > val_max:
        keep = torch.randperm(len(vs), generator=g)[:val_max]
        vs, vc = vs[keep], vc[keep]
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)

    def val_mse() -> float:
        net.eval()
        with torch.no_grad():
            m = _eval_point(net, values, vs, vc, context, horizon)["mse"]
        net.train()
        return m

    best, best_state = math.inf, None
    step, start = 0, time.perf_counter()
    done = False
    while not done:
        order = torch.randperm(len(ts), generator=g)
        for i in range(0, len(order) - batch_size + 1, batch_size):
            elapsed = time.perf_counter() - start
            frac = max(step / max_steps if max_steps else 0.0, elapsed / budget_s if budget_s else 0.0)
            if frac >= 1.0:
                done = True
                break
            for group in opt.param_groups:
                group["lr"] = lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * frac)))
            b = order[i : i + batch_size]
            x = _gather(values, ts[b], tc[b], -context, 0)
            y = _gather(values, ts[b], tc[b], 0, horizon)
            loss = torch.nn.functional.mse_loss(net(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            opt.step()
            step += 1
            if step % val_every == 0:
                m = val_mse()
                if m < best:
                    best, best_state = m, {k: t.detach().clone() for k, t in net.state_dict().items()}
    m = val_mse()
    if m < best or best_state is None:
        best, best_state = m, {k: t.detach().clone() for k, t in net.state_dict().items()}
    train_seconds = time.perf_counter() - start
    net.load_state_dict(best_state)
    net.eval()
    s, c = _pairs(data.window_starts("test", context, horizon), N)
    t = time.perf_counter()
    with torch.no_grad():
        metrics = _eval_point(net, values, s, c, context, horizon)
    return {**metrics, "train_seconds": round(train_seconds, 3), "predict_seconds": round(time.perf_counter() - t, 3),
            "params": count_params(net), "train_steps": step, "best_val_mse": best}


def long_gluonts(model: str, data: LongHorizonData, freq: str, context: int, horizon: int, budget_s: float,
                 seed: int, max_steps: int | None = None) -> dict[str, Any]:
    """A GluonTS estimator on each channel as a univariate series; point forecast = mean."""
    import pandas as pd
    from gluonts.dataset.common import ListDataset

    if model == "deepar":
        raise ValueError("deepar on long horizons: autoregressive sampling of every test window is out of budget")
    v = data.values
    N = v.shape[1]
    start = pd.Period("2000-01-01", freq=freq)
    tr_end, va_end = data.borders["train"][1], data.borders["val"][1]
    train_ds = ListDataset([{"target": v[:tr_end, n], "start": start} for n in range(N)], freq=freq)
    val_ds = ListDataset([{"target": v[:va_end, n], "start": start} for n in range(N)], freq=freq)
    seed_all(seed)
    est = _gluonts_estimator(model, freq, horizon, context, budget_s, seed, max_steps)
    t = time.perf_counter()
    predictor = est.train(train_ds, validation_data=val_ds)
    train_seconds = time.perf_counter() - t
    predictor.batch_size = 1024
    s, c = _pairs(data.window_starts("test", context, horizon), N)
    values = torch.from_numpy(v)

    def predict(x: torch.Tensor) -> torch.Tensor:
        ds = ListDataset([{"target": row, "start": start} for row in x.numpy()], freq=freq)
        return torch.from_numpy(np.stack([np.asarray(f.mean) for f in predictor.predict(ds)]))

    seed_all(seed)
    t = time.perf_counter()
    m = _eval_point(predict, values, s, c, context, horizon, batch=4096)
    return {**m, "train_seconds": round(train_seconds, 3), "predict_seconds": round(time.perf_counter() - t, 3),
            "params": count_params(predictor.prediction_net)}


# --------------------------------------------------------------------------- harness
def gluonts_available() -> bool:
    try:
        import gluonts.torch  # noqa: F401
    except Exception:  # not installed, or installed against an incompatible pandas
        return False
    return True


def row_command(dataset: str, model: str, horizon: int, context: int, budget_minutes: float, seed: int,
                max_steps: int | None, data_root: str | None) -> str:
    parts = ["python", "benchmarks/forecasting.py", "--dataset", dataset, "--models", model,
             "--horizons", str(horizon), "--context", str(context), "--budget-minutes", f"{budget_minutes:g}",
             "--seed", str(seed), "--threads", str(torch.get_num_threads())]
    if max_steps is not None:
        parts += ["--max-steps", str(max_steps)]
    if data_root is not None:
        parts += ["--data-root", data_root]
    return shlex.join(parts)


def run_benchmark(
    dataset: str,
    models: list[str] | None = None,
    budget_minutes: float = 2.0,
    data_root: str | Path | None = None,
    horizons: list[int] | None = None,
    contexts: list[int] | None = None,
    seed: int = 0,
    max_steps: int | None = None,
    spec: DatasetSpec | None = None,
    log=print,
    on_row=None,
) -> list[dict[str, Any]]:
    """Train and evaluate each model on ``dataset``; one row per (model, context, horizon).

    Args:
        dataset: a key of :data:`DATASETS` (or any name, with ``spec``).
        models: names from :data:`ALL_MODELS` (default: all, GluonTS ones if installed).
        budget_minutes: training time cap of each run.
        data_root: folder holding the datasets (default ``../shared/data`` from the repo).
        horizons, contexts: settings to sweep (default: the protocol's).
        seed: seed of every run.
        max_steps: optional cap on training steps (tests, exact repeats).
        spec: dataset description overriding :data:`DATASETS` (tests).
        log: where progress lines go.
        on_row: called with each finished row (the CLI saves it at once).
    Returns:
        The rows, also what :func:`main` writes to the JSON file.
    """
    spec = spec or DATASETS.get(dataset)
    if spec is None:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of {sorted(DATASETS)}")
    root = Path(data_root) if data_root is not None else REPO_ROOT.parent / "shared" / "data"
    path = root / spec.path
    if not path.exists():
        raise FileNotFoundError(f"{path}: dataset file not found; pass --data-root <folder holding {spec.path}>")
    if models is None:
        models = [m for m in ALL_MODELS if m not in GLUONTS_MODELS or gluonts_available()]
    unknown = [m for m in models if m not in ALL_MODELS]
    if unknown:
        raise ValueError(f"unknown models {unknown}; choose from {ALL_MODELS}")
    horizons = list(horizons or spec.horizons)
    contexts = list(contexts or [spec.context])
    budget_s = budget_minutes * 60.0
    device = device_description()
    date = dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    data = load_long_horizon(path, spec.split) if spec.kind == "long" else None

    rows = []
    for context in contexts:
        for horizon in horizons:
            for model in models:
                t = time.perf_counter()
                if spec.kind == "electricity":
                    if horizon != 24:
                        raise ValueError("the electricity protocol has horizon 24")
                    if model == "seasonal_naive":
                        r = electricity_seasonal_naive(str(path), context)
                    elif model in TSFORMER_MODELS:
                        try:
                            r = electricity_tsformer(model, str(path), context, budget_s, seed, max_steps)
                        except ValueError as e:
                            if model not in APPROXIMATE_ATTENTION:
                                raise
                            log(f"{dataset} {model}: refused by the forecaster: {e}")
                            continue
                    else:
                        r = electricity_gluonts(model, str(path), context, budget_s, seed, max_steps)
                else:
                    if model == "seasonal_naive":
                        r = long_seasonal_naive(data, context, horizon)
                    elif model in TSFORMER_MODELS:
                        r = long_tsformer(model, data, context, horizon, budget_s, seed, max_steps)
                    elif model == "deepar":
                        log(f"skip deepar on {dataset}: autoregressive sampling of every long-horizon window "
                            "does not fit the budget")
                        continue
                    else:
                        r = long_gluonts(model, data, spec.freq, context, horizon, budget_s, seed, max_steps)
                row = {"model": model, "dataset": dataset, "horizon": horizon, "context_length": context, **r,
                       "device": device, "seed": seed, "budget_minutes": budget_minutes, "max_steps": max_steps,
                       "date": date,
                       "command": row_command(dataset, model, horizon, context, budget_minutes, seed, max_steps,
                                              None if data_root is None else str(data_root))}
                rows.append(row)
                if on_row is not None:
                    on_row(row)
                metrics = {k: round(v, 4) for k, v in r.items() if k in METRICS[spec.kind]}
                log(f"{dataset} {model} L={context} H={horizon}: {metrics} train {r['train_seconds']:.0f}s "
                    f"predict {r['predict_seconds']:.1f}s ({time.perf_counter() - t:.0f}s)")
    return rows


METRICS = {"electricity": ("rho50", "rho90", "mae", "crps"), "long": ("mse", "mae")}


def merge_rows(path: Path, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Earlier rows of ``path`` with other settings, then ``rows``."""
    key = lambda r: (r["model"], r["dataset"], r.get("horizon"), r.get("context_length"), r.get("budget_minutes"),
                     r.get("max_steps"))
    old = json.loads(path.read_text()) if path.exists() else []
    new_keys = {key(r) for r in rows}
    return [r for r in old if key(r) not in new_keys] + rows


def write_json_atomic(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)


def markdown_table(dataset: str, rows: list[dict[str, Any]], note: str = "") -> str:
    kind = "electricity" if "rho50" in rows[0] else "long"
    names = {"rho50": "R0.5", "rho90": "R0.9", "mae": "MAE", "crps": "CRPS", "mse": "MSE"}
    cols = METRICS[kind]
    head = ["model", "H", "look-back", *(names[c] for c in cols), "train s", "predict s", "params", "command"]
    lines = [f"### forecasting {dataset}: {rows[0]['date']}, {rows[0]['device']}", ""]
    if note:
        lines += [note, ""]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        vals = [r["model"], str(r["horizon"]), str(r["context_length"]), *(f"{r[c]:.4f}" for c in cols),
                f"{r['train_seconds']:.0f}", f"{r['predict_seconds']:.1f}", f"{r['params']:,}", f"`{r['command']}`"]
        lines.append("| " + " | ".join(vals) + " |")
    published = sorted({(r["horizon"], r["context_length"]) for r in rows
                        if (dataset, r["horizon"], r["context_length"]) in PUBLISHED})
    for h, c in published:
        figures = PUBLISHED[(dataset, h, c)]
        lines += ["", f"Published MSE at look-back {c}, horizon {h} ({PUBLISHED_SOURCE}): "
                  + ", ".join(f"{name} {mse:.3f}" for name, mse in figures.items()) + "."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", required=True, choices=sorted(DATASETS))
    p.add_argument("--models", nargs="+", default=None, choices=ALL_MODELS)
    p.add_argument("--budget-minutes", type=float, default=2.0, help="training time cap per run")
    p.add_argument("--data-root", default=None, help="folder with the datasets (default ../shared/data)")
    p.add_argument("--horizons", nargs="+", type=int, default=None)
    p.add_argument("--context", nargs="+", type=int, default=None, help="look-back lengths to sweep")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-steps", type=int, default=None, help="cap on training steps (besides the budget)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    p.add_argument("--note", default="", help="a line printed above the RESULTS.md table")
    p.add_argument("--results-dir", default=str(REPO_ROOT / "benchmarks" / "results"))
    p.add_argument("--results-md", default=str(REPO_ROOT / "benchmarks" / "RESULTS.md"))
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    out = Path(a.results_dir) / f"forecasting-{a.dataset}.json"
    # Each row is saved as soon as it is measured: an interrupted sweep keeps what it did.
    rows = run_benchmark(a.dataset, a.models, a.budget_minutes, a.data_root, a.horizons, a.context, a.seed,
                         a.max_steps, on_row=lambda r: write_json_atomic(out, merge_rows(out, [r])))
    if not rows:
        return rows
    table = markdown_table(a.dataset, rows, a.note)
    md = Path(a.results_md)
    md.parent.mkdir(parents=True, exist_ok=True)
    with open(md, "a") as f:
        f.write("\n" + table)
    print("\n" + table)
    print(f"rows written to {out}; table appended to {md}")
    return rows


if __name__ == "__main__":
    main()
