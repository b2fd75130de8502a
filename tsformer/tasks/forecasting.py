"""LightningModule for probabilistic forecasting: training step, rolling evaluation, optimizers."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from torch import Tensor, nn

from tsformer.metrics import ForecastAccumulator
from tsformer.nn.early_exit import (
    Calibration,
    EarlyExit,
    ExitClassifier,
    calibrate_threshold,
    candidate_thresholds,
    check_exit_heads,
    exit_classifier_data,
    gaussians_agree,
    quantile_loss_change,
    weighted_layer_loss,
)
from tsformer.nn.likelihoods import GaussianHead
from tsformer.tasks.hooks import LearnedPartsHooks
from tsformer.tasks.optim import warmup_cosine


def keyed_noise(seeds: Sequence[int], num_samples: int, horizon: int, device: torch.device | str = "cpu",
                dtype: torch.dtype = torch.float32) -> Tensor:
    """Standard-normal draws ``(B, S, H)``, row ``b`` from its own CPU generator seeded
    ``seeds[b]``, so a row's draws depend on its seed only (not on batching or device)."""
    rows = [torch.randn(num_samples, horizon, generator=torch.Generator().manual_seed(int(k))) for k in seeds]
    out = torch.stack(rows) if rows else torch.empty(0, num_samples, horizon)
    return out.to(device, dtype)


