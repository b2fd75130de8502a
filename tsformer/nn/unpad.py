"""Unpadding (``model.unpad``): run the per-token work of an encoder on the real tokens only.

MosaicBERT (Portes et al. 2023, "MosaicBERT: A Bidirectional Encoder Optimized for Fast
Pretraining", NeurIPS, Sec. 2.1 and their ``bert_padding.py``) removes the padding of a
``(B, L)`` batch once, before the embeddings: every token-wise operation (embeddings,
projections, feed-forward, LayerNorm, residuals) then runs on ``T = sum(lengths)`` packed
rows instead of ``B * L``, and only attention, which must see each document's own tokens,
puts them back into the padded layout (or uses a variable-length kernel).

:class:`Packing` holds the gather index of one batch; its :meth:`~Packing.unpad` and
:meth:`~Packing.pad` are plain ``index_select`` / ``index_copy`` (autograd gives the
scatter and gather of the backward pass).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Packing:
    """Where the real tokens of a padded batch sit.

    Attributes:
        index: ``(T,)`` flat positions ``b * length + l`` of the real tokens, in order.
        lengths: ``(B,)`` real tokens per element (the first ``lengths[b]`` positions).
        batch, length: the padded shape ``(B, L)``.
    """

    index: Tensor
    lengths: Tensor
    batch: int
    length: int

    @classmethod
    def from_lengths(cls, lengths: Tensor, length: int) -> Packing:
        """The packing of ``(B,)`` ``lengths`` (clamped to ``[0, length]``) in a ``(B, length)`` batch."""
        lengths = lengths.clamp(0, length)
        valid = torch.arange(length, device=lengths.device)[None, :] < lengths[:, None]  # (B, L)
        return cls(valid.flatten().nonzero().flatten(), lengths, int(lengths.shape[0]), int(length))

    @property
    def tokens(self) -> int:
        """``T``, the number of real tokens."""
        return int(self.index.shape[0])

    def positions(self) -> Tensor:
        """``(T,)`` position of each real token in its own document."""
        return self.index % self.length

    def unpad(self, x: Tensor) -> Tensor:
        """``(B, L, ...)`` -> ``(T, ...)``: the real tokens' rows."""
        return x.reshape(self.batch * self.length, *x.shape[2:]).index_select(0, self.index)

    def pad(self, x: Tensor) -> Tensor:
        """``(T, ...)`` -> ``(B, L, ...)``, zeros at the padding."""
        out = x.new_zeros(self.batch * self.length, *x.shape[1:]).index_copy(0, self.index, x)
        return out.view(self.batch, self.length, *x.shape[1:])

    def rows(self, x: Tensor, positions: Sequence[int]) -> Tensor:
        """``(T, ...)`` -> ``(B, len(positions), ...)``: the rows at ``positions`` of every
        element (zeros where an element is shorter), without padding all of ``x``."""
        where = torch.full((self.batch * self.length,), self.tokens, device=x.device, dtype=torch.long)
        where[self.index] = torch.arange(self.tokens, device=x.device)
        pos = torch.as_tensor(list(positions), device=x.device, dtype=torch.long)
        flat = torch.arange(self.batch, device=x.device)[:, None] * self.length + pos[None, :]  # (B, G)
        padded = torch.cat([x, x.new_zeros(1, *x.shape[1:])])  # row T: zeros for positions past the end
        return padded[where[flat]]


__all__ = ["Packing"]
