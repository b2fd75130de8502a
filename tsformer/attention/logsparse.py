"""Sparse LogSparse attention: O(Lq log Lk) time and memory, forward and backward.

Li et al., NeurIPS 2019, "Enhancing the Locality and Breaking the Memory Bottleneck of
Transformer on Time Series Forecasting" (https://arxiv.org/abs/1907.00235).

Every query sees keys at the same set of distances (``LogSparse.offsets``), so the
kernel loops over those O(log L) distances and works on shifted views of ``k`` and
``v``: no Lq x Lk score matrix and no gathered copy of the keys. Query row ``r`` sits at
position ``r + q_offset``, so distance ``d`` pairs it with key ``r + q_offset - d``: the
views only shift further, and a decoding step (one query over a long cache) costs
``O(log Lk)`` keys, not ``O(Lk)``. Rows are processed in chunks so the per-offset
temporaries stay in cache, and the products are accumulated in place (``addcmul_``).

A score bias (:class:`~tsformer.attention.bias.SlopeBias`,
:class:`~tsformer.attention.bias.OffsetTableBias`) depends only on the distance, and the
query row for per-query tables, so it is built once at the visited distances,
``(B|1, H|1, Lq|1, n)``, as a differentiable function of the bias's tensors; the autograd
Function returns its gradient (the score gradient, summed over broadcast dimensions) and
autograd carries it into the slopes or the table.

The autograd Function saves only ``q, k, v``, the biases and the per-row log-sum-exp;
backward recomputes the ``(Lq, n)`` scores chunk by chunk and gets ``rowsum(dO * O)`` as
``rowsum(P * dP)``, so the output need not be kept either.
"""

from __future__ import annotations

import torch
from torch import Tensor

from tsformer.attention._common import attend, reduce_to, sparse_refusal
from tsformer.attention.base import Kernel
from tsformer.attention.bias import ScoreBias
from tsformer.attention.patterns import LogSparse, unwrap

# Elements of one (B, H, rows, D) chunk temporary (4 MiB fp32): measured fastest on CPU.
_ROW_CHUNK_ELEMS = 1 << 20


def _mask(
    pattern: LogSparse, offsets: list[int], key_bias: Tensor | None, Lq: int, Lk: int, q_offset: int, dtype, device
) -> Tensor:
    """``(B or 1, 1, Lq, n)`` additive mask: -inf where key ``r + q_offset - d`` is outside
    ``[0, Lk)``, across a restart boundary, or invalid in ``key_bias (B, Lk)``."""
    pos = torch.arange(Lq, device=device) + q_offset
    off = torch.tensor(offsets, device=device)
    key = pos[:, None] - off[None, :]  # (Lq, n)
    ok = (key >= 0) & (key < Lk)
    if pattern.restart is not None:
        r = pattern.restart
        ok &= torch.div(pos, r, rounding_mode="floor")[:, None] == torch.div(key, r, rounding_mode="floor")
    mask = torch.zeros(Lq, len(offsets), dtype=dtype, device=device).masked_fill_(~ok, float("-inf"))
    if key_bias is None:
        return mask[None, None]
    gathered = key_bias[:, key.clamp(0, Lk - 1)]  # (B, Lq, n)
    return (mask[None] + gathered)[:, None]


def _score_bias(bias: ScoreBias, offsets: list[int], dtype, device) -> Tensor:
    """``(B|1, H|1, Lq|1, n)`` bias at the visited distances, differentiable in the bias's
    tensors (key minus query is ``-d``)."""
    rel = -torch.tensor(offsets, device=device)[None, :]
    return bias.relative(rel).to(dtype)


