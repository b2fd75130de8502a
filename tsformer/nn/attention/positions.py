"""Positions inside attention (``model.attention.positions``): rotate queries and keys, or
add a score bias, each as one small module an attention layer owns.

=============  ==========================================================================
``none``       nothing (order comes from elsewhere: a convolution, covariates)
``learned``    nothing here: the network adds a learned table at its input
``rotary``     Su et al. 2021 (RoFormer): queries and keys rotated by their position
``relative``   Shaw et al. 2018: ``q_i . a_{clip(j - i)}``, a per-query offset table
``alibi``      Press et al. 2022 (ALiBi): ``-m_h * distance``, fixed per-head slopes
``xl``         Dai et al. 2019 (Transformer-XL): ``(q_i + u) . k_j + (q_i + v) . W_R R_{i-j}``
=============  ==========================================================================

All positions are absolute positions of the call (query row ``r`` at ``r + q_offset``), so
they stay right over a decoding cache or a segment memory.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from tsformer.attention import OffsetTableBias, ScoreBias, SlopeBias

POSITIONS = ("none", "learned", "rotary", "relative", "alibi", "xl")
"""``model.attention.positions`` values."""


class Positions(nn.Module):
    """No positions inside attention (``none``, and ``learned``, which the network adds)."""

    def rotate(self, x: Tensor, start: int = 0) -> Tensor:
        """``(..., L, D)`` queries or keys at positions ``start ..``; identity here."""
        return x

    def content(self, q: Tensor, heads: slice = slice(None)) -> Tensor:
        """Queries ``(B, h, L, D)`` as scored against keys' content; identity here."""
        return q

    def bias(self, q: Tensor, scale: float, k_len: int, heads: slice = slice(None)) -> ScoreBias | None:
        """Score bias for queries ``q (B, h, Lq, D)`` (heads ``heads``) over ``k_len`` keys."""
        return None


class RotaryPositions(Positions):
    """Rotary embedding (Su et al. 2021, "RoFormer"): ``q_i . k_j`` depends on ``i - j`` only."""

    def __init__(self, head_dim: int, base: float = 10000.0):
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"rotary positions need an even head dim, got {head_dim}")
        inv = 1.0 / base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
        self.register_buffer("inv_freq", inv, persistent=False)

    def rotate(self, x: Tensor, start: int = 0) -> Tensor:
        L = x.shape[-2]
        pos = torch.arange(start, start + L, device=x.device, dtype=torch.float32)
        ang = pos[:, None] * self.inv_freq.to(x.device)[None]  # (L, D/2)
        cos, sin = ang.cos().to(x.dtype), ang.sin().to(x.dtype)
        x1, x2 = x[..., 0::2], x[..., 1::2]
        return torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)


class RelativePositions(Positions):
    """Shaw et al. 2018, "Self-Attention with Relative Position Representations": one key
    embedding per clipped offset ``j - i``, scored against the query, as a per-query table
    over offsets (so every kernel that takes an :class:`OffsetTableBias` serves it)."""

    def __init__(self, head_dim: int, max_relative: int = 64):
        super().__init__()
        self.max_relative = int(max_relative)
        self.rel_k = nn.Embedding(2 * self.max_relative + 1, head_dim)

    def bias(self, q, scale, k_len, heads=slice(None)):
        table = torch.matmul(q, self.rel_k.weight.t()) * scale  # (B, h, Lq, 2R + 1)
        return OffsetTableBias(table, self.max_relative)


def alibi_slopes(n_heads: int) -> list[float]:
    """ALiBi's per-head slopes (Press et al. 2022, Sec. 3 and their reference code).

    For ``n`` heads, a power of 2: the geometric sequence starting at ``2^(-8/n)`` with
    ratio ``2^(-8/n)`` (8 heads: 1/2, 1/4, ..., 1/256). Otherwise the slopes of the closest
    smaller power of 2, ``m``, followed by every other slope of ``2m`` heads (12 heads: the 8
    slopes of 8 heads, then slopes 1, 3, 5, 7 of the 16-head sequence).
    """

    def power_of_2(n: int) -> list[float]:
        start = 2 ** (-(2 ** -(math.log2(n) - 3)))  # = 2^(-8/n)
        return [start * start**i for i in range(n)]

    if n_heads < 1:
        raise ValueError(f"ALiBi needs at least one head, got {n_heads}")
    if math.log2(n_heads).is_integer():
        return power_of_2(n_heads)
    m = 2 ** math.floor(math.log2(n_heads))
    return power_of_2(m) + power_of_2(2 * m)[0::2][: n_heads - m]


class ALiBiPositions(Positions):
    """ALiBi (Press et al. 2022, "Train Short, Test Long"): no position embeddings; each head
    subtracts ``m_h`` times the query-key distance from its scores. The distance is
    ``i - j`` in causal layers and ``|i - j|`` in bidirectional ones (MosaicBERT's form)."""

    def __init__(self, n_heads: int, symmetric: bool):
        super().__init__()
        self.symmetric = symmetric
        self.register_buffer("slopes", torch.tensor(alibi_slopes(n_heads)), persistent=False)

    def bias(self, q, scale, k_len, heads=slice(None)):
        return SlopeBias(self.slopes[heads].to(q.dtype), symmetric=self.symmetric)


