"""AdamW with linear warm-up then cosine decay, shared by the text tasks."""

from __future__ import annotations

import math

import torch


def adamw_warmup_cosine(module, lr: float, weight_decay: float, warmup_steps: int) -> dict:
    """Optimizer and per-step scheduler for ``module.trainer``'s step budget."""
    opt = torch.optim.AdamW(module.parameters(), lr=lr, weight_decay=weight_decay)
    total = max(int(module.trainer.estimated_stepping_batches), 1)
    warm = min(warmup_steps, total // 2)

    def schedule(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        progress = (step - warm) / max(total - warm, 1)
        return float(0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
