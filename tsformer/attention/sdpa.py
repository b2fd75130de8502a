"""Dense attention through ``torch.nn.functional.scaled_dot_product_attention``.

Same result as :class:`~tsformer.attention.reference.ReferenceAttention`, but through
PyTorch's fused kernels (flash / memory-efficient on CUDA for full and causal attention;
no L x L score matrix held on CPU). Other patterns, and any score bias, pass a dense
float mask (``Lq x Lk``), through which gradients reach the bias.
Vaswani et al. 2017, "Attention Is All You Need".
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from tsformer.attention.base import Kernel
from tsformer.attention.bias import ScoreBias
from tsformer.attention.patterns import Causal, Full, Pattern, unwrap


class SDPAAttention(Kernel):
    """Fused dense attention for any pattern, bias and offset (fastest for full and causal)."""

    name = "sdpa"

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, pattern: Pattern, scale, dropout_p, bias: ScoreBias | None,
                q_offset) -> Tensor:
        core, lengths, globals_ = unwrap(pattern)
        Lq, Lk = q.shape[-2], k.shape[-2]
        plain = bias is None and lengths is None and not globals_
        if plain and isinstance(core, Full):
            return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, scale=scale)
        if plain and isinstance(core, Causal) and Lq == Lk and q_offset == 0:
            return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True, scale=scale)
        mask = pattern.to_dense(Lq, Lk, device=q.device, q_offset=q_offset)
        attn_mask: Tensor = mask
        if bias is not None:
            dense = bias.to_dense(Lq, Lk, q_offset, q.device, q.dtype)
            attn_mask = dense.masked_fill(~mask, float("-inf"))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, scale=scale)
        # A query with no allowed key gives NaN in SDPA; the reference gives zeros.
        empty = ~mask.any(-1, keepdim=True)
        if bool(empty.any()):
            out = torch.where(empty, torch.zeros((), dtype=out.dtype, device=out.device), out)
        return out


__all__ = ["SDPAAttention"]
