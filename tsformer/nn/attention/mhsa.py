"""Multi-head self-attention (Vaswani et al. 2017, "Attention Is All You Need") over any
backbone pattern, kernel and positions: ``model.attention.type=mhsa``."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from tsformer.nn.attention.base import AttentionLayer, AttentionSpec, rename_keys
from tsformer.nn.decoding import KVCache
from tsformer.nn.unpad import Packing


class MultiHeadSelfAttention(AttentionLayer):
    """Packed q/k/v projection, attention through the configured kernel, output projection.

    Args:
        d_model: model width. n_heads: heads (``d_model % n_heads == 0``).
        spec: the attention config (pattern, kernel, positions, dropout), or None.
        **config: config keys instead of ``spec`` (``pattern="window", window=64, ...``).
    """

    def __init__(self, d_model: int, n_heads: int = 4, spec: AttentionSpec | None = None, **config):
        super().__init__()
        self.setup(spec, d_model, n_heads, config)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)
        # Checkpoints from before positions were a module kept Shaw's table as ``rel_k``.
        self._register_load_state_dict_pre_hook(rename_keys({"rel_k.": "positions.rel_k."}))

    segment_memory = True

    def forward(self, x: Tensor, lengths: Tensor | None = None, global_idx: Sequence[int] = (),
                cache: KVCache | None = None, memory: Tensor | None = None) -> Tensor:
        """``(B, L, d_model)`` -> ``(B, L, d_model)`` (padded rows: don't care).

        ``memory``: ``(B, M, d_model)`` earlier hidden states (detached by the caller) whose
        keys and values come before the segment's (Transformer-XL, Dai et al. 2019, Eq. 1).
        """
        L = x.shape[1]
        h = x if memory is None else torch.cat([memory.to(x.dtype), x], dim=1)
        q, k, v = self._split(self.qkv(h))
        return self.out(self.merge(self.attend(q[:, :, -L:], k, v, lengths, cache, global_idx)))

    def forward_packed(self, x: Tensor, packing: Packing, global_idx: Sequence[int] = ()) -> Tensor:
        """``(T, d_model)`` packed real tokens -> ``(T, d_model)``: the q/k/v and output
        projections run on the real tokens; only the kernel sees the padded layout."""
        q, k, v = self._split(packing.pad(self.qkv(x)))
        return self.out(packing.unpad(self.merge(self.attend(q, k, v, packing.lengths, None, global_idx))))

    def _split(self, qkv: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(B, L, 3 d_model)`` -> queries, keys, values ``(B, H, L, D)``."""
        B, L, _ = qkv.shape
        return tuple(qkv.view(B, L, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4))
