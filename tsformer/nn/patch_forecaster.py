"""Direct multi-horizon point forecaster over patches, with any tsformer attention pattern.

The patching and channel independence follow Nie et al., ICLR 2023, "A Time Series is
Worth 64 Words: Long-term Forecasting with Transformers" (PatchTST,
https://arxiv.org/abs/2211.14730); per-window normalisation is RevIN (Kim et al., ICLR
2022). The encoder blocks are the convolutional self-attention blocks of Li et al. (2019,
:mod:`tsformer.nn.conv_transformer`), so the attention pattern (``logsparse``, ``causal``,
``full``) and kernel are config choices, as in the autoregressive forecaster.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tsformer.nn.conv_transformer import conv_blocks, run_blocks


class PatchForecaster(nn.Module):
    """Univariate long-horizon forecaster: look-back ``(B, L)`` -> forecast ``(B, H)``.

    Each window is normalised by its own mean and standard deviation, cut into patches of
    ``patch_len`` steps every ``stride`` steps, encoded by ``n_layers`` attention blocks,
    and mapped by one linear head from all patch states to the ``H`` future values. A
    linear map from the look-back to the horizon is added (``linear_skip``), so the
    attention blocks learn a correction to a linear forecast.

    Args:
        context_length: look-back ``L``.
        horizon: forecast length ``H``.
        patch_len, stride: patching.
        d_model, n_heads, n_layers, d_ff: encoder sizes.
        conv_kernel: query/key convolution width over patches (1: plain attention).
        dropout: encoder dropout; ``head_dropout`` before the head.
        linear_skip: add a linear look-back -> horizon path.
        attention: ``model.attention``: ``type`` (default ``conv``), ``pattern`` (default
            ``logsparse``; ``causal``, ``full``, ``window``), its options, ``kernel``, ``positions``.
        reversible: reversible residual layers (Reformer, Sec. 4).
    """

    def __init__(
        self,
        context_length: int,
        horizon: int,
        patch_len: int = 16,
        stride: int = 8,
        d_model: int = 64,
        n_heads: int = 4,
        n_layers: int = 2,
        d_ff: int = 128,
        conv_kernel: int = 1,
        dropout: float = 0.2,
        head_dropout: float = 0.0,
        linear_skip: bool = True,
        attention: dict[str, Any] | None = None,
        ffn: str = "mlp",
        reversible: bool = False,
        series: dict | None = None,
        shortcut: str = "identity",
        augmented: dict | None = None,
    ):
        super().__init__()
        self.reversible = bool(reversible)
        if context_length < patch_len:
            raise ValueError(f"context_length={context_length} is shorter than patch_len={patch_len}")
        self.context_length, self.horizon = context_length, horizon
        self.patch_len, self.stride = patch_len, stride
        self.num_patches = (context_length - patch_len) // stride + 2  # one padded patch at the end
        self.embed = nn.Linear(patch_len, d_model)
        self.pos = nn.Parameter(torch.randn(self.num_patches, d_model) * 0.02)
        self.drop = nn.Dropout(dropout)
        self.blocks = conv_blocks(attention, n_layers, d_model, n_heads, d_ff, conv_kernel, dropout, causal=None,
                                  network="PatchForecaster", ffn=ffn, series=series, shortcut=shortcut,
                                  augmented=augmented)
        self.ln = nn.LayerNorm(d_model)
        self.head_drop = nn.Dropout(head_dropout)
        self.head = nn.Linear(self.num_patches * d_model, horizon)
        self.skip = nn.Linear(context_length, horizon) if linear_skip else None

    def forward(self, x: Tensor) -> Tensor:
        """``x``: ``(B, L)`` look-back -> ``(B, H)`` forecast on the same scale."""
        mean = x.mean(1, keepdim=True)
        std = (x.var(1, keepdim=True, unbiased=False) + 1e-5).sqrt()
        z = (x - mean) / std
        # Replicate the last value for one extra stride, so the newest steps get a full patch.
        zp = F.pad(z[:, None], (0, self.stride), mode="replicate")[:, 0]
        patches = zp.unfold(-1, self.patch_len, self.stride)  # (B, P, patch_len)
        h = self.drop(self.embed(patches) + self.pos)
        h = run_blocks(self.blocks, h, self.reversible)
        y = self.head(self.head_drop(self.ln(h).flatten(1)))
        if self.skip is not None:
            y = y + self.skip(z)
        return y * std + mean
