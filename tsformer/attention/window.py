"""Sparse sliding-window attention: O(L w) time and memory, forward and backward.

Beltagy et al. 2020, "Longformer: The Long-Document Transformer"
(https://arxiv.org/abs/2004.05150).

Queries are cut into blocks of ``b``; block ``m`` attends to the contiguous key range
``[m b - before, m b + b + after)``, read as an overlapping strided view of the keys (no
copy), so a block is scored against exactly ``b + before + after`` keys:
``(b + w) / w`` work per needed score instead of Longformer's 2x from overlapping chunks.
A static band mask cuts the block corners; a per-key bias masks padding and global keys.

Two paths compute the blocks:

- CPU (fp32, fp64, bf16): ATen's fused flash-attention kernel, which takes the strided
  window views as its keys and values and the band as its mask; its online softmax never
  writes a score tile to memory. Its backward gets the log-sum-exp gradient folded into
  the output it reads for ``rowsum(dO * O)`` (:func:`_fold_dlse`).
- Elsewhere (CUDA, fp16), and as the backward fallback: batched matmuls over chunks of
  blocks with an explicit softmax.

Dilation ``r`` is exact and free of waste: positions ``i = a r + c`` only meet keys of the
same residue ``c``, so the sequence is split into ``r`` interleaved sub-sequences each
running a plain window. Global tokens are handled separately
(:func:`tsformer.attention._common.attend`). Both paths save only ``q, k, v``, the output
and the per-row log-sum-exp, and recompute the scores in backward.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from tsformer.attention._common import CHUNK_ELEMS, attend
from tsformer.attention.base import Kernel
from tsformer.attention.patterns import SlidingWindow, unwrap


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


# ATen's fused CPU flash-attention kernel (online softmax, vectorised exp, blocked
# matmuls) accepts the overlapping strided window views as its key/value operands, so
# each query block meets exactly its window with no copy and no score tile in memory.
_FLASH_FWD = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
_FLASH_BWD = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu_backward", None)
_FLASH_DTYPES = (torch.float32, torch.float64, torch.bfloat16)
# Query block sizes for the flash path (benchmarks/attention.py, L=8192, w=512, 2 cores):
# the forward gains from less band waste, the backward from larger blocks.
_FLASH_B_FWD = 64
_FLASH_B_BWD = 128
# Cap on the elements of one call's key-window gradient (flash returns it dense).
_FLASH_CHUNK_ELEMS = 1 << 22


def _flash_ok(q: Tensor) -> bool:
    return q.device.type == "cpu" and q.dtype in _FLASH_DTYPES and _FLASH_FWD is not None and _FLASH_BWD is not None


def _flash_calls(L: int, H: int, before: int, after: int, b: int, D: int, biased: bool):
    """Yield ``(m0, c, t)`` for the flash calls over one batch element: ``c`` query blocks
    from block ``m0`` with ``t`` queries each (``t < b`` only for the last, partial block,
    alone in its call).

    Without a key bias the interior blocks (whose windows lie inside ``[0, L)``) run in
    calls of their own, with the band as their only mask and no copy of the keys.
    """
    span = b + before + after
    full, tail = divmod(L, b)
    # The flash backward returns the key-window gradients dense: bound them per call.
    c_max = max(1, min(_FLASH_CHUNK_ELEMS // (H * span * D), CHUNK_ELEMS // (b * span)))
    lo = min(full, math.ceil(before / b))
    hi = max(lo, min(full, (L - span + before) // b + 1))
    for a, z in [(0, lo), (lo, hi), (hi, full)] if not biased else [(0, full)]:
        for m0 in range(a, z, c_max):
            yield m0, min(z, m0 + c_max) - m0, b
    if tail:
        yield full, 1, tail


def _blocks(x: Tensor, m0: int, c: int, t: int, b: int) -> Tensor:
    """View ``(H, c, t, ...)`` of query blocks ``m0 .. m0 + c`` of ``x (H, L, ...)``."""
    size, stride = x.shape, x.stride()
    return x.as_strided((size[0], c, t, *size[2:]), (stride[0], b * stride[1], *stride[1:]),
                        x.storage_offset() + m0 * b * stride[1])


def _key_region(x: Tensor, lo: int, hi: int) -> Tensor:
    """Rows ``[lo, hi)`` of ``x (H, L, D)``, zero outside ``[0, L)`` (a view when inside)."""
    L = x.shape[1]
    part = x[:, max(lo, 0) : min(hi, L)]
    if lo >= 0 and hi <= L:
        return part
    return F.pad(part, (0, 0, max(0, -lo), max(0, hi - L)))


def _region_windows(region: Tensor, c: int, b: int, span: int) -> Tensor:
    """Overlapping view ``(H, c, span, D)`` of ``region (H, R, D)``: window ``j`` at row ``j b``."""
    H, R, D = region.shape
    s0, s1, s2 = region.stride()
    return region.as_strided((H, c, span, D), (s0, b * s1, s1, s2))


def _call_operands(q, k, v, kb, band, m0, c, t, b, before, after):
    """Query blocks, key and value windows, mask and key range of one flash call on
    ``(H, L, D)`` inputs; ``kb (1, L)`` is the element's key bias or None."""
    L = q.shape[1]
    span = b + before + after
    lo, hi = m0 * b - before, (m0 + c - 1) * b - before + span
    kw = _region_windows(_key_region(k, lo, hi), c, b, span)
    vw = _region_windows(_key_region(v, lo, hi), c, b, span)
    mask = band[None, None, :t]
    if kb is not None or lo < 0 or hi > L:
        kr = torch.full((1, hi - lo), float("-inf"), dtype=q.dtype, device=q.device)
        a, z = max(lo, 0), min(hi, L)
        kr[:, a - lo : z - lo] = 0.0 if kb is None else kb[:, a:z]
        mask = mask + kr.as_strided((1, c, 1, span), (hi - lo, b, span, 1))
    return _blocks(q, m0, c, t, b), kw, vw, mask, lo, hi


