"""Audio loading and acoustic features: log-mel filterbanks, speed perturbation, statistics.

The network-side parts (SpecAugment, global mean/variance normalisation) are
:mod:`tsformer.nn.audio`."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from tsformer.data.errors import DataError

AUDIO_SUFFIXES = (".flac", ".wav", ".ogg", ".mp3", ".aiff", ".aif")

log = logging.getLogger(__name__)
_said_stereo = False


def to_mono(wave: np.ndarray, path: str | Path) -> Tensor:
    """``(N, C)`` samples -> ``(N,)`` float32, channels averaged (said once per process in the log)."""
    global _said_stereo
    if wave.shape[1] > 1 and not _said_stereo:
        log.info("%s: %d channels mixed down to mono (said once; other multi-channel files are too)", path,
                 wave.shape[1])
        _said_stereo = True
    return torch.from_numpy(np.ascontiguousarray(wave.mean(1), dtype=np.float32))


def resample_to(x: Tensor, sr: int, sample_rate: int) -> Tensor:
    """``x`` at ``sr`` Hz resampled to ``sample_rate`` Hz (torchaudio, windowed sinc)."""
    if sr == sample_rate:
        return x
    import torchaudio.functional as AF

    return AF.resample(x, sr, sample_rate)


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


def load_audio(path: str | Path, sample_rate: int = 16000, resample: bool = True, offset: float = 0.0,
               duration: float | None = None) -> Tensor:
    """Mono float32 waveform at ``sample_rate`` (channels averaged).

    Args:
        path: any format soundfile reads (FLAC, WAV, OGG, ...).
        sample_rate: the rate the features expect.
        resample: resample other rates (torchaudio); if False, another rate is a DataError.
        offset, duration: the part to read, in seconds (``duration`` None: to the end).
    Returns:
        ``(N,)`` samples in ``[-1, 1]``.
    """
    import soundfile as sf

    try:
        with sf.SoundFile(str(path)) as f:
            sr = f.samplerate
            start = int(round(offset * sr))
            if start:
                f.seek(min(start, f.frames))
            wave = f.read(-1 if duration is None else int(round(duration * sr)), dtype="float32", always_2d=True)
    except Exception as e:
        raise DataError(f"{path}: unreadable audio file ({e})") from None
    if wave.shape[0] == 0:
        part = f" from {offset:g} s" if offset or duration is not None else ""
        raise DataError(f"{path}: empty audio{part} (0 samples)")
    if sr != sample_rate and not resample:
        raise DataError(f"{path}: sample rate {sr} Hz, expected {sample_rate} Hz (set resample=true to convert)")
    return resample_to(to_mono(wave, path), sr, sample_rate)


def speed_perturb(wave: Tensor, factor: float, sample_rate: int = 16000) -> Tensor:
    """Kaldi-style speed perturbation: resample so the audio plays ``factor`` times faster."""
    if factor == 1.0:
        return wave
    orig = int(round(sample_rate * factor))
    g = math.gcd(orig, sample_rate)
    return resample_to(wave, orig // g, sample_rate // g)


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
