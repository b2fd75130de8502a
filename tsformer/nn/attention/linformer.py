"""Linformer self-attention (Wang et al. 2020, "Linformer: Self-Attention with Linear
Complexity", https://arxiv.org/abs/2006.04768): keys and values are projected along the
sequence to ``k`` rows, so attention costs ``O(L k)``: ``model.attention.type=linformer``.

``head_i = softmax(Q W_i^Q (E_i K W_i^K)^T / sqrt(d)) F_i V W_i^V`` (paper, Eq. 7), with
``E_i, F_i`` of shape ``(k, n)``. A batch of length ``L`` uses the first ``L`` columns of the
projections (the paper's inputs have a fixed length; slicing serves variable lengths), and
padded positions' keys and values are zeroed before projecting, so the outputs at real
positions do not depend on how a batch is padded. Every key is mixed into every projected
row, so Linformer cannot be causal: a decoder asking for it is an error.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from tsformer.attention import Full, attention
from tsformer.nn.attention.base import AttentionLayer, AttentionSpec
from tsformer.nn.decoding import KVCache

SHARING = ("headwise", "kv", "layer")
"""``model.attention.sharing`` (paper, Sec. 4): ``headwise``: an ``E`` and an ``F`` per head;
``kv``: one projection per layer for keys and values of every head; ``layer``: one
projection shared by every layer of the network."""


class LinformerAttention(AttentionLayer):
    """Multi-head attention over ``k`` sequence-projected keys and values.

    Args:
        d_model, n_heads: width and heads.
        spec: the attention config (pattern ``full`` only), or None.
        k: projected length (paper: 128 .. 256).
        max_len: longest input (the projections have this many columns).
        sharing: one of :data:`SHARING`.
        shared: a dict the network passes to all its layers (``layer`` sharing keeps the
            one projection in it).
        **config: config keys instead of ``spec``.
    """

    patterns = ("full",)
    causal_capable = False
    bidirectional_reason = "every projected key row mixes all positions, later ones included"
    defaults = {"pattern": "full"}

    def __init__(self, d_model: int, n_heads: int, spec: AttentionSpec | None = None, k: int = 256,
                 max_len: int = 4096, sharing: str = "kv", shared: dict | None = None, **config):
        super().__init__()
        self.setup(spec, d_model, n_heads, config)
        if sharing not in SHARING:
            raise ValueError(f"model.attention.sharing={sharing!r}; choose one of {SHARING}")
        if k < 1 or max_len < 1:
            raise ValueError(f"Linformer needs k >= 1 and max_len >= 1, got k={k}, max_len={max_len}")
        s = self.spec
        if s.positions not in ("none", "learned", "rotary") or s.persistent or s.span:
            raise ValueError(
                "attention type 'linformer' projects keys along the sequence, so it takes no score-bias positions "
                f"(positions={s.positions!r}), persistent slots or adaptive spans; use positions none, learned or rotary"
            )
        self.k, self.max_len, self.sharing = int(k), int(max_len), sharing
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)
        heads = n_heads if sharing == "headwise" else 1
        if sharing == "layer":
            if shared is None:
                raise ValueError("Linformer sharing='layer' needs the network's shared dict (build it with build_attention)")
            key = ("linformer", self.k, self.max_len)
            if key not in shared:
                shared[key] = _projection(1, self.k, self.max_len)
            self.proj = shared[key]  # the same Parameter in every layer: counted once
            self.proj_v = None
        else:
            self.proj = _projection(heads, self.k, self.max_len)
            self.proj_v = None if sharing == "kv" else _projection(heads, self.k, self.max_len)

    def forward(self, x: Tensor, lengths: Tensor | None = None, global_idx: Sequence[int] = (),
                cache: KVCache | None = None) -> Tensor:
        """``(B, L, d_model)`` -> ``(B, L, d_model)``. ``global_idx`` needs nothing here:
        every query already sees a projection of every key."""
        if cache is not None:
            raise ValueError("attention type 'linformer' has no incremental decoding: it cannot be causal")
        B, L, _ = x.shape
        if L > self.max_len:
            raise ValueError(f"input of {L} positions is longer than Linformer's max_len={self.max_len}")
        q, k, v = self.qkv(x).view(B, L, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        if lengths is not None:  # padding contributes nothing to the projected rows
            valid = (torch.arange(L, device=x.device)[None, :] < lengths[:, None])[:, None, :, None]
            k, v = k * valid, v * valid
        q, k = self.positions.rotate(q), self.positions.rotate(k)
        E = self.proj[:, :, :L]  # (1 | H, k, L)
        F = E if self.proj_v is None else self.proj_v[:, :, :L]
        kp, vp = torch.matmul(E, k), torch.matmul(F, v)  # (B, H, k, D)
        p = self.spec.dropout if self.training else 0.0
        y = attention(q, kp, vp, Full(), kernel=self.spec.kernel, dropout_p=p, q_offset=0)
        return self.out(self.merge(y))


def _projection(heads: int, k: int, n: int) -> nn.Parameter:
    """``(heads, k, n)`` projection initialised ``N(0, 1/k)`` (the paper's reference code)."""
    return nn.Parameter(torch.randn(heads, k, n) / math.sqrt(k))


__all__ = ["SHARING", "LinformerAttention"]
