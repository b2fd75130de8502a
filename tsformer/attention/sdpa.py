"""Dense attention through ``torch.nn.functional.scaled_dot_product_attention``.

Same result as :class:`~tsformer.attention.reference.ReferenceAttention`, but through
PyTorch's fused kernels (flash / memory-efficient on CUDA for full and causal attention;
no L x L score matrix held on CPU). Other patterns pass a dense boolean mask (L^2 bytes).
Vaswani et al. 2017, "Attention Is All You Need".
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from tsformer.attention.patterns import Causal, Full, Pattern, unwrap
from tsformer.attention.reference import _global_rows


class SDPAAttention(nn.Module):
    """Fused dense attention for any pattern (the fastest choice for full and causal)."""

    name = "sdpa"

    def supports(self, q: Tensor, pattern: Pattern, dropout_p: float = 0.0) -> str | None:
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
        """``q``: ``(B, H, Lq, D)``, ``k, v``: ``(B, H, Lk, D)`` -> ``(B, H, Lq, D)``."""
        core, lengths, globals_ = unwrap(pattern)
        drop = dropout_p if self.training or dropout_p else 0.0
        if lengths is None and not globals_ and isinstance(core, Full):
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=drop, scale=scale)
        elif lengths is None and not globals_ and isinstance(core, Causal) and q.shape[-2] == k.shape[-2]:
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=drop, is_causal=True, scale=scale)
        else:
            mask = pattern.to_dense(q.shape[-2], k.shape[-2], device=q.device)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=drop, scale=scale)
            # A query with no allowed key gives NaN in SDPA; the reference gives zeros.
            empty = ~mask.any(-1, keepdim=True)
            if bool(empty.any()):
                out = out.masked_fill(empty, 0.0)
        if global_qkv is not None:
            out = _global_rows(out, pattern, global_qkv, scale, dropout_p)
        return out


__all__ = ["SDPAAttention"]
