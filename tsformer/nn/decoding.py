"""One cache for incremental decoding, shared by every decoder.

A :class:`DecodeCache` holds, per attention layer, a :class:`KVCache`: the keys and values
seen so far, split into a prefix shared by ``repeat`` paths (a forecast context encoded
once per series, a prompt) and each path's own suffix (what the path decoded since), plus
whatever else the layer needs to continue (a causal convolution's last inputs). It also
keeps every block's output at the newest positions (``hidden``), the per-layer states that
early exit and parallel decoding read.

The protocol a decoder follows: ``prefill`` runs the prefix once, filling the cache, then
each ``step`` feeds the next positions of every path. Attention layers do their part
through ``forward(x, cache=...)``: they append their new keys and values and attend over
the whole cache (:func:`tsformer.attention.split.split_attention`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import Tensor


@dataclass
class KVCache:
    """Keys and values of one attention layer: a shared prefix plus per-path suffixes.

    Attributes:
        batch: ``B``, the batch elements (series, prompts).
        repeat: ``R``, paths per batch element. Step inputs are ``(B * R, l, d)``, path-major
            within each element (row ``b * R + r``).
        max_len: longest sequence (prefix included) the cache must hold.
        prefix_k, prefix_v: ``(B, H, P, D)`` or None before the prefill.
        suffix_k, suffix_v: ``(B, H, R, max_len - P, D)`` buffers, the first ``n`` filled.
        n: positions decoded after the prefix.
        state: layer-specific extras (e.g. ``"tail"``, a convolution's last inputs).
    """

    batch: int
    repeat: int
    max_len: int
    prefix_k: Tensor | None = None
    prefix_v: Tensor | None = None
    suffix_k: Tensor | None = None
    suffix_v: Tensor | None = None
    n: int = 0
    state: dict[str, Any] = field(default_factory=dict)

    @property
    def length(self) -> int:
        """Positions held (prefix and suffix)."""
        return (0 if self.prefix_k is None else self.prefix_k.shape[-2]) + self.n

    @property
    def prefilled(self) -> bool:
        return self.prefix_k is not None

    def set_prefix(self, k: Tensor, v: Tensor) -> None:
        """Store the prefix's keys and values ``(B, H, P, D)`` and allocate the suffixes."""
        B, H, P, D = k.shape
        if B != self.batch:
            raise ValueError(f"prefix of batch {B} for a cache of batch {self.batch}")
        if P > self.max_len:
            raise ValueError(f"prefix of {P} positions is longer than the cache's max_len={self.max_len}")
        self.prefix_k, self.prefix_v = k, v
        rest = self.max_len - P
        self.suffix_k = k.new_zeros(B, H, self.repeat, rest, D)
        self.suffix_v = v.new_zeros(B, H, self.repeat, rest, v.shape[-1])
        self.n = 0

    def append(self, k: Tensor, v: Tensor) -> None:
        """Add ``l`` new positions of every path: ``k, v`` are ``(B * R, H, l, D)``."""
        BR, H, lq, D = k.shape
        B, R = self.batch, self.repeat
        if self.n + lq > self.suffix_k.shape[-2]:
            raise ValueError(f"cache full: {self.length} + {lq} positions exceed max_len={self.max_len}")
        self.suffix_k[:, :, :, self.n : self.n + lq] = k.view(B, R, H, lq, D).transpose(1, 2)
        self.suffix_v[:, :, :, self.n : self.n + lq] = v.view(B, R, H, lq, -1).transpose(1, 2)
        self.n += lq

    def suffix(self) -> tuple[Tensor, Tensor]:
        """Filled suffix views ``(B, H, R, n, D)``."""
        return self.suffix_k[:, :, :, : self.n], self.suffix_v[:, :, :, : self.n]

    def truncate(self, length: int) -> None:
        """Forget positions from ``length`` on (a rejected guess of parallel decoding)."""
        P = self.length - self.n
        if not P <= length <= self.length:
            raise ValueError(f"can only truncate the suffix: {length} not in [{P}, {self.length}]")
        self.n = length - P


@dataclass
class DecodeCache:
    """The whole decoder's cache: one :class:`KVCache` per attention layer.

    Attributes:
        layers: per-layer caches, in network order.
        hidden: each block's output at the newest positions, ``(B * R, l, d)``, refreshed
            by every prefill and step (early exit and parallel decoding read them).
    """

    layers: list[KVCache]
    hidden: list[Tensor] = field(default_factory=list)

    @classmethod
    def create(cls, n_layers: int, batch: int, repeat: int, max_len: int) -> DecodeCache:
        """Empty caches for ``n_layers`` layers, ``batch`` elements of ``repeat`` paths."""
        return cls([KVCache(batch, repeat, max_len) for _ in range(n_layers)], [])

    @property
    def length(self) -> int:
        return self.layers[0].length if self.layers else 0

    @property
    def repeat(self) -> int:
        return self.layers[0].repeat if self.layers else 1

    def truncate(self, length: int) -> None:
        """Forget positions from ``length`` on, in every layer."""
        for layer in self.layers:
            layer.truncate(length)

    def run(self, blocks, x: Tensor, **kwargs) -> Tensor:
        """Feed ``x`` (the prefix, ``(B, P, d)``, then the next positions, ``(B R, l, d)``)
        through ``blocks`` (each called as ``block(x, cache=layer_cache, **kwargs)``),
        keeping every block's output in :attr:`hidden`. Returns the last block's output."""
        if len(blocks) != len(self.layers):
            raise ValueError(f"{len(blocks)} blocks for a cache of {len(self.layers)} layers")
        self.hidden = []
        for block, layer in zip(blocks, self.layers):
            x = block(x, cache=layer, **kwargs)
            self.hidden.append(x)
        return x


def expand_paths(x: Tensor, repeat: int) -> Tensor:
    """``(B, ...)`` -> ``(B * repeat, ...)``, path-major within each element."""
    return x.repeat_interleave(repeat, 0) if repeat > 1 else x


__all__ = ["DecodeCache", "KVCache", "expand_paths"]

