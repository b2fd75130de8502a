"""Sparse LogSparse attention: O(L log L) time and memory, forward and backward.

Li et al., NeurIPS 2019, "Enhancing the Locality and Breaking the Memory Bottleneck of
Transformer on Time Series Forecasting" (https://arxiv.org/abs/1907.00235).

Every query sees keys at the same set of distances (``LogSparse.offsets``), so the
kernel loops over those O(log L) distances and works on shifted views of ``k`` and
``v``: no L x L score matrix and no gathered copy of the keys. Rows are processed in
chunks so the per-offset temporaries stay in cache, and the products are accumulated
in place (``addcmul_``).

The autograd Function saves only ``q, k, v`` and the per-row log-sum-exp; backward
recomputes the ``(L, n)`` scores chunk by chunk and gets ``rowsum(dO * O)`` as
``rowsum(P * dP)``, so the output need not be kept either.
"""

from __future__ import annotations

import torch
from torch import Tensor

from tsformer.attention._common import attend
from tsformer.attention.base import Kernel
from tsformer.attention.patterns import LogSparse, unwrap

# Elements of one (B, H, rows, D) chunk temporary (4 MiB fp32): measured fastest on CPU.
_ROW_CHUNK_ELEMS = 1 << 20


def _bias(pattern: LogSparse, offsets: list[int], key_bias: Tensor | None, L: int, dtype, device) -> Tensor:
    """``(B or 1, 1, L, n)`` additive bias: -inf where key ``i - d`` is outside the sequence,
    across a restart boundary, or invalid in ``key_bias``."""
    pos = torch.arange(L, device=device)
    off = torch.tensor(offsets, device=device)
    key = pos[:, None] - off[None, :]  # (L, n)
    ok = key >= 0
    if pattern.restart is not None:
        r = pattern.restart
        ok &= torch.div(pos, r, rounding_mode="floor")[:, None] == torch.div(key, r, rounding_mode="floor")
    bias = torch.zeros(L, len(offsets), dtype=dtype, device=device).masked_fill_(~ok, float("-inf"))
    if key_bias is None:
        return bias[None, None]
    gathered = key_bias[:, key.clamp_min(0)]  # (B, L, n)
    return (bias[None] + gathered)[:, None]


def _row_chunk(q: Tensor) -> int:
    B, H, L, D = q.shape
    return max(16, _ROW_CHUNK_ELEMS // max(1, B * H * D))


def _scores(qc: Tensor, k: Tensor, offsets: list[int], c0: int, c1: int, out: Tensor) -> None:
    """Fill ``out (B, H, c, n)`` with ``qc_i . k_{i-d}`` for rows ``i`` in ``[c0, c1)``.

    Rows whose key would be negative are left untouched (the bias makes them -inf).
    """
    for j, d in enumerate(offsets):
        lo = max(c0, d)
        if lo >= c1:
            continue
        torch.sum(qc[:, :, lo - c0 :] * k[:, :, lo - d : c1 - d], -1, out=out[:, :, lo - c0 :, j])


class _LogSparseFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, bias, offsets: list[int], scale: float):
        assert offsets[0] == 0
        B, H, L, D = q.shape
        out = torch.empty_like(q)  # offset 0 writes every row first (offsets[0] == 0)
        lse = q.new_empty(B, H, L)
        C = _row_chunk(q)
        n = len(offsets)
        for c0 in range(0, L, C):
            c1 = min(L, c0 + C)
            qc = q[:, :, c0:c1] * scale
            s = q.new_zeros(B, H, c1 - c0, n)
            _scores(qc, k, offsets, c0, c1, s)
            s += bias[:, :, c0:c1]
            mx = s.amax(-1, keepdim=True)
            mx.masked_fill_(mx == float("-inf"), 0.0)  # rows with no key: exp(-inf) = 0
            s.sub_(mx).exp_()
            denom = s.sum(-1, keepdim=True)
            s.div_(denom.clamp_min(torch.finfo(q.dtype).tiny))
            lse[:, :, c0:c1] = (mx + denom.log()).squeeze(-1)
            oc = out[:, :, c0:c1]
            torch.mul(s[:, :, :, 0, None], v[:, :, c0:c1], out=oc)
            for j, d in enumerate(offsets[1:], start=1):
                lo = max(c0, d)
                if lo < c1:
                    oc[:, :, lo - c0 :].addcmul_(s[:, :, lo - c0 :, j, None], v[:, :, lo - d : c1 - d])
        ctx.save_for_backward(q, k, v, bias, lse)
        ctx.args = (offsets, scale)
        ctx.set_materialize_grads(False)
        return out, lse

    @staticmethod
    def backward(ctx, dout, dlse):
        q, k, v, bias, lse = ctx.saved_tensors
        offsets, scale = ctx.args
        B, H, L, D = q.shape
        if dout is None:
            dout = torch.zeros_like(q)
        # Rows with no key have lse = -inf; +inf makes their probabilities exp(-inf) = 0.
        lse_safe = lse.masked_fill(lse == float("-inf"), float("inf")).unsqueeze(-1)
        # Offset 0 writes rows [c0, c1) of dq, dk, dv first: earlier chunks only touch rows
        # below c0, so plain writes replace a zero fill of three L x D tensors.
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        C = _row_chunk(q)
        n = len(offsets)
        for c0 in range(0, L, C):
            c1 = min(L, c0 + C)
            qc = q[:, :, c0:c1] * scale
            doc = dout[:, :, c0:c1]
            p = q.new_zeros(B, H, c1 - c0, n)
            _scores(qc, k, offsets, c0, c1, p)
            p += bias[:, :, c0:c1]
            p.sub_(lse_safe[:, :, c0:c1]).exp_()
            ds = q.new_zeros(B, H, c1 - c0, n)
            _scores(doc, v, offsets, c0, c1, ds)  # dP
            delta = (p * ds).sum(-1, keepdim=True)  # = rowsum(dO * O)
            ds.sub_(delta)
            if dlse is not None:
                ds.add_(dlse[:, :, c0:c1, None])
            ds.mul_(p)
            dqc = dq[:, :, c0:c1]
            torch.mul(ds[:, :, :, 0, None], k[:, :, c0:c1], out=dqc)
            torch.mul(ds[:, :, :, 0, None], qc, out=dk[:, :, c0:c1])
            torch.mul(p[:, :, :, 0, None], doc, out=dv[:, :, c0:c1])
            for j, d in enumerate(offsets[1:], start=1):
                lo = max(c0, d)
                if lo >= c1:
                    continue
                r, kr = slice(lo - c0, None), slice(lo - d, c1 - d)
                dqc[:, :, r].addcmul_(ds[:, :, r, j, None], k[:, :, kr])
                dk[:, :, kr].addcmul_(ds[:, :, r, j, None], qc[:, :, r])
                dv[:, :, kr].addcmul_(p[:, :, r, j, None], doc[:, :, r])
        dq.mul_(scale)
        return dq, dk, dv, None, None, None


