"""Optimizer set-up shared by the task modules."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch


def time_budget_progress(trainer) -> Callable[[], float] | None:
    """``fn() -> fraction of trainer.max_time spent training`` (Lightning's ``Timer``, whose
    state a resumed run restores), or None when the run has no time budget."""
    from pytorch_lightning.callbacks import Timer

    timer = next((c for c in getattr(trainer, "callbacks", []) if isinstance(c, Timer)), None)
    if timer is None or not timer._duration:
        return None
    duration = float(timer._duration)
    return lambda: timer.time_elapsed("train") / duration


def warmup_cosine(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: float, floor: float = 0.05,
                  elapsed: Callable[[], float] | None = None) -> dict:
    """Linear warm-up, then cosine decay to ``floor`` times the base rate at ``total_steps``.

    With ``elapsed`` (the fraction of a time budget spent, :func:`time_budget_progress`) the
    decay follows whichever runs out first, steps or time, so a run budgeted by
    ``trainer.max_time`` still ends annealed however fast the machine is. A run budgeted by
    time without ``elapsed`` (``max_steps=-1``: ``total_steps`` infinite) keeps the base
    rate after the warm-up.

    Returns:
        Lightning's ``lr_scheduler`` dict, stepped every optimizer step.
    """
    unbounded = not math.isfinite(total_steps)
    total = 1 if unbounded else max(int(total_steps), 1)
    warm = warmup_steps if unbounded else min(warmup_steps, total // 2)

    def schedule(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        if unbounded and elapsed is None:
            return 1.0
        progress = 0.0 if unbounded else (step - warm) / max(total - warm, 1)
        if elapsed is not None:
            progress = max(progress, min(float(elapsed()), 1.0))
        # float(): checkpoints are loaded weights-only, so no numpy scalars in scheduler state.
        return float(floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))

    return {"scheduler": torch.optim.lr_scheduler.LambdaLR(optimizer, schedule), "interval": "step"}


def adamw_warmup_cosine(module, lr: float, weight_decay: float, warmup_steps: int) -> dict:
    """AdamW plus :func:`warmup_cosine` over ``module.trainer``'s step budget (Lightning's
    ``configure_optimizers`` return value)."""
    opt = torch.optim.AdamW(module.parameters(), lr=lr, weight_decay=weight_decay)
    sched = warmup_cosine(opt, warmup_steps, module.trainer.estimated_stepping_batches,
                          elapsed=time_budget_progress(module.trainer))
    return {"optimizer": opt, "lr_scheduler": sched}
