"""Long-Short Range Attention (Wu et al., ICLR 2020, "Lite Transformer with Long-Short
Range Attention"): ``model.attention.type=lsra``, and the lightweight / dynamic convolutions
of its short-range branch (Wu et al., ICLR 2019, "Pay Less Attention with Lightweight and
Dynamic Convolutions")."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tsformer.nn.attention.base import AttentionLayer, AttentionSpec
from tsformer.nn.attention.mhsa import MultiHeadSelfAttention
from tsformer.nn.decoding import KVCache


class LightweightConv(nn.Module):
    """Depthwise convolution whose ``heads`` kernels are softmax-normalised over their width
    and shared by ``channels / heads`` channels each (Wu et al. 2019).

    Args:
        channels: channels ``C`` (divisible by ``heads``).
        kernel_size: odd width ``K`` (centred, non-causal).
        heads: number of distinct kernels.
        weight_dropout: DropConnect on the normalised kernel weights.
    """

    def __init__(self, channels: int, kernel_size: int = 15, heads: int = 4, weight_dropout: float = 0.0):
        super().__init__()
        if channels % heads:
            raise ValueError(f"channels {channels} not divisible by conv heads {heads}")
        self.channels, self.kernel_size, self.heads, self.weight_dropout = channels, kernel_size, heads, weight_dropout
        self.weight = nn.Parameter(torch.randn(heads, kernel_size) * 0.1)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, L, C)`` -> ``(B, L, C)``; zero padded frames first if they must not leak."""
        w = F.dropout(torch.softmax(self.weight, -1), self.weight_dropout, self.training)
        w = w.repeat_interleave(self.channels // self.heads, 0)[:, None, :]  # (C, 1, K)
        y = F.conv1d(x.transpose(1, 2), w, padding=self.kernel_size // 2, groups=self.channels)
        return y.transpose(1, 2)


class DynamicConv(nn.Module):
    """Lightweight convolution whose kernels are predicted from the current frame (Wu et al. 2019).

    Args: as :class:`LightweightConv`.
    """

    def __init__(self, channels: int, kernel_size: int = 15, heads: int = 4, weight_dropout: float = 0.0):
        super().__init__()
        if channels % heads:
            raise ValueError(f"channels {channels} not divisible by conv heads {heads}")
        self.channels, self.kernel_size, self.heads, self.weight_dropout = channels, kernel_size, heads, weight_dropout
        self.kernel_proj = nn.Linear(channels, heads * kernel_size)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, L, C)`` -> ``(B, L, C)``."""
        B, L, C = x.shape
        H, K = self.heads, self.kernel_size
        w = torch.softmax(self.kernel_proj(x).view(B, L, H, K), -1)
        w = F.dropout(w, self.weight_dropout, self.training)
        # Windows of K frames around each frame: (B, L, C, K).
        win = F.pad(x.transpose(1, 2), (K // 2, K // 2)).unfold(2, K, 1).permute(0, 2, 1, 3)
        win = win.reshape(B, L, H, C // H, K)
        return torch.einsum("blhck,blhk->blhc", win, w).reshape(B, L, C)


class LSRA(AttentionLayer):
    """Long-Short Range Attention: the channels are split in two; one part goes through
    multi-head self-attention (global context), the other through a GLU, a lightweight or
    dynamic convolution and a linear layer (local context); the outputs are concatenated.

    The convolution branch is centred (it looks ahead), so LSRA serves encoders only.

    Args:
        d_model: model width (even).
        n_heads: attention heads of the attention branch (``d_model / 2`` wide).
        spec: the attention branch's config (pattern, kernel, positions, dropout), or None.
        conv_type: ``lightweight`` or ``dynamic``.
        conv_kernel: convolution width (odd).
        conv_heads: kernels of the convolution branch.
        weight_dropout: DropConnect on the convolution weights.
        **config: attention config keys instead of ``spec``.
    """

    causal_capable = False
    bidirectional_reason = "its convolution branch is centred and sees later frames"

    def __init__(
        self,
        d_model: int,
        n_heads: int = 4,
        spec: AttentionSpec | None = None,
        conv_type: str = "lightweight",
        conv_kernel: int = 15,
        conv_heads: int = 4,
        weight_dropout: float = 0.0,
        **config,
    ):
        super().__init__()
        if d_model % 2:
            raise ValueError(f"LSRA needs an even d_model, got {d_model}")
        half = d_model // 2
        self.half = half
        self.setup(spec, half, n_heads, config)
        if self.pattern.causal:
            raise ValueError(
                f"attention type 'lsra' cannot take the causal pattern {self.spec.pattern!r}: its convolution "
                "branch is centred and sees later frames"
            )
        self.attn = MultiHeadSelfAttention(half, n_heads, self.spec)
        self.glu_in = nn.Linear(half, 2 * half)
        conv = {"lightweight": LightweightConv, "dynamic": DynamicConv}.get(conv_type)
        if conv is None:
            raise ValueError(f"unknown LSRA conv_type {conv_type!r}; choose lightweight or dynamic")
        self.conv = conv(half, conv_kernel, conv_heads, weight_dropout)
        self.conv_out = nn.Linear(half, half)
        self.positions = None  # the attention branch owns them

    def forward(self, x: Tensor, lengths: Tensor | None = None, global_idx: Sequence[int] = (),
                cache: KVCache | None = None) -> Tensor:
        """``(B, L, d_model)``, ``lengths (B,)`` -> ``(B, L, d_model)``."""
        if cache is not None:
            raise ValueError("attention type 'lsra' has no incremental decoding: its convolution looks ahead")
        xa, xc = x[..., : self.half], x[..., self.half :]
        ya = self.attn(xa, lengths, global_idx=global_idx)
        h = F.glu(self.glu_in(xc), dim=-1)
        if lengths is not None:
            valid = torch.arange(x.shape[1], device=x.device)[None, :] < lengths[:, None]
            h = h.masked_fill(~valid[..., None], 0.0)  # padded frames must not reach valid ones
        yc = self.conv_out(self.conv(h))
        return torch.cat([ya, yc], dim=-1)
