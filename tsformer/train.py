"""Train and evaluate any task x model from the configs in ``tsformer/conf/``.

    python -m tsformer.train task=electricity model=logsparse
    python -m tsformer.train task=electricity model=transformer trainer.max_steps=200 seed=1

:func:`train` is the pure entry point (config in, metrics out) that tests and scripts
call; :func:`main` is the thin Hydra wrapper behind the command line.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from tsformer.callbacks import (
    AtomicCheckpointIO,
    CheckpointError,
    NonFiniteGuard,
    PeriodicCheckpoint,
    RNGState,
    RunModelSummary,
    WeightEMA,
    find_resume_checkpoint,
    progress_bar,
)
from tsformer.cli import discard_run_dir, user_errors
from tsformer.plots import plot_settings, write_run_plots
from tsformer.resources import CONF_DIR, CONF_SOURCE, REPO_ROOT  # noqa: F401 (REPO_ROOT: tests, benchmarks)

log = logging.getLogger("tsformer")


def compose_config(overrides: list[str] | None = None) -> DictConfig:
    """The composed config for ``overrides``, as the command line would build it."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides or []))


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON via a temporary file and a rename, so readers never see half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def format_metrics(metrics: dict[str, float]) -> str:
    """A two-column text table of the metrics."""
    width = max(len(k) for k in metrics) if metrics else 10
    rows = [f"{'metric':<{width}}  value", f"{'-' * width}  {'-' * 12}"]
    for k in sorted(metrics):
        v = metrics[k]
        rows.append(f"{k:<{width}}  {v:.6g}" if isinstance(v, float) else f"{k:<{width}}  {v}")
    return "\n".join(rows)


