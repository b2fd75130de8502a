"""Longformer self-attention (Beltagy, Peters & Cohan 2020, "Longformer: The Long-Document
Transformer", https://arxiv.org/abs/2004.05150, Sec. 3): ``model.attention.type=longformer``.

A sliding window (optionally dilated on some heads) plus global attention at marked
positions, which uses its own query/key/value projections as in the paper; the windowed
part runs through the configured kernel, the global rows through
:func:`tsformer.attention.global_rows`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tsformer.attention import Full, Pattern, SlidingWindow, global_rows
from tsformer.nn.attention.base import AttentionLayer, AttentionSpec
from tsformer.nn.decoding import KVCache
from tsformer.nn.unpad import Packing


class LongformerSelfAttention(AttentionLayer):
    """Sliding-window self-attention with global tokens (Beltagy et al. 2020, Sec. 3).

    Local attention uses ``query/key/value``; rows of global tokens use ``query_global``
    against ``key_global/value_global`` of every position, while every position sees the
    global tokens' local keys (as in the paper and Hugging Face's implementation, whose
    ``LongformerSelfAttention`` weights load with the same names). :meth:`context` is the
    per-head context before the output projection ``out`` (Hugging Face's layer output).

    Args:
        d_model, n_heads: width and heads.
        spec: the attention config or None; pattern ``window`` (``window`` keys, ``window // 2``
            each side, or ``window`` to the left when ``one_sided``, before dilation) or
            ``full`` (dense, for the truncated baseline).
        dilated_heads: the last ``dilated_heads`` heads use ``dilation`` (0 heads with
            ``dilation > 1``: all heads dilated).
        **config: config keys instead of ``spec`` (``window=512, kernel="sparse"``).
    """

    patterns = ("window", "full")
    defaults = {"pattern": "window", "window": 512}

    def __init__(self, d_model: int, n_heads: int, spec: AttentionSpec | None = None, dilated_heads: int = 0,
                 **config):
        super().__init__()
        self.setup(spec, d_model, n_heads, config)
        if not 0 <= dilated_heads <= n_heads:
            raise ValueError(f"dilated_heads must be in 0..{n_heads}, got {dilated_heads}")
        s = self.spec
        self.d_model = d_model
        self.dilated_heads = (n_heads if dilated_heads == 0 else dilated_heads) if s.dilation > 1 else 0
        # Global projections only where global tokens can occur: unused parameters would
        # break DDP's gradient reduction (and waste memory) in the causal LM and the dense baseline.
        self.has_global = s.pattern == "window" and not s.one_sided
        names = ("query", "key", "value") + (("query_global", "key_global", "value_global") if self.has_global else ())
        for name in names:
            setattr(self, name, nn.Linear(d_model, d_model))
        self.out = nn.Linear(d_model, d_model)

    def _patterns(self) -> list[tuple[slice, Pattern]]:
        """``(head slice, pattern)`` per head group."""
        s = self.spec
        if s.pattern == "full":
            return [(slice(0, self.n_heads), Full())]
        plain = self.n_heads - self.dilated_heads
        groups = []
        if plain:
            groups.append((slice(0, plain), SlidingWindow(s.window, s.one_sided, 1)))
        if self.dilated_heads:
            groups.append((slice(plain, self.n_heads), SlidingWindow(s.window, s.one_sided, s.dilation)))
        return groups

    segment_memory = True

    def forward(self, x: Tensor, lengths: Tensor | None = None, global_idx: Sequence[int] = (),
                cache: KVCache | None = None, memory: Tensor | None = None) -> Tensor:
        """``(B, L, E)`` -> ``(B, L, E)``: :meth:`context` through the output projection."""
        return self.out(self.context(x, lengths, global_idx, cache, memory))

    def context(self, x: Tensor, lengths: Tensor | None = None, global_idx: Sequence[int] = (),
                cache: KVCache | None = None, memory: Tensor | None = None) -> Tensor:
        """Args:
            x: ``(B, L, E)``.
            lengths: ``(B,)`` valid positions per element (keys beyond are masked), or None.
            global_idx: positions with global attention (shared by the batch).
            cache: decoding cache (causal windows only; no global tokens).
            memory: ``(B, M, E)`` earlier hidden states attended to as keys (Transformer-XL;
                no global tokens).
        Returns:
            ``(B, L, E)`` concatenated head outputs, before the output projection.
        """
        L = x.shape[1]
        gidx = self._global_positions(global_idx, L)
        if memory is not None:
            if gidx:
                raise ValueError("global tokens cannot be combined with a segment memory")
            x = torch.cat([memory.to(x.dtype), x], dim=1)
        if cache is not None and gidx:
            raise ValueError("global tokens have no incremental decoding (they see every later position)")
        # One packed matmul for all full-length projections: fewer passes over x.
        proj = F.linear(x, *self._projection(gidx))
        xg = x[:, gidx] if gidx else None  # no memory with global tokens
        return self.merge(self._context(proj, L, lengths, gidx, cache, xg))

    def forward_packed(self, x: Tensor, packing: Packing, global_idx: Sequence[int] = ()) -> Tensor:
        """``(T, E)`` packed real tokens -> ``(T, E)``: every projection runs on the real
        tokens (the global query on the global rows); only the kernel sees the padded layout."""
        gidx = self._global_positions(global_idx, packing.length)
        proj = packing.pad(F.linear(x, *self._projection(gidx)))
        xg = packing.rows(x, gidx) if gidx else None
        return self.out(packing.unpad(self.merge(self._context(proj, packing.length, packing.lengths, gidx, None, xg))))

    def _global_positions(self, global_idx: Sequence[int], L: int) -> list[int]:
        return sorted({int(i) for i in global_idx if 0 <= int(i) < L}) if self.has_global else []

    def _projection(self, gidx: list[int]) -> tuple[Tensor, Tensor]:
        """Weight and bias of query, key, value (and the global key and value) in one."""
        names = ["query", "key", "value"] + (["key_global", "value_global"] if gidx else [])
        return (torch.cat([getattr(self, n).weight for n in names]), torch.cat([getattr(self, n).bias for n in names]))

    def _context(self, proj: Tensor, L: int, lengths: Tensor | None, gidx: list[int], cache: KVCache | None,
                xg: Tensor | None) -> Tensor:
        """``(B, M + L, 3 E | 5 E)`` projections (``M`` memory positions first) and ``xg``
        ``(B, G, E)``, the inputs at the global rows -> ``(B, H, L, D)``."""
        E = self.d_model
        parts = proj.split(E, dim=-1)
        q, k, v = (self.heads(t) for t in parts[:3])
        q = q[:, :, -L:]  # queries of the segment only (keys also cover the memory)
        out = self.attend(q, k, v, lengths, cache, gidx, self._patterns())
        if gidx:  # rows of global tokens: their own projections, all valid keys
            sel = torch.tensor(gidx, device=proj.device)
            # The global query is only needed at the global rows.
            qg = proj.new_zeros(proj.shape[0], L, E).index_copy(1, sel, self.query_global(xg))
            # Global rows score content only (rotary positions rotate them; score biases do not apply).
            qg, kg = self.positions.rotate(self.heads(qg)), self.positions.rotate(self.heads(parts[3]))
            out = global_rows(out, qg, kg, self.heads(parts[4]), gidx, lengths)
        return out
