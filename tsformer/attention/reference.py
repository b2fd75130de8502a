"""Dense reference attention: masked ``softmax(q k^T * scale + bias) v``, the ground truth."""

from __future__ import annotations

import torch
from torch import Tensor

from tsformer.attention.base import Kernel
from tsformer.attention.bias import ScoreBias
from tsformer.attention.patterns import Pattern


def dense_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Tensor,
    scale: float | None = None,
    dropout_p: float = 0.0,
    bias: Tensor | None = None,
) -> Tensor:
    """Masked attention over a dense boolean mask. Rows with no allowed key give zeros.

    Args:
        q: ``(B, H, Lq, D)``. k, v: ``(B, H, Lk, D)``.
        mask: bool, broadcastable to ``(B, H, Lq, Lk)``.
        bias: additive scores, broadcastable to ``(B, H, Lq, Lk)``, or None.
    Returns:
        ``(B, H, Lq, D)``.
    """
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale
    if bias is not None:
        scores = scores + bias
    scores = scores.masked_fill(~mask, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    probs = torch.nan_to_num(probs, nan=0.0)  # fully masked rows
    if dropout_p > 0:
        probs = torch.nn.functional.dropout(probs, p=dropout_p)
    return torch.matmul(probs, v)


class ReferenceAttention(Kernel):
    """Dense masked attention for any pattern, bias and query offset: slow, O(Lq Lk) memory,
    exact. The only kernel with attention dropout."""

    name = "reference"

    def _attend(self, q, k, v, pattern: Pattern, scale, dropout_p, bias: ScoreBias | None, q_offset):
        Lq, Lk = q.shape[-2], k.shape[-2]
        mask = pattern.to_dense(Lq, Lk, device=q.device, q_offset=q_offset)
        dense = None if bias is None else bias.to_dense(Lq, Lk, q_offset, q.device, q.dtype)
        return dense_attention(q, k, v, mask, scale, dropout_p, dense)


__all__ = ["ReferenceAttention", "dense_attention"]
