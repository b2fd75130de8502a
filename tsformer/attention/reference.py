"""Dense reference attention: masked ``softmax(q k^T / sqrt(d)) v``, the ground truth."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from tsformer.attention.patterns import Pattern, unwrap


def dense_attention(
    q: Tensor, k: Tensor, v: Tensor, mask: Tensor, scale: float | None = None, dropout_p: float = 0.0
) -> Tensor:
    """Masked attention over a dense boolean mask. Rows with no allowed key give zeros.

    Args:
        q: ``(B, H, Lq, D)``. k, v: ``(B, H, Lk, D)``.
        mask: bool, broadcastable to ``(B, H, Lq, Lk)``.
    Returns:
        ``(B, H, Lq, D)``.
    """
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale
    scores = scores.masked_fill(~mask, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    probs = torch.nan_to_num(probs, nan=0.0)  # fully masked rows
    if dropout_p > 0:
        probs = torch.nn.functional.dropout(probs, p=dropout_p)
    return torch.matmul(probs, v)


class ReferenceAttention(nn.Module):
    """Dense masked attention for any pattern: slow, O(L^2) memory, exact.

    Global tokens with separate projections (``global_qkv``, Longformer, Beltagy et al.
    2020): rows at global positions are recomputed from the global query against all
    global keys and values.
    """

    name = "reference"

    def supports(self, q: Tensor, pattern: Pattern, dropout_p: float = 0.0) -> str | None:
        """Return None if this kernel can serve the request, else the reason it cannot."""
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
        """Attention of ``q`` over ``k, v`` restricted to ``pattern``.

        Args:
            q: ``(B, H, Lq, D)``. k, v: ``(B, H, Lk, D)``.
            pattern: which keys each query sees.
            global_qkv: optional ``(qg, kg, vg)``, each ``(B, H, L, D)``, the global
                projections used for the rows of global tokens.
        Returns:
            ``(B, H, Lq, D)``.
        """
        mask = pattern.to_dense(q.shape[-2], k.shape[-2], device=q.device)
        out = dense_attention(q, k, v, mask, scale, dropout_p)
        if global_qkv is not None:
            out = _global_rows(out, pattern, global_qkv, scale, dropout_p)
        return out


def _global_rows(out: Tensor, pattern: Pattern, global_qkv, scale, dropout_p) -> Tensor:
    """Replace rows at global positions by full attention with the global projections."""
    _, lengths, globals_ = unwrap(pattern)
    idx = [i for i in globals_ if 0 <= i < out.shape[-2]]
    if not idx:
        return out
    qg, kg, vg = global_qkv
    sel = torch.tensor(idx, device=out.device)
    mask = torch.ones(1, 1, len(idx), kg.shape[-2], dtype=torch.bool, device=out.device)
    if lengths is not None:
        keep = torch.arange(kg.shape[-2], device=out.device)[None, :] < lengths.to(out.device)[:, None]
        mask = mask & keep[:, None, None, :]
    rows = dense_attention(qg.index_select(-2, sel), kg, vg, mask, scale, dropout_p)
    return out.index_copy(-2, sel, rows)