def _row_chunk(q: Tensor) -> int:
    B, H, L, D = q.shape
    return max(16, _ROW_CHUNK_ELEMS // max(1, B * H * D))


def _shifts(offsets: list[int], c0: int, c1: int, q_offset: int, Lk: int):
    """Yield ``(j, rows, keys)`` per offset ``d = offsets[j]``: the slice of chunk ``[c0, c1)``
    (chunk-relative) whose keys ``r + q_offset - d`` lie in ``[0, Lk)``, and those keys'
    slice; offsets with no such row are skipped."""
    for j, d in enumerate(offsets):
        lo, hi = max(c0, d - q_offset), min(c1, Lk + d - q_offset)
        if lo < hi:
            yield j, slice(lo - c0, hi - c0), slice(lo + q_offset - d, hi + q_offset - d)


def _scores(qc: Tensor, k: Tensor, offsets: list[int], c0: int, c1: int, q_offset: int, out: Tensor) -> None:
    """Fill ``out (B, H, c, n)`` with ``qc_r . k_{r + q_offset - d}`` for rows ``r`` in ``[c0, c1)``.

    Rows whose key would be outside ``[0, Lk)`` are left untouched (the mask makes them -inf).
    """
    for j, r, kr in _shifts(offsets, c0, c1, q_offset, k.shape[2]):
        torch.sum(qc[:, :, r] * k[:, :, kr], -1, out=out[:, :, r, j])


def _add_rows(s: Tensor, bias: Tensor | None, c0: int, c1: int) -> None:
    """``s (B, H, c, n) += bias`` rows ``[c0, c1)`` (a bias with one row serves every row)."""
    if bias is not None:
        s += bias if bias.shape[2] == 1 else bias[:, :, c0:c1]


class _LogSparseFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, mask, sbias, offsets: list[int], q_offset: int, scale: float):
        assert offsets[0] == 0
        B, H, Lq, D = q.shape
        Lk = k.shape[2]
        # Offset 0 writes every row whose own position is a key; rows past the keys stay 0.
        out = torch.empty_like(q) if q_offset + Lq <= Lk else torch.zeros_like(q)
        lse = q.new_empty(B, H, Lq)
        C = _row_chunk(q)
        n = len(offsets)
        for c0 in range(0, Lq, C):
            c1 = min(Lq, c0 + C)
            qc = q[:, :, c0:c1] * scale
            s = q.new_zeros(B, H, c1 - c0, n)
            _scores(qc, k, offsets, c0, c1, q_offset, s)
            s += mask[:, :, c0:c1]
            _add_rows(s, sbias, c0, c1)
            mx = s.amax(-1, keepdim=True)
            mx.masked_fill_(mx == float("-inf"), 0.0)  # rows with no key: exp(-inf) = 0
            s.sub_(mx).exp_()
            denom = s.sum(-1, keepdim=True)
            s.div_(denom.clamp_min(torch.finfo(q.dtype).tiny))
            lse[:, :, c0:c1] = (mx + denom.log()).squeeze(-1)
            oc = out[:, :, c0:c1]
            for j, r, kr in _shifts(offsets, c0, c1, q_offset, Lk):
                if j == 0:
                    torch.mul(s[:, :, r, 0, None], v[:, :, kr], out=oc[:, :, r])
                else:
                    oc[:, :, r].addcmul_(s[:, :, r, j, None], v[:, :, kr])
        ctx.save_for_backward(q, k, v, mask, sbias, lse)
        ctx.args = (offsets, q_offset, scale)
        ctx.set_materialize_grads(False)
        return out, lse

    @staticmethod
    def backward(ctx, dout, dlse):
        q, k, v, mask, sbias, lse = ctx.saved_tensors
        offsets, q_offset, scale = ctx.args
        B, H, Lq, D = q.shape
        Lk = k.shape[2]
        if dout is None:
            dout = torch.zeros_like(q)
        # Rows with no key have lse = -inf; +inf makes their probabilities exp(-inf) = 0.
        lse_safe = lse.masked_fill(lse == float("-inf"), float("inf")).unsqueeze(-1)
        # Offset 0 writes rows [c0, c1) of dq and key rows [c0, c1) + q_offset of dk, dv
        # first: earlier chunks only touch keys below c0 + q_offset, so plain writes replace
        # a zero fill of three L x D tensors. Only the rows offset 0 never writes are zeroed:
        # keys before the first query or after the last, queries past the last key.
        # Keys or values that need no gradient (a frozen cache) get none: a decoding step
        # then costs no O(Lk) fill.
        dq = torch.empty_like(q)
        dk = torch.empty_like(k) if ctx.needs_input_grad[1] else None
        dv = torch.empty_like(v) if ctx.needs_input_grad[2] else None
        dq[:, :, max(0, Lk - q_offset) :].zero_()
        for g in (dk, dv):
            if g is not None:
                g[:, :, :q_offset].zero_()
                g[:, :, q_offset + Lq :].zero_()
        dsb = None
        if sbias is not None and ctx.needs_input_grad[4]:
            dsb = torch.zeros_like(sbias)
        C = _row_chunk(q)
        n = len(offsets)
        for c0 in range(0, Lq, C):
            c1 = min(Lq, c0 + C)
            qc = q[:, :, c0:c1] * scale
            doc = dout[:, :, c0:c1]
            p = q.new_zeros(B, H, c1 - c0, n)
            _scores(qc, k, offsets, c0, c1, q_offset, p)
            p += mask[:, :, c0:c1]
            _add_rows(p, sbias, c0, c1)
            p.sub_(lse_safe[:, :, c0:c1]).exp_()
            ds = q.new_zeros(B, H, c1 - c0, n)
            _scores(doc, v, offsets, c0, c1, q_offset, ds)  # dP
            delta = (p * ds).sum(-1, keepdim=True)  # = rowsum(dO * O)
            ds.sub_(delta)
            if dlse is not None:
                ds.add_(dlse[:, :, c0:c1, None])
            ds.mul_(p)  # the score gradient: also the bias's
            if dsb is not None:
                if dsb.shape[2] == 1:
                    dsb += reduce_to(ds, dsb.shape)
                else:
                    dsb[:, :, c0:c1] += reduce_to(ds, dsb[:, :, c0:c1].shape)
            dqc = dq[:, :, c0:c1]
            for j, r, kr in _shifts(offsets, c0, c1, q_offset, Lk):
                if j == 0:
                    torch.mul(ds[:, :, r, 0, None], k[:, :, kr], out=dqc[:, :, r])
                    if dk is not None:
                        torch.mul(ds[:, :, r, 0, None], qc[:, :, r], out=dk[:, :, kr])
                    if dv is not None:
                        torch.mul(p[:, :, r, 0, None], doc[:, :, r], out=dv[:, :, kr])
                else:
                    dqc[:, :, r].addcmul_(ds[:, :, r, j, None], k[:, :, kr])
                    if dk is not None:
                        dk[:, :, kr].addcmul_(ds[:, :, r, j, None], qc[:, :, r])
                    if dv is not None:
                        dv[:, :, kr].addcmul_(p[:, :, r, j, None], doc[:, :, r])
        dq.mul_(scale)
        return dq, dk, dv, None, dsb, None, None, None