def series_seed(seed: int, series: object) -> int:
    """The noise seed of one series' forecast: a 63-bit hash of the run's ``seed`` and the
    series id (as text). Stable across processes and machines (unlike ``hash``), so a
    series gets the same forecast whichever partition, shard or batch it lands in."""
    digest = hashlib.blake2b(f"{int(seed)}\x1f{series}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def window_noise(batch: dict[str, Tensor], num_samples: int, horizon: int, seed: int) -> Tensor:
    """Standard-normal draws ``(B, S, H)``, each window's from its own generator seeded by
    (seed, series, start)."""
    seeds = [int(seed) * 1_000_003 + int(n) * 100_003 + int(t)
             for n, t in zip(batch["series"].tolist(), batch["start"].tolist())]
    return keyed_noise(seeds, num_samples, horizon, batch["inputs"].device, batch["inputs"].dtype)


def forecast_batch(
    net: nn.Module,
    batch: dict[str, Tensor],
    num_samples: int,
    generator: torch.Generator | None = None,
    seed: int | None = None,
    decode: dict | None = None,
    early_exit: EarlyExit | None = None,
    noise: Tensor | None = None,
) -> Tensor:
    """Sample paths of a forecast-window batch on the original scale: ``(B, S, H)``.

    ``noise``: the ``(B, S, H)`` standard-normal draws to use (e.g. :func:`keyed_noise`).
    Else, with ``seed`` (and windows that carry their ``start``), draws come from per-window
    generators (:func:`window_noise`); otherwise from ``generator``. ``decode``: the
    decoding options (``conf/decode``; :func:`tsformer.nn.decoding.decode_values`); with
    ``method=jacobi`` the noise of every path and step is drawn up front and all horizon
    steps are updated per forward pass, reaching the paths sequential sampling gives with
    that noise. ``early_exit``: a CALM exit rule for the sampled steps
    (:func:`calibrate_forecast_exit`).
    """
    if noise is None and seed is not None and "start" in batch:
        horizon = batch["covariates"].shape[1] - batch["inputs"].shape[1] + 1
        noise = window_noise(batch, num_samples, horizon, seed)
    if noise is not None and len(noise) == 1:
        # A window's paths must not depend on its batch, but CPU conv1d takes another kernel
        # (other rounding) for a batch of one: run it as a batch of two copies.
        two = {k: torch.cat([v, v]) for k, v in batch.items()}
        return forecast_batch(net, two, num_samples, generator, None, decode, early_exit, torch.cat([noise, noise]))[:1]
    kw = {"static": batch["static"]} if "static" in batch else {}
    if decode and decode.get("method", "sequential") != "sequential":
        kw["decode"] = decode
    if early_exit is not None:
        kw["early_exit"] = early_exit
    if noise is not None:
        kw["noise"] = noise
    s = net.sample(batch["inputs"], batch["covariates"], batch["series"], num_samples, generator=generator, **kw)
    return s * batch["scale"][:, None, None]


@torch.no_grad()
def calibrate_forecast_exit(net: nn.Module, batches: list[dict[str, Tensor]], num_samples: int, measure: str,
                            tolerance: float, delta: float, seed: int = 0, classifier: ExitClassifier | None = None,
                            candidates: list[float] | None = None) -> tuple[EarlyExit, Calibration]:
    """Calibrate the forecaster's exit threshold on held-out windows (CALM's Learn-then-Test,
    Schuster et al. 2022, Sec. 4). A window's inconsistency is the relative change of the
    mean quantile loss (10/50/90%) of its early-exit forecast against the full model's
    (:func:`~tsformer.nn.early_exit.quantile_loss_change`), both drawn from the same noise.

    Args:
        batches: forecast-window batches (``inputs``, ``covariates``, ``series``, ``scale``,
            ``future``), e.g. the data module's validation windows.
        measure: ``state`` or ``classifier`` (the forecaster's outputs are not tokens).
    Returns:
        The calibrated rule (threshold ``NEVER`` when none is valid) and the record.
    """
    def draw(b, rule=None):
        return forecast_batch(net, b, num_samples, torch.Generator(b["inputs"].device).manual_seed(seed), seed, early_exit=rule)

    full = [draw(b) for b in batches]

    def losses(t: float) -> Tensor:
        rule = EarlyExit(measure, t, readout=net.readout, classifier=classifier)
        return torch.cat([quantile_loss_change(draw(b, rule), f, b["future"]).cpu() for b, f in zip(batches, full)])

    cal = calibrate_threshold(candidate_thresholds() if candidates is None else candidates, losses, tolerance, delta)
    return EarlyExit(measure, cal.threshold, readout=net.readout, classifier=classifier), cal


def fit_forecast_exit_classifier(net: nn.Module, batches: list[dict[str, Tensor]], steps: int = 300) -> ExitClassifier:
    """CALM's early-exit classifier for the forecaster, trained on its frozen states over
    ``batches`` (teacher-forced): a block is consistent where its Gaussian is close to the
    last block's (:func:`~tsformer.nn.early_exit.gaussians_agree`)."""
    xs: list[list[Tensor]] = []
    ys: list[list[Tensor]] = []
    for b in batches:
        C1 = b["inputs"].shape[1]  # the context: where a window's inputs are known
        x, y = exit_classifier_data(net, gaussians_agree, b["inputs"], b["covariates"][:, :C1], b["series"],
                                    b.get("static"))
        xs.append(x)
        ys.append(y)
    states = [torch.cat(parts) for parts in zip(*xs)]
    labels = [torch.cat(parts) for parts in zip(*ys)]
    return ExitClassifier(states[0].shape[-1], len(states) + 1).to(states[0].device).fit(states, labels, steps)


class ForecastingModule(LearnedPartsHooks, pl.LightningModule):
    """Trains a forecaster by Gaussian negative log-likelihood; tests by sampling.

    Args:
        net: a forecaster with ``forward(inputs, covariates, series) -> (mu, sigma)`` and
            ``sample(inputs, covariates, series, num_samples) -> (B, S, H)``.
        lr, weight_decay: AdamW settings.
        warmup_steps: linear learning-rate warm-up, then cosine decay to ``max_steps``.
        num_samples: sample paths per test forecast.
        quantiles: quantiles reported by ``predict_step``.
        sample_seed: seed of the per-window forecast draws (None: global random state).
        exit_heads: train with the (shared) likelihood head after every block, the loss
            weighted toward deeper blocks (CALM, Schuster et al. 2022, Sec. 5), so that
            sampling can exit early; validation and test use the last block.

    With ``plot_settings`` set (``train()`` does it before testing, :mod:`tsformer.plots`),
    testing also keeps the 10/50/90% quantiles of the first ``max`` windows of the first
    ``series`` series, from the sample paths the metrics are computed on (no extra draws),
    and :meth:`write_plots` draws them against the observed values.
    """

    plot_settings: dict | None = None

    def __init__(
        self,
        net: nn.Module,
        lr: float = 1e-3,
        weight_decay: float = 1e-2,
        warmup_steps: int = 50,
        num_samples: int = 100,
        quantiles: tuple[float, ...] = (0.1, 0.5, 0.9),
        sample_seed: int | None = 0,
        exit_heads: bool = False,
    ):
        super().__init__()
        check_exit_heads(net, exit_heads)
        self.net = net
        self.save_hyperparameters(ignore=["net"])
        self.acc = ForecastAccumulator()
        self._plot_windows: list[dict] | None = None

    def _loss(self, batch: dict[str, Tensor], from_pos: int = 0) -> Tensor:
        mu, sigma = self.net(batch["inputs"], batch["covariates"], batch["series"], batch.get("static"))
        w = batch["observed"].clone()
        w[:, :from_pos] = 0
        return GaussianHead.nll(mu, sigma, batch["target"], w)

    def _layer_loss(self, batch: dict[str, Tensor]) -> Tensor:
        """CALM's weighted sum of every block's likelihood loss (``exit_heads``)."""
        states = self.net.hidden_states(batch["inputs"], batch["covariates"], batch["series"], batch.get("static"))
        return weighted_layer_loss([GaussianHead.nll(*self.net.readout(h), batch["target"], batch["observed"])
                                    for h in states])

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        loss = self._layer_loss(batch) if self.hparams.get("exit_heads") else self._loss(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["series"]))
        return self.with_aux(loss, len(batch["series"]))

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        # Score the horizon only: that is what a forecast is judged on.
        horizon_from = batch["inputs"].shape[1] - self.trainer.datamodule.horizon
        loss = self._loss(batch, horizon_from)
        self.log("val/loss", loss, prog_bar=True, sync_dist=True, batch_size=len(batch["series"]))

    # -- test: rolling forecasts ---------------------------------------------
    def forecast(
        self,
        batch: dict[str, Tensor],
        num_samples: int | None = None,
        generator: torch.Generator | None = None,
        seed: int | None = None,
    ) -> Tensor:
        """Sample paths on the original scale: ``(B, S, H)``.

        Without a ``generator``, draws are seeded per window by ``seed`` (default: the
        module's ``sample_seed``), so a forecast does not depend on the batch, the process
        count or the global random state.
        """
        if generator is None and seed is None:
            seed = self.hparams.sample_seed
        return forecast_batch(self.net, batch, num_samples or self.hparams.num_samples, generator, seed)

    def on_test_epoch_start(self) -> None:
        self.acc = ForecastAccumulator()
        self._plot_windows = [] if self.plot_settings else None

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        samples = self.forecast(batch).float()  # (B, S, H)
        q = torch.quantile(samples, torch.tensor([0.5, 0.9], device=samples.device), dim=1)
        self.acc.update(batch["future"], q[0], q[1], samples.transpose(0, 1))
        if self._plot_windows is not None:
            self._keep_for_plots(batch, samples)

    def _keep_for_plots(self, batch: dict[str, Tensor], samples: Tensor) -> None:
        """Quantiles of the windows the forecast picture shows (the first ``max`` of each of
        the first ``series`` series met)."""
        most, n_series, kept = self.plot_settings["max"], self.plot_settings["series"], self._plot_windows
        per_series: dict[int, int] = {}
        for w in kept:
            per_series[w["series"]] = per_series.get(w["series"], 0) + 1
        rows = []
        for i, (sid, start) in enumerate(zip(batch["series"].tolist(), batch["start"].tolist())):
            if per_series.get(sid, 0) >= most or (sid not in per_series and len(per_series) >= n_series):
                continue
            per_series[sid] = per_series.get(sid, 0) + 1
            rows.append((i, sid, start))
        if not rows:
            return
        idx = torch.tensor([i for i, _, _ in rows], device=samples.device)
        qs = torch.quantile(samples[idx], torch.tensor([0.1, 0.5, 0.9], device=samples.device), dim=1).cpu().numpy()
        future = batch["future"][idx].float().cpu().numpy()
        for j, (_, sid, start) in enumerate(rows):
            kept.append({"series": sid, "start": start, "q": qs[:, j], "future": future[j]})

    def write_plots(self, out_dir: Path, settings: dict) -> list[Path]:
        """``forecasts.png``: the kept test windows' median and 10-90% fan against the
        observed series (:func:`tsformer.plots.forecast_fans`)."""
        from tsformer.plots import forecast_fans

        if not getattr(self, "_plot_windows", None):
            return []
        dm = self.trainer.datamodule
        return [forecast_fans(forecast_panels(dm, self._plot_windows), Path(out_dir) / "forecasts.png")]

    def on_test_epoch_end(self) -> None:
        sums = self.acc.sums.to(self.device)
        if self.trainer.world_size > 1:
            sums = self.all_gather(sums).sum(0)
        for k, v in self.acc.compute(sums.cpu()).items():
            self.log(f"test/{k}", v, sync_dist=False, rank_zero_only=True)

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int) -> dict[str, Tensor]:
        samples = self.forecast(batch)
        qs = torch.tensor(self.hparams.quantiles, device=samples.device, dtype=samples.dtype)
        return {"quantiles": torch.quantile(samples, qs, dim=1).permute(1, 2, 0), "mean": samples.mean(1)}

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        sched = warmup_cosine(opt, self.hparams.warmup_steps, self.trainer.estimated_stepping_batches)
        return {"optimizer": opt, "lr_scheduler": sched}


