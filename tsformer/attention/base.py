"""The one kernel signature: :class:`Kernel`, the base class of every attention kernel.

A call is ``kernel(q, k, v, pattern, *, scale, dropout_p, bias, q_offset)`` on
``(B, H, L, D)`` tensors:

- ``pattern`` (:mod:`tsformer.attention.patterns`): which keys each query may see;
- ``bias`` (:mod:`tsformer.attention.bias`): an optional additive score bias;
- ``q_offset``: the position of the first query among the keys; default ``Lk - Lq``
  (queries aligned with the last keys: a decoding step over a cache, a segment over its
  memory).

``supports`` answers, before any work, None or the reason a kernel cannot serve a call;
``forward`` raises ``ValueError`` with that reason. Kernels hold no state: one instance per
name serves every layer.
"""

from __future__ import annotations

from torch import Tensor, nn

from tsformer.attention.bias import ScoreBias
from tsformer.attention.patterns import Pattern


def resolve_offset(q: Tensor, k: Tensor, q_offset: int | None) -> int:
    """``q_offset``, or the bottom-right default ``Lk - Lq``."""
    return k.shape[-2] - q.shape[-2] if q_offset is None else int(q_offset)


def check_shapes(q: Tensor, k: Tensor, v: Tensor, bias: ScoreBias | None, q_offset: int) -> str | None:
    """The reason a call's shapes are inconsistent, or None."""
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        return f"q, k, v must be (B, H, L, D); got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
    if k.shape[:2] != q.shape[:2] or v.shape[:3] != k.shape[:3] or k.shape[-1] != q.shape[-1]:
        return (
            "q (B, H, Lq, D), k (B, H, Lk, D) and v (B, H, Lk, Dv) disagree: "
            f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    if q_offset < 0:
        return f"q_offset must be >= 0, got {q_offset} ({q.shape[-2]} queries, {k.shape[-2]} keys)"
    if bias is not None:
        try:
            bias.check(q.shape[0], q.shape[1], q.shape[-2])
        except ValueError as e:
            return str(e)
    return None


class Kernel(nn.Module):
    """Base class: the shared signature and the ``supports`` check.

    Subclasses set ``name`` and implement :meth:`_supports` (their own limits) and
    :meth:`_attend` (the math, called with a resolved scale and offset).
    """

    name = "kernel"

    def supports(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        pattern: Pattern,
        *,
        dropout_p: float = 0.0,
        bias: ScoreBias | None = None,
        q_offset: int | None = None,
    ) -> str | None:
        """None if this kernel can serve the call, else the reason it cannot."""
        off = resolve_offset(q, k, q_offset)
        return check_shapes(q, k, v, bias, off) or self._supports(q, k, v, pattern, dropout_p, bias, off)

    def _supports(
        self, q: Tensor, k: Tensor, v: Tensor, pattern: Pattern, dropout_p: float, bias: ScoreBias | None, q_offset: int
    ) -> str | None:
        return None

    def forward(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        pattern: Pattern,
        *,
        scale: float | None = None,
        dropout_p: float = 0.0,
        bias: ScoreBias | None = None,
        q_offset: int | None = None,
    ) -> Tensor:
        """Attention of ``q`` over ``k, v`` under ``pattern``.

        Args:
            q: ``(B, H, Lq, D)``. k: ``(B, H, Lk, D)``. v: ``(B, H, Lk, Dv)``.
            pattern: which keys each query sees (a :class:`Pattern`).
            scale: score scale, default ``D ** -0.5``.
            dropout_p: attention-probability dropout (callers pass 0 in evaluation).
            bias: additive score bias, or None.
            q_offset: position of query row 0; default ``Lk - Lq``.
        Returns:
            ``(B, H, Lq, Dv)``; a query with no allowed key gives zeros.
        """
        reason = self.supports(q, k, v, pattern, dropout_p=dropout_p, bias=bias, q_offset=q_offset)
        if reason is not None:
            raise ValueError(reason)
        scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
        return self._attend(q, k, v, pattern, scale, dropout_p, bias, resolve_offset(q, k, q_offset))

    def _attend(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        pattern: Pattern,
        scale: float,
        dropout_p: float,
        bias: ScoreBias | None,
        q_offset: int,
    ) -> Tensor:
        raise NotImplementedError


__all__ = ["Kernel", "check_shapes", "resolve_offset"]