def _add_windows(dst: Tensor, win: Tensor, lo: int, hi: int, b: int) -> None:
    """Add window gradients ``win (H, c, span, D)`` (window ``j`` at key ``lo + j b``) onto
    ``dst (H, L, D)``, dropping keys outside ``[0, L)``."""
    H, c, span, D = win.shape
    L = dst.shape[1]
    inside = lo >= 0 and hi <= L
    region = dst[:, lo:hi] if inside else win.new_zeros(H, hi - lo, D)
    s0, s1, s2 = region.stride()
    for r in range(0, span, b):  # pieces of b keys: within one piece the windows do not overlap
        w = min(b, span - r)
        piece = region.as_strided((H, c, w, D), (s0, b * s1, s1, s2), region.storage_offset() + r * s1)
        piece += win[:, :, r : r + w]
    if not inside:
        a, z = max(lo, 0), min(hi, L)
        dst[:, a:z] += region[:, a - lo : z - lo]


def _heads_last(B: int, H: int, L: int, D: int, like: Tensor, zero: bool = False) -> Tensor:
    """A ``(B, H, L, D)`` tensor stored as ``(B, L, H, D)``: the layout the caller merges
    heads in, so handing it back costs no copy."""
    make = torch.zeros if zero else torch.empty
    return make(B, L, H, D, dtype=like.dtype, device=like.device).transpose(1, 2)