def forecast_panels(dm, windows: list[dict]) -> list[dict]:
    """One :func:`tsformer.plots.forecast_fans` panel per series of ``windows`` (kept test
    windows: ``series``, ``start``, ``q`` (3, H) and ``future`` (H,)), with the observed
    values from one horizon before the first window to the end of the last.

    ``dm`` is a forecasting data module (``table`` with ``index``, ``values`` and ``names``;
    ``windows.series_index``, the model's id of each column, when ids are not columns).
    """
    table = dm.table
    ids = getattr(dm.windows, "series_index", None)
    column = {int(sid): n for n, sid in enumerate(ids)} if ids is not None else None
    panels = []
    for sid in dict.fromkeys(w["series"] for w in windows):
        mine = sorted((w for w in windows if w["series"] == sid), key=lambda w: w["start"])
        H = len(mine[0]["future"])
        n = sid if column is None else column.get(sid)
        lo, hi = max(0, mine[0]["start"] - H), mine[-1]["start"] + H
        if n is None or n >= table.values.shape[1]:  # no column to read history from: the windows alone
            axis, values, name = np.arange(hi), np.full(hi, np.nan, dtype=np.float32), str(sid)
            for w in mine:
                values[w["start"] : w["start"] + H] = w["future"]
        else:
            axis, values, name = np.asarray(table.index), table.values[:, n], str(table.names[n])
        panels.append({
            "title": f"series {name}",
            "times": axis[lo:hi],
            "observed": values[lo:hi],
            "windows": [{"times": axis[w["start"] : w["start"] + H], "q10": w["q"][0], "q50": w["q"][1],
                         "q90": w["q"][2]} for w in mine],
        })
    return panels
