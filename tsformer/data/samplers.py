"""Samplers shared by the data modules: length-bucketed batches, and samplers that shard
across ranks, repeat exactly and resume mid-epoch."""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler, Sampler


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


class ShardedSampler(DistributedSampler):
    """Shuffled or ordered indices, split across ranks, with a deterministic order.

    Training (``shuffle=True``): the order of epoch ``e`` is a permutation drawn from
    ``seed + e`` alone (its first ``limit`` items when given), every rank gets the same
    number of indices (padding wraps around),
    and :meth:`skip` drops the first samples of an epoch so that a resumed run continues
    exactly where the interrupted one stopped.

    Evaluation (``shuffle=False``): rank ``r`` gets indices ``r, r + W, ...`` with no
    padding, so every window is evaluated exactly once across ranks.

    It subclasses ``DistributedSampler`` so that Lightning leaves it in place.
    """

    def __init__(self, size: int, shuffle: bool, seed: int = 0, limit: int | None = None):
        world, rank = _world()
        # Bypass DistributedSampler.__init__, which needs a dataset and an initialised group.
        self.dataset_size, self.num_replicas, self.rank = size, world, rank
        self.shuffle, self.seed, self.epoch, self._skip = shuffle, seed, 0, 0
        self.limit = size if limit is None else min(limit, size)  # items drawn per epoch
        self.drop_last = False
        self.num_samples = math.ceil(self.limit / world) if shuffle else len(range(rank, size, world))
        self.total_size = self.num_samples * world

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def skip(self, n: int) -> None:
        """Skip the first ``n`` samples (of this rank) of the next iteration only."""
        self._skip = n

    def __iter__(self) -> Iterator[int]:
        if not self.shuffle:
            indices = list(range(self.rank, self.dataset_size, self.num_replicas))
        else:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.dataset_size, generator=g)[: self.limit].tolist()
            order += order[: self.total_size - len(order)]
            indices = order[self.rank : self.total_size : self.num_replicas]
        skip, self._skip = self._skip, 0
        return iter(indices[skip:])

    def __len__(self) -> int:
        return self.num_samples


class RankBatches(Sampler):
    """Shards any batch sampler (an iterable of index lists) across ranks.

    Rank ``r`` gets batches ``r, r + W, ...``. For training every rank gets the same number
    of batches (the remainder is dropped), as DDP needs; for evaluation nothing is dropped
    or repeated, so every item is evaluated exactly once. With one process it is the inner
    sampler unchanged.
    """

    def __init__(self, batches, train: bool):
        self.batches, self.train = batches, train
        self._skip = 0

    def set_epoch(self, epoch: int) -> None:
        """Lightning calls this each epoch: the inner order then depends on the epoch alone,
        so a resumed run draws the same batches as an uninterrupted one."""
        if hasattr(self.batches, "set_epoch"):
            self.batches.set_epoch(epoch)
        elif hasattr(self.batches, "epoch"):
            self.batches.epoch = epoch

    def skip(self, n: int) -> None:
        """Skip the first ``n`` batches (of this rank) of the next iteration only (resume)."""
        self._skip = n

    def _shard(self, n: int) -> tuple[int, int, int]:
        world, rank = _world()
        count = n // world if self.train else len(range(rank, n, world))
        return world, rank, count

    def __iter__(self) -> Iterator[list[int]]:
        batches = list(iter(self.batches))
        world, rank, count = self._shard(len(batches))
        skip, self._skip = self._skip, 0
        return iter(batches[rank::world][skip:count])

    def __len__(self) -> int:
        return self._shard(len(self.batches))[2]


class BucketBatchSampler(Sampler[list[int]]):
    """Batches of similar length: shuffle, sort within pools of ``pool`` batches, shuffle
    the batches. Cuts padding (and compute) several-fold on variable-length items.

    The order of epoch ``e`` is drawn from ``seed + e`` alone (``epoch`` advances on each
    iteration; :class:`RankBatches` sets it on resume).

    Args:
        lengths: length of each item (frames, tokens).
        batch_size: items per batch.
        shuffle: random batches (training); False: items in order, sorted within pools.
        seed: base seed; the epoch is added so every epoch differs.
        pool: batches per sorted pool (1: plain random batches).
    """

    def __init__(self, lengths, batch_size: int, shuffle: bool = True, seed: int = 0, pool: int = 50):
        self.lengths, self.batch_size, self.shuffle, self.seed, self.pool = (
            np.asarray(lengths), batch_size, shuffle, seed, pool)
        self.epoch = 0

    def __len__(self) -> int:
        return math.ceil(len(self.lengths) / self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng(self.seed + self.epoch)
        self.epoch += 1
        order = rng.permutation(len(self.lengths)) if self.shuffle else np.arange(len(self.lengths))
        batches = []
        step = self.batch_size * self.pool
        for s in range(0, len(order), step):
            chunk = order[s : s + step]
            chunk = chunk[np.argsort(self.lengths[chunk], kind="stable")]
            batches += [chunk[i : i + self.batch_size].tolist() for i in range(0, len(chunk), self.batch_size)]
        if self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return iter(batches)
