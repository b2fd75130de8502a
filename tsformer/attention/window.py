"""Sparse sliding-window attention: O(L w) time and memory, forward and backward.

Beltagy et al. 2020, "Longformer: The Long-Document Transformer"
(https://arxiv.org/abs/2004.05150).

Queries are cut into blocks of ``b``; block ``m`` attends to the contiguous key range
``[m b - before, m b + b + after)``, read as an overlapping strided view of the padded
keys (no copy), so one batched matmul scores a block against exactly
``b + before + after`` keys: ``(b + w) / w`` work per needed score instead of Longformer's
2x from overlapping chunks. A static band bias masks the block corners and a per-key bias
masks padding and global keys. Dilation ``r`` is exact and free of waste: positions
``i = a r + c`` only meet keys of the same residue ``c``, so the sequence is split into
``r`` interleaved sub-sequences each running a plain window. Global tokens are handled
separately (:func:`tsformer.attention._common.attend`).

The autograd Function saves only ``q, k, v`` and the per-row log-sum-exp; backward
recomputes the block scores, and gets ``rowsum(dO * O)`` as ``rowsum(P * dP)`` so the
output need not be kept.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tsformer.attention._common import CHUNK_ELEMS, attend, check_qkv
from tsformer.attention.patterns import Pattern, SlidingWindow, unwrap


def _block_size(reach: int) -> int:
    """Query block size for a window reaching ``reach = before + after`` keys beyond the block."""
    if reach <= 32:
        return 32
    if reach <= 128:
        return 64
    return 128


def _geometry(L: int, before: int, after: int, b: int):
    nb = math.ceil(L / b)
    span = b + before + after
    pieces = math.ceil(span / b)
    Lp = (nb + pieces) * b  # padded key length: covers every window and every piece
    return nb, span, pieces, Lp


def _band(b: int, span: int, before: int, after: int, dtype, device) -> Tensor:
    """``(b, span)`` bias: 0 where key ``u`` of the window is within reach of query ``t``."""
    t = torch.arange(b, device=device)[:, None]
    u = torch.arange(span, device=device)[None, :]
    ok = (u - t >= 0) & (u - t <= before + after)
    return torch.zeros(b, span, dtype=dtype, device=device).masked_fill_(~ok, float("-inf"))


def _pad_keys(x: Tensor, before: int, Lp: int) -> Tensor:
    """``(N, L, D)`` -> ``(N, Lp, D)`` with ``before`` zero rows in front."""
    return F.pad(x, (0, 0, before, Lp - before - x.shape[1]))


def _windows(xp: Tensor, nb: int, span: int, b: int) -> Tensor:
    """Overlapping view ``(N, nb, span, D)``: window ``m`` starts at padded row ``m b``."""
    N, Lp, D = xp.shape
    return xp.as_strided((N, nb, span, D), (Lp * D, b * D, D, 1))


def _chunks(N: int, nb: int, b: int, span: int):
    """Yield ``(n0, n1, m0, m1)`` slices whose score tile stays under ``CHUNK_ELEMS``."""
    per_block = b * span
    if nb * per_block <= CHUNK_ELEMS:
        g = max(1, CHUNK_ELEMS // (nb * per_block))
        for n0 in range(0, N, g):
            yield n0, min(N, n0 + g), 0, nb
    else:
        c = max(1, CHUNK_ELEMS // per_block)
        c = math.ceil(nb / math.ceil(nb / c))  # equal chunks
        for n0 in range(N):
            for m0 in range(0, nb, c):
                yield n0, n0 + 1, m0, min(nb, m0 + c)


def _bmm(a: Tensor, b: Tensor, out: Tensor | None = None) -> Tensor:
    """Matmul over leading dims; 3-d when possible so strided windows are not copied."""
    if a.shape[0] == 1:
        if out is None:
            return torch.bmm(a[0], b[0])[None]
        torch.bmm(a[0], b[0], out=out[0])
        return out
    if out is None:
        return torch.matmul(a, b)
    return torch.matmul(a, b, out=out)


def _add_band(s: Tensor, band: Tensor, b: int) -> None:
    """``s += band``, touching only the first and last ``b`` columns: the band is 0 between."""
    span = s.shape[-1]
    if span <= 2 * b:
        s += band
    else:
        s[..., :b] += band[:, :b]
        s[..., span - b :] += band[:, span - b :]


class _WindowFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, key_bias, before: int, after: int, scale: float):
        N, L, D = q.shape
        b = _block_size(before + after)
        nb, span, pieces, Lp = _geometry(L, before, after, b)
        qp = F.pad(q * scale, (0, 0, 0, nb * b - L)).view(N, nb, b, D)
        kw = _windows(_pad_keys(k, before, Lp), nb, span, b)
        vw = _windows(_pad_keys(v, before, Lp), nb, span, b)
        band = _band(b, span, before, after, q.dtype, q.device)
        bw = _key_bias_windows(key_bias, N, L, before, Lp, nb, span, b, q.dtype, q.device)
        edges = _edges(key_bias, L, before, span, b, nb)
        out = q.new_empty(N, nb, b, D)
        lse = q.new_empty(N, nb, b)
        for n0, n1, m0, m1 in _chunks(N, nb, b, span):
            s = _bmm(qp[n0:n1, m0:m1], kw[n0:n1, m0:m1].transpose(-1, -2))
            _add_band(s, band, b)
            _add_key_bias(s, bw, n0, n1, m0, m1, edges)
            mx = s.amax(-1, keepdim=True)
            mx.masked_fill_(mx == float("-inf"), 0.0)  # rows with no key: exp(-inf) = 0
            s.sub_(mx).exp_()
            denom = s.sum(-1, keepdim=True)
            o = _bmm(s, vw[n0:n1, m0:m1], out=out[n0:n1, m0:m1])
            o.div_(denom.clamp_min(torch.finfo(q.dtype).tiny))
            lse[n0:n1, m0:m1] = (mx + denom.log()).squeeze(-1)
        # The output is O(L D) like q, and rowsum(dO * O) from it is cheaper than from P dP.
        ctx.save_for_backward(q, k, v, key_bias, lse, out)
        ctx.args = (before, after, scale)
        ctx.set_materialize_grads(False)
        return out.view(N, nb * b, D)[:, :L], lse.view(N, nb * b)[:, :L]

    @staticmethod
    def backward(ctx, dout, dlse):
        q, k, v, key_bias, lse, out = ctx.saved_tensors
        before, after, scale = ctx.args
        N, L, D = q.shape
        b = _block_size(before + after)
        nb, span, pieces, Lp = _geometry(L, before, after, b)
        qp = F.pad(q * scale, (0, 0, 0, nb * b - L)).view(N, nb, b, D)
        kw = _windows(_pad_keys(k, before, Lp), nb, span, b)
        vw = _windows(_pad_keys(v, before, Lp), nb, span, b)
        if dout is None:
            dout = torch.zeros_like(q)
        dop = F.pad(dout, (0, 0, 0, nb * b - L)).view(N, nb, b, D)
        dl = None
        if dlse is not None:
            dl = F.pad(dlse, (0, nb * b - L)).view(N, nb, b, 1)
        # Rows with no key have lse = -inf; +inf makes their probabilities exp(-inf) = 0.
        lse_safe = lse.masked_fill(lse == float("-inf"), float("inf")).unsqueeze(-1)
        band = _band(b, span, before, after, q.dtype, q.device)
        bw = _key_bias_windows(key_bias, N, L, before, Lp, nb, span, b, q.dtype, q.device)
        edges = _edges(key_bias, L, before, span, b, nb)
        delta = (dop * out).sum(-1, keepdim=True)  # (N, nb, b, 1) = rowsum(dO * O)
        if dl is not None:
            delta -= dl
        dq = q.new_empty(N, nb, b, D)
        dkp = q.new_zeros(N, Lp, D)
        dvp = q.new_zeros(N, Lp, D)
        for n0, n1, m0, m1 in _chunks(N, nb, b, span):
            qc = qp[n0:n1, m0:m1]
            kc, vc = kw[n0:n1, m0:m1], vw[n0:n1, m0:m1]
            p = _bmm(qc, kc.transpose(-1, -2))
            _add_band(p, band, b)
            _add_key_bias(p, bw, n0, n1, m0, m1, edges)
            p.sub_(lse_safe[n0:n1, m0:m1]).exp_()
            doc = dop[n0:n1, m0:m1]
            ds = _bmm(doc, vc.transpose(-1, -2))  # dP
            ds.sub_(delta[n0:n1, m0:m1]).mul_(p)
            _bmm(ds, kc, out=dq[n0:n1, m0:m1]).mul_(scale)
            dkw = _bmm(ds.transpose(-1, -2), qc)  # (g, c, span, D)
            dvw = _bmm(p.transpose(-1, -2), doc)
            _scatter_windows(dkp, dkw, n0, n1, m0, m1, b, span, pieces)
            _scatter_windows(dvp, dvw, n0, n1, m0, m1, b, span, pieces)
        dk = dkp[:, before : before + L]
        dv = dvp[:, before : before + L]
        return dq.view(N, nb * b, D)[:, :L], dk, dv, None, None, None, None


def _key_bias_windows(key_bias, N, L, before, Lp, nb, span, b, dtype, device) -> Tensor:
    """``(N or 1, nb, 1, span)`` bias view: -inf on padding rows and invalid keys."""
    kb = torch.full((1 if key_bias is None else key_bias.shape[0], Lp), float("-inf"), dtype=dtype, device=device)
    kb[:, before : before + L] = 0.0 if key_bias is None else key_bias
    return kb.as_strided((kb.shape[0], nb, 1, span), (Lp, b, 0, 1))


def _edges(key_bias, L, before, span, b, nb) -> tuple[int, int] | None:
    """Blocks ``[lo, hi)`` whose windows lie inside ``[0, L)``: they need no key bias when
    ``key_bias`` is None. None: every block needs it."""
    if key_bias is not None:
        return None
    lo = math.ceil(before / b)
    hi = (L - span + before) // b + 1
    return (lo, hi) if hi > lo else None


def _add_key_bias(s: Tensor, bw: Tensor, n0, n1, m0, m1, edges) -> None:
    """``s (g, c, b, span) += bw`` for blocks ``[m0, m1)``, skipping interior blocks."""
    nsl = slice(n0, n1) if bw.shape[0] > 1 else slice(0, 1)
    if edges is None:
        s += bw[nsl, m0:m1]
        return
    lo, hi = edges
    for a, z in ((m0, min(m1, lo)), (max(m0, hi), m1)):
        if a < z:
            s[:, a - m0 : z - m0] += bw[nsl, a:z]


def _scatter_windows(dst: Tensor, win: Tensor, n0, n1, m0, m1, b, span, pieces) -> None:
    """Add window gradients ``win (g, c, span, D)`` back onto padded rows of ``dst (N, Lp, D)``."""
    c, D = m1 - m0, dst.shape[-1]
    for r in range(pieces):
        w = min(b, span - r * b)
        dst[n0:n1, (m0 + r) * b : (m1 + r) * b].view(n1 - n0, c, b, D)[:, :, :w] += win[:, :, r * b : r * b + w]


def window_core(
    q: Tensor, k: Tensor, v: Tensor, key_bias: Tensor | None, pattern: SlidingWindow, scale: float
) -> tuple[Tensor, Tensor]:
    """Sliding-window attention without global tokens.

    Args:
        q, k, v: ``(B, H, L, D)``.
        key_bias: ``(B, L)`` additive key bias (0 / -inf) or None.
        pattern: the window.
    Returns:
        ``out (B, H, L, D)`` and per-row log-sum-exp ``(B, H, L)`` (-inf for rows with no key).
    """
    B, H, L, D = q.shape
    r = pattern.dilation
    before, after = min(pattern.before, L), min(pattern.after, L)
    if r == 1:
        kb = None if key_bias is None else key_bias[:, None].expand(B, H, L).reshape(B * H, L)
        out, lse = _WindowFn.apply(
            q.reshape(B * H, L, D), k.reshape(B * H, L, D), v.reshape(B * H, L, D), kb, before, after, scale
        )
        return out.view(B, H, L, D), lse.view(B, H, L)
    # Dilation: interleaved sub-sequences i = a r + c see only keys of their residue c.
    La = math.ceil(L / r)
    pad = La * r - L

    def split(x: Tensor) -> Tensor:
        x = F.pad(x, (0, 0, 0, pad)).view(B, H, La, r, D).transpose(2, 3)
        return x.reshape(B * H * r, La, D)

    kb = torch.zeros(B if key_bias is not None else 1, L, dtype=q.dtype, device=q.device)
    if key_bias is not None:
        kb = kb + key_bias
    kb = F.pad(kb, (0, pad), value=float("-inf")).view(-1, La, r).transpose(1, 2)
    kb = kb[:, None].expand(B, H, r, La).reshape(B * H * r, La)
    out, lse = _WindowFn.apply(split(q), split(k), split(v), kb, min(before, La), min(after, La), scale)
    out = out.view(B, H, r, La, D).transpose(2, 3).reshape(B, H, La * r, D)[:, :, :L]
    lse = lse.view(B, H, r, La).transpose(2, 3).reshape(B, H, La * r)[:, :, :L]
    return out, lse


class WindowAttention(nn.Module):
    """Blocked sliding-window attention (Beltagy et al. 2020, Longformer) for
    :class:`SlidingWindow` patterns, one-sided or symmetric, any dilation, with key padding
    and global tokens (optionally with separate global projections ``global_qkv``).

    Time and memory ``O(L (w + b))`` per head with query block ``b`` in 32..128.
    Cannot serve: other patterns, attention dropout, ``Lq != Lk``.
    """

    name = "window"

    def supports(self, q: Tensor, pattern: Pattern, dropout_p: float = 0.0) -> str | None:
        """None if this kernel can serve the request, else the reason it cannot."""
        core, _, _ = unwrap(pattern)
        if not isinstance(core, SlidingWindow):
            return f"the window kernel only serves SlidingWindow patterns, not {type(core).__name__}"
        if dropout_p > 0:
            return "the window kernel does not support attention dropout"
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
        global_qkv: tuple[Tensor, Tensor, Tensor] | None = None,
    ) -> Tensor:
        """Sliding-window attention.

        Args:
            q, k, v: ``(B, H, L, D)``.
            pattern: a :class:`SlidingWindow`, possibly with key padding and global tokens.
            scale: score scale, default ``D ** -0.5``.
            global_qkv: optional ``(qg, kg, vg)``, each ``(B, H, L, D)``: projections for
                the rows of global tokens.
        Returns:
            ``(B, H, L, D)``.
        """
        reason = self.supports(q, pattern, dropout_p)
        if reason is not None:
            raise ValueError(reason)
        check_qkv(self.name, q, k, v, global_qkv)
        core, lengths, globals_ = unwrap(pattern)
        scale = q.shape[-1] ** -0.5 if scale is None else scale
        fn = lambda q_, k_, v_, bias: window_core(q_, k_, v_, bias, core, scale)
        return attend(fn, q, k, v, lengths, globals_, scale, global_qkv)
