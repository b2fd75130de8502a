"""Tiny speech corpora written in the real formats (LibriSpeech layout, Sphinx cepstra)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

from tsformer.data.speech.sphinx import write_sphinx_cepstra

WORDS = ["ZERO", "ONE", "TWO"]


def tone_words(words: list[int], sr: int = 16000, seed: int = 0) -> np.ndarray:
    """A distinct tone burst per word, with short gaps: learnable, deterministic audio."""
    rng = np.random.default_rng(seed)
    parts = []
    for w in words:
        t = np.arange(int(0.25 * sr)) / sr
        parts.append(0.3 * np.sin(2 * np.pi * (300 + 500 * w) * t) + 0.01 * rng.standard_normal(len(t)))
        parts.append(np.zeros(int(0.05 * sr)))
    return np.concatenate(parts).astype(np.float32)


def make_librispeech(root: Path, splits=("train-clean", "dev-clean", "test-clean"), utts: int = 4, sr: int = 16000) -> Path:
    """``<root>/<split>/<spk>/<ch>/<spk>-<ch>-<utt>.flac`` plus ``<spk>-<ch>.trans.txt``."""
    rng = np.random.default_rng(1)
    for s, split in enumerate(splits):
        for spk in (11, 12):
            ch = 100 + s
            d = root / split / str(spk) / str(ch)
            d.mkdir(parents=True, exist_ok=True)
            lines = []
            for u in range(utts):
                words = [int(x) for x in rng.integers(0, 3, size=2)]
                uid = f"{spk}-{ch}-{u:04d}"
                sf.write(str(d / f"{uid}.flac"), tone_words(words, sr, seed=u), sr, subtype="PCM_16")
                lines.append(f"{uid} " + " ".join(WORDS[w] for w in words))
            (d / f"{spk}-{ch}.trans.txt").write_text("\n".join(lines) + "\n")
    return root


def make_an4(root: Path, n_train: int = 6, n_test: int = 3) -> Path:
    """``etc/an4_{train,test}.{fileids,transcription}`` and ``feat/<id>.mfc`` cepstra."""
    rng = np.random.default_rng(2)
    (root / "etc").mkdir(parents=True, exist_ok=True)
    for split, n, folder in (("train", n_train, "an4_clstk"), ("test", n_test, "an4test_clstk")):
        ids, trans = [], []
        for i in range(n):
            spk = ["fash", "fbbh", "mcen"][i % 3]
            uid = f"an{100 + i}-{spk}-b"
            fid = f"{folder}/{spk}/{uid}"
            (root / "feat" / folder / spk).mkdir(parents=True, exist_ok=True)
            write_sphinx_cepstra(root / "feat" / f"{fid}.mfc", rng.standard_normal((60 + 10 * i, 13)))
            ids.append(fid)
            trans.append(f"{['YES', 'NO', 'GO'][i % 3]} {['ONE', 'TWO'][i % 2]} ({uid})")
        (root / "etc" / f"an4_{split}.fileids").write_text("\n".join(ids) + "\n")
        (root / "etc" / f"an4_{split}.transcription").write_text("\n".join(trans) + "\n")
    return root
