"""Multi-head self-attention over the attention backbone, with rotary or relative positions."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tsformer.attention import attention, pattern_from_config


def rotary(x: Tensor, base: float = 10000.0) -> Tensor:
    """Rotary position embedding (Su et al. 2021, "RoFormer") of ``(B, H, L, D)``, ``D`` even.

    Rotating queries and keys by their position makes ``q_i . k_j`` depend on ``i - j`` only.
    """
    L, D = x.shape[-2], x.shape[-1]
    inv = base ** (-torch.arange(0, D, 2, device=x.device, dtype=torch.float32) / D)
    ang = torch.arange(L, device=x.device, dtype=torch.float32)[:, None] * inv[None]  # (L, D/2)
    cos, sin = ang.cos().to(x.dtype), ang.sin().to(x.dtype)
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)


class MultiHeadSelfAttention(nn.Module):
    """Multi-head self-attention (Vaswani et al. 2017) for padded batches.

    ``pos="rotary"`` and ``pos="none"`` go through :func:`tsformer.attention.attention` with
    the configured pattern and kernel; ``pos="relative"`` adds Shaw et al. (2018) clipped
    relative-position key embeddings and is computed densely here.

    Args:
        d_model: model width. n_heads: heads (``d_model % n_heads == 0``).
        pattern: backbone pattern name (``full``, ``window``, ...); ``window``, ``dilation``
            and ``one_sided`` configure ``window``.
        kernel: attention kernel name (``auto``, ``reference``, ...).
        pos: ``rotary``, ``relative`` or ``none``.
        max_relative: clipping distance of relative positions.
        dropout: attention-probability dropout.
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int = 4,
        pattern: str = "full",
        window: int = 64,
        dilation: int = 1,
        one_sided: bool = False,
        kernel: str = "auto",
        pos: str = "rotary",
        max_relative: int = 64,
        dropout: float = 0.0,
    ):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model {d_model} not divisible by n_heads {n_heads}")
        if pos not in ("rotary", "relative", "none"):
            raise ValueError(f"unknown position encoding {pos!r}; choose rotary, relative or none")
        self.n_heads, self.head_dim = n_heads, d_model // n_heads
        self.pattern = pattern_from_config(pattern, window=window, dilation=dilation, one_sided=one_sided)
        self.kernel, self.pos, self.max_relative, self.dropout = kernel, pos, max_relative, dropout
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)
        if pos == "relative":
            self.rel_k = nn.Embedding(2 * max_relative + 1, self.head_dim)

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
        """``(B, L, d_model)``, ``lengths (B,)`` -> ``(B, L, d_model)`` (padded rows: don't care)."""
        B, L, _ = x.shape
        q, k, v = self.qkv(x).view(B, L, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        pattern = self.pattern.with_padding(lengths)
        p = self.dropout if self.training else 0.0
        if self.pos == "relative":
            scale = self.head_dim**-0.5
            idx = torch.arange(L, device=x.device)
            rel = (idx[None, :] - idx[:, None]).clamp(-self.max_relative, self.max_relative) + self.max_relative
            scores = q @ k.transpose(-1, -2) + torch.einsum("bhid,ijd->bhij", q, self.rel_k(rel))
            scores = (scores * scale).masked_fill(~pattern.to_dense(L, L, device=x.device), float("-inf"))
            probs = torch.nan_to_num(torch.softmax(scores, -1), nan=0.0)
            y = F.dropout(probs, p) @ v
        else:
            if self.pos == "rotary":
                q, k = rotary(q), rotary(k)
            y = attention(q, k, v, pattern, kernel=self.kernel, dropout_p=p)
        return self.out(y.transpose(1, 2).reshape(B, L, -1))
