"""Recordings of any length as a stream of overlapping windows, read block by block.

Each :class:`Window` answers for one stretch of the recording, its *kept* part
``[keep_start, keep_end)``, and carries ``context`` seconds of audio on either side so the
network sees every kept frame with its neighbours. Kept parts tile the recording without
gaps or overlap, so a decoder that keeps only the frames of each window's kept part neither
drops nor repeats a word at a seam. Window edges lie on a grid of ``grid`` seconds (the
network's output frame step), so every output frame has one global index whichever window
computed it.

With ``split="vad"`` each kept part ends at the quietest point (lowest energy over two grid
cells, an energy voice-activity cue) in the last ``search`` seconds before the nominal
window end, so seams fall into pauses between words; ``split="fixed"`` cuts every
``window`` seconds. Only one window's samples are read at a time (``soundfile`` seeks and
reads that span), so memory does not grow with the recording's length.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch import Tensor

from tsformer.data.errors import DataError
from tsformer.data.speech.audio import resample_to, to_mono

SPLITS = ("vad", "fixed")


@dataclass
class Window:
    """One window of a recording.

    Attributes:
        samples: ``(N,)`` mono float32 at the requested sample rate.
        start: the grid index (``grid``-second steps) of ``samples[0]``.
        keep_start, keep_end: grid indices of the kept part, ``start <= keep_start < keep_end``.
        grid: seconds per grid step.
    """

    samples: Tensor
    start: int
    keep_start: int
    keep_end: int
    grid: float


def quietest_cut(x: np.ndarray, sr: int, grid: float, first: int, lo: int, hi: int) -> int:
    """The grid index in ``[lo, hi]`` whose two neighbouring cells have the least energy.

    Args:
        x: ``(N,)`` mono samples starting at grid index ``first``.
        sr: their sample rate.
        grid: seconds per grid step.
        first: the grid index of ``x[0]``.
        lo, hi: the candidate cut indices.
    """
    def cell_energy(k: int) -> float:
        a = max(0, round((k - first) * grid * sr))
        b = min(len(x), round((k + 1 - first) * grid * sr))
        return float(np.mean(x[a:b] ** 2)) if b > a else 0.0

    energies = {k: cell_energy(k) for k in range(lo - 1, hi + 1)}
    # Latest cut among equal energies: the longest window, fewest windows in silence.
    return min(range(lo, hi + 1), key=lambda k: (energies[k - 1] + energies[k], -k))


def audio_windows(
    path: str | Path,
    sample_rate: int = 16000,
    window: float = 15.0,
    context: float = 1.5,
    grid: float = 0.04,
    split: str = "vad",
    search: float = 3.0,
    resample: bool = True,
) -> Iterator[Window]:
    """Overlapping windows of a recording, read one at a time.

    Args:
        path: an audio file soundfile reads (WAV, FLAC, OGG, ...), any rate, mono or more channels.
        sample_rate: the rate of the yielded samples.
        window: seconds each window answers for at most (its kept part).
        context: seconds of audio before and after the kept part (less at the file's ends).
        grid: the network's output frame step in seconds; window edges lie on it.
        split: ``vad`` (cut at the quietest point of the last ``search`` seconds) or ``fixed``.
        search: see ``split``.
        resample: resample other rates (else a DataError).
    Yields:
        :class:`Window` s in order; their kept parts tile ``[0, ceil(duration / grid))``.
    """
    import soundfile as sf

    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    win_k, ctx_k = max(1, round(window / grid)), max(0, math.ceil(context / grid))
    search_k = min(win_k - 1, max(0, round(search / grid)))
    try:
        f = sf.SoundFile(str(path))
    except Exception as e:
        raise DataError(f"{path}: unreadable audio file ({e})") from None
    with f:
        sr, n = f.samplerate, f.frames
        if n <= 0:
            raise DataError(f"{path}: empty audio file (0 samples)")
        if sr != sample_rate and not resample:
            raise DataError(f"{path}: sample rate {sr} Hz, expected {sample_rate} Hz (set resample=true to convert)")
        total_k = math.ceil(n / (grid * sr))

        def to_sample(k: int) -> int:
            return min(n, round(k * grid * sr))

        keep = 0
        while keep < total_k:
            first = max(0, keep - ctx_k)
            nominal = min(total_k, keep + win_k)
            last = min(total_k, nominal + ctx_k)  # the most this window can need
            f.seek(to_sample(first))
            x = f.read(to_sample(last) - to_sample(first), dtype="float32", always_2d=True)
            mono = to_mono(x, path)
            end = nominal
            if split == "vad" and nominal < total_k and search_k > 0:
                end = quietest_cut(mono.numpy(), sr, grid, first, nominal - search_k, nominal)
            stop = min(total_k, end + ctx_k)
            part = mono[: to_sample(stop) - to_sample(first)]
            del x, mono
            yield Window(resample_to(part, sr, sample_rate), first, keep, end, grid)
            keep = end
