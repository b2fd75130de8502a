"""Learned parts any attention layer can carry (``model.attention.persistent``, ``.span``).

- :class:`PersistentMemory` (Sukhbaatar et al. 2019, "Augmenting Self-attention with
  Persistent Memory", https://arxiv.org/abs/1907.01470): ``N`` learned key/value vectors per
  head, without positions, joined to the context's keys in one softmax.
- :class:`AdaptiveSpan` (Sukhbaatar et al. 2019, "Adaptive Attention Span in Transformers",
  https://arxiv.org/abs/1905.07799): each head learns its span ``z``; a soft ramp of width
  ``R`` masks the weights at distance ``x`` by ``m_z(x) = clamp((R + z - x) / R, 0, 1)``; an
  L1 penalty on the spans joins the loss; keys beyond the largest span (plus the ramp,
  rounded up) are not computed at all (the layer's pattern becomes a window that narrows as
  the spans shrink).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from tsformer.attention import OffsetTableBias, SlidingWindow


class PersistentMemory(nn.Module):
    """``N`` learned keys and values per head.

    Stored divided by ``sqrt(D)`` (keys) and ``sqrt(N)`` (values) and scaled back on use, as
    in the authors' code: the effective vectors start as unit normals while the optimizer
    sees parameters of the size of the other weights.
    """

    def __init__(self, n_heads: int, head_dim: int, n: int):
        super().__init__()
        if n < 1:
            raise ValueError(f"model.attention.persistent must be >= 1 (or 0 for none), got {n}")
        self.n = int(n)
        self.key = nn.Parameter(torch.randn(n_heads, n, head_dim) / math.sqrt(head_dim))
        self.value = nn.Parameter(torch.randn(n_heads, n, head_dim) / math.sqrt(n))

    def forward(self, batch: int, heads: slice = slice(None)) -> tuple[Tensor, Tensor]:
        """Keys and values ``(batch, h, N, D)`` (broadcast views over the batch)."""
        k = self.key[heads] * math.sqrt(self.key.shape[-1])
        v = self.value[heads] * math.sqrt(self.n)
        return k.unsqueeze(0).expand(batch, *k.shape), v.unsqueeze(0).expand(batch, *v.shape)


class AdaptiveSpan(nn.Module):
    """Per-head learned attention span with a soft ramp, as a score bias plus a window.

    The ramp is applied as ``log m_z(x)`` added to the scores, which equals multiplying the
    softmax weights by ``m_z`` and renormalising (the paper's form).

    Args:
        n_heads: heads of the layer.
        max: largest span ``S`` (keys at distance ``>= S`` are never seen).
        ramp: ramp width ``R`` (paper: 32).
        penalty: weight of the L1 penalty on the spans (in positions, mean over heads).
        init: initial span as a share of ``max`` (the authors' default: 0).
        causal: distances ``i - j`` (decoders) or ``|i - j|`` (encoders).
        granularity: the computed window is rounded up to a multiple of this (the authors
            trim in steps of 64 so that shapes do not change every step).
    """

    def __init__(self, n_heads: int, max: int, ramp: int = 32, penalty: float = 0.0, init: float = 0.0,
                 causal: bool = True, granularity: int = 64):
        super().__init__()
        if max < 1 or ramp < 1:
            raise ValueError(f"model.attention.span needs max >= 1 and ramp >= 1, got max={max}, ramp={ramp}")
        if not 0.0 <= init <= 1.0:
            raise ValueError(f"model.attention.span.init is a share of max in [0, 1], got {init}")
        self.max, self.ramp, self.penalty = int(max), int(ramp), float(penalty)
        self.causal, self.granularity = causal, int(granularity)
        self.z = nn.Parameter(torch.full((n_heads,), float(init)))  # span / max, in [0, 1]

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], n_heads: int, causal: bool) -> AdaptiveSpan:
        cfg = dict(cfg)
        unknown = sorted(set(cfg) - {"max", "ramp", "penalty", "init", "granularity"})
        if unknown or "max" not in cfg:
            raise ValueError(
                f"model.attention.span takes max (required), ramp, penalty, init, granularity; got {sorted(cfg)}"
            )
        return cls(n_heads, causal=causal, **cfg)

    def spans(self) -> Tensor:
        """``(H,)`` current spans in positions."""
        return self.z * self.max

    def window(self) -> int:
        """Distances computed: the largest span plus the ramp, rounded up, at most ``max``."""
        reach = math.ceil(float(self.z.detach().max()) * self.max) + self.ramp
        return max(1, min(self.max, math.ceil(reach / self.granularity) * self.granularity))

    def pattern(self) -> SlidingWindow:
        """The window the layer attends within (one-sided in decoders)."""
        w = self.window()
        return SlidingWindow(w, one_sided=True) if self.causal else SlidingWindow(2 * w - 1)

    def bias(self, heads: slice = slice(None), dtype=torch.float32) -> OffsetTableBias:
        """``log m_z(distance)`` per head over the window's offsets: ``(1, h, 1, 2W + 1)``."""
        W = self.window()
        o = torch.arange(-W, W + 1, device=self.z.device)
        d = (-o if self.causal else o.abs()).to(self.z.dtype)
        m = ((self.ramp + self.spans()[heads, None] - d[None]) / self.ramp).clamp(0, 1)  # (h, 2W + 1)
        # log 0 = -inf; clamp_min keeps that branch's gradient finite (it is then zero).
        table = torch.where(m > 0, m.clamp_min(torch.finfo(m.dtype).tiny).log(), float("-inf"))
        return OffsetTableBias(table[None, :, None].to(dtype), W)

    def aux_loss(self) -> Tensor:
        """The L1 penalty on the spans: ``penalty * mean_h(z_h * max)`` (the authors' form)."""
        return self.penalty * self.spans().mean()

    @torch.no_grad()
    def constrain(self) -> None:
        """Keep spans in ``[0, max]`` (after every optimizer step)."""
        self.z.clamp_(0.0, 1.0)


def auxiliary_loss(net: nn.Module) -> Tensor | None:
    """The sum of every submodule's ``aux_loss()`` (adaptive-span penalties), or None."""
    terms = [m.aux_loss() for m in net.modules() if m is not net and hasattr(m, "aux_loss")]
    return torch.stack(terms).sum() if terms else None


def apply_constraints(net: nn.Module) -> None:
    """Call every submodule's ``constrain()`` (after an optimizer step)."""
    for m in net.modules():
        if m is not net and hasattr(m, "constrain"):
            m.constrain()


__all__ = ["AdaptiveSpan", "PersistentMemory", "apply_constraints", "auxiliary_loss"]
