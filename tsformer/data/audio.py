"""Audio loading and acoustic features: log-mel filterbanks, SpecAugment, speed perturbation."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from tsformer.data.readers import DataError

AUDIO_SUFFIXES = (".flac", ".wav", ".ogg", ".mp3", ".aiff", ".aif")


def audio_info(path: str | Path) -> tuple[int, int]:
    """``(frames, sample_rate)`` of an audio file; DataError naming it if unreadable or empty."""
    import soundfile as sf

    try:
        info = sf.info(str(path))
    except Exception as e:  # soundfile raises several types for corrupt files
        raise DataError(f"{path}: unreadable audio file ({e})") from None
    if info.frames <= 0:
        raise DataError(f"{path}: empty audio file (0 samples)")
    return int(info.frames), int(info.samplerate)


def load_audio(path: str | Path, sample_rate: int = 16000, resample: bool = True) -> Tensor:
    """Mono float32 waveform at ``sample_rate``.

    Args:
        path: any format soundfile reads (FLAC, WAV, OGG, ...).
        sample_rate: the rate the features expect.
        resample: resample other rates (torchaudio); if False, another rate is a DataError.
    Returns:
        ``(N,)`` samples in ``[-1, 1]``.
    """
    import soundfile as sf

    try:
        wave, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as e:
        raise DataError(f"{path}: unreadable audio file ({e})") from None
    if wave.shape[0] == 0:
        raise DataError(f"{path}: empty audio file (0 samples)")
    x = torch.from_numpy(np.ascontiguousarray(wave.mean(1)))
    if sr != sample_rate:
        if not resample:
            raise DataError(f"{path}: sample rate {sr} Hz, expected {sample_rate} Hz (set resample=true to convert)")
        import torchaudio.functional as AF

        x = AF.resample(x, sr, sample_rate)
    return x


def speed_perturb(wave: Tensor, factor: float, sample_rate: int = 16000) -> Tensor:
    """Kaldi-style speed perturbation: resample so the audio plays ``factor`` times faster."""
    if factor == 1.0:
        return wave
    import torchaudio.functional as AF

    orig = int(round(sample_rate * factor))
    g = math.gcd(orig, sample_rate)
    return AF.resample(wave, orig // g, sample_rate // g)


class LogMelFilterbank(nn.Module):
    """Log-mel filterbank energies (torchaudio), 25 ms windows every 10 ms by default.

    Args:
        n_mels: number of mel bands (80, as in Conformer).
        sample_rate, n_fft, win_length, hop_length: STFT settings in samples.
    """

    def __init__(
        self, n_mels: int = 80, sample_rate: int = 16000, n_fft: int = 512, win_length: int = 400, hop_length: int = 160
    ):
        super().__init__()
        import torchaudio.transforms as AT

        self.mel = AT.MelSpectrogram(
            sample_rate=sample_rate, n_fft=n_fft, win_length=win_length, hop_length=hop_length, n_mels=n_mels
        )

    @torch.no_grad()
    def forward(self, wave: Tensor) -> Tensor:
        """``(N,)`` samples -> ``(T, n_mels)`` log energies."""
        return torch.log(self.mel(wave) + 1e-6).T.contiguous()


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


def feature_stats(feats: list[Tensor]) -> tuple[list[float], list[float]]:
    """Per-dimension mean and standard deviation over all frames of ``feats`` ``[(T, F)]``."""
    s = torch.zeros(feats[0].shape[1], dtype=torch.float64)
    s2 = torch.zeros_like(s)
    n = 0
    for f in feats:
        f = f.double()
        s += f.sum(0)
        s2 += (f * f).sum(0)
        n += f.shape[0]
    mean = s / n
    std = (s2 / n - mean * mean).clamp_min(1e-10).sqrt().clamp_min(1e-3)
    return [float(v) for v in mean], [float(v) for v in std]
