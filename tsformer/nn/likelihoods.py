"""Output heads that turn hidden states into distribution parameters."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class GaussianHead(nn.Module):
    """Gaussian likelihood head: ``(mu, sigma)`` per position (DeepAR, Salinas et al. 2020).

    Args:
        d_model: hidden size.
        min_sigma: floor on sigma, for numerical safety.
    """

    def __init__(self, d_model: int, min_sigma: float = 1e-3):
        super().__init__()
        self.proj = nn.Linear(d_model, 2)
        self.min_sigma = min_sigma

    def forward(self, h: Tensor) -> tuple[Tensor, Tensor]:
        """``h``: ``(B, L, d_model)`` -> ``mu, sigma``: each ``(B, L)``."""
        mu, s = self.proj(h).unbind(-1)
        return mu, F.softplus(s) + self.min_sigma

    @staticmethod
    def nll(mu: Tensor, sigma: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
        """Mean negative log-likelihood over entries with ``weight > 0``."""
        nll = 0.5 * ((target - mu) / sigma) ** 2 + torch.log(sigma) + 0.5 * math.log(2 * math.pi)
        if weight is None:
            return nll.mean()
        return (nll * weight).sum() / weight.sum().clamp_min(1.0)

    @staticmethod
    def sample(mu: Tensor, sigma: Tensor, generator: torch.Generator | None = None, eps: Tensor | None = None) -> Tensor:
        """One draw per entry (from ``eps``, standard-normal draws, when given)."""
        if eps is None:
            eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        return mu + sigma * eps