def _flash_forward(q, k, v, key_bias, before, after, scale):
    """``out (B, H, L, D)`` and the kernel's log-sum-exp ``(B, H, L)`` (0, not -inf, on rows
    with no key) for ``(B, H, L, D)`` inputs of any strides."""
    B, H, L, D = q.shape
    b = _FLASH_B_FWD
    band = _band(b, b + before + after, before, after, q.dtype, q.device)
    out = _heads_last(B, H, L, D, q)
    lse = torch.empty(B, H, L, dtype=torch.float32 if q.dtype == torch.bfloat16 else q.dtype, device=q.device)
    for i in range(B):
        kb = None if key_bias is None else key_bias[i : i + 1]
        for m0, c, t in _flash_calls(L, H, before, after, b, D, kb is not None):
            qc, kw, vw, mask, _, _ = _call_operands(q[i], k[i], v[i], kb, band, m0, c, t, b, before, after)
            o, s = _FLASH_FWD(qc, kw, vw, 0.0, False, attn_mask=mask, scale=scale)
            _blocks(out[i], m0, c, t, b).copy_(o)
            _blocks(lse[i], m0, c, t, b).copy_(s)
    return out, lse


def _flash_backward(dout, q, k, v, out, lse, key_bias, before, after, scale):
    """``dq, dk, dv`` (each ``(B, H, L, D)``) through ATen's CPU flash backward."""
    B, H, L, D = q.shape
    b = _FLASH_B_BWD
    band = _band(b, b + before + after, before, after, q.dtype, q.device)
    dq = _heads_last(B, H, L, D, q)
    dk = _heads_last(B, H, L, D, q, zero=True)
    dv = _heads_last(B, H, L, D, q, zero=True)
    for i in range(B):
        kb = None if key_bias is None else key_bias[i : i + 1]
        for m0, c, t in _flash_calls(L, H, before, after, b, D, kb is not None):
            qc, kw, vw, mask, lo, hi = _call_operands(q[i], k[i], v[i], kb, band, m0, c, t, b, before, after)
            gq, gk, gv = _FLASH_BWD(
                _blocks(dout[i], m0, c, t, b), qc, kw, vw, _blocks(out[i], m0, c, t, b),
                _blocks(lse[i], m0, c, t, b), 0.0, False, attn_mask=mask, scale=scale,
            )
            _blocks(dq[i], m0, c, t, b).copy_(gq)
            _add_windows(dk[i], gk, lo, hi, b)
            _add_windows(dv[i], gv, lo, hi, b)
    return dq, dk, dv


def _has_key(key_bias: Tensor | None, L: int, before: int, after: int) -> Tensor | None:
    """Bool ``(B, 1, L)``: rows whose window holds at least one valid key (None: all do)."""
    if key_bias is None:
        return None
    valid = torch.isfinite(key_bias).to(torch.int32)
    cs = F.pad(valid.cumsum(-1), (1, 0))
    i = torch.arange(L, device=key_bias.device)
    return ((cs[:, (i + after + 1).clamp(max=L)] - cs[:, (i - before).clamp(min=0)]) > 0)[:, None]


def _lse_contract(lse: Tensor, has: Tensor | None, dtype: torch.dtype) -> Tensor:
    """The flash log-sum-exp in the input dtype, -inf on rows with no key."""
    lse = lse.to(dtype)
    return lse if has is None else lse.masked_fill(~has, float("-inf"))


def _fold_dlse(out: Tensor, dout: Tensor, dlse: Tensor) -> Tensor | None:
    """An ``out'`` with ``rowsum(dO * out') = rowsum(dO * out) - dlse``, or None if a row has
    ``dlse != 0`` and ``dO = 0``.

    The softmax backward needs ``dS = P (dP - delta + dlse)`` with ``delta = rowsum(dO O)``;
    the flash backward reads the output only for ``delta``, so the lse gradient is folded
    into it through the largest component of each ``dO`` row (the error stays relative to
    ``delta - dlse`` itself).
    """
    idx = dout.abs().argmax(-1, keepdim=True)
    piv = dout.gather(-1, idx)
    zero = piv == 0
    if bool((zero & (dlse[..., None] != 0)).any()):
        return None
    adj = torch.where(zero, torch.zeros_like(piv), dlse[..., None].to(piv.dtype) / torch.where(zero, 1, piv))
    return out.scatter(-1, idx, out.gather(-1, idx) - adj)


