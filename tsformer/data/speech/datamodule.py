"""Speech recognition data: utterances, features, tokenizer and batching shared by the
LibriSpeech (audio) and AN4 (precomputed cepstra) readers."""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass

import pytorch_lightning as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from tsformer.data.errors import DataError
from tsformer.data.samplers import BucketBatchSampler, RankBatches
from tsformer.data.speech.audio import LogMelFilterbank, feature_stats, load_audio, speed_perturb
from tsformer.data.speech.sphinx import read_sphinx_cepstra
from tsformer.data.tokenizers import Tokenizer, build_tokenizer, normalize_text

log = logging.getLogger(__name__)


@dataclass
class Utterance:
    """One utterance: ``path`` is audio (or a feature file), ``text`` its transcript.

    ``num_frames`` counts the utterance's samples at ``sample_rate`` (0: unknown);
    ``offset``/``duration`` (seconds) select a part of the file; ``where`` names the
    manifest line it came from, for error messages.
    """

    id: str
    path: str
    text: str
    num_frames: int = 0
    sample_rate: int = 0
    offset: float = 0.0
    duration: float | None = None
    where: str = ""


def make_fbank(features: dict) -> LogMelFilterbank:
    """The log-mel filterbank of an ``fbank`` features config (waveform in, ``(T, n_mels)`` out)."""
    return LogMelFilterbank(
        n_mels=int(features.get("n_mels", 80)), sample_rate=int(features.get("sample_rate", 16000)),
        n_fft=int(features.get("n_fft", 512)), win_length=int(features.get("win_length", 400)),
        hop_length=int(features.get("hop_length", 160)),
    )


def make_feature_extractor(features: dict):
    """``fn(path, speed=1.0, offset=0.0, duration=None) -> (T, F)`` for a features config
    (type ``fbank`` or ``sphinx``; ``offset``/``duration`` in seconds select part of a file)."""
    kind = features.get("type", "fbank")
    if kind == "fbank":
        sr = int(features.get("sample_rate", 16000))
        fbank = make_fbank(features)
        resample = bool(features.get("resample", True))

        def fn(path: str, speed: float = 1.0, offset: float = 0.0, duration: float | None = None) -> Tensor:
            wave = load_audio(path, sr, resample, offset, duration)
            return fbank(speed_perturb(wave, speed, sr))

        return fn
    if kind == "sphinx":
        dim = int(features.get("dim", 13))

        def fn(path: str, speed: float = 1.0, offset: float = 0.0, duration: float | None = None) -> Tensor:
            if offset or duration is not None:
                raise DataError(f"{path}: offset/duration need audio, not precomputed cepstra")
            return torch.from_numpy(read_sphinx_cepstra(path, dim))

        return fn
    raise ValueError(f"unknown features type {kind!r}; choose fbank or sphinx")


def feature_dim(features: dict) -> int:
    return int(features.get("n_mels", 80)) if features.get("type", "fbank") == "fbank" else int(features.get("dim", 13))