def sinusoid(distances: Tensor, dim: int) -> Tensor:
    """Sinusoid embeddings (Vaswani et al. 2017) of ``(n,)`` distances: ``(n, dim)``."""
    inv = 1.0 / 10000 ** (torch.arange(0, dim, 2, device=distances.device, dtype=torch.float32) / dim)
    ang = distances.float()[:, None] * inv[None]
    return torch.cat([ang.sin(), ang.cos()], dim=-1)


class XLPositions(Positions):
    """Transformer-XL's relative positions (Dai et al. 2019, Sec. 3.3, Eq. for
    ``A^rel_{i,j}``): the score of query ``i`` and key ``j`` is

    ``(a) q_i . k_j + (b) q_i . W_R R_{i-j} + (c) u . k_j + (d) v . W_R R_{i-j}``

    with ``R`` the sinusoid embedding of the distance, ``W_R`` a learned projection, and
    ``u``, ``v`` learned per-head biases. (a) + (c) is ``(q_i + u) . k_j``, the content score
    (:meth:`content`); (b) + (d) is ``(q_i + v) . W_R R_{i-j}``, a per-query table over the
    distances the call spans (:meth:`bias`).

    Args:
        d_model: width of the sinusoid (the paper's ``R`` has the model width).
        n_heads, head_dim: heads of the layer.
    """

    def __init__(self, d_model: int, n_heads: int, head_dim: int):
        super().__init__()
        self.d_model, self.n_heads, self.head_dim = d_model, n_heads, head_dim
        self.r_proj = nn.Linear(d_model, n_heads * head_dim, bias=False)  # W_R
        self.u = nn.Parameter(torch.zeros(n_heads, head_dim))
        self.v = nn.Parameter(torch.zeros(n_heads, head_dim))

    def content(self, q, heads=slice(None)):
        return q + self.u[heads][None, :, None, :].to(q.dtype)

    def relative_keys(self, distances: Tensor, heads: slice = slice(None)) -> Tensor:
        """``W_R R_d`` for ``(n,)`` distances: ``(h, n, D)``."""
        r = self.r_proj(sinusoid(distances, self.d_model).to(self.r_proj.weight.dtype))
        return r.view(-1, self.n_heads, self.head_dim).transpose(0, 1)[heads]

    def bias(self, q, scale, k_len, heads=slice(None)):
        R = max(k_len - 1, q.shape[-2] - 1, 0)
        # Column R + o is the key o positions after the query: distance i - j = -o.
        dist = torch.arange(R, -R - 1, -1, device=q.device)
        rk = self.relative_keys(dist, heads)  # (h, 2R + 1, D)
        qv = q + self.v[heads][None, :, None, :].to(q.dtype)
        table = torch.matmul(qv, rk.transpose(-1, -2).to(q.dtype)) * scale  # (B, h, Lq, 2R + 1)
        return OffsetTableBias(table, R)


def rel_shift(x: Tensor) -> Tensor:
    """Transformer-XL's relative shift (Dai et al. 2019, Appendix B): from ``x[..., i, m]``,
    scores against ``R`` at distances ``Lk - 1 - m`` (descending), to ``y[..., i, j]`` against
    distance ``i + (Lk - Lq) - j``; entries above that diagonal's reach are garbage (masked
    by causality). Kept as the reference the tests compare :class:`XLPositions`' gather to.

    Args:
        x: ``(..., Lq, Lk)``.
    Returns:
        ``(..., Lq, Lk)``.
    """
    *lead, Lq, Lk = x.shape
    padded = torch.cat([x.new_zeros(*lead, Lq, 1), x], dim=-1)  # (..., Lq, Lk + 1)
    return padded.view(*lead, Lk + 1, Lq)[..., 1:, :].reshape(*lead, Lq, Lk)


def make_positions(spec, head_dim: int, n_heads: int) -> Positions:
    """The positions module ``spec.positions`` names (``spec``: an ``AttentionSpec``)."""
    kind = spec.positions
    if kind in ("none", "learned"):
        return Positions()
    if kind == "rotary":
        return RotaryPositions(head_dim, spec.rotary_base)
    if kind == "relative":
        return RelativePositions(head_dim, spec.max_relative)
    if kind == "alibi":
        return ALiBiPositions(n_heads, symmetric=not spec.build_pattern().causal)
    if kind == "xl":
        return XLPositions(n_heads * head_dim, n_heads, head_dim)
    raise ValueError(f"model.attention.positions={kind!r}; choose one of {POSITIONS}")


__all__ = [
    "POSITIONS",
    "ALiBiPositions",
    "Positions",
    "RelativePositions",
    "RotaryPositions",
    "XLPositions",
    "alibi_slopes",
    "make_positions",
    "rel_shift",
    "sinusoid",
]