class _WindowFn(torch.autograd.Function):
    """Sliding-window attention on ``(B, H, L, D)`` inputs of any strides with a per-element
    key bias ``(B, L)`` (0 / -inf) or None; returns ``out`` and ``lse``."""

    @staticmethod
    def forward(ctx, q, k, v, key_bias, before: int, after: int, scale: float):
        ctx.set_materialize_grads(False)
        ctx.args = (before, after, scale)
        ctx.flash = _flash_ok(q)
        if ctx.flash:
            out, lse = _flash_forward(q, k, v, key_bias, before, after, scale)
        else:
            out, lse = _bmm_call(_bmm_forward, q, k, v, key_bias, before, after, scale)
        # The output is O(L D) like q, and rowsum(dO * O) from it is cheaper than from P dP.
        ctx.save_for_backward(q, k, v, key_bias, lse, out)
        if not ctx.flash:
            return out, lse
        # The flash kernel reports lse = 0 on rows with no key; the contract is -inf.
        ctx.has = _has_key(key_bias, q.shape[2], before, after)
        return out, _lse_contract(lse, ctx.has, q.dtype)

    @staticmethod
    def backward(ctx, dout, dlse):
        before, after, scale = ctx.args
        q, k, v, key_bias, lse, out = ctx.saved_tensors
        if dout is None:
            dout = torch.zeros_like(q)
        if ctx.flash:
            o_eff = out
            if dlse is not None:
                if ctx.has is not None:
                    dlse = dlse.masked_fill(~ctx.has, 0.0)
                o_eff = _fold_dlse(out, dout, dlse)
            if o_eff is not None:
                return (*_flash_backward(dout, q, k, v, o_eff, lse, key_bias, before, after, scale), None, None, None, None)
            # A row with a log-sum-exp gradient but none on its output: blocked matmuls.
            lse = _lse_contract(lse, ctx.has, q.dtype)
        grads = _bmm_call(_bmm_backward, q, k, v, key_bias, before, after, scale, dout=dout, dlse=dlse, lse=lse, out=out)
        return *grads, None, None, None, None


def _bmm_call(fn, q, k, v, key_bias, before, after, scale, **extra):
    """Run a blocked-matmul function on ``(B H, L, D)`` rows, reshaping in and out."""
    B, H, L, D = q.shape
    rows = lambda x: None if x is None else x.reshape(B * H, L, *x.shape[3:])  # noqa: E731
    kb = None if key_bias is None else key_bias[:, None].expand(B, H, L).reshape(B * H, L)
    extra = {name: rows(x) for name, x in extra.items()}
    res = fn(rows(q), rows(k), rows(v), kb, before, after, scale, **extra)
    return tuple(x.view(B, H, L, *x.shape[2:]) for x in res)


def _bmm_setup(q, k, v, before: int, after: int, scale: float):
    """Block geometry, scaled query blocks and key/value window views of ``(N, L, D)`` rows."""
    N, L, D = q.shape
    b = _block_size(before + after)
    nb, span, pieces, Lp = _geometry(L, before, after, b)
    qp = F.pad(q * scale, (0, 0, 0, nb * b - L)).view(N, nb, b, D)
    kw = _windows(_pad_keys(k, before, Lp), nb, span, b)
    vw = _windows(_pad_keys(v, before, Lp), nb, span, b)
    return N, L, D, b, nb, span, pieces, Lp, qp, kw, vw


def _bmm_forward(q, k, v, key_bias, before: int, after: int, scale: float):
    """Blocked-matmul forward: ``out (N, L, D)`` and ``lse (N, L)``; ``key_bias (N, L)`` or None."""
    N, L, D, b, nb, span, pieces, Lp, qp, kw, vw = _bmm_setup(q, k, v, before, after, scale)
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
    return out.view(N, nb * b, D)[:, :L], lse.view(N, nb * b)[:, :L]