def feature_frames(features: dict, samples: int, sample_rate: int) -> int:
    """Feature frames of ``samples`` audio samples at ``sample_rate`` (fbank: centred STFT
    frames after resampling to the feature rate), without reading the audio."""
    sr = int(features.get("sample_rate", 16000))
    n = -(-samples * sr // sample_rate)  # ceil: torchaudio's resampled length
    return 1 + n // int(features.get("hop_length", 160))


def extract_utterance(extract, u: Utterance, speed: float = 1.0) -> Tensor:
    """Features of one utterance (its part of the file when it has an offset or duration)."""
    if u.offset or u.duration is not None:
        return extract(u.path, speed, u.offset, u.duration)
    return extract(u.path, speed)


class UtteranceDataset(Dataset):
    """Items ``{"feats": (T, F), "targets": (S,), "text", "id"}``.

    Args:
        utts: the utterances.
        tokenizer: encodes the transcripts.
        extract: ``fn(path, speed) -> (T, F)``.
        cache: preloaded features (same order as ``utts``) or None to extract on demand.
        speeds: speed-perturbation factors drawn uniformly per item (training only).
    """

    def __init__(self, utts, tokenizer: Tokenizer, extract, cache: list[Tensor] | None = None, speeds=None):
        self.utts, self.tokenizer, self.extract, self.cache = utts, tokenizer, extract, cache
        self.speeds = list(speeds or [])
        self.targets = [torch.tensor(tokenizer.encode(u.text), dtype=torch.long) for u in utts]
        self.texts = [tokenizer.normalize(u.text) for u in utts]

    def __len__(self) -> int:
        return len(self.utts)

    def __getitem__(self, i: int) -> dict:
        u = self.utts[i]
        speed = random.choice(self.speeds) if self.speeds else 1.0
        if self.cache is not None and speed == 1.0:
            feats = self.cache[i]
        else:
            feats = extract_utterance(self.extract, u, speed)
        return {"feats": feats, "targets": self.targets[i], "text": self.texts[i], "id": u.id}


def collate(items: list[dict]) -> dict:
    """Pad to the longest item: ``feats (B, T, F)``, ``feat_lens (B,)``, ``targets (B, S)``,
    ``target_lens (B,)``, ``texts``, ``ids``."""
    feat_lens = torch.tensor([it["feats"].shape[0] for it in items])
    target_lens = torch.tensor([len(it["targets"]) for it in items])
    F = items[0]["feats"].shape[1]
    feats = torch.zeros(len(items), int(feat_lens.max()), F)
    targets = torch.zeros(len(items), max(int(target_lens.max()), 1), dtype=torch.long)
    for b, it in enumerate(items):
        feats[b, : feat_lens[b]] = it["feats"]
        targets[b, : target_lens[b]] = it["targets"]
    return {
        "feats": feats, "feat_lens": feat_lens, "targets": targets, "target_lens": target_lens,
        "texts": [it["text"] for it in items], "ids": [it["id"] for it in items],
    }


class SpeechDataModule(pl.LightningDataModule):
    """Base data module: subclasses implement :meth:`read_split` for ``train``/``dev``/``test``.

    ``setup`` reads and validates every split, trains the tokenizer on the training
    transcripts and computes global mean/variance statistics of the training features.

    Args:
        features: ``{type: fbank, n_mels, sample_rate, n_fft, win_length, hop_length}`` or
            ``{type: sphinx, dim}`` (precomputed Sphinx cepstra).
        tokenizer: ``{type: char | sentencepiece, vocab_size, model_type: unigram | bpe}``.
        specaugment: SpecAugment settings passed to the network (None: off).
        speed_perturb: speed factors for training (e.g. ``[0.9, 1.0, 1.1]``; None: off).
        preload: extract all features once in ``setup`` (else per item, for large corpora).
        stats_utterances: training utterances used for the statistics when not preloading.
        batch_size, eval_batch_size, num_workers: loader settings.
        bucket_pool: training batches per length-sorted pool (1: no length bucketing).
        seed: seed of the batch order.
    """

    # Batches are sharded across ranks here (RankBatches), not by Lightning.
    shards_batches = True
    resume_batches = 0  # batches of the current epoch already trained (set by train() on resume)

    def __init__(
        self,
        features: dict | None = None,
        tokenizer: dict | None = None,
        specaugment: dict | None = None,
        speed_perturb: list[float] | None = None,
        preload: bool = True,
        stats_utterances: int = 500,
        batch_size: int = 16,
        eval_batch_size: int = 32,
        num_workers: int = 0,
        bucket_pool: int = 50,
        seed: int = 0,
    ):
        super().__init__()
        self.bucket_pool, self.seed = bucket_pool, seed
        self.features = dict(features or {"type": "fbank"})
        self.tokenizer_cfg = dict(tokenizer or {"type": "char"})
        self.specaugment = dict(specaugment) if specaugment else None
        self.speeds = list(speed_perturb) if speed_perturb else None
        self.preload, self.stats_utterances = preload, stats_utterances
        self.batch_size, self.eval_batch_size, self.num_workers = batch_size, eval_batch_size, num_workers
        self.tokenizer: Tokenizer | None = None
        self.utts: dict[str, list[Utterance]] = {}

    def read_split(self, part: str) -> list[Utterance]:
        """Utterances of ``part`` (``train``, ``dev`` or ``test``); [] if there is none."""
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        if self.tokenizer is not None:
            return
        for part in ("train", "dev", "test"):
            self.utts[part] = self.read_split(part)
            for u in self.utts[part]:
                if not normalize_text(u.text):
                    raise DataError(f"{u.path}: empty transcript for utterance {u.id!r}")
        if not self.utts["train"]:
            raise DataError("no training utterances")
        if self.speeds and self.features.get("type", "fbank") != "fbank":
            raise ValueError("speed_perturb needs audio input (features.type=fbank), not precomputed features")
        self.extract = make_feature_extractor(self.features)
        self.tokenizer = build_tokenizer([u.text for u in self.utts["train"]], **self.tokenizer_cfg)
        self.cache: dict[str, list[Tensor] | None] = {}
        for part, utts in self.utts.items():
            self.cache[part] = [extract_utterance(self.extract, u) for u in utts] if self.preload else None
        train_feats = self.cache["train"]
        if train_feats is None:
            rng = random.Random(0)
            sample = rng.sample(self.utts["train"], min(self.stats_utterances, len(self.utts["train"])))
            train_feats = [extract_utterance(self.extract, u) for u in sample]
        self.cmvn_mean, self.cmvn_std = feature_stats(train_feats)
        self.datasets = {part: self._dataset(part) for part in self.utts}
        log.info("speech data: %s utterances, vocabulary %d",
                 {k: len(v) for k, v in self.utts.items()}, self.tokenizer.vocab_size)

    def _dataset(self, part: str) -> UtteranceDataset:
        return UtteranceDataset(self.utts[part], self.tokenizer, self.extract, self.cache[part],
                                self.speeds if part == "train" else None)

    def check_ctc_lengths(self, output_lengths, skip_bad: bool | None = None) -> int:
        """Every utterance must give the network enough output frames for CTC to emit its
        transcript: at least one per token, plus one blank between repeated tokens.

        Args:
            output_lengths: the network's ``fn((N,) feature frames) -> (N,) output frames``.
            skip_bad: drop such utterances with a warning (None: this module's ``skip_bad``).
        Returns:
            The number of utterances dropped.
        Raises:
            DataError: naming the manifest line and file of the first one (unless skipping).
        """
        skip = getattr(self, "skip_bad", False) if skip_bad is None else skip_bad
        dropped = 0
        for part, utts in self.utts.items():
            frames = self._frames(part)
            known = [i for i, f in enumerate(frames) if f > 0]
            if not known:
                continue
            out = output_lengths(torch.tensor([frames[i] for i in known])).tolist()
            bad = []
            for i, n_out in zip(known, out):
                t = self.datasets[part].targets[i].tolist()
                need = len(t) + sum(a == b for a, b in zip(t, t[1:]))
                if n_out < need:
                    u = utts[i]
                    msg = (f"{u.where or u.id}: {u.path}: too short for its transcript: {n_out} output frames "
                           f"after the model's subsampling ({frames[i]} feature frames), CTC needs {need} for "
                           f"{self.tokenizer.normalize(u.text)!r}")
                    if not skip:
                        raise DataError(msg + " (data.skip_bad=true skips such rows)")
                    log.warning("skipping: %s", msg)
                    bad.append(i)
            if bad:
                keep = [i for i in range(len(utts)) if i not in set(bad)]
                self.utts[part] = [utts[i] for i in keep]
                if self.cache[part] is not None:
                    self.cache[part] = [self.cache[part][i] for i in keep]
                self.datasets[part] = self._dataset(part)
                dropped += len(bad)
        if not self.utts["train"]:
            raise DataError("no training utterances left after dropping those too short for their transcripts")
        return dropped

    def _frames(self, part: str) -> list[int]:
        """Feature frames per utterance of ``part`` (0: unknown without reading it)."""
        cache = self.cache.get(part)
        if cache is not None:
            return [int(f.shape[0]) for f in cache]
        if self.features.get("type", "fbank") != "fbank":
            return [0] * len(self.utts[part])
        return [feature_frames(self.features, u.num_frames, u.sample_rate) if u.num_frames else 0
                for u in self.utts[part]]

    def model_kwargs(self) -> dict:
        return {
            "input_dim": feature_dim(self.features),
            "vocab_size": self.tokenizer.vocab_size,
            "cmvn_mean": self.cmvn_mean,
            "cmvn_std": self.cmvn_std,
            "specaugment": self.specaugment,
        }

    def asr_state(self) -> dict:
        """What a checkpoint needs to transcribe new files: tokenizer and feature settings."""
        return {"tokenizer": self.tokenizer.state(), "features": dict(self.features)}

    def _lengths(self, part: str) -> list[int]:
        cache = self.cache.get(part)
        if cache is not None:
            return [int(f.shape[0]) for f in cache]
        return [u.num_frames or 0 for u in self.utts[part]]  # samples: same order as frames

    def _loader(self, part: str, train: bool = False) -> DataLoader:
        lengths = self._lengths(part)
        if train:
            sampler = BucketBatchSampler(lengths, self.batch_size, seed=self.seed, pool=self.bucket_pool)
        else:  # sorted by length: less padding; the order does not change the metrics
            order = sorted(range(len(lengths)), key=lambda i: lengths[i])
            sampler = [order[i : i + self.eval_batch_size] for i in range(0, len(order), self.eval_batch_size)]
        batches = RankBatches(sampler, train)
        if train and self.resume_batches:  # continue mid-epoch where a resumed run stopped
            batches.skip(self.resume_batches)
            self.resume_batches = 0
        return DataLoader(self.datasets[part], batch_sampler=batches, collate_fn=collate,
                          num_workers=self.num_workers)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self):
        return self._loader("dev") if self.utts.get("dev") else []

    def test_dataloader(self):
        # dev first, then test: the module reports dev/* and test/* with the test decoder.
        loaders = [self._loader("test")]
        if self.utts.get("dev"):
            loaders.insert(0, self._loader("dev"))
        return loaders

    def test_split_names(self) -> list[str]:
        return (["dev"] if self.utts.get("dev") else []) + ["test"]
