"""Additive score biases: small typed descriptions of what is added to ``q k^T * scale``.

A bias, like a pattern, is a description rather than a tensor of activations, so that each
kernel can apply it in the form it computes scores in: the reference adds it densely, flex
as a ``score_mod``, the sparse kernels gather it at the distances they visit. Positions are
absolute: query row ``i`` sits at position ``i + q_offset`` against keys ``0 .. Lk - 1``
(bottom-right alignment by default, ``q_offset = Lk - Lq``, as in xformers' ``attn_bias``).

- :class:`SlopeBias`: a per-head slope times the distance (ALiBi, Press et al. 2022,
  "Train Short, Test Long", https://arxiv.org/abs/2108.12409).
- :class:`OffsetTableBias`: a table over clipped relative offsets ``j - i``, per head (T5,
  adaptive span's ramp) or per query (Shaw et al. 2018's relative key embeddings,
  ``q_i . a_{j-i}``, computed by the layer).
- :class:`DenseBias`: any ``(B, H, Lq, Lk)``-broadcastable tensor; the reference path.

Gradients flow into the tensors a bias holds (slopes, tables, dense biases) on every
kernel that serves it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

ScoreMod = Callable[[Tensor, Tensor, Tensor, Tensor, Tensor], Tensor]
"""``fn(score, b, h, q_idx, k_idx) -> score``, FlexAttention's ``score_mod``."""


def positions(q_len: int, k_len: int, q_offset: int, device=None) -> tuple[Tensor, Tensor]:
    """Absolute query positions ``(q_len, 1)`` and key positions ``(1, k_len)``."""
    qp = torch.arange(q_len, device=device)[:, None] + q_offset
    kp = torch.arange(k_len, device=device)[None, :]
    return qp, kp


@dataclass(frozen=True, eq=False)
class ScoreBias:
    """Base class of additive score biases."""

    def to_dense(self, q_len: int, k_len: int, q_offset: int, device=None, dtype=torch.float32) -> Tensor:
        """The bias as a tensor broadcastable to ``(B, H, q_len, k_len)``: ``(B|1, H|1, Lq, Lk)``."""
        raise NotImplementedError

    def score_mod(self, q_offset: int) -> ScoreMod:
        """FlexAttention ``score_mod`` adding this bias (query index ``q`` is relative)."""
        raise NotImplementedError

    def relative(self, rel: Tensor, rows: Tensor | None = None) -> Tensor:
        """The bias at given relative offsets, for kernels that visit a few keys per query.

        Differentiable in the bias's tensors: the sparse kernels build the bias at the
        offsets they visit with this and hand its gradient back through autograd.

        Args:
            rel: long ``(R|1, n)``, key position minus query position of each visited pair;
                row ``r`` belongs to query row ``rows[r]`` (one row: the same offsets for
                every query).
            rows: long ``(R,)`` query rows of ``rel``'s rows; None: rows ``0 .. R - 1``
                (all queries, or the one shared row).
        Returns:
            ``(B|1, H|1, R|1, n)``; the query dimension is 1 only when neither ``rel`` nor
            the bias varies per query.

        Raises:
            NotImplementedError: biases that are not a function of the relative offset
                (:class:`DenseBias`).
        """
        raise NotImplementedError(f"{type(self).__name__} is not a function of relative offsets")

    @property
    def requires_grad(self) -> bool:
        """Whether a tensor this bias holds needs a gradient."""
        return any(t.requires_grad for t in self.tensors())

    def tensors(self) -> tuple[Tensor, ...]:
        """The tensors this bias holds."""
        return ()

    def check(self, batch: int, heads: int, q_len: int) -> None:
        """ValueError unless the bias's tensors broadcast to the call's shape."""


def _broadcasts(name: str, shape: torch.Size, want: tuple[int, ...], what: str) -> None:
    if len(shape) != len(want) or any(s not in (1, w) for s, w in zip(shape, want)):
        raise ValueError(f"{name} of shape {tuple(shape)} does not broadcast to {what} = {want}")


@dataclass(frozen=True, eq=False)
class SlopeBias(ScoreBias):
    """``-slope[h] * distance``: ALiBi's linear penalty (Press et al. 2022, Sec. 3).

    Args:
        slopes: ``(H,)`` per-head slopes (positive: farther keys score lower).
        symmetric: distance ``|i - j|`` (bidirectional encoders, as in MosaicBERT);
            otherwise ``i - j``, the causal form (keys to the right are masked by the
            pattern, where this would be a reward).
    """

    slopes: Tensor = field(repr=False)
    symmetric: bool = False

    def tensors(self):
        return (self.slopes,)

    def check(self, batch, heads, q_len):
        _broadcasts("SlopeBias.slopes", self.slopes.shape, (heads,), "(H,)")

    def to_dense(self, q_len, k_len, q_offset, device=None, dtype=torch.float32):
        qp, kp = positions(q_len, k_len, q_offset, device)
        d = (qp - kp).to(dtype)
        d = d.abs() if self.symmetric else d
        return -self.slopes.to(device=device, dtype=dtype)[None, :, None, None] * d

    def relative(self, rel, rows=None):
        d = -rel  # distance i - j
        d = (d.abs() if self.symmetric else d).to(self.slopes.dtype)
        return -self.slopes[None, :, None, None] * d

    def score_mod(self, q_offset):
        slopes, sym = self.slopes, self.symmetric

        def fn(score, b, h, q, k):
            d = (q + q_offset - k).to(score.dtype)
            return score - slopes[h] * (d.abs() if sym else d)

        return fn