def _bmm_backward(q, k, v, key_bias, before: int, after: int, scale: float, *, dout, dlse, lse, out):
    """Blocked-matmul backward: ``dq, dk, dv``, each ``(N, L, D)``."""
    N, L, D, b, nb, span, pieces, Lp, qp, kw, vw = _bmm_setup(q, k, v, before, after, scale)
    dop = F.pad(dout, (0, 0, 0, nb * b - L)).view(N, nb, b, D)
    dl = None
    if dlse is not None:
        dl = F.pad(dlse, (0, nb * b - L)).view(N, nb, b, 1)
    # Rows with no key have lse = -inf; +inf makes their probabilities exp(-inf) = 0.
    lse_safe = F.pad(lse.masked_fill(lse == float("-inf"), float("inf")), (0, nb * b - L), value=float("inf"))
    lse_safe = lse_safe.view(N, nb, b, 1)
    band = _band(b, span, before, after, q.dtype, q.device)
    bw = _key_bias_windows(key_bias, N, L, before, Lp, nb, span, b, q.dtype, q.device)
    edges = _edges(key_bias, L, before, span, b, nb)
    out = F.pad(out, (0, 0, 0, nb * b - L)).view(N, nb, b, D)
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
    return dq.view(N, nb * b, D)[:, :L], dk, dv


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
        return _WindowFn.apply(q, k, v, key_bias, before, after, scale)
    # Dilation: interleaved sub-sequences i = a r + c see only keys of their residue c;
    # each (element, residue) pair is one batch element of a plain window.
    La = math.ceil(L / r)
    pad = La * r - L

    def split(x: Tensor) -> Tensor:
        x = F.pad(x, (0, 0, 0, pad)).view(B, H, La, r, D).permute(0, 3, 1, 2, 4)
        return x.reshape(B * r, H, La, D)

    def merge(x: Tensor) -> Tensor:  # (B r, H, La, ...) -> (B, H, L, ...)
        x = x.reshape(B, r, H, La, *x.shape[3:]).transpose(1, 2).transpose(2, 3)
        return x.reshape(B, H, La * r, *x.shape[4:])[:, :, :L]

    kb = torch.zeros(B, L, dtype=q.dtype, device=q.device)
    if key_bias is not None:
        kb = kb + key_bias
    kb = F.pad(kb, (0, pad), value=float("-inf")).view(B, La, r).transpose(1, 2).reshape(B * r, La)
    out, lse = _WindowFn.apply(split(q), split(k), split(v), kb, min(before, La), min(after, La), scale)
    return merge(out), merge(lse)


class WindowAttention(Kernel):
    """Blocked sliding-window attention (Beltagy et al. 2020, Longformer) for
    :class:`SlidingWindow` patterns, one-sided or symmetric, any dilation, with key padding
    and global tokens (optionally with separate global projections ``global_qkv``).

    Time and memory ``O(L (w + b))`` per head with query block ``b`` in 32..128.
    Cannot serve: other patterns, attention dropout, ``Lq != Lk``.
    """

    name = "window"

    def _supports(self, q, k, v, pattern, dropout_p, bias, q_offset) -> str | None:
        core, _, _ = unwrap(pattern)
        if not isinstance(core, SlidingWindow):
            return f"the window kernel only serves SlidingWindow patterns, not {type(core).__name__}"
        if dropout_p > 0:
            return "the window kernel does not support attention dropout"
        if bias is not None:
            return f"the window kernel does not take a {type(bias).__name__} score bias"
        if q.shape[-2] != k.shape[-2] or q_offset != 0:
            return (
                f"the window kernel needs as many queries as keys and q_offset 0; got {q.shape[-2]} queries, "
                f"{k.shape[-2]} keys, q_offset {q_offset}"
            )
        if v.shape[-1] != q.shape[-1]:
            return "the window kernel needs value and query head dims to match"
        return None

    def _attend(self, q, k, v, pattern, scale, dropout_p, bias, q_offset) -> Tensor:
        """q, k, v ``(B, H, L, D)`` under a SlidingWindow pattern (with padding and global tokens)."""
        core, lengths, globals_ = unwrap(pattern)
        fn = lambda q_, k_, v_, bias: window_core(q_, k_, v_, bias, core, scale)
        return attend(fn, q, k, v, lengths, globals_, scale)
