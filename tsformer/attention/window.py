"""Sparse sliding-window attention: O(Lq w) time and memory, forward and backward.

Beltagy et al. 2020, "Longformer: The Long-Document Transformer"
(https://arxiv.org/abs/2004.05150).

Queries are cut into blocks of ``b``; with query row ``r`` at position ``r + q_offset``,
block ``m`` attends to the contiguous key range ``[m b + start, m b + start + span)``,
``start = q_offset - before``, ``span = b + before + after``, read as an overlapping strided
view of the keys (no copy), so a block is scored against exactly ``span`` keys:
``(b + w) / w`` work per needed score instead of Longformer's 2x from overlapping chunks.
Only the keys some block reaches are read, so a few queries over a long cache cost
``O((Lq + w) w)``, not ``O(Lk w)``. A static band mask cuts the block corners; a per-key
bias masks padding, global keys and positions outside ``[0, Lk)``.

A score bias (:class:`~tsformer.attention.bias.SlopeBias`,
:class:`~tsformer.attention.bias.OffsetTableBias`) depends on the relative offset of key
``u`` of a window to query ``t`` of its block, ``u - t - before``, which is the same in
every block: it is read as a table over clipped offsets (an offset table's own, or the
slopes' values over the window's reach) through a fixed ``(b, span)`` column tile. A
per-head bias is one ``(H, b, span)`` tile added to every block; a per-query table is
gathered block by block. Its gradient is the score gradient scattered back onto the
table's columns (and, for slopes, carried by autograd from the table into the slopes).

Two paths compute the blocks:

- CPU (fp32, fp64, bf16): ATen's fused flash-attention kernel, which takes the strided
  window views as its keys and values and the band (plus the score bias) as its float
  mask; its online softmax never writes a score tile to memory. Its backward gets the
  log-sum-exp gradient folded into the output it reads for ``rowsum(dO * O)``
  (:func:`_fold_dlse`). It returns no gradient for the mask, so a bias that needs one
  takes the blocked-matmul backward.
- Elsewhere (CUDA, fp16), and as the backward fallback: batched matmuls over chunks of
  blocks with an explicit softmax.

Dilation ``r`` is exact and free of waste: positions ``p = a r + c`` only meet keys of the
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

from tsformer.attention._common import CHUNK_ELEMS, attend, sparse_refusal
from tsformer.attention.base import Kernel
from tsformer.attention.bias import OffsetTableBias, ScoreBias
from tsformer.attention.patterns import SlidingWindow, unwrap


def _block_size(reach: int) -> int:
    """Query block size for a window reaching ``reach = before + after`` keys beyond the block."""
    if reach <= 32:
        return 32
    if reach <= 128:
        return 64
    return 128


def _geometry(Lq: int, before: int, after: int, b: int):
    nb = math.ceil(Lq / b)
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


def _overlap(lo: int, hi: int, n: int) -> tuple[int, int]:
    """``[a, z)``, the part of ``[lo, hi)`` inside ``[0, n)``; ``lo <= a <= z <= hi`` always
    (``a == z`` when none), so ``a - lo`` and ``hi - z`` count the rows outside."""
    a = min(max(lo, 0), hi)
    return a, max(a, min(hi, n))


def _pad_keys(x: Tensor, start: int, Lp: int) -> Tensor:
    """``(N, Lk, D)`` -> ``(N, Lp, D)``: the rows of positions ``start .. start + Lp - 1``,
    zero outside ``[0, Lk)``. Only the reachable keys are copied."""
    a, z = _overlap(start, start + Lp, x.shape[1])
    return F.pad(x[:, a:z], (0, 0, a - start, start + Lp - z))


def _unpad_keys(xp: Tensor, start: int, Lk: int) -> Tensor:
    """Inverse of :func:`_pad_keys` for gradients: ``(N, Lp, D)`` -> ``(N, Lk, D)``, zero on
    keys no window reaches (a view when the padded rows cover every key)."""
    N, Lp, D = xp.shape
    if start <= 0 and start + Lp >= Lk:
        return xp[:, -start : Lk - start]
    a, z = _overlap(start, start + Lp, Lk)
    out = xp.new_zeros(N, Lk, D)
    out[:, a:z] = xp[:, a - start : z - start]
    return out


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


# --- score biases as the blocks read them -------------------------------------------


def _table_form(bias: ScoreBias, before: int, after: int, dil: int, dtype, device) -> tuple[Tensor, tuple[int, int]]:
    """A relative bias as a table over clipped offsets, ``(tbl, (R, mult))``.

    Column ``clip(rel * mult, -R, R) + R`` of ``tbl (B|1, H|1, Lq|1, C)`` is the bias of a
    key ``rel`` (dilated) steps after its query. An offset table is its own table
    (``mult = dil``, actual offsets); any other relative bias (slopes) is evaluated once
    over the window's reach, ``rel in [-M, M]``, ``M = max(before, after)``.
    """
    if isinstance(bias, OffsetTableBias):
        return bias.table.to(dtype), (bias.max_distance, dil)
    M = max(before, after)
    rel = torch.arange(-M, M + 1, device=device)[None, :] * dil
    return bias.relative(rel).to(dtype), (M, 1)


def _cols(b: int, span: int, before: int, cspec: tuple[int, int], device) -> Tensor:
    """``(b, span)`` table column of key ``u`` of a window for query ``t`` of its block."""
    R, mult = cspec
    t = torch.arange(b, device=device)[:, None]
    u = torch.arange(span, device=device)[None, :]
    return ((u - t - before) * mult).clamp(-R, R) + R


class _BlockBias:
    """A score-bias table read block by block, for query blocks of size ``b``.

    Per head (``tbl`` with one query row): one ``(B|1, H|1, b, span)`` tile, the same for
    every block. Per query: the table's rows gathered through the column tile per block.
    Nothing is expanded over the broadcast dimensions: rows index into them.

    Args:
        tbl: ``(Bt, Hb, Qt, C)``, ``Bt`` 1 or the call's batch, ``Qt`` 1 or ``Lq``.
        cspec: ``(R, mult)`` of :func:`_table_form`.
        b, span, before: block geometry. nb: number of query blocks.
    """

    def __init__(self, tbl: Tensor, cspec: tuple[int, int], b: int, span: int, before: int, nb: int) -> None:
        self.tbl, self.b, self.span = tbl, b, span
        self.cols = _cols(b, span, before, cspec, tbl.device)
        self.per_query = tbl.shape[2] > 1
        if self.per_query:  # rows padded to whole blocks
            self.rows = F.pad(tbl, (0, 0, 0, nb * b - tbl.shape[2]))
        else:
            self.tile = tbl[:, :, 0][:, :, self.cols]  # (Bt, Hb, b, span)
        self.grad: Tensor | None = None

    # Flash path: one batch element at a time, heads leading.
    def element(self, i: int, m0: int, c: int, t: int) -> Tensor:
        """``(Hb, c|1, t, span)`` bias of blocks ``m0 .. m0 + c`` (``t`` rows each) of element ``i``."""
        j = i if self.tbl.shape[0] > 1 else 0
        if not self.per_query:
            return self.tile[j][:, None, :t]
        rows = _blocks(self.rows[j], m0, c, t, self.b)  # (Hb, c, t, C)
        return rows.gather(-1, self.cols[:t].expand(rows.shape[0], c, t, self.span))

    # Blocked-matmul path: rows n = (element, head) flattened.
    def flatten(self, B: int, H: int) -> None:
        """Map the ``N = B H`` rows of the blocked-matmul path onto the table's (broadcast)
        batch and head indices."""
        n = torch.arange(B * H, device=self.tbl.device)
        zero = torch.zeros_like(n)
        self.bi = n // H if self.tbl.shape[0] > 1 else zero
        self.hi = n % H if self.tbl.shape[1] > 1 else zero

    def _chunk(self, n0: int, n1: int, m0: int, m1: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Table indices of rows ``[n0, n1)``, the query rows of blocks ``[m0, m1)`` and the
        column index ``(g, c, b, span)``."""
        rows = torch.arange(m0 * self.b, m1 * self.b, device=self.tbl.device)
        return self.bi[n0:n1], self.hi[n0:n1], rows, self.cols.expand(n1 - n0, m1 - m0, self.b, self.span)

    def add(self, s: Tensor, n0: int, n1: int, m0: int, m1: int) -> None:
        """``s (g, c, b, span) += bias`` of rows ``[n0, n1)``, blocks ``[m0, m1)``."""
        bi, hi, rows, idx = self._chunk(n0, n1, m0, m1)
        if self.per_query:
            src = self.rows[bi[:, None], hi[:, None], rows[None, :]]  # (g, c b, C)
            s += src.view(*idx.shape[:3], -1).gather(-1, idx)
        else:
            s += self.tile[bi, hi][:, None]

    def accumulate(self, ds: Tensor, n0: int, n1: int, m0: int, m1: int) -> None:
        """Add the score gradient ``ds (g, c, b, span)`` of a chunk to the bias's gradient."""
        bi, hi, rows, idx = self._chunk(n0, n1, m0, m1)
        if self.per_query:
            if self.grad is None:
                self.grad = torch.zeros_like(self.rows)
            g = ds.new_zeros(*idx.shape[:3], self.rows.shape[-1]).scatter_add_(-1, idx, ds)
            self.grad.index_put_((bi[:, None], hi[:, None], rows[None, :]), g.flatten(1, 2), accumulate=True)
        else:
            if self.grad is None:
                self.grad = torch.zeros_like(self.tile)
            self.grad.index_put_((bi, hi), ds.sum(1), accumulate=True)

    def table_grad(self) -> Tensor:
        """The gradient of ``tbl`` (reduced over its broadcast dimensions by construction)."""
        if self.grad is None:
            return torch.zeros_like(self.tbl)
        if self.per_query:
            return self.grad[:, :, : self.tbl.shape[2]]
        out = torch.zeros_like(self.tbl[:, :, 0])  # (Bt, Hb, C): scatter the tile's columns
        out.scatter_add_(-1, self.cols.reshape(1, 1, -1).expand(*out.shape[:2], -1), self.grad.flatten(2))
        return out[:, :, None]


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


