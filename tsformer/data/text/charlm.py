"""Character language-modelling data: one text file cut into train / val / test parts, or a
folder of books split by whole book; random training windows and tiling evaluation windows."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from tsformer.data.encoding import read_text
from tsformer.data.errors import DataError
from tsformer.data.samplers import ShardedSampler
from tsformer.data.text.books import book_split, read_book
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
        w = self.ids[s : s + self.context + 1].long()  # ids are stored compact (uint8 / int16)
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
        w = self.ids[s : s + self.context + 1].long()
        n = len(w) - 1
        pad = self.context - n
        inputs = torch.nn.functional.pad(w[:-1], (0, pad))
        targets = torch.nn.functional.pad(w[1:], (0, pad))
        weight = torch.cat([torch.ones(n), torch.zeros(pad)])
        return {"inputs": inputs, "targets": targets, "weight": weight}


class StreamWindows(Dataset):
    """Windows of ``B`` contiguous streams for segment recurrence (Transformer-XL): item
    ``(start, stop, t)`` is the window of inputs ``[start, stop)`` (at most ``context``;
    padded with ``weight`` 0), segment ``t`` of its stream. :class:`StreamSampler` orders
    them so that batch ``t`` holds segment ``t`` of every stream, row ``r`` always stream
    ``r``."""

    def __init__(self, ids: np.ndarray, context: int):
        self.ids, self.context = torch.from_numpy(ids), context

    def __len__(self) -> int:
        return max(1, len(self.ids) - 1)

    def __getitem__(self, item: tuple[int, int, int]) -> dict[str, torch.Tensor]:
        start, stop, t = item
        n = max(0, stop - start)
        w = self.ids[start : start + n + 1].long()
        pad = self.context - n
        return {
            "inputs": torch.nn.functional.pad(w[:-1], (0, pad)),
            "targets": torch.nn.functional.pad(w[1:], (0, pad)),
            "weight": torch.cat([torch.ones(n), torch.zeros(pad)]),
            "segment": torch.tensor(t),
        }


class StreamSampler(ShardedSampler):
    """Yields ``(start, stop, t)`` so that consecutive batches of ``streams`` items continue
    each stream (one process; segment memory across ranks is not supported).

    Training (``shuffle=True``): ``streams`` random starts drawn from ``seed + epoch``,
    ``segments`` consecutive windows from each. Evaluation: the split cut into ``streams``
    contiguous parts whose every target is predicted exactly once.
    """

    def __init__(self, n_chars: int, context: int, streams: int, shuffle: bool, seed: int = 0,
                 segments: int | None = None):
        super().__init__(1, shuffle, seed)
        self.n_chars, self.context, self.streams = n_chars, context, streams
        n_inputs = max(1, n_chars - 1)  # every input position but the last has a target
        if shuffle:
            # Never more windows than the split holds: a window past the end would have no
            # target (an epoch then ends early, and the next draws new starts).
            self.segments = max(1, min(segments or 1, n_inputs // context))
        else:
            self.part = math.ceil(n_inputs / streams)
            self.segments = math.ceil(self.part / context)
        self.num_samples = self.total_size = self.segments * streams

    def _items(self) -> list[tuple[int, int, int]]:
        C, B, n_inputs = self.context, self.streams, max(1, self.n_chars - 1)
        items = []
        if self.shuffle:
            span = self.segments * C
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            starts = torch.randint(0, max(1, n_inputs - span + 1), (B,), generator=g).tolist()
            ends = [min(n_inputs, s + span) for s in starts]
        else:
            starts = [r * self.part for r in range(B)]
            ends = [min(n_inputs, (r + 1) * self.part) for r in range(B)]
        for t in range(self.segments):
            for r in range(B):
                a = min(starts[r] + t * C, ends[r])
                items.append((a, min(a + C, ends[r]), t))
        return items

    def __iter__(self):
        skip, self._skip = self._skip, 0
        return iter(self._items()[skip:])


class CharLMDataModule(pl.LightningDataModule):
    """Character LM data from one plain text file or a folder of ``.txt`` books.

    - A file is cut into contiguous parts: train, then val (``val_fraction``), then test
      (``test_fraction``).
    - A folder is split by whole book (:mod:`tsformer.data.text.books`): ``split`` or, when
      None, the "Proposed fixed split" block of the folder's ``PROVENANCE.txt``. Each book is
      read as UTF-8 with a leading BOM dropped and ``\r\n`` -> ``\n``; with
      ``strip_gutenberg`` only the text between its ``*** START OF`` and ``*** END OF`` lines
      is kept. The books of a split are joined with ``separator``, never across splits, so
      no character of a val or test book is in the training stream. ``val_fraction`` and
      ``test_fraction`` are not used.

    The vocabulary is the characters of the training part (``separator`` included for a
    folder); a val / test character outside it is id 0, a class of its own that the model
    never sees as a training target (it is scored, not skipped: its cost enters the bpc).
    Ids are kept as one compact array per split (uint8 up to 255 characters).

    Args:
        path (str): a UTF-8 text file, or a folder of ``<book>.txt`` files.
        context (int): characters per training window (the model's attention still only looks
            ``window`` back).
        val_fraction (float): file only: share of the file for validation (before the test part).
        test_fraction (float): file only: share of the file for the test part (its end).
        split (Mapping | None): folder only: ``{train: [...], val: [...], test: [...]}`` book
            names (file stems); None reads the folder's ``PROVENANCE.txt``.
        strip_gutenberg (bool): folder only: strip the Project Gutenberg header and footer
            (a book without the marker lines is an error).
        separator (str): folder only: put between two books of a split.
        train_samples (int): random training windows per epoch.
        batch_size (int): training batch size.
        eval_batch_size (int): validation / test batch size.
        num_workers (int): loader worker processes.
        seed (int): seed of the random windows.
        stream (bool): serve ``batch_size`` (``eval_batch_size``) contiguous streams instead of
            random (tiling) windows: batch ``t`` is window ``t`` of every stream, for models
            with a segment memory (``model.memory``, Transformer-XL). Training streams start
            at random places each epoch and run ``train_samples / batch_size`` windows.
        encoding (str): the text's encoding, any Python codec (``data.encoding``).
    """

    resume_batches = 0  # batches of the current epoch already trained (set by train() on resume)

    def __init__(self, path: str, context: int = 512, val_fraction: float = 0.05, test_fraction: float = 0.05,
                 split: Mapping | None = None, strip_gutenberg: bool = True, separator: str = "\n\n",
                 train_samples: int = 10_000, batch_size: int = 16, eval_batch_size: int = 16,
                 num_workers: int = 0, seed: int = 0, stream: bool = False, encoding: str = "utf-8"):
        super().__init__()
        self.encoding = encoding
        self.path, self.context = path, context
        self.val_fraction, self.test_fraction = val_fraction, test_fraction
        self.split, self.strip_gutenberg, self.separator = split, strip_gutenberg, separator
        self.train_samples, self.batch_size, self.eval_batch_size = train_samples, batch_size, eval_batch_size
        self.num_workers, self.seed, self.stream = num_workers, seed, bool(stream)
        self.vocab: CharVocab | None = None
        self.books: dict[str, list[str]] | None = None  # folder: the book stems of each split

    def setup(self, stage: str | None = None) -> None:
        if self.vocab is not None:
            return
        path = Path(self.path)
        if path.is_dir():
            parts = self._read_books(path)
        elif path.is_file():
            parts = self._read_file(path)
        else:
            raise DataError(f"{path}: no such file or folder")
        self.vocab = CharVocab.fit(parts["train"])
        self.ids = {k: self.vocab.encode(v, self.vocab.dtype) for k, v in parts.items()}

    def _read_file(self, path: Path) -> dict[str, str]:
        """One file cut into contiguous train / val / test parts by fraction."""
        text = read_text(path, self.encoding)
        n = len(text)
        n_test, n_val = int(n * self.test_fraction), int(n * self.val_fraction)
        n_train = n - n_val - n_test
        if n_train < self.context + 2 or n_test < 2:
            raise DataError(f"{path}: {n} characters is too short for context {self.context} and a test part")
        return {"train": text[:n_train], "val": text[n_train : n_train + n_val], "test": text[n_train + n_val :]}

    def _read_books(self, folder: Path) -> dict[str, str]:
        """The books of each split, joined with the separator."""
        files = book_split(folder, self.split)
        self.books = {k: [f.stem for f in fs] for k, fs in files.items()}
        parts = {k: self.separator.join(read_book(f, self.strip_gutenberg, self.encoding) for f in fs) for k, fs in files.items()}
        if len(parts["train"]) < self.context + 2:
            raise DataError(f"{folder}: the training books {self.books['train']} have {len(parts['train'])} "
                            f"characters, too few for context {self.context}")
        for k in ("val", "test"):
            if len(parts[k]) < 2:
                raise DataError(f"{folder}: the {k} books {self.books[k]} have {len(parts[k])} character(s); need 2")
        return parts

    def model_kwargs(self) -> dict:
        return {"vocab_size": len(self.vocab)}

    def _streams(self, split: str, batch: int, shuffle: bool) -> DataLoader:
        ids = self.ids[split]
        segments = math.ceil(self.train_samples / batch) if shuffle else None
        sampler = StreamSampler(len(ids), self.context, batch, shuffle, self.seed, segments)
        if shuffle and self.resume_batches:
            sampler.skip(self.resume_batches * batch)
            self.resume_batches = 0
        return DataLoader(StreamWindows(ids, self.context), batch_size=batch, sampler=sampler,
                          num_workers=self.num_workers)

    def train_dataloader(self):
        if self.stream:
            return self._streams("train", self.batch_size, shuffle=True)
        ds = RandomWindows(self.ids["train"], self.context, self.train_samples, self.seed)
        sampler = ShardedSampler(len(ds), shuffle=True, seed=self.seed, limit=self.train_samples)
        if self.resume_batches:  # continue mid-epoch where a resumed run stopped
            sampler.skip(self.resume_batches * self.batch_size)
            self.resume_batches = 0
        return DataLoader(ds, batch_size=self.batch_size, sampler=sampler, num_workers=self.num_workers)

    def val_dataloader(self):
        if len(self.ids["val"]) < 2:
            return []
        if self.stream:
            return self._streams("val", self.eval_batch_size, shuffle=False)
        ds = TilingWindows(self.ids["val"], self.context)
        return DataLoader(ds, batch_size=self.eval_batch_size, sampler=ShardedSampler(len(ds), shuffle=False))

    def test_dataloader(self):
        if self.stream:
            return self._streams("test", self.eval_batch_size, shuffle=False)
        ds = TilingWindows(self.ids["test"], self.context)
        return DataLoader(ds, batch_size=self.eval_batch_size, sampler=ShardedSampler(len(ds), shuffle=False))
