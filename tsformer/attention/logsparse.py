"""Sparse LogSparse attention: O(L log L) time and memory.

Li et al., NeurIPS 2019, "Enhancing the Locality and Breaking the Memory Bottleneck of
Transformer on Time Series Forecasting" (https://arxiv.org/abs/1907.00235).

Every query sees keys at the same set of distances (``LogSparse.offsets``), so the
kernel loops over those O(log L) distances and works on shifted views of ``k`` and
``v``: no L x L score matrix and no gathered copy of the keys.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from tsformer.attention.patterns import LogSparse, Pattern, unwrap


class LogSparseAttention(nn.Module):
    """Attention for :class:`LogSparse` patterns (with optional key padding).

    Cannot serve: other patterns, global tokens, attention dropout, ``Lq != Lk``.
    """

    name = "logsparse"

    def supports(self, q: Tensor, pattern: Pattern, dropout_p: float = 0.0) -> str | None:
        core, _, globals_ = unwrap(pattern)
        if not isinstance(core, LogSparse):
            return f"the logsparse kernel only serves LogSparse patterns, not {type(core).__name__}"
        if globals_:
            return "the logsparse kernel does not support global tokens"
        if dropout_p > 0:
            return "the logsparse kernel does not support attention dropout"
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
        global_qkv=None,
    ) -> Tensor:
        """LogSparse attention.

        Args:
            q, k, v: ``(B, H, L, D)``.
            pattern: a :class:`LogSparse`, possibly wrapped in key padding.
        Returns:
            ``(B, H, L, D)``.
        """
        reason = self.supports(q, pattern, dropout_p)
        if reason is None and global_qkv is not None:
            reason = "the logsparse kernel does not support global projections"
        if reason is None and q.shape[-2] != k.shape[-2]:
            reason = "the logsparse kernel needs as many queries as keys"
        if reason is not None:
            raise ValueError(reason)
        core, lengths, _ = unwrap(pattern)
        return logsparse_attention(q, k, v, core, lengths, scale)


def logsparse_attention(
    q: Tensor, k: Tensor, v: Tensor, pattern: LogSparse, lengths: Tensor | None = None, scale: float | None = None
) -> Tensor:
    """Functional form of :class:`LogSparseAttention` (see there)."""
    B, H, L, D = q.shape
    scale = D**-0.5 if scale is None else scale
    offsets = pattern.offsets(L)
    n = len(offsets)
    pos = torch.arange(L, device=q.device)
    off = torch.tensor(offsets, device=q.device)
    key = pos[:, None] - off[None, :]  # (L, n) key index of each (query, offset)
    valid = key >= 0
    if pattern.restart is not None:
        r = pattern.restart
        valid = valid & (torch.div(pos, r, rounding_mode="floor")[:, None] == torch.div(key, r, rounding_mode="floor"))
    valid = valid[None, None]  # (1, 1, L, n)
    if lengths is not None:
        valid = valid & (key[None] < lengths.to(q.device)[:, None, None])[:, None]

    scores = q.new_full((B, H, L, n), float("-inf"))
    for j, d in enumerate(offsets):
        # query i (i >= d) against key i - d
        scores[:, :, d:, j] = (q[:, :, d:] * k[:, :, : L - d]).sum(-1) * scale
    scores = scores.masked_fill(~valid, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    probs = torch.nan_to_num(probs, nan=0.0)
    out = torch.zeros_like(q)
    for j, d in enumerate(offsets):
        out[:, :, d:] += probs[:, :, d:, j, None] * v[:, :, : L - d]
    return out