def _flash_calls(Lq: int, Lk: int, start: int, H: int, before: int, after: int, b: int, D: int, biased: bool):
    """Yield ``(m0, c, t)`` for the flash calls over one batch element: ``c`` query blocks
    from block ``m0`` with ``t`` queries each (``t < b`` only for the last, partial block,
    alone in its call).

    Without a key bias the interior blocks (whose windows lie inside ``[0, Lk)``) run in
    calls of their own, with the band as their only key mask and no copy of the keys.
    """
    span = b + before + after
    full, tail = divmod(Lq, b)
    # The flash backward returns the key-window gradients dense: bound them per call.
    c_max = max(1, min(_FLASH_CHUNK_ELEMS // (H * span * D), CHUNK_ELEMS // (b * span)))
    lo = min(full, max(0, math.ceil(-start / b)))
    hi = max(lo, min(full, (Lk - span - start) // b + 1))
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
    """Rows ``[lo, hi)`` of ``x (H, Lk, D)``, zero outside ``[0, Lk)`` (a view when inside)."""
    a, z = _overlap(lo, hi, x.shape[1])
    part = x[:, a:z]
    if a == lo and z == hi:
        return part
    return F.pad(part, (0, 0, a - lo, hi - z))


def _region_windows(region: Tensor, c: int, b: int, span: int) -> Tensor:
    """Overlapping view ``(H, c, span, D)`` of ``region (H, R, D)``: window ``j`` at row ``j b``."""
    H, R, D = region.shape
    s0, s1, s2 = region.stride()
    return region.as_strided((H, c, span, D), (s0, b * s1, s1, s2))


def _call_operands(q, k, v, kb, band, sb, i, m0, c, t, b, start):
    """Query blocks, key and value windows, mask and key range of one flash call on
    ``(H, L, D)`` inputs of element ``i``; ``kb (1, Lk)`` is its key bias or None, ``sb``
    the score bias (a :class:`_BlockBias`) or None."""
    Lk = k.shape[1]
    span = band.shape[1]
    lo, hi = m0 * b + start, (m0 + c - 1) * b + start + span
    kw = _region_windows(_key_region(k, lo, hi), c, b, span)
    vw = _region_windows(_key_region(v, lo, hi), c, b, span)
    mask = band[None, None, :t]
    if kb is not None or lo < 0 or hi > Lk:
        kr = torch.full((1, hi - lo), float("-inf"), dtype=q.dtype, device=q.device)
        a, z = _overlap(lo, hi, Lk)
        kr[:, a - lo : z - lo] = 0.0 if kb is None else kb[:, a:z]
        mask = mask + kr.as_strided((1, c, 1, span), (hi - lo, b, span, 1))
    if sb is not None:
        mask = mask + sb.element(i, m0, c, t)
    return _blocks(q, m0, c, t, b), kw, vw, mask, lo, hi


def _add_windows(dst: Tensor, win: Tensor, lo: int, hi: int, b: int) -> None:
    """Add window gradients ``win (H, c, span, D)`` (window ``j`` at key ``lo + j b``) onto
    ``dst (H, Lk, D)``, dropping keys outside ``[0, Lk)``."""
    H, c, span, D = win.shape
    Lk = dst.shape[1]
    inside = lo >= 0 and hi <= Lk
    region = dst[:, lo:hi] if inside else win.new_zeros(H, hi - lo, D)
    s0, s1, s2 = region.stride()
    for r in range(0, span, b):  # pieces of b keys: within one piece the windows do not overlap
        w = min(b, span - r)
        piece = region.as_strided((H, c, w, D), (s0, b * s1, s1, s2), region.storage_offset() + r * s1)
        piece += win[:, :, r : r + w]
    if not inside:
        a, z = _overlap(lo, hi, Lk)
        dst[:, a:z] += region[:, a - lo : z - lo]


def _heads_last(B: int, H: int, L: int, D: int, like: Tensor, zero: bool = False) -> Tensor:
    """A ``(B, H, L, D)`` tensor stored as ``(B, L, H, D)``: the layout the caller merges
    heads in, so handing it back costs no copy."""
    make = torch.zeros if zero else torch.empty
    return make(B, L, H, D, dtype=like.dtype, device=like.device).transpose(1, 2)


def _flash_forward(q, k, v, key_bias, tbl, cspec, before, after, scale, start):
    """``out (B, H, Lq, D)`` and the kernel's log-sum-exp ``(B, H, Lq)`` (0, not -inf, on
    rows with no key) for ``(B, H, L, D)`` inputs of any strides."""
    B, H, Lq, D = q.shape
    Lk = k.shape[2]
    b = _FLASH_B_FWD
    span = b + before + after
    band = _band(b, span, before, after, q.dtype, q.device)
    sb = None if tbl is None else _BlockBias(tbl, cspec, b, span, before, math.ceil(Lq / b))
    out = _heads_last(B, H, Lq, D, q)
    lse = torch.empty(B, H, Lq, dtype=torch.float32 if q.dtype == torch.bfloat16 else q.dtype, device=q.device)
    for i in range(B):
        kb = None if key_bias is None else key_bias[i : i + 1]
        for m0, c, t in _flash_calls(Lq, Lk, start, H, before, after, b, D, kb is not None):
            qc, kw, vw, mask, _, _ = _call_operands(q[i], k[i], v[i], kb, band, sb, i, m0, c, t, b, start)
            o, s = _FLASH_FWD(qc, kw, vw, 0.0, False, attn_mask=mask, scale=scale)
            _blocks(out[i], m0, c, t, b).copy_(o)
            _blocks(lse[i], m0, c, t, b).copy_(s)
    return out, lse


def _flash_backward(dout, q, k, v, out, lse, key_bias, tbl, cspec, before, after, scale, start):
    """``dq, dk, dv`` (each like its input) through ATen's CPU flash backward; no gradient
    for the score bias (the kernel returns none for its mask)."""
    B, H, Lq, D = q.shape
    Lk = k.shape[2]
    b = _FLASH_B_BWD
    span = b + before + after
    band = _band(b, span, before, after, q.dtype, q.device)
    sb = None if tbl is None else _BlockBias(tbl, cspec, b, span, before, math.ceil(Lq / b))
    dq = _heads_last(B, H, Lq, D, q)
    dk = _heads_last(B, H, Lk, D, q, zero=True)
    dv = _heads_last(B, H, Lk, D, q, zero=True)
    for i in range(B):
        kb = None if key_bias is None else key_bias[i : i + 1]
        for m0, c, t in _flash_calls(Lq, Lk, start, H, before, after, b, D, kb is not None):
            qc, kw, vw, mask, lo, hi = _call_operands(q[i], k[i], v[i], kb, band, sb, i, m0, c, t, b, start)
            gq, gk, gv = _FLASH_BWD(
                _blocks(dout[i], m0, c, t, b), qc, kw, vw, _blocks(out[i], m0, c, t, b),
                _blocks(lse[i], m0, c, t, b), 0.0, False, attn_mask=mask, scale=scale,
            )
            _blocks(dq[i], m0, c, t, b).copy_(gq)
            _add_windows(dk[i], gk, lo, hi, b)
            _add_windows(dv[i], gv, lo, hi, b)
    return dq, dk, dv


def _has_key(
    key_bias: Tensor | None, Lq: int, Lk: int, start: int, before: int, after: int, device
) -> Tensor | None:
    """Bool ``(B|1, 1, Lq)``: rows whose window holds at least one valid key (None: all do)."""
    if key_bias is None and start + before + Lq <= Lk:
        return None  # every query's own position is a key
    if key_bias is None:
        valid = torch.ones(1, Lk, dtype=torch.int32, device=device)
    else:
        valid = torch.isfinite(key_bias).to(torch.int32)
    cs = F.pad(valid.cumsum(-1), (1, 0))
    i = torch.arange(Lq, device=valid.device) + start
    return ((cs[:, (i + before + after + 1).clamp(0, Lk)] - cs[:, i.clamp(0, Lk)]) > 0)[:, None]


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
    """Sliding-window attention of ``q (B, H, Lq, D)`` over ``k, v (B, H, Lk, D)`` (any
    strides), query row ``r`` at position ``r + start + before``, with a per-element key
    bias ``(B, Lk)`` (0 / -inf) or None and a score-bias table ``tbl`` (read through
    ``cspec``, :func:`_table_form`) or None; returns ``out`` and ``lse``."""

    @staticmethod
    def forward(ctx, q, k, v, key_bias, tbl, before: int, after: int, scale: float, start: int, cspec):
        ctx.set_materialize_grads(False)
        ctx.args = (before, after, scale, start, cspec)
        ctx.flash = _flash_ok(q)
        geo = (before, after, scale, start)
        if ctx.flash:
            out, lse = _flash_forward(q, k, v, key_bias, tbl, cspec, *geo)
        else:
            out, lse, _ = _bmm_call(_bmm_forward, q, k, v, key_bias, tbl, cspec, *geo)
        # The output is O(L D) like q, and rowsum(dO * O) from it is cheaper than from P dP.
        ctx.save_for_backward(q, k, v, key_bias, tbl, lse, out)
        if not ctx.flash:
            return out, lse
        # The flash kernel reports lse = 0 on rows with no key; the contract is -inf.
        ctx.has = _has_key(key_bias, q.shape[2], k.shape[2], start, before, after, q.device)
        return out, _lse_contract(lse, ctx.has, q.dtype)

    @staticmethod
    def backward(ctx, dout, dlse):
        before, after, scale, start, cspec = ctx.args
        geo = (before, after, scale, start)
        q, k, v, key_bias, tbl, lse, out = ctx.saved_tensors
        want_tbl = tbl is not None and ctx.needs_input_grad[4]
        if dout is None:
            dout = torch.zeros_like(q)
        if ctx.flash:
            if dlse is not None and ctx.has is not None:
                dlse = dlse.masked_fill(~ctx.has, 0.0)
            o_eff = out if dlse is None else _fold_dlse(out, dout, dlse)
            # The flash backward gives no gradient for its mask: a bias that needs one, or a
            # row with a log-sum-exp gradient but none on its output, takes blocked matmuls.
            if o_eff is not None and not want_tbl:
                grads = _flash_backward(dout, q, k, v, o_eff, lse, key_bias, tbl, cspec, *geo)
                return *grads, None, None, None, None, None, None, None
            lse = _lse_contract(lse, ctx.has, q.dtype)
        dq, dk, dv, dtbl = _bmm_call(
            _bmm_backward, q, k, v, key_bias, tbl, cspec, *geo, dout=dout, dlse=dlse, lse=lse, out=out,
            want_tbl=want_tbl,
        )
        return dq, dk, dv, None, dtbl, None, None, None, None, None


def _bmm_call(fn, q, k, v, key_bias, tbl, cspec, before, after, scale, start, **extra):
    """Run a blocked-matmul function on ``(B H, L, D)`` rows, reshaping in and out.

    ``fn`` returns its per-row results and the score-bias table's gradient (or None).
    """
    B, H, Lq, D = q.shape
    Lk = k.shape[2]
    kb = None if key_bias is None else key_bias[:, None].expand(B, H, Lk).reshape(B * H, Lk)
    rows = lambda x: x.reshape(B * H, *x.shape[2:]) if isinstance(x, Tensor) else x  # noqa: E731
    extra = {name: rows(x) for name, x in extra.items()}
    sb = None if tbl is None else (tbl, cspec, B, H)
    *res, dtbl = fn(rows(q), rows(k), rows(v), kb, sb, before, after, scale, start, **extra)
    return (*(x.view(B, H, *x.shape[1:]) for x in res), dtbl)


def _bmm_setup(q, k, v, sb, before: int, after: int, scale: float, start: int):
    """Block geometry, scaled query blocks, key/value window views of ``(N, L, D)`` rows,
    the band and the score bias (a flattened :class:`_BlockBias`, or None)."""
    N, Lq, D = q.shape
    b = _block_size(before + after)
    nb, span, pieces, Lp = _geometry(Lq, before, after, b)
    qp = F.pad(q * scale, (0, 0, 0, nb * b - Lq)).view(N, nb, b, D)
    kw = _windows(_pad_keys(k, start, Lp), nb, span, b)
    vw = _windows(_pad_keys(v, start, Lp), nb, span, b)
    band = _band(b, span, before, after, q.dtype, q.device)
    bias = None
    if sb is not None:
        tbl, cspec, B, H = sb
        bias = _BlockBias(tbl, cspec, b, span, before, nb)
        bias.flatten(B, H)
    return N, Lq, D, b, nb, span, pieces, Lp, qp, kw, vw, band, bias


def _bmm_forward(q, k, v, key_bias, sb, before: int, after: int, scale: float, start: int):
    """Blocked-matmul forward: ``out (N, Lq, D)``, ``lse (N, Lq)`` and None (no table
    gradient); ``key_bias (N, Lk)`` or None."""
    N, Lq, D, b, nb, span, pieces, Lp, qp, kw, vw, band, bias = _bmm_setup(q, k, v, sb, before, after, scale, start)
    Lk = k.shape[1]
    bw = _key_bias_windows(key_bias, N, Lk, start, Lp, nb, span, b, q.dtype, q.device)
    edges = _edges(key_bias, Lk, start, span, b)
    out = q.new_empty(N, nb, b, D)
    lse = q.new_empty(N, nb, b)
    for n0, n1, m0, m1 in _chunks(N, nb, b, span):
        s = _bmm(qp[n0:n1, m0:m1], kw[n0:n1, m0:m1].transpose(-1, -2))
        _add_band(s, band, b)
        if bias is not None:
            bias.add(s, n0, n1, m0, m1)
        _add_key_bias(s, bw, n0, n1, m0, m1, edges)
        mx = s.amax(-1, keepdim=True)
        mx.masked_fill_(mx == float("-inf"), 0.0)  # rows with no key: exp(-inf) = 0
        s.sub_(mx).exp_()
        denom = s.sum(-1, keepdim=True)
        o = _bmm(s, vw[n0:n1, m0:m1], out=out[n0:n1, m0:m1])
        o.div_(denom.clamp_min(torch.finfo(q.dtype).tiny))
        lse[n0:n1, m0:m1] = (mx + denom.log()).squeeze(-1)
    return out.view(N, nb * b, D)[:, :Lq], lse.view(N, nb * b)[:, :Lq], None


def _bmm_backward(q, k, v, key_bias, sb, before: int, after: int, scale: float, start: int, *, dout, dlse, lse,
                  out, want_tbl: bool):
    """Blocked-matmul backward: ``dq (N, Lq, D)``, ``dk, dv (N, Lk, D)`` and the score-bias
    table's gradient (None unless ``want_tbl``)."""
    N, Lq, D, b, nb, span, pieces, Lp, qp, kw, vw, band, bias = _bmm_setup(q, k, v, sb, before, after, scale, start)
    Lk = k.shape[1]
    dop = F.pad(dout, (0, 0, 0, nb * b - Lq)).view(N, nb, b, D)
    dl = None
    if dlse is not None:
        dl = F.pad(dlse, (0, nb * b - Lq)).view(N, nb, b, 1)
    # Rows with no key have lse = -inf; +inf makes their probabilities exp(-inf) = 0.
    lse_safe = F.pad(lse.masked_fill(lse == float("-inf"), float("inf")), (0, nb * b - Lq), value=float("inf"))
    lse_safe = lse_safe.view(N, nb, b, 1)
    bw = _key_bias_windows(key_bias, N, Lk, start, Lp, nb, span, b, q.dtype, q.device)
    edges = _edges(key_bias, Lk, start, span, b)
    out = F.pad(out, (0, 0, 0, nb * b - Lq)).view(N, nb, b, D)
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
        if bias is not None:
            bias.add(p, n0, n1, m0, m1)
        _add_key_bias(p, bw, n0, n1, m0, m1, edges)
        p.sub_(lse_safe[n0:n1, m0:m1]).exp_()
        doc = dop[n0:n1, m0:m1]
        ds = _bmm(doc, vc.transpose(-1, -2))  # dP
        ds.sub_(delta[n0:n1, m0:m1]).mul_(p)  # the score gradient: also the bias's
        if want_tbl:
            bias.accumulate(ds, n0, n1, m0, m1)
        _bmm(ds, kc, out=dq[n0:n1, m0:m1]).mul_(scale)
        dkw = _bmm(ds.transpose(-1, -2), qc)  # (g, c, span, D)
        dvw = _bmm(p.transpose(-1, -2), doc)
        _scatter_windows(dkp, dkw, n0, n1, m0, m1, b, span, pieces)
        _scatter_windows(dvp, dvw, n0, n1, m0, m1, b, span, pieces)
    dtbl = bias.table_grad() if want_tbl else None
    return dq.view(N, nb * b, D)[:, :Lq], _unpad_keys(dkp, start, Lk), _unpad_keys(dvp, start, Lk), dtbl


def _key_bias_windows(key_bias, N, Lk, start, Lp, nb, span, b, dtype, device) -> Tensor:
    """``(N or 1, nb, 1, span)`` bias view: -inf on keys outside ``[0, Lk)`` and invalid keys."""
    kb = torch.full((1 if key_bias is None else key_bias.shape[0], Lp), float("-inf"), dtype=dtype, device=device)
    a, z = _overlap(start, start + Lp, Lk)
    kb[:, a - start : z - start] = 0.0 if key_bias is None else key_bias[:, a:z]
    return kb.as_strided((kb.shape[0], nb, 1, span), (Lp, b, 0, 1))


def _edges(key_bias, Lk, start, span, b) -> tuple[int, int] | None:
    """Blocks ``[lo, hi)`` whose windows lie inside ``[0, Lk)``: they need no key bias when
    ``key_bias`` is None. None: every block needs it."""
    if key_bias is not None:
        return None
    lo = max(0, math.ceil(-start / b))
    hi = (Lk - span - start) // b + 1
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


def _split(x: Tensor, r: int, front: int, La: int) -> Tensor:
    """``(B, H, L, ...)`` -> ``(B r, H, La, ...)``: ``front`` zero rows, then rows of residue
    ``c`` (counted from the first, padded row) in batch element ``b r + c``."""
    B, H, L = x.shape[:3]
    rest = x.shape[3:]
    pad = [0, 0] * len(rest) + [front, La * r - front - L]
    x = F.pad(x, pad).view(B, H, La, r, *rest).transpose(2, 3).transpose(1, 2)
    return x.reshape(B * r, H, La, *rest)


def _merge(x: Tensor, B: int, r: int, front: int, L: int) -> Tensor:
    """Inverse of :func:`_split`: ``(B r, H, La, ...)`` -> ``(B, H, L, ...)``."""
    H, La = x.shape[1:3]
    x = x.reshape(B, r, H, La, *x.shape[3:]).transpose(1, 2).transpose(2, 3)
    return x.reshape(B, H, La * r, *x.shape[4:])[:, :, front : front + L]


def window_core(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    key_bias: Tensor | None,
    pattern: SlidingWindow,
    scale: float,
    *,
    q_offset: int = 0,
    bias: ScoreBias | None = None,
) -> tuple[Tensor, Tensor]:
    """Sliding-window attention without global tokens.

    Args:
        q: ``(B, H, Lq, D)``. k, v: ``(B, H, Lk, D)``.
        key_bias: ``(B, Lk)`` additive key bias (0 / -inf) or None.
        pattern: the window.
        q_offset: position of query row 0.
        bias: a relative score bias (slope or offset table) or None.
    Returns:
        ``out (B, H, Lq, D)`` and per-row log-sum-exp ``(B, H, Lq)`` (-inf for rows with no key).
    """
    B, H, Lq, D = q.shape
    Lk = k.shape[2]
    r = pattern.dilation
    # ATen's CPU flash kernel reads rows of D with unit stride: a feature-major layout (a
    # convolution's output viewed as (B, H, L, D)) gave garbage there. Copy such inputs.
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    # Cut the keys to the range the queries reach (a window is translation invariant, and
    # so are the relative biases): a few queries over a long cache then touch O(Lq + w r)
    # keys, and the kernel's key gradients are that long too (autograd's slice backward
    # places them, and only when the keys need a gradient). A no-op for square calls.
    lo, hi = max(0, q_offset - pattern.before * r), min(Lk, q_offset + Lq + pattern.after * r)
    if lo > 0 or hi < Lk:
        hi = max(lo, hi)
        k, v = k[:, :, lo:hi], v[:, :, lo:hi]
        key_bias = None if key_bias is None else key_bias[:, lo:hi]
        q_offset, Lk = q_offset - lo, hi - lo
    if r == 1:
        # Reach no further than the keys: positions before 0 or past Lk - 1 hold none.
        before, after = min(pattern.before, q_offset + Lq), min(pattern.after, max(0, Lk - q_offset))
        tbl, cspec = (None, None) if bias is None else _table_form(bias, before, after, 1, q.dtype, q.device)
        return _WindowFn.apply(q, k, v, key_bias, tbl, before, after, scale, q_offset - before, cspec)
    # Dilation: positions p = a r + c see only keys of their residue c; each (element,
    # residue) pair is one batch element of a plain window. Queries are padded in front to
    # a position that is a multiple of r, so every residue has the offset q_offset // r.
    front = q_offset % r
    Laq, Lak = math.ceil((front + Lq) / r), math.ceil(Lk / r)
    off = q_offset // r
    before, after = min(pattern.before, off + Laq), min(pattern.after, max(0, Lak - off))
    kb = torch.zeros(B, Lk, dtype=q.dtype, device=q.device)
    if key_bias is not None:
        kb = kb + key_bias
    kb = F.pad(kb, (0, Lak * r - Lk), value=float("-inf")).view(B, Lak, r).transpose(1, 2).reshape(B * r, Lak)
    tbl, cspec = (None, None) if bias is None else _table_form(bias, before, after, r, q.dtype, q.device)
    if tbl is not None:
        if tbl.shape[2] > 1:  # per query: rows split like the queries
            tbl = _split(tbl.expand(B, *tbl.shape[1:]), r, front, Laq)
        elif tbl.shape[0] > 1:
            tbl = tbl.repeat_interleave(r, 0)
    qs = _split(q, r, front, Laq)
    ks, vs = (_split(x, r, 0, Lak) for x in (k, v))
    out, lse = _WindowFn.apply(qs, ks, vs, kb, tbl, before, after, scale, off - before, cspec)
    return _merge(out, B, r, front, Lq), _merge(lse, B, r, front, Lq)


class WindowAttention(Kernel):
    """Blocked sliding-window attention (Beltagy et al. 2020, Longformer) for
    :class:`SlidingWindow` patterns, one-sided or symmetric, any dilation, with key padding,
    global tokens, query offsets (any ``Lq``, ``Lk``) and slope or offset-table score biases.

    Time and memory ``O((Lq + w) (w + b))`` per head with query block ``b`` in 32..128
    (global tokens add ``O(Lq G + G Lk)``). Cannot serve: other patterns, attention
    dropout, a :class:`~tsformer.attention.bias.DenseBias`, value and query head dims that
    differ.
    """

    name = "window"

    def _supports(self, q, k, v, pattern, dropout_p, bias, q_offset) -> str | None:
        return sparse_refusal(self.name, SlidingWindow, q, v, pattern, dropout_p, bias)

    def _attend(self, q, k, v, pattern, scale, dropout_p, bias, q_offset) -> Tensor:
        """q ``(B, H, Lq, D)``, k, v ``(B, H, Lk, D)`` under a SlidingWindow pattern (with
        padding and global tokens)."""
        core, lengths, globals_ = unwrap(pattern)

        def fn(q_, k_, v_, key_bias):
            return window_core(q_, k_, v_, key_bias, core, scale, q_offset=q_offset, bias=bias)

        return attend(fn, q, k, v, lengths, globals_, scale, q_offset=q_offset, bias=bias)
