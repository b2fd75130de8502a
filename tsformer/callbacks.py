"""Training that survives real use (atomic checkpoints, resume, non-finite guard, RNG state)
and a console that reads right (a step-budget progress bar, a model summary without FLOP guesses)."""

from __future__ import annotations

import logging
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from pytorch_lightning.callbacks import EMAWeightAveraging, ModelSummary, RichProgressBar, TQDMProgressBar
from pytorch_lightning.callbacks.progress.progress_bar import ProgressBar
from pytorch_lightning.callbacks.progress.rich_progress import _RICH_AVAILABLE
from pytorch_lightning.trainer.states import TrainerFn

log = logging.getLogger("tsformer")


class CheckpointError(RuntimeError):
    """A checkpoint file that is missing, truncated or corrupt."""


def load_checkpoint(path: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    """Load a checkpoint weights-only (never runs code from the file).

    Raises:
        CheckpointError: naming the file, when it is missing, truncated or corrupt.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises several types for damaged zip archives
        raise CheckpointError(f"{path}: truncated or corrupt checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise CheckpointError(f"{path}: not a tsformer/Lightning checkpoint (no state_dict)")
    return ckpt


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint to a temporary file, syncs it, then renames it into place,
    so a crash never leaves a half-written checkpoint; loads weights-only."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        with open(tmp, "wb") as f:
            torch.save(checkpoint, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def load_checkpoint(self, path, map_location=None, weights_only: bool | None = True) -> dict[str, Any]:
        return load_checkpoint(path, map_location=map_location or "cpu")


_STEP_RE = re.compile(r"step=(\d+)\.ckpt$")


def step_checkpoints(ckpt_dir: Path) -> list[Path]:
    """``step=N.ckpt`` files in ``ckpt_dir``, newest first."""
    found = [(int(m.group(1)), p) for p in ckpt_dir.glob("step=*.ckpt") if (m := _STEP_RE.search(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def find_resume_checkpoint(run_dir: Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest loadable checkpoint of a run: ``last.ckpt``, else the step checkpoints.

    A truncated or corrupt file is reported and skipped, so a resume falls back to the
    previous good checkpoint.
    """
    ckpt_dir = Path(run_dir) / "checkpoints"
    candidates = [ckpt_dir / "last.ckpt"] + step_checkpoints(ckpt_dir)
    best: tuple[int, Path, dict] | None = None
    for path in candidates:
        if not path.exists():
            continue
        try:
            ckpt = load_checkpoint(path)
        except CheckpointError as e:
            log.warning("skipping %s", e)
            continue
        if best is None or ckpt["global_step"] > best[0]:
            best = (ckpt["global_step"], path, ckpt)
    return None if best is None else (best[1], best[2])


class PeriodicCheckpoint(pl.Callback):
    """Saves ``step=N.ckpt`` every ``every_n_steps`` optimizer steps and at the end of
    training, copies the newest to ``last.ckpt``, and keeps the ``keep`` newest step files
    (older good ones to fall back on if the newest is damaged)."""

    def __init__(self, dirpath: str | Path, every_n_steps: int = 100, keep: int = 2):
        self.dirpath, self.every_n_steps, self.keep = Path(dirpath), every_n_steps, keep
        self._last_saved = -1

    def _save(self, trainer: pl.Trainer) -> None:
        step = trainer.global_step
        if step == self._last_saved:
            return
        self._last_saved = step
        path = self.dirpath / f"step={step:07d}.ckpt"
        # Full state (optimizer, loops) for resuming; loading is still weights-only.
        trainer.save_checkpoint(path, weights_only=False)  # collective: every rank calls it, rank 0 writes
        if trainer.is_global_zero:
            tmp = self.dirpath / ".last.ckpt.tmp"
            shutil.copyfile(path, tmp)
            os.replace(tmp, self.dirpath / "last.ckpt")
            for old in step_checkpoints(self.dirpath)[self.keep :]:
                old.unlink(missing_ok=True)
        trainer.strategy.barrier("tsformer_periodic_checkpoint")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.every_n_steps > 0 and trainer.global_step % self.every_n_steps == 0 and trainer.global_step > 0:
            self._save(trainer)

    def on_train_end(self, trainer, pl_module) -> None:
        self._save(trainer)


class NonFiniteGuard(pl.Callback):
    """Skips optimizer steps whose gradients are not finite (NaN/inf loss included) and
    stops the run after ``max_consecutive`` such steps in a row, naming the step and batch.

    Skipped steps are counted in ``train/skipped_steps``. A stopped run keeps its last good
    checkpoint: nothing is saved from a non-finite state.
    """

    def __init__(self, max_consecutive: int = 5):
        self.max_consecutive = max_consecutive
        self.skipped = 0
        self.consecutive = 0
        self._batch_idx = -1

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._batch_idx = batch_idx

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
        finite = all(torch.isfinite(g).all() for g in grads)
        if finite:
            self.consecutive = 0
            return
        self.skipped += 1
        self.consecutive += 1
        for group in optimizer.param_groups:
            for p in group["params"]:
                p.grad = None  # the optimizer then leaves every parameter untouched
        log.warning("non-finite gradients at step %d (batch %d): step skipped", trainer.global_step, self._batch_idx)
        pl_module.log("train/skipped_steps", float(self.skipped), on_step=True, on_epoch=False)
        if self.consecutive >= self.max_consecutive:
            raise FloatingPointError(
                f"{self.consecutive} consecutive non-finite steps, the last at step {trainer.global_step} "
                f"(batch {self._batch_idx} of epoch {trainer.current_epoch}); the last good checkpoint is kept"
            )

    def state_dict(self) -> dict[str, Any]:
        return {"skipped": self.skipped, "consecutive": self.consecutive}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.skipped = int(state_dict.get("skipped", 0))
        self.consecutive = int(state_dict.get("consecutive", 0))


class RNGState(pl.Callback):
    """Saves the Python, NumPy and torch random states in checkpoints and restores them at
    the first training batch after a resume (after data loaders have been re-created)."""

    def __init__(self) -> None:
        self._pending: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        np_state = np.random.get_state()
        state = {
            "python": [list(random.getstate()[1]), random.getstate()[0], random.getstate()[2]],
            "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *map(float, np_state[2:])],
            "torch": torch.get_rng_state(),
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = state_dict

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._pending is None:
            return
        s, self._pending = self._pending, None
        internal, version, gauss = s["python"]
        random.setstate((version, tuple(int(x) for x in internal), gauss))
        name, keys, pos, has_gauss, cached = s["numpy"]
        np.random.set_state((name, keys.numpy().astype(np.uint32), int(pos), int(has_gauss), float(cached)))
        torch.set_rng_state(s["torch"])
        if "cuda" in s and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(s["cuda"])


# -- what the console shows ------------------------------------------------------------
STEPS_DESCRIPTION = "Steps"


class WeightEMA(EMAWeightAveraging):
    """An exponential moving average of the weights from ``start_step`` on (Polyak averaging).

    Lightning's :class:`EMAWeightAveraging` swaps the average in for validation, puts it in
    every checkpoint's ``state_dict`` (the raw weights ride along for resuming) and copies it
    into the model when training ends. Its average before the first update is the initial
    weights, which would make every validation before ``start_step`` score an untrained
    model; here the average follows the raw weights exactly until ``start_step``.

    Args:
        decay: the EMA decay per optimizer step (0.995: a window of about 200 steps).
        start_step: the first optimizer step (0-based) folded into the average.
    """

    def __init__(self, decay: float, start_step: int = 0) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"weight_averaging.decay: {decay} is not in (0, 1)")
        if start_step < 0:
            raise ValueError(f"weight_averaging.start_step: {start_step} is negative")
        super().__init__(decay=decay)
        self.start_step = start_step

    def should_update(self, step_idx: int | None = None, epoch_idx: int | None = None) -> bool:
        return step_idx is not None

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self._average_model is not None and trainer.global_step - 1 < self.start_step:
            self._average_model.n_averaged.zero_()  # the next update copies the raw weights
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        # Lightning's hook reloads the raw weights whenever the average model exists, which
        # after fit() would make test(ckpt_path=best) score the raw weights; only resuming a
        # fit wants them, every other stage the average already in "state_dict".
        if trainer.state.fn == TrainerFn.FITTING:
            super().on_load_checkpoint(trainer, pl_module, checkpoint)


def step_budget(trainer: pl.Trainer) -> int | None:
    """The optimizer-step budget when training is budgeted by steps alone, else None.

    Lightning sets ``max_epochs=-1`` when only ``max_steps`` is given; its progress bars then
    read ``Epoch 0/-2``, an epoch count the run does not have.
    """
    max_steps = trainer.max_steps
    if max_steps is not None and max_steps > 0 and trainer.max_epochs in (None, -1):
        return int(max_steps)
    return None


class StepTQDMProgressBar(TQDMProgressBar):
    """Lightning's tqdm bar; a step-budgeted run shows ``Steps`` as optimizer steps out of
    ``max_steps`` across epochs, instead of batches of an epoch with no epoch count."""

    @property
    def total_train_batches(self) -> int | float:
        return step_budget(self.trainer) or super().total_train_batches

    def on_train_epoch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        super().on_train_epoch_start(trainer, *args)
        if step_budget(trainer):
            self.train_progress_bar.set_description(STEPS_DESCRIPTION)
            self.train_progress_bar.n = trainer.global_step
            self.train_progress_bar.refresh()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not step_budget(trainer):
            return super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        bar = self.train_progress_bar
        if bar is not None and self._should_update(trainer.global_step, bar.total):
            bar.n = trainer.global_step
            bar.set_postfix(self.get_metrics(trainer, pl_module))


class StepRichProgressBar(RichProgressBar):
    """Lightning's rich bar; a step-budgeted run shows ``Steps`` as optimizer steps out of
    ``max_steps`` across epochs, instead of ``Epoch 0/-2``."""

    @property
    def total_train_batches(self) -> int | float:
        return step_budget(self.trainer) or super().total_train_batches

    def _get_train_description(self, current_epoch: int) -> str:
        if not step_budget(self.trainer):
            return super()._get_train_description(current_epoch)
        return f"{STEPS_DESCRIPTION:{len(self.validation_description)}}"  # as wide as "Validation"

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_epoch_start(trainer, pl_module)
        if step_budget(trainer):
            self._update(self.train_progress_bar_id, trainer.global_step)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not step_budget(trainer):
            return super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if not self.is_disabled and self.train_progress_bar_id is None:  # resumed mid-epoch
            self._initialize_train_progress_bar_id()
        self._update(self.train_progress_bar_id, trainer.global_step)
        self._update_metrics(trainer, pl_module)
        self.refresh()


def progress_bar() -> ProgressBar:
    """The run's progress bar: rich when ``rich`` is installed (as Lightning picks), else tqdm."""
    return StepRichProgressBar() if _RICH_AVAILABLE else StepTQDMProgressBar()


class RunModelSummary(ModelSummary):
    """Lightning's model summary without a FLOP figure it could not compute.

    Lightning counts FLOPs only by running ``example_input_array`` through the model; the
    task modules have none (their batches are dicts), so it printed ``Total FLOPs: 0``. The
    FLOP column and total are shown only when a count was made.
    """

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._max_depth:
            return
        summary = self._summary(trainer, pl_module)
        data = summary._get_summary_data()
        flops = int(getattr(summary, "total_flops", 0) or 0)
        if not flops:
            data = [(name, col) for name, col in data if name != "FLOPs"]
        if trainer.is_global_zero:
            print(format_model_summary(data, summary.total_parameters, summary.trainable_parameters,
                                       summary.model_size, summary.total_training_modes, flops or None))


def format_model_summary(
    data: list[tuple[str, list[str]]],
    total_params: int,
    trainable_params: int,
    size_mb: float,
    modes: dict[str, int],
    flops: int | None,
) -> str:
    """The model summary as text: the layer table, then the totals.

    Args:
        data: ``(column name, cells)`` per column, as Lightning's summary gives them.
        total_params, trainable_params: parameter counts.
        size_mb: estimated size of the parameters in MB.
        modes: modules in ``train`` and ``eval`` mode.
        flops: total FLOPs of the example input; None leaves the line out.
    Returns:
        The table and the totals, one per line.
    """
    from pytorch_lightning.utilities.model_summary.model_summary import get_human_readable_count

    names = [name for name, _ in data]
    cells = [[str(c) for c in col] for _, col in data]
    widths = [max([len(n)] + [len(c) for c in col]) for n, col in zip(names, cells)]
    line = lambda row: " | ".join(f"{c:<{w}}" for c, w in zip(row, widths)).rstrip()
    rule = "-" * (sum(widths) + 3 * (len(widths) - 1))
    rows = [line(names), rule] + [line(r) for r in zip(*cells)] + [rule]
    totals = [
        (get_human_readable_count(trainable_params), "Trainable params"),
        (get_human_readable_count(total_params - trainable_params), "Non-trainable params"),
        (get_human_readable_count(total_params), "Total params"),
        (f"{size_mb:,.3f}", "Total estimated model params size (MB)"),
        (str(modes.get("train", 0)), "Modules in train mode"),
        (str(modes.get("eval", 0)), "Modules in eval mode"),
    ]
    if flops is not None:
        totals.append((get_human_readable_count(flops), "Total FLOPs"))
    return "\n".join(rows + [f"{v:<10} {k}" for v, k in totals])