def logsparse_core(
    q: Tensor, k: Tensor, v: Tensor, key_bias: Tensor | None, pattern: LogSparse, scale: float
) -> tuple[Tensor, Tensor]:
    """LogSparse attention without global tokens.

    Args:
        q, k, v: ``(B, H, L, D)``.
        key_bias: ``(B, L)`` additive key bias (0 / -inf) or None.
    Returns:
        ``out (B, H, L, D)`` and per-row log-sum-exp ``(B, H, L)`` (-inf for rows with no key).
    """
    L = q.shape[-2]
    offsets = pattern.offsets(L)
    bias = _bias(pattern, offsets, key_bias, L, q.dtype, q.device)
    return _LogSparseFn.apply(q, k, v, bias, offsets, scale)


class LogSparseAttention(Kernel):
    """Attention for :class:`LogSparse` patterns (Li et al. 2019), with its local and
    restart variants, key padding and global tokens (optionally with global projections).

    Time ``O(L n D)`` and memory ``O(L n)`` beyond inputs and gradients, ``n = O(log L)``
    offsets. Cannot serve: other patterns, attention dropout, ``Lq != Lk``.
    """

    name = "logsparse"

    def _supports(self, q, k, v, pattern, dropout_p, bias, q_offset) -> str | None:
        core, _, _ = unwrap(pattern)
        if not isinstance(core, LogSparse):
            return f"the logsparse kernel only serves LogSparse patterns, not {type(core).__name__}"
        if dropout_p > 0:
            return "the logsparse kernel does not support attention dropout"
        if bias is not None:
            return f"the logsparse kernel does not take a {type(bias).__name__} score bias"
        if q.shape[-2] != k.shape[-2] or q_offset != 0:
            return (
                f"the logsparse kernel needs as many queries as keys and q_offset 0; got {q.shape[-2]} queries, "
                f"{k.shape[-2]} keys, q_offset {q_offset}"
            )
        if v.shape[-1] != q.shape[-1]:
            return "the logsparse kernel needs value and query head dims to match"
        return None

    def _attend(self, q, k, v, pattern, scale, dropout_p, bias, q_offset) -> Tensor:
        """q, k, v ``(B, H, L, D)`` under a LogSparse pattern (with padding and global tokens)."""
        core, lengths, globals_ = unwrap(pattern)
        fn = lambda q_, k_, v_, bias: logsparse_core(q_, k_, v_, bias, core, scale)
        return attend(fn, q, k, v, lengths, globals_, scale)


def logsparse_attention(
    q: Tensor, k: Tensor, v: Tensor, pattern: LogSparse, lengths: Tensor | None = None, scale: float | None = None
) -> Tensor:
    """Functional form of :class:`LogSparseAttention` (see there)."""
    p = pattern if lengths is None else pattern.with_padding(lengths)
    return LogSparseAttention()(q, k, v, p, scale=scale)
