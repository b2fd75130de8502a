"""Multi-query attention (Shazeer 2019, "Fast Transformer Decoding: One Write-Head is All
You Need", https://arxiv.org/abs/1911.02150): every query head shares one key and one value
head, so a decoding cache holds ``H`` times fewer keys and values.
``model.attention.type=mqa``. The worked example of the README's "Adding an attention
variant".
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from tsformer.nn.attention.base import AttentionLayer, AttentionSpec
from tsformer.nn.decoding import KVCache


class MultiQueryAttention(AttentionLayer):
    """``H`` query heads over one shared key/value head.

    Args:
        d_model: model width. n_heads: query heads (``d_model % n_heads == 0``).
        spec: the attention config (pattern, kernel, positions, dropout), or None.
        **config: config keys instead of ``spec``.
    """

    def __init__(self, d_model: int, n_heads: int = 4, spec: AttentionSpec | None = None, **config):
        super().__init__()
        self.setup(spec, d_model, n_heads, config)
        self.q = nn.Linear(d_model, d_model)
        self.kv = nn.Linear(d_model, 2 * self.head_dim)  # one key head and one value head
        self.out = nn.Linear(d_model, d_model)

    segment_memory = True

    def forward(self, x: Tensor, lengths: Tensor | None = None, global_idx: Sequence[int] = (),
                cache: KVCache | None = None, memory: Tensor | None = None) -> Tensor:
        """``(B, L, d_model)`` -> ``(B, L, d_model)``; ``memory`` as in ``mhsa``."""
        q = self.heads(self.q(x))  # (B, H, L, D)
        if memory is not None:
            x = torch.cat([memory.to(x.dtype), x], dim=1)
        B, L, _ = x.shape
        k, v = self.kv(x).view(B, 1, L, 2, self.head_dim).unbind(-2)  # (B, 1, L, D) each
        # Broadcast views, no copies: the kernels see ordinary (B, H, L, D) keys and values.
        k, v = k.expand(B, self.n_heads, L, self.head_dim), v.expand(B, self.n_heads, L, self.head_dim)
        return self.out(self.merge(self.attend(q, k, v, lengths, cache, global_idx)))
