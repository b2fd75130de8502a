"""Helpers shared by the sparse kernels: what they serve, key masks, global tokens, chunk sizes."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from tsformer.attention.bias import OffsetTableBias, ScoreBias, SlopeBias
from tsformer.attention.patterns import Pattern, unwrap
from tsformer.attention.reference import dense_attention

# Largest temporary (in elements) a kernel chunk creates. Large fresh allocations are
# returned to the OS on free and page-fault on every reuse, which costs more than the
# arithmetic on a CPU; chunks of this size stay in the allocator's reused heap.
CHUNK_ELEMS = 1 << 22

CoreFn = Callable[[Tensor, Tensor, Tensor, Tensor | None], tuple[Tensor, Tensor]]
"""``core(q, k, v, key_bias) -> (out, lse)`` on ``(B, H, L, D)``; ``key_bias`` is ``(B, Lk)``."""

RELATIVE_BIASES: tuple[type[ScoreBias], ...] = (SlopeBias, OffsetTableBias)
"""Score biases the sparse kernels serve: functions of the relative offset (per head or
per query), which they build at the offsets they visit (:meth:`ScoreBias.relative`)."""


def key_valid(lengths: Tensor | None, globals_: list[int], batch: int, length: int, device) -> Tensor | None:
    """Bool ``(B, L)``: keys the core pattern may see (inside the length, not global).

    Returns None when every key is valid.
    """
    if lengths is None and not globals_:
        return None
    ok = torch.ones(batch, length, dtype=torch.bool, device=device)
    if lengths is not None:
        ok &= torch.arange(length, device=device)[None, :] < lengths.to(device).reshape(-1, 1)
    if globals_:
        ok[:, torch.tensor(globals_, device=device)] = False
    return ok


def to_bias(valid: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    """0 where valid, -inf elsewhere (same shape), or None."""
    if valid is None:
        return None
    return torch.zeros(valid.shape, dtype=dtype, device=valid.device).masked_fill_(~valid, float("-inf"))


def reduce_to(x: Tensor, shape: tuple[int, ...]) -> Tensor:
    """``x`` summed over the dimensions where ``shape`` broadcasts (size 1), keeping them:
    the gradient of a tensor of ``shape`` broadcast to ``x.shape``."""
    dims = [i for i, (a, b) in enumerate(zip(x.shape, shape, strict=True)) if b == 1 and a != 1]
    return x.sum(dims, keepdim=True) if dims else x


def global_indices(globals_: tuple[int, ...], length: int) -> list[int]:
    """Sorted unique global positions inside ``[0, length)``."""
    return sorted({i for i in globals_ if 0 <= i < length})


def sparse_refusal(
    kernel: str, core_type: type[Pattern], q: Tensor, v: Tensor, pattern: Pattern, dropout_p: float,
    bias: ScoreBias | None,
) -> str | None:
    """What the sparse kernels (:mod:`~tsformer.attention.logsparse`,
    :mod:`~tsformer.attention.window`) cannot serve, or None.

    They serve their own core pattern with key padding and global tokens, any query offset,
    and the biases that are a function of the relative offset (:class:`SlopeBias`,
    :class:`OffsetTableBias`), which they gather at the offsets they visit.

    Args:
        kernel: the kernel's name, for the reason.
        core_type: the pattern class the kernel serves.
    """
    core, _, _ = unwrap(pattern)
    if not isinstance(core, core_type):
        return f"the {kernel} kernel only serves {core_type.__name__} patterns, not {type(core).__name__}"
    if dropout_p > 0:
        return f"the {kernel} kernel does not support attention dropout"
    if bias is not None and not isinstance(bias, RELATIVE_BIASES):
        # A dense bias has Lq x Lk entries: gathering it would cost what the kernel saves.
        return (
            f"the {kernel} kernel does not take a {type(bias).__name__} score bias, only "
            f"{' and '.join(t.__name__ for t in RELATIVE_BIASES)} (use sdpa or reference)"
        )
    if v.shape[-1] != q.shape[-1]:
        return f"the {kernel} kernel needs value and query head dims to match"
    return None


def _global_query_rows(globals_: tuple[int, ...], q_len: int, q_offset: int) -> list[int]:
    """Sorted query rows whose absolute position ``row + q_offset`` is global."""
    return [p - q_offset for p in global_indices(globals_, q_len + q_offset) if p >= q_offset]


def attend(
    core: CoreFn,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    lengths: Tensor | None,
    globals_: tuple[int, ...],
    scale: float,
    *,
    q_offset: int = 0,
    bias: ScoreBias | None = None,
) -> Tensor:
    """Sparse core pattern plus key padding plus global tokens (Longformer).

    The core sees every non-global key inside the length. Global key columns, which every
    query sees, are scored densely (``Lq x G``) and merged with the core through its
    log-sum-exp, a joint softmax. Rows at global positions are then replaced by full
    attention over all valid keys. (Longformer's separate global projections are the
    layer's business: :func:`global_rows`.)

    Args:
        core: sparse kernel ``core(q, k, v, key_bias)`` returning ``(out, lse)``,
            ``(B, H, Lq, D)`` and ``(B, H, Lq)``, applying ``q_offset`` and ``bias`` itself.
        q: ``(B, H, Lq, D)``. k, v: ``(B, H, Lk, D)``.
        lengths: ``(B,)`` valid keys per batch element, or None.
        globals_: global positions (absolute).
        q_offset: position of query row 0.
        bias: the call's score bias (a relative one), added to the global columns and rows
            here; the core adds it to its own scores.
    Returns:
        ``(B, H, Lq, D)``.
    """
    B, H, Lq, D = q.shape
    Lk = k.shape[-2]
    gidx = global_indices(globals_, Lk)
    valid = key_valid(lengths, gidx, B, Lk, q.device)
    out, lse = core(q, k, v, to_bias(valid, q.dtype))
    if gidx:
        out = _merge_global_columns(out, lse, q, k, v, gidx, lengths, scale, q_offset, bias)
    if not _global_query_rows(globals_, Lq, q_offset):
        return out
    return global_rows(out, q, k, v, globals_, lengths, scale, q_offset=q_offset, bias=bias)


def _merge_global_columns(out, lse, q, k, v, gidx, lengths, scale, q_offset, bias) -> Tensor:
    """``out`` of the core merged with the global key columns ``gidx`` (a joint softmax)."""
    Lq, Lk = q.shape[-2], k.shape[-2]
    sel = torch.tensor(gidx, device=q.device)
    sg = torch.matmul(q, k.index_select(2, sel).transpose(-1, -2)) * scale  # (B, H, Lq, G)
    if bias is not None:
        rel = sel[None, :] - (torch.arange(Lq, device=q.device) + q_offset)[:, None]
        sg = sg + bias.relative(rel).to(sg.dtype)
    if lengths is not None:
        pad_ok = torch.arange(Lk, device=q.device)[None, :] < lengths.to(q.device).reshape(-1, 1)  # (B, Lk)
        sg = sg.masked_fill(~pad_ok.index_select(1, sel)[:, None, None, :], float("-inf"))
    # Joint softmax with the core through a shared (detached) max.
    mx = torch.maximum(lse, sg.amax(-1)).detach()
    mx = torch.where(torch.isfinite(mx), mx, torch.zeros_like(mx))
    e_core = torch.exp(lse - mx)  # (B, H, Lq)
    e_g = torch.exp(sg - mx[..., None])  # (B, H, Lq, G)
    num = e_core[..., None] * out + torch.matmul(e_g, v.index_select(2, sel))
    # den >= 1 on a row with any key (its max term is exp(0)); a row with none has num = 0
    # and den = 0: dividing by 1 there gives 0 with a finite gradient, where dividing by
    # the smallest normal would scale dO by 1 / tiny into inf (then 0 * inf = NaN).
    den = e_core + e_g.sum(-1)
    den = torch.where(den > 0, den, torch.ones_like(den))
    return num / den[..., None]


def global_rows(
    out: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    indices,
    lengths: Tensor | None,
    scale: float | None = None,
    *,
    q_offset: int = 0,
    bias: ScoreBias | None = None,
) -> Tensor:
    """``out`` with its rows at global positions replaced by full attention over all valid keys.

    Longformer (Beltagy et al. 2020, Sec. 3.1) computes those rows with separate global
    projections: pass them as ``q, k, v``.

    Args:
        out: ``(B, H, Lq, Dv)`` attention output.
        q: ``(B, H, Lq, D)`` (only the global rows are read). k, v: ``(B, H, Lk, D|Dv)``.
        indices: global positions (absolute; those of no query row are ignored).
        lengths: ``(B,)`` valid keys per batch element, or None.
        q_offset: position of query row 0.
        bias: a relative score bias (:meth:`ScoreBias.relative`) added to the rows' scores,
            or None.
    Returns:
        ``(B, H, Lq, Dv)``.
    """
    Lq, Lk = out.shape[-2], k.shape[-2]
    idx = _global_query_rows(tuple(indices), Lq, q_offset)
    if not idx:
        return out
    sel = torch.tensor(idx, device=out.device)
    mask = torch.ones(1, 1, 1, Lk, dtype=torch.bool, device=out.device)
    if lengths is not None:
        mask = (torch.arange(Lk, device=out.device)[None, :] < lengths.to(out.device)[:, None])[:, None, None]
    dense = None
    if bias is not None:
        rel = torch.arange(Lk, device=out.device)[None, :] - (sel + q_offset)[:, None]  # (G, Lk)
        dense = bias.relative(rel, rows=sel).to(q.dtype)
    rows = dense_attention(q.index_select(-2, sel), k, v, mask, scale, bias=dense)
    return out.index_copy(-2, sel, rows)
