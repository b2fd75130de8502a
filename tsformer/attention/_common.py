"""Helpers shared by the sparse kernels: key masks, global tokens, chunk sizes."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from tsformer.attention.reference import dense_attention

# Largest temporary (in elements) a kernel chunk creates. Large fresh allocations are
# returned to the OS on free and page-fault on every reuse, which costs more than the
# arithmetic on a CPU; chunks of this size stay in the allocator's reused heap.
CHUNK_ELEMS = 1 << 22

CoreFn = Callable[[Tensor, Tensor, Tensor, Tensor | None], tuple[Tensor, Tensor]]
"""``core(q, k, v, key_bias) -> (out, lse)`` on ``(B, H, L, D)``; ``key_bias`` is ``(B, L)``."""


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


def global_indices(globals_: tuple[int, ...], length: int) -> list[int]:
    """Sorted unique global positions inside ``[0, length)``."""
    return sorted({i for i in globals_ if 0 <= i < length})


def attend(
    core: CoreFn,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    lengths: Tensor | None,
    globals_: tuple[int, ...],
    scale: float,
) -> Tensor:
    """Sparse core pattern plus key padding plus global tokens (Longformer).

    The core sees every non-global key inside the length. Global key columns, which every
    query sees, are scored densely (``L x G``) and merged with the core through its
    log-sum-exp, a joint softmax. Rows at global positions are then replaced by full
    attention over all valid keys. (Longformer's separate global projections are the
    layer's business: :func:`global_rows`.)

    Args:
        core: sparse kernel returning ``(out, lse)``, ``(B, H, L, D)`` and ``(B, H, L)``.
        q, k, v: ``(B, H, L, D)``.
        lengths: ``(B,)`` valid keys per batch element, or None.
        globals_: global positions.
    Returns:
        ``(B, H, L, D)``.
    """
    B, H, L, D = q.shape
    gidx = global_indices(globals_, L)
    valid = key_valid(lengths, gidx, B, L, q.device)
    out, lse = core(q, k, v, to_bias(valid, q.dtype))
    if not gidx:
        return out
    sel = torch.tensor(gidx, device=q.device)
    pad_ok = None
    if lengths is not None:
        pad_ok = torch.arange(L, device=q.device)[None, :] < lengths.to(q.device).reshape(-1, 1)  # (B, L)

    # Global columns: joint softmax with the core through a shared (detached) max.
    sg = torch.matmul(q, k.index_select(2, sel).transpose(-1, -2)) * scale  # (B, H, L, G)
    if pad_ok is not None:
        sg = sg.masked_fill(~pad_ok.index_select(1, sel)[:, None, None, :], float("-inf"))
    mx = torch.maximum(lse, sg.amax(-1)).detach()
    mx = torch.where(torch.isfinite(mx), mx, torch.zeros_like(mx))
    e_core = torch.exp(lse - mx)  # (B, H, L)
    e_g = torch.exp(sg - mx[..., None])  # (B, H, L, G)
    num = e_core[..., None] * out + torch.matmul(e_g, v.index_select(2, sel))
    # den >= 1 on a row with any key (its max term is exp(0)); a row with none has num = 0
    # and den = 0: dividing by 1 there gives 0 with a finite gradient, where dividing by
    # the smallest normal would scale dO by 1 / tiny into inf (then 0 * inf = NaN).
    den = e_core + e_g.sum(-1)
    den = torch.where(den > 0, den, torch.ones_like(den))
    out = num / den[..., None]

    # Global rows: full attention over all valid keys.
    return global_rows(out, q, k, v, gidx, lengths, scale)


def global_rows(
    out: Tensor, q: Tensor, k: Tensor, v: Tensor, indices, lengths: Tensor | None, scale: float | None = None
) -> Tensor:
    """``out`` with its rows at global positions replaced by full attention over all valid keys.

    Longformer (Beltagy et al. 2020, Sec. 3.1) computes those rows with separate global
    projections: pass them as ``q, k, v``.

    Args:
        out: ``(B, H, L, Dv)`` attention output.
        q: ``(B, H, L, D)`` (only the global rows are read). k, v: ``(B, H, L, D|Dv)``.
        indices: global positions (those outside ``[0, L)`` are ignored).
        lengths: ``(B,)`` valid keys per batch element, or None.
    Returns:
        ``(B, H, L, Dv)``.
    """
    L = out.shape[-2]
    idx = global_indices(tuple(indices), L)
    if not idx:
        return out
    sel = torch.tensor(idx, device=out.device)
    mask = torch.ones(1, 1, 1, k.shape[-2], dtype=torch.bool, device=out.device)
    if lengths is not None:
        mask = (torch.arange(k.shape[-2], device=out.device)[None, :] < lengths.to(out.device)[:, None])[:, None, None]
    rows = dense_attention(q.index_select(-2, sel), k, v, mask, scale)
    return out.index_copy(-2, sel, rows)