def logsparse_core(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    key_bias: Tensor | None,
    pattern: LogSparse,
    scale: float,
    *,
    q_offset: int = 0,
    bias: ScoreBias | None = None,
) -> tuple[Tensor, Tensor]:
    """LogSparse attention without global tokens.

    Args:
        q: ``(B, H, Lq, D)``. k, v: ``(B, H, Lk, D)``.
        key_bias: ``(B, Lk)`` additive key bias (0 / -inf) or None.
        q_offset: position of query row 0.
        bias: a relative score bias (slope or offset table) or None.
    Returns:
        ``out (B, H, Lq, D)`` and per-row log-sum-exp ``(B, H, Lq)`` (-inf for rows with no key).
    """
    Lq, Lk = q.shape[-2], k.shape[-2]
    # Distances reach back to key 0 from the last query's position at most.
    offsets = pattern.offsets(Lq + q_offset)
    mask = _mask(pattern, offsets, key_bias, Lq, Lk, q_offset, q.dtype, q.device)
    sbias = None if bias is None else _score_bias(bias, offsets, q.dtype, q.device)
    return _LogSparseFn.apply(q, k, v, mask, sbias, offsets, q_offset, scale)


class LogSparseAttention(Kernel):
    """Attention for :class:`LogSparse` patterns (Li et al. 2019), with its local and
    restart variants, key padding, global tokens, query offsets (any ``Lq``, ``Lk``) and
    slope or offset-table score biases.

    Time ``O(Lq n D)`` and memory ``O(Lq n)`` beyond inputs and gradients, ``n = O(log L)``
    offsets (global tokens add ``O(Lq G + G Lk)``). Cannot serve: other patterns, attention
    dropout, a :class:`~tsformer.attention.bias.DenseBias`, value and query head dims that
    differ.
    """

    name = "logsparse"

    def _supports(self, q, k, v, pattern, dropout_p, bias, q_offset) -> str | None:
        return sparse_refusal(self.name, LogSparse, q, v, pattern, dropout_p, bias)

    def _attend(self, q, k, v, pattern, scale, dropout_p, bias, q_offset) -> Tensor:
        """q ``(B, H, Lq, D)``, k, v ``(B, H, Lk, D)`` under a LogSparse pattern (with
        padding and global tokens)."""
        core, lengths, globals_ = unwrap(pattern)

        def fn(q_, k_, v_, key_bias):
            return logsparse_core(q_, k_, v_, key_bias, core, scale, q_offset=q_offset, bias=bias)

        return attend(fn, q, k, v, lengths, globals_, scale, q_offset=q_offset, bias=bias)


def logsparse_attention(
    q: Tensor, k: Tensor, v: Tensor, pattern: LogSparse, lengths: Tensor | None = None, scale: float | None = None
) -> Tensor:
    """Functional form of :class:`LogSparseAttention` (see there)."""
    p = pattern if lengths is None else pattern.with_padding(lengths)
    return LogSparseAttention()(q, k, v, p, scale=scale)
