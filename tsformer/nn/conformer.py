"""Conformer encoder with a CTC head (Gulati et al., Interspeech 2020, "Conformer:
Convolution-augmented Transformer for Speech Recognition").

Each block: half feed-forward, self-attention module, convolution module (pointwise, GLU,
depthwise, batch norm, SiLU, pointwise), half feed-forward, layer norm. The self-attention
module is selectable: multi-head self-attention over any backbone pattern (rotary, relative
or no positions) or Lite Transformer's Long-Short Range Attention (:mod:`tsformer.nn.lsra`).

Padded frames never change the outputs at valid frames: convolutions see zeros there,
attention masks them as keys and batch norm takes its statistics from valid frames only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tsformer.nn.attention import build_attention
from tsformer.nn.audio import GlobalCMVN, SpecAugment


def valid_mask(lengths: Tensor, L: int) -> Tensor:
    """``(B, L)`` bool, True at frames before each length."""
    return torch.arange(L, device=lengths.device)[None, :] < lengths[:, None]


class Conv2dSubsampling(nn.Module):
    """Two 3x3 stride-2 convolutions (x4 fewer frames) and a projection to ``d_model``.

    No time padding, so output frame ``i`` sees input frames ``4i .. 4i + 6`` only.
    """

    def __init__(self, input_dim: int, d_model: int, channels: int | None = None):
        super().__init__()
        c = channels or d_model
        self.conv = nn.Sequential(nn.Conv2d(1, c, 3, 2), nn.ReLU(), nn.Conv2d(c, c, 3, 2), nn.ReLU())
        f = ((input_dim - 1) // 2 - 1) // 2
        if f < 1:
            raise ValueError(f"input_dim {input_dim} too small for x4 convolutional subsampling")
        self.proj = nn.Linear(c * f, d_model)

    @staticmethod
    def output_lengths(lengths: Tensor) -> Tensor:
        return (((lengths - 1) // 2 - 1) // 2).clamp_min(0)

    def forward(self, x: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """``(B, T, F)`` -> ``(B, T', d_model)`` and ``(B,)`` output lengths."""
        if x.shape[1] < 7:  # shorter than one output frame's receptive field
            x = F.pad(x, (0, 0, 0, 7 - x.shape[1]))
        y = self.conv(x[:, None])  # (B, C, T', F')
        B, C, T, Fp = y.shape
        return self.proj(y.permute(0, 2, 1, 3).reshape(B, T, C * Fp)), self.output_lengths(lengths)


class MaskedBatchNorm1d(nn.BatchNorm1d):
    """Batch norm over ``(B, C, L)`` whose training statistics ignore padded frames."""

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:  # type: ignore[override]
        if not self.training or mask is None:
            return super().forward(x)
        m = mask[:, None, :].to(x.dtype)
        n = m.sum().clamp_min(1.0)
        mean = (x * m).sum((0, 2)) / n
        var = (((x - mean[None, :, None]) ** 2) * m).sum((0, 2)) / n
        with torch.no_grad():
            self.num_batches_tracked += 1
            unbiased = var * n / (n - 1).clamp_min(1.0)
            self.running_mean.lerp_(mean.detach(), self.momentum)
            self.running_var.lerp_(unbiased.detach(), self.momentum)
        y = (x - mean[None, :, None]) / torch.sqrt(var[None, :, None] + self.eps)
        return y * self.weight[None, :, None] + self.bias[None, :, None]


class FeedForward(nn.Module):
    """Pre-norm feed-forward module with SiLU (Swish)."""

    def __init__(self, d_model: int, d_ff: int, dropout: float = 0.1):
        super().__init__()
        self.net = nn.Sequential(
            nn.LayerNorm(d_model), nn.Linear(d_model, d_ff), nn.SiLU(), nn.Dropout(dropout),
            nn.Linear(d_ff, d_model), nn.Dropout(dropout),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class ConvModule(nn.Module):
    """Conformer convolution module: LN, pointwise (2x) + GLU, depthwise, BN, SiLU, pointwise."""

    def __init__(self, d_model: int, kernel_size: int = 15, dropout: float = 0.1):
        super().__init__()
        if kernel_size % 2 == 0:
            raise ValueError(f"conv_kernel must be odd, got {kernel_size}")
        self.norm = nn.LayerNorm(d_model)
        self.pw1 = nn.Linear(d_model, 2 * d_model)
        self.dw = nn.Conv1d(d_model, d_model, kernel_size, padding=kernel_size // 2, groups=d_model)
        self.bn = MaskedBatchNorm1d(d_model)
        self.pw2 = nn.Linear(d_model, d_model)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """``(B, L, d)``, ``mask (B, L)`` -> ``(B, L, d)``."""
        h = F.glu(self.pw1(self.norm(x)), dim=-1).masked_fill(~mask[..., None], 0.0)
        h = F.silu(self.bn(self.dw(h.transpose(1, 2)), mask)).transpose(1, 2)
        return self.drop(self.pw2(h))


def make_attention(d_model: int, n_heads: int, dropout: float, cfg: dict, shared: dict | None = None) -> nn.Module:
    """Self-attention module from ``model.attention`` (any registered encoder type; default
    ``mhsa`` with full attention and rotary positions, attention dropout ``dropout``)."""
    if dict(cfg or {}).get("positions", dict(cfg or {}).get("pos")) == "learned":
        raise ValueError("ConformerCTC has no learned position table: choose rotary, relative or none positions")
    defaults = {"type": "mhsa", "pattern": "full", "positions": "rotary", "window": 64, "dropout": dropout}
    return build_attention(cfg, d_model, n_heads, causal=False, defaults=defaults, network="ConformerCTC",
                           shared=shared)


class ConformerBlock(nn.Module):
    """One Conformer block (macaron feed-forward halves around attention and convolution)."""

    def __init__(self, d_model: int, n_heads: int, d_ff: int, conv_kernel: int, dropout: float, attention: dict,
                 shared: dict | None = None):
        super().__init__()
        self.ff1 = FeedForward(d_model, d_ff, dropout)
        self.attn_norm = nn.LayerNorm(d_model)
        self.attn = make_attention(d_model, n_heads, dropout, attention, shared)
        self.attn_drop = nn.Dropout(dropout)
        self.conv = ConvModule(d_model, conv_kernel, dropout)
        self.ff2 = FeedForward(d_model, d_ff, dropout)
        self.norm = nn.LayerNorm(d_model)

    def forward(self, x: Tensor, lengths: Tensor, mask: Tensor) -> Tensor:
        x = x + 0.5 * self.ff1(x)
        x = x + self.attn_drop(self.attn(self.attn_norm(x), lengths))
        x = x + self.conv(x, mask)
        x = x + 0.5 * self.ff2(x)
        return self.norm(x)


class ConformerEncoder(nn.Module):
    """Subsampling, dropout and ``n_layers`` Conformer blocks.

    Args: see :class:`ConformerCTC`.
    """

    def __init__(self, input_dim: int, d_model: int, n_heads: int, n_layers: int, d_ff: int, conv_kernel: int,
                 dropout: float, attention: dict, subsampling_channels: int | None = None):
        super().__init__()
        shared: dict = {}  # parts the layers share (Linformer sharing=layer)
        self.subsample = Conv2dSubsampling(input_dim, d_model, subsampling_channels)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            ConformerBlock(d_model, n_heads, d_ff, conv_kernel, dropout, attention, shared) for _ in range(n_layers)
        )

    def forward(self, x: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """``(B, T, F)`` features -> ``(B, T', d_model)`` and ``(B,)`` lengths."""
        x, lengths = self.subsample(x, lengths)
        x = self.drop(x)
        mask = valid_mask(lengths, x.shape[1])
        for block in self.blocks:
            x = block(x, lengths, mask)
        return x, lengths


class ConformerCTC(nn.Module):
    """Conformer encoder and a linear CTC head over ``vocab_size`` tokens (id 0: blank).

    Input features are normalised with global training-set statistics (buffers) and, in
    training mode, SpecAugment-ed.

    Args:
        input_dim: feature dimension (80 log-mel bands, 13 cepstra, ...).
        vocab_size: output tokens including the blank.
        d_model, n_heads, n_layers, d_ff: encoder sizes.
        conv_kernel: depthwise kernel of the convolution module (odd).
        dropout: dropout rate.
        attention: ``model.attention``, e.g. ``{type: mhsa, pattern, kernel, positions}`` or
            ``{type: lsra, conv_type, conv_kernel, conv_heads, pattern, kernel, positions}``
            (``pos`` is read as ``positions``, as older checkpoints spell it).
        cmvn_mean, cmvn_std: global feature statistics (``input_dim`` floats each).
        specaugment: :class:`~tsformer.nn.audio.SpecAugment` settings, or None.
        subsampling_channels: channels of the subsampling convolutions (None: ``d_model``);
            fewer make the (costly) first layers cheaper on CPU.
    """

    def __init__(
        self,
        input_dim: int,
        vocab_size: int,
        d_model: int = 144,
        n_heads: int = 4,
        n_layers: int = 4,
        d_ff: int = 576,
        conv_kernel: int = 15,
        dropout: float = 0.1,
        attention: dict | None = None,
        cmvn_mean: list[float] | None = None,
        cmvn_std: list[float] | None = None,
        specaugment: dict | None = None,
        subsampling_channels: int | None = None,
    ):
        super().__init__()
        attention = dict(attention or {"type": "mhsa"})
        # Plain-typed constructor arguments, stored in checkpoints to rebuild the network
        # (statistics travel as buffers).
        self.config = {
            "input_dim": input_dim, "vocab_size": vocab_size, "d_model": d_model, "n_heads": n_heads,
            "n_layers": n_layers, "d_ff": d_ff, "conv_kernel": conv_kernel, "dropout": dropout,
            "attention": attention, "specaugment": dict(specaugment) if specaugment else None,
            "subsampling_channels": subsampling_channels,
        }
        self.cmvn = GlobalCMVN(input_dim, cmvn_mean, cmvn_std)
        self.specaug = SpecAugment(**specaugment) if specaugment else None
        self.encoder = ConformerEncoder(input_dim, d_model, n_heads, n_layers, d_ff, conv_kernel, dropout, attention,
                                         subsampling_channels)
        self.head = nn.Linear(d_model, vocab_size)

    def output_lengths(self, lengths: Tensor) -> Tensor:
        """Output frames (after the x4 subsampling) of ``(N,)`` input frame counts."""
        return self.encoder.subsample.output_lengths(lengths)

    def forward(self, feats: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """``(B, T, F)`` features, ``(B,)`` lengths -> ``(B, T', V)`` log-probabilities, ``(B,)`` lengths."""
        h, out_lengths = self.encoder(self._normalise(feats, lengths), lengths)
        return self.readout(h), out_lengths

    def _normalise(self, feats: Tensor, lengths: Tensor) -> Tensor:
        x = self.cmvn(feats).masked_fill(~valid_mask(lengths, feats.shape[1])[..., None], 0.0)
        return x if self.specaug is None else self.specaug(x, lengths)

    def embed(self, feats: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """The first block's input: normalised, (augmented,) subsampled features
        ``(B, T', d)`` and ``(B,)`` output lengths."""
        x, out_lengths = self.encoder.subsample(self._normalise(feats, lengths), lengths)
        return self.encoder.drop(x), out_lengths

    def hidden_states(self, feats: Tensor, lengths: Tensor) -> tuple[list[Tensor], Tensor]:
        """Every block's output ``(B, T', d)`` and the ``(B,)`` output lengths: what
        intermediate CTC heads (the shared :meth:`readout`, CALM's per-layer heads) read."""
        x, out_lengths = self.embed(feats, lengths)
        mask = valid_mask(out_lengths, x.shape[1])
        out = []
        for block in self.encoder.blocks:
            x = block(x, out_lengths, mask)
            out.append(x)
        return out, out_lengths

    def readout(self, h: Tensor) -> Tensor:
        """The shared CTC head on any block's states: ``(..., d)`` -> log-probabilities."""
        return torch.log_softmax(self.head(h).float(), dim=-1)