@dataclass(frozen=True, eq=False)
class OffsetTableBias(ScoreBias):
    """``table[b, h, i, clip(j - i, -R, R) + R]``: a table over clipped relative offsets.

    Args:
        table: ``(B|1, H|1, Lq|1, 2R + 1)``; column ``R + o`` is the bias of the key ``o``
            positions after the query (``o < 0``: before it). Per head (T5-style, adaptive
            span's ramp): ``(1, H, 1, 2R + 1)``; per query (Shaw et al. 2018):
            ``(B, H, Lq, 2R + 1)``.
        max_distance: ``R``; offsets beyond it share the edge column.
    """

    table: Tensor = field(repr=False)
    max_distance: int = 0

    def __post_init__(self) -> None:
        if self.table.dim() != 4 or self.table.shape[-1] != 2 * self.max_distance + 1:
            raise ValueError(
                f"OffsetTableBias.table must be (B|1, H|1, Lq|1, 2R+1) with R = {self.max_distance}, "
                f"got {tuple(self.table.shape)}"
            )

    def tensors(self):
        return (self.table,)

    def check(self, batch, heads, q_len):
        _broadcasts("OffsetTableBias.table", self.table.shape[:3], (batch, heads, q_len), "(B, H, Lq)")

    def columns(self, q_len: int, k_len: int, q_offset: int, device=None) -> Tensor:
        """``(Lq, Lk)`` table column of each (query, key) pair."""
        qp, kp = positions(q_len, k_len, q_offset, device)
        R = self.max_distance
        return (kp - qp).clamp(-R, R) + R

    def to_dense(self, q_len, k_len, q_offset, device=None, dtype=torch.float32):
        t = self.table.to(device=device, dtype=dtype)
        col = self.columns(q_len, k_len, q_offset, t.device)  # (Lq, Lk)
        B, H, Q, _ = t.shape
        if Q == 1:
            return t[:, :, 0][:, :, col]  # (B, H, Lq, Lk)
        return t.gather(-1, col[None, None].expand(B, H, q_len, k_len))

    def relative(self, rel, rows=None):
        R = self.max_distance
        col = rel.clamp(-R, R) + R  # (R|1, n)
        t = self.table
        if t.shape[2] == 1:  # per head: one row of columns serves every query
            return t[:, :, 0][:, :, col]
        if rows is not None:
            t = t.index_select(2, rows)
        B, H, Q, _ = t.shape
        return t.gather(-1, col[None, None].expand(B, H, Q, col.shape[-1]))

    def score_mod(self, q_offset):
        t, R = self.table, self.max_distance
        per_b, per_h, per_q = (t.shape[i] > 1 for i in range(3))

        def fn(score, b, h, q, k):
            col = torch.clamp(k - q - q_offset, -R, R) + R
            zero = torch.zeros_like(b)
            return score + t[b if per_b else zero, h if per_h else zero, q if per_q else zero, col]

        return fn


@dataclass(frozen=True, eq=False)
class DenseBias(ScoreBias):
    """Any bias as a tensor broadcastable to ``(B, H, Lq, Lk)`` (4-d); the reference path."""

    bias: Tensor = field(repr=False)

    def __post_init__(self) -> None:
        if self.bias.dim() != 4:
            raise ValueError(f"DenseBias needs a 4-d (B|1, H|1, Lq, Lk) tensor, got {tuple(self.bias.shape)}")

    def tensors(self):
        return (self.bias,)

    def check(self, batch, heads, q_len):
        _broadcasts("DenseBias.bias", self.bias.shape[:3], (batch, heads, q_len), "(B, H, Lq)")

    def to_dense(self, q_len, k_len, q_offset, device=None, dtype=torch.float32):
        if self.bias.shape[-2:] != (q_len, k_len):
            raise ValueError(f"DenseBias of shape {tuple(self.bias.shape)} for {q_len} queries and {k_len} keys")
        return self.bias.to(device=device, dtype=dtype)

    def score_mod(self, q_offset):
        t = self.bias
        per_b, per_h = t.shape[0] > 1, t.shape[1] > 1

        def fn(score, b, h, q, k):
            zero = torch.zeros_like(b)
            return score + t[b if per_b else zero, h if per_h else zero, q, k]

        return fn


__all__ = ["DenseBias", "OffsetTableBias", "ScoreBias", "SlopeBias", "positions"]
