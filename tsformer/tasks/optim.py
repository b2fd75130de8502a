"""Optimizer set-up shared by the task modules."""

from __future__ import annotations

import math

import torch


def warmup_cosine(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: float, floor: float = 0.05) -> dict:
    """Linear warm-up, then cosine decay to ``floor`` times the base rate at ``total_steps``.

    A run budgeted by time alone (``trainer.max_time``, ``max_steps=-1``) has no step count
    (``total_steps`` is infinite): the rate then stays at its base value after the warm-up.

    Returns:
        Lightning's ``lr_scheduler`` dict, stepped every optimizer step.
    """
    unbounded = not math.isfinite(total_steps)
    total = 1 if unbounded else max(int(total_steps), 1)
    warm = warmup_steps if unbounded else min(warmup_steps, total // 2)

    def schedule(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        if unbounded:
            return 1.0
        progress = (step - warm) / max(total - warm, 1)
        # float(): checkpoints are loaded weights-only, so no numpy scalars in scheduler state.
        return float(floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))

    return {"scheduler": torch.optim.lr_scheduler.LambdaLR(optimizer, schedule), "interval": "step"}


def adamw_warmup_cosine(module, lr: float, weight_decay: float, warmup_steps: int) -> dict:
    """AdamW plus :func:`warmup_cosine` over ``module.trainer``'s step budget (Lightning's
    ``configure_optimizers`` return value)."""
    opt = torch.optim.AdamW(module.parameters(), lr=lr, weight_decay=weight_decay)
    return {"optimizer": opt, "lr_scheduler": warmup_cosine(opt, warmup_steps, module.trainer.estimated_stepping_batches)}
