"""Character language-modelling data: one text file cut into train / val / test parts,
random training windows and tiling evaluation windows."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from tsformer.data.errors import DataError
from tsformer.data.samplers import ShardedSampler
from tsformer.data.tokenizers import CharVocab


class RandomWindows(Dataset):
    """Every window of ``context + 1`` characters (inputs and shifted targets); item ``i``
    starts at character ``i``. The sampler draws ``samples`` of them per epoch, so the
    windows are random yet a pure function of (seed, epoch): a resumed run sees the same."""

    def __init__(self, ids: np.ndarray, context: int, samples: int, seed: int = 0):
        self.ids, self.context, self.samples, self.seed = torch.from_numpy(ids), context, samples, seed

    def __len__(self) -> int:
        return max(1, len(self.ids) - self.context)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        s = int(i)
        w = self.ids[s : s + self.context + 1]
        return {"inputs": w[:-1], "targets": w[1:], "weight": torch.ones(self.context)}


class TilingWindows(Dataset):
    """Non-overlapping windows covering a split: every character after the first is
    predicted exactly once (``weight`` 0 on padding)."""

    def __init__(self, ids: np.ndarray, context: int):
        self.ids, self.context = torch.from_numpy(ids), context
        self.n = max(1, math.ceil((len(ids) - 1) / context))

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        s = i * self.context
        w = self.ids[s : s + self.context + 1]
        n = len(w) - 1
        pad = self.context - n
        inputs = torch.nn.functional.pad(w[:-1], (0, pad))
        targets = torch.nn.functional.pad(w[1:], (0, pad))
        weight = torch.cat([torch.ones(n), torch.zeros(pad)])
        return {"inputs": inputs, "targets": targets, "weight": weight}


class CharLMDataModule(pl.LightningDataModule):
    """Character LM data from one plain text file, cut into contiguous train/val/test parts.

    Args:
        path: a UTF-8 text file.
        context: characters per training window (the model's attention still only looks
            ``window`` back).
        val_fraction, test_fraction: the last parts of the file (val before test).
        train_samples: random training windows per epoch.
        batch_size, eval_batch_size, num_workers: loader settings.
        seed: seed of the random windows.
    """

    resume_batches = 0  # batches of the current epoch already trained (set by train() on resume)

    def __init__(self, path: str, context: int = 512, val_fraction: float = 0.05, test_fraction: float = 0.05,
                 train_samples: int = 10_000, batch_size: int = 16, eval_batch_size: int = 16,
                 num_workers: int = 0, seed: int = 0):
        super().__init__()
        self.path, self.context = path, context
        self.val_fraction, self.test_fraction = val_fraction, test_fraction
        self.train_samples, self.batch_size, self.eval_batch_size = train_samples, batch_size, eval_batch_size
        self.num_workers, self.seed = num_workers, seed
        self.vocab: CharVocab | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.vocab is not None:
            return
        path = Path(self.path)
        if not path.is_file():
            raise DataError(f"{path}: no such file")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise DataError(f"{path}: not UTF-8 text (byte {e.start})") from None
        n = len(text)
        n_test, n_val = int(n * self.test_fraction), int(n * self.val_fraction)
        n_train = n - n_val - n_test
        if n_train < self.context + 2 or n_test < 2:
            raise DataError(f"{path}: {n} characters is too short for context {self.context} and a test part")
        parts = {"train": text[:n_train], "val": text[n_train : n_train + n_val], "test": text[n_train + n_val :]}
        self.vocab = CharVocab.fit(parts["train"])
        self.ids = {k: self.vocab.encode(v) for k, v in parts.items()}

    def model_kwargs(self) -> dict:
        return {"vocab_size": len(self.vocab)}

    def train_dataloader(self):
        ds = RandomWindows(self.ids["train"], self.context, self.train_samples, self.seed)
        sampler = ShardedSampler(len(ds), shuffle=True, seed=self.seed, limit=self.train_samples)
        if self.resume_batches:  # continue mid-epoch where a resumed run stopped
            sampler.skip(self.resume_batches * self.batch_size)
            self.resume_batches = 0
        return DataLoader(ds, batch_size=self.batch_size, sampler=sampler, num_workers=self.num_workers)

    def val_dataloader(self):
        if len(self.ids["val"]) < 2:
            return []
        ds = TilingWindows(self.ids["val"], self.context)
        return DataLoader(ds, batch_size=self.eval_batch_size, sampler=ShardedSampler(len(ds), shuffle=False))

    def test_dataloader(self):
        ds = TilingWindows(self.ids["test"], self.context)
        return DataLoader(ds, batch_size=self.eval_batch_size, sampler=ShardedSampler(len(ds), shuffle=False))