def init_weights_from(net: Any, path: str | Path) -> list[str]:
    """Start ``net`` from the weights of a checkpoint's network (e.g. ``task=mlm`` pretraining).

    Tensors are matched by name (the LightningModule's ``net.`` prefix dropped); those the
    checkpoint lacks (a classifier head) keep their initialisation. A learned position table
    of another length is copied over the rows both have.

    Args:
        net: the run's network (``nn.Module``).
        path: a checkpoint written by :func:`train`.
    Returns:
        The names of the tensors copied.
    Raises:
        ValueError: a tensor of another shape (a different model size), or nothing matched.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"init_from: {path} does not exist")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    state = {k[len("net."):]: v for k, v in ckpt.get("state_dict", {}).items() if k.startswith("net.")}
    loaded = []
    with torch.no_grad():
        for name, own in net.state_dict().items():  # views of the parameters: copy_ writes through
            src = state.get(name)
            if src is None:
                continue
            if src.shape != own.shape:
                if not (name.endswith("pos.weight") and src.shape[1:] == own.shape[1:]):
                    raise ValueError(f"{path}: {name} has shape {tuple(src.shape)}, this model's is "
                                     f"{tuple(own.shape)}; use the pretraining run's model sizes")
                rows = min(src.shape[0], own.shape[0])
                own[:rows].copy_(src[:rows])
            else:
                own.copy_(src)
            loaded.append(name)
    if not loaded:
        raise ValueError(f"{path}: none of its weights match this model's names")
    return loaded


def console_callbacks(trainer_cfg: DictConfig) -> list:
    """The progress bar and model summary, where the trainer config leaves them on.

    They replace Lightning's defaults, which read ``Epoch 0/-2`` on a step-budgeted run and
    print ``Total FLOPs: 0`` for modules without an example input.
    """
    if trainer_cfg.get("barebones"):
        return []
    out = []
    if trainer_cfg.get("enable_progress_bar") is not False:
        out.append(progress_bar())
    if trainer_cfg.get("enable_model_summary") is not False:
        out.append(RunModelSummary())
    return out


def weight_averaging(cfg: DictConfig | None) -> list:
    """``weight_averaging``: an EMA of the weights, when ``decay`` is set."""
    if cfg is None or cfg.get("decay") is None:
        return []
    return [WeightEMA(float(cfg.decay), int(cfg.get("start_step") or 0))]


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit, test and evaluate baselines for one configured run.

    Writes to ``cfg.run_dir``: ``config.yaml`` (resolved), ``checkpoints/best.ckpt`` and
    ``checkpoints/last.ckpt``, ``metrics.json``, the logger's files and, unless
    ``plots=false``, ``plots/`` (:mod:`tsformer.plots`: learning curves and the task's
    pictures and samples, named in the final printout). Nothing is written before the data
    has been read and validated.

    Args:
        cfg: a composed config (see :func:`compose_config`); ``cfg.run_dir`` must be set.
    Returns:
        The flat metrics dict also written to ``metrics.json``.
    """
    import pytorch_lightning as pl
    import torch
    from hydra.utils import instantiate
    from pytorch_lightning.callbacks import ModelCheckpoint

    if cfg.get("run_dir") is None:
        raise ValueError("cfg.run_dir is not set; pass run_dir=<dir>")
    run_dir = Path(cfg.run_dir).absolute()
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*GPU available but not used.*")
    warnings.filterwarnings("ignore", message=".*ended before the epoch ended and your dataloader is not resumable.*")
    # Lightning's own use of a torch pytree API it has not caught up with; nothing to act on.
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)` is deprecated.*")
    pl.seed_everything(cfg.seed, workers=True, verbose=False)

    resume_from = None
    if cfg.get("resume"):
        found = find_resume_checkpoint(run_dir)
        if found is None:
            raise CheckpointError(f"{run_dir}: no usable checkpoint to resume from")
        resume_from, ckpt = found
        log.info("resuming from %s (step %d)", resume_from, ckpt["global_step"])

    datamodule = instantiate(cfg.data, _convert_="all")
    datamodule.setup("fit")  # reads and validates the data before anything is written
    if resume_from is not None and hasattr(datamodule, "resume_batches"):
        progress = ckpt["loops"]["fit_loop"]["epoch_loop.batch_progress"]["current"]
        datamodule.resume_batches = int(progress["processed"])

    net = instantiate(cfg.model, _convert_="all", **datamodule.model_kwargs())
    if cfg.get("init_from"):
        loaded = init_weights_from(net, cfg.init_from)
        log.info("initialised %d of %d tensors from %s", len(loaded), len(net.state_dict()), cfg.init_from)
    module = instantiate(cfg.module, _convert_="all", net=net)
    if hasattr(module, "check_data"):  # a model/data mismatch fails before anything is written
        module.check_data(datamodule)

    rank_zero = int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0"))) == 0
    if rank_zero:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))

    ckpt_dir = run_dir / "checkpoints"
    has_val = bool(datamodule.val_dataloader())
    best_ckpt = ModelCheckpoint(
        dirpath=ckpt_dir,
        filename="best",
        monitor=cfg.get("monitor") if has_val else None,
        mode=cfg.get("monitor_mode", "min"),
        save_top_k=1 if has_val else 0,
        save_last=False,
        enable_version_counter=False,
    )
    callbacks = [
        best_ckpt,
        PeriodicCheckpoint(ckpt_dir, cfg.checkpoint.every_n_steps, cfg.checkpoint.keep),
        NonFiniteGuard(cfg.get("max_nonfinite_steps", 5)),
        RNGState(),
    ]
    callbacks += console_callbacks(cfg.trainer)
    callbacks += weight_averaging(cfg.get("weight_averaging"))
    logger = instantiate(cfg.logger) if cfg.get("logger") else False
    trainer_kwargs = {} if has_val else {"limit_val_batches": 0}
    if getattr(datamodule, "shards_batches", False):
        trainer_kwargs["use_distributed_sampler"] = False  # the data module shards its own batches
    trainer: pl.Trainer = instantiate(
        cfg.trainer,
        logger=logger,
        callbacks=callbacks,
        default_root_dir=str(run_dir),
        plugins=[AtomicCheckpointIO()],
        **trainer_kwargs,
    )
    if trainer.accelerator.__class__.__name__ == "CUDAAccelerator":
        torch.set_float32_matmul_precision("high")

    start = time.perf_counter()
    trainer.fit(module, datamodule=datamodule, ckpt_path=str(resume_from) if resume_from else None)
    train_seconds = time.perf_counter() - start
    if resume_from is not None:
        train_seconds += float(_previous_metrics(run_dir).get("train/seconds_before_resume", 0.0))

    if not (ckpt_dir / "last.ckpt").exists():  # e.g. max_steps=0: nothing was trained or saved
        trainer.save_checkpoint(ckpt_dir / "last.ckpt", weights_only=False)
    best = best_ckpt.best_model_path or None
    if best is None and trainer.is_global_zero:
        # No validation: "best" is the last state.
        shutil.copyfile(ckpt_dir / "last.ckpt", ckpt_dir / "best.ckpt")
    trainer.strategy.barrier("tsformer_best")
    best = str(ckpt_dir / "best.ckpt")
    plots = plot_settings(cfg.get("plots"), seed=cfg.seed)
    module.plot_settings = plots  # the module keeps what its pictures need while testing
    results = trainer.test(module, datamodule=datamodule, ckpt_path=best, verbose=False)

    metrics: dict[str, float] = {}
    for k, v in (results[0] if results else {}).items():
        metrics[k] = float(v)
    baselines = getattr(datamodule, "baselines", None)
    if baselines is not None:  # the data's reference figures (seasonal naive, ...) on the same test split
        metrics.update(baselines())
    metrics["train/seconds"] = round(train_seconds, 3)
    metrics["train/steps"] = int(trainer.global_step)
    metrics["train/skipped_steps"] = int(callbacks[2].skipped)
    if best_ckpt.best_model_score is not None:
        metrics[f"best/{best_ckpt.monitor}"] = float(best_ckpt.best_model_score)

    if trainer.is_global_zero:
        write_json_atomic(run_dir / "metrics.json", metrics)
        # After every metric (baselines included): nothing drawn here can change one.
        pictures = []
        if plots:
            pictures = write_run_plots(module, run_dir / "plots", plots, csv_metrics_file(trainer), cfg.get("monitor"))
        if cfg.get("print_metrics", True):
            print("\n" + format_metrics(metrics))
            print(f"\nRun directory: {run_dir}")
            if pictures:
                print("Plots: " + ", ".join(str(p.relative_to(run_dir)) for p in pictures))
    return metrics


def csv_metrics_file(trainer: Any) -> Path | None:
    """The ``metrics.csv`` of the run's CSV logger (None without one)."""
    from pytorch_lightning.loggers import CSVLogger

    for lg in trainer.loggers:
        if isinstance(lg, CSVLogger):
            return Path(lg.log_dir) / "metrics.csv"
    return None


def _previous_metrics(run_dir: Path) -> dict:
    path = run_dir / "metrics.json"
    return json.loads(path.read_text()) if path.exists() else {}


def latest_run_dir(parent: Path, exclude: Path | None = None) -> Path | None:
    """Newest run directory under ``parent`` that holds checkpoints."""
    runs = [p for p in parent.glob("*") if (p / "checkpoints").is_dir() and p != exclude]
    return max(runs, key=lambda p: p.stat().st_mtime) if runs else None


def resolve_resume(cfg: DictConfig, hydra_dir: Path | None) -> None:
    """Turn ``resume=true`` / ``resume=<run dir or .ckpt>`` into ``cfg.run_dir``."""
    resume = cfg.get("resume")
    if not resume:
        return
    if resume is True:
        if cfg.get("run_dir") is None:
            if hydra_dir is None:
                raise ValueError("resume=true needs run_dir=<dir>")
            if (hydra_dir / "checkpoints").is_dir():  # hydra.run.dir=<the killed run>: resume it
                cfg.run_dir = str(hydra_dir)
                return
            prev = latest_run_dir(hydra_dir.parent, exclude=hydra_dir)
            if prev is None:
                raise CheckpointError(f"resume=true: no earlier run with checkpoints under {hydra_dir.parent}")
            cfg.run_dir = str(prev)
    else:
        path = Path(str(resume))
        if path.suffix == ".ckpt":
            path = path.parent.parent
        if not (path / "checkpoints").is_dir():
            raise CheckpointError(f"resume={resume}: no checkpoints/ folder in {path}")
        cfg.run_dir = str(path)
        cfg.resume = True


@hydra.main(version_base="1.3", config_path=CONF_SOURCE, config_name="config")
def main(cfg: DictConfig) -> float | None:
    from hydra.core.hydra_config import HydraConfig

    hydra_dir = Path(HydraConfig.get().runtime.output_dir)
    # An input or config problem: one line, status 2, and no run directory left holding only
    # Hydra's files (tsformer/cli.py).
    with user_errors(cleanup=lambda: discard_run_dir(hydra_dir)):
        resolve_resume(cfg, hydra_dir)
        if cfg.get("run_dir") is None:
            cfg.run_dir = str(hydra_dir)
        metrics = train(cfg)
    target = cfg.get("optimized_metric")
    return metrics.get(target) if target else None


def cli() -> None:
    """``tsformer-train`` and ``python -m tsformer.train``: :func:`main` behind the error policy.

    The overrides are composed once before Hydra runs, so that a config Hydra cannot compose
    (an unknown group option or key) is reported as one line with status 2 before any run
    directory exists. Runs with flags (``--help``, ``-m``, ``--cfg``) go straight to Hydra.
    """
    argv = sys.argv[1:]
    if not any(a.startswith("-") for a in argv):
        with user_errors():
            compose_config(argv)
    main()


if __name__ == "__main__":
    cli()
