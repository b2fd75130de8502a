"""Acoustic-feature layers of a speech network: SpecAugment masks and global mean/variance
normalisation. They are part of the network (the statistics travel in its checkpoint); the
features themselves come from the speech data modules."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class SpecAugment(nn.Module):
    """SpecAugment (Park et al. 2019) frequency and time masks, active in training mode only.

    Masks fill with 0, the mean after global normalisation. Padded frames are never
    counted: time masks are drawn inside each utterance's length.

    Args:
        freq_masks: number of frequency masks.
        freq_width: maximum frequency mask width (bins).
        time_masks: number of time masks.
        time_width: maximum time mask width: frames if ``>= 1``, else a fraction of the length.
    """

    def __init__(self, freq_masks: int = 2, freq_width: int = 27, time_masks: int = 2, time_width: float = 0.05):
        super().__init__()
        self.freq_masks, self.freq_width = freq_masks, freq_width
        self.time_masks, self.time_width = time_masks, time_width

    def mask(self, x: Tensor, lengths: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Boolean ``(B, T, F)`` mask, True where a value is masked.

        Args:
            x: ``(B, T, F)`` features. lengths: ``(B,)`` valid frames.
        """
        B, T, F = x.shape
        m = torch.zeros(B, T, F, dtype=torch.bool)
        f_idx, t_idx = torch.arange(F), torch.arange(T)

        def rand(hi: int) -> int:
            return int(torch.randint(0, max(hi, 0) + 1, (1,), generator=generator))

        for b in range(B):
            L = int(lengths[b])
            for _ in range(self.freq_masks):
                w = rand(min(self.freq_width, F))
                f0 = rand(F - w)
                m[b, :, (f_idx >= f0) & (f_idx < f0 + w)] = True
            tw = int(self.time_width) if self.time_width >= 1 else int(self.time_width * L)
            for _ in range(self.time_masks):
                w = rand(min(tw, L))
                t0 = rand(L - w)
                m[b, (t_idx >= t0) & (t_idx < t0 + w), :] = True
        return m.to(x.device)

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
        if not self.training or (self.freq_masks == 0 and self.time_masks == 0):
            return x
        return x.masked_fill(self.mask(x, lengths), 0.0)


class GlobalCMVN(nn.Module):
    """Global mean and variance normalisation with training-set statistics (buffers, so
    they travel in the checkpoint)."""

    def __init__(self, dim: int, mean: list[float] | None = None, std: list[float] | None = None):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32) if mean is not None else torch.zeros(dim))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32) if std is not None else torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std
