"""What every attention layer shares: the config schema, positions, the calling convention.

An attention layer maps ``(B, L, d_model)`` to ``(B, L, d_model)`` (output projection
included) and owns its projections, positions, learned parts and pattern; the math runs
through the stateless kernels of :mod:`tsformer.attention`. One calling convention::

    layer(x, lengths=None, global_idx=(), cache=None)

- ``lengths``: ``(B,)`` valid positions (key padding), or None.
- ``cache``: a :class:`~tsformer.nn.decoding.KVCache` for incremental decoding: the layer
  appends its new keys and values and attends over everything cached (queries aligned
  bottom-right). ``x`` is then ``(B * R, l, d_model)`` for ``R`` paths per element.
- ``global_idx``: positions with global attention (they see every key and every query sees
  them; Longformer gives them their own projections).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from tsformer.attention import DenseBias, Pattern, ScoreBias, attention, get_kernel, pattern_from_config
from tsformer.attention.split import split_attention
from tsformer.nn.attention.parts import AdaptiveSpan, PersistentMemory
from tsformer.nn.attention.positions import POSITIONS, make_positions
from tsformer.nn.decoding import KVCache
from tsformer.nn.unpad import Packing


@dataclass
class AttentionSpec:
    """``model.attention``: the one schema every network reads.

    Attributes:
        type: layer type, a name in :data:`tsformer.nn.attention.ATTENTION_LAYERS`.
        pattern: ``full``, ``causal``, ``logsparse`` or ``window``.
        kernel: a name in :data:`tsformer.attention.KERNELS`.
        positions: one of :data:`POSITIONS`.
        local, restart: ``logsparse`` options. window, one_sided, dilation: ``window`` options.
        max_relative: clipping distance of ``relative`` positions.
        rotary_base: base of ``rotary`` frequencies.
        dropout: attention-probability dropout (training only; routes to ``reference``).
        persistent: learned key/value slots per head (all-attention; 0: none).
        span: adaptive attention span, ``{max, ramp, penalty, init}``, or None.
        options: the remaining keys, passed to the layer type's constructor.
    """

    type: str = "mhsa"
    pattern: str = "full"
    kernel: str = "auto"
    positions: str = "none"
    local: int = 1
    restart: int | None = None
    window: int = 256
    one_sided: bool = False
    dilation: int = 1
    max_relative: int = 64
    rotary_base: float = 10000.0
    dropout: float = 0.0
    persistent: int = 0
    span: dict[str, Any] | None = None
    options: dict[str, Any] = field(default_factory=dict)

    # Old spellings still found in configs stored with checkpoints.
    ALIASES: ClassVar[dict[str, str]] = {"pos": "positions"}

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | AttentionSpec | None, **defaults: Any) -> AttentionSpec:
        """Parse ``model.attention``; ``defaults`` fill keys the config does not set."""
        if isinstance(cfg, AttentionSpec):
            return cfg
        # null in a config means "the network's default".
        raw = {cls.ALIASES.get(k, k): v for k, v in dict(cfg or {}).items() if v is not None}
        known = {f.name for f in fields(cls)} - {"options"}
        merged = {**defaults, **raw}
        spec = cls(**{k: v for k, v in merged.items() if k in known})
        spec.options = {k: v for k, v in merged.items() if k not in known}
        if spec.positions not in POSITIONS:
            raise ValueError(f"model.attention.positions={spec.positions!r}; choose one of {POSITIONS}")
        get_kernel(spec.kernel)  # a bad kernel name fails at construction
        return spec

    def build_pattern(self) -> Pattern:
        return pattern_from_config(
            self.pattern, local=self.local, restart=self.restart, window=self.window,
            one_sided=self.one_sided, dilation=self.dilation,
        )


class AttentionLayer(nn.Module):
    """Base class of attention layers (see the module docstring for the convention).

    Subclasses declare ``patterns`` (the pattern names they take, None: any) and
    ``causal_capable`` (whether they can serve a decoder), and set ``self.spec``,
    ``self.pattern``, ``self.positions``, ``self.n_heads``, ``self.head_dim``.
    """

    patterns: ClassVar[tuple[str, ...] | None] = None
    causal_capable: ClassVar[bool] = True
    bidirectional_reason: ClassVar[str] = ""
    """Why a type that is not ``causal_capable`` cannot be (said in construction errors)."""
    segment_memory: ClassVar[bool] = False
    """Whether ``forward`` takes ``memory``, earlier hidden states attended to as keys
    (Transformer-XL's segment recurrence)."""

    spec: AttentionSpec
    pattern: Pattern

    defaults: ClassVar[dict[str, Any]] = {}
    """Config values this type assumes where ``model.attention`` is silent."""

    def setup(self, spec: AttentionSpec | Mapping[str, Any] | None, width: int, n_heads: int,
              config: Mapping[str, Any] | None = None) -> None:
        """Pattern, heads and positions from the spec (or config keys), for an attention
        ``width`` wide."""
        if spec is None or not isinstance(spec, AttentionSpec):
            spec = AttentionSpec.from_config({**dict(spec or {}), **dict(config or {})}, **self.defaults)
        elif config:
            raise ValueError(f"pass either an AttentionSpec or config keys, not both (got {sorted(config)})")
        if spec.options:
            raise ValueError(f"{type(self).__name__} does not take the attention option(s) {sorted(spec.options)}")
        if self.patterns is not None and spec.pattern not in self.patterns:
            raise ValueError(
                f"attention type {spec.type!r} ({type(self).__name__}) cannot take pattern {spec.pattern!r}; "
                f"it takes {list(self.patterns)}" + (f" ({self.bidirectional_reason})" if self.bidirectional_reason else "")
            )
        if width % n_heads:
            raise ValueError(f"attention width {width} is not divisible by n_heads={n_heads}")
        self.spec, self.n_heads, self.head_dim = spec, n_heads, width // n_heads
        self.pattern = spec.build_pattern()
        self.positions = make_positions(spec, self.head_dim, n_heads)
        self.persistent = PersistentMemory(n_heads, self.head_dim, spec.persistent) if spec.persistent else None
        if self.persistent is not None and getattr(self.pattern, "restart", None) is not None:
            raise ValueError("model.attention.persistent cannot be combined with LogSparse's restart "
                             "(the memory slots would shift the restart boundaries)")
        self.span = None
        if spec.span:
            if spec.pattern not in ("full", "causal", "window"):
                raise ValueError(f"model.attention.span needs pattern full, causal or window, not {spec.pattern!r}")
            self.span = AdaptiveSpan.from_config(spec.span, n_heads, causal=self.pattern.causal)

    def forward_packed(self, x: Tensor, packing: Packing, global_idx: Sequence[int] = ()) -> Tensor:
        """Attention over the packed real tokens of a padded batch (``model.unpad``, MosaicBERT's
        unpadding, Portes et al. 2023): ``(T, E)`` -> ``(T, E)``.

        This default puts the tokens back into the padded layout, runs :meth:`forward` with
        the lengths and packs the output again: right for every layer whose real positions
        ignore the padding. Layers with per-token projections override it to run those on
        the ``T`` real tokens only and re-pad just for the attention kernel.
        """
        return packing.unpad(self(packing.pad(x), packing.lengths, global_idx))

    def heads(self, t: Tensor) -> Tensor:
        """``(B, L, H D)`` -> ``(B, H, L, D)``."""
        B, L, _ = t.shape
        return t.view(B, L, self.n_heads, -1).transpose(1, 2)

    def attend(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        lengths: Tensor | None = None,
        cache: KVCache | None = None,
        global_idx: Sequence[int] = (),
        groups: Sequence[tuple[slice, Pattern]] | None = None,
    ) -> Tensor:
        """Positions, learned parts, padding, global tokens and the kernel (or the cache) for
        ``(B, H, L, D)`` queries, keys and values of the new positions.

        Args:
            groups: ``(head slice, pattern)`` pairs when head groups attend under different
                patterns (Longformer's dilated heads); default: all heads, ``self.pattern``.
        Returns:
            ``(B, H, L, Dv)``.

        With a cache, the first call stores the prefix (``B`` rows); later calls add ``l``
        positions to each of ``R`` paths (``B * R`` rows) and attend over the shared prefix
        plus each path's suffix, queries aligned with the last keys.
        """
        groups = [(slice(None), self.pattern)] if groups is None else list(groups)
        start = 0 if cache is None else cache.length
        extra = k.shape[-2] - q.shape[-2]  # keys before the first query: a segment memory
        if extra and cache is not None:
            raise ValueError("a segment memory and a decoding cache cannot be combined in one call")
        q, k = self.positions.rotate(q, start + extra), self.positions.rotate(k, start)
        if extra and lengths is not None:
            lengths = lengths + extra
        stepping = cache is not None and cache.prefilled
        if cache is not None:
            cache.append(k, v) if stepping else cache.set_prefix(k, v)
        k_len = cache.length if cache is not None else k.shape[-2]
        dropout = self.spec.dropout if self.training else 0.0
        outs = []
        for heads, pattern in groups:
            part = heads != slice(None)
            qh = q[:, heads].contiguous() if part else q
            bias = self.positions.bias(qh, self.head_dim**-0.5, k_len, heads)
            qh = self.positions.content(qh, heads)
            if self.span is not None:  # the window the spans need, and their ramps
                pattern = self.span.pattern()
                bias = _add_biases(bias, self.span.bias(heads, qh.dtype), qh.shape[-2], k_len)
            if stepping and cache.shared:
                keys = None  # the prefix and suffixes are joined in _attend_split
            elif stepping:
                keys = tuple(t[:, heads] for t in cache.keys_values())
            else:
                keys = (k[:, heads].contiguous(), v[:, heads].contiguous()) if part else (k, v)
            pattern, bias, gidx, lens, keys = self._with_persistent(pattern, bias, global_idx, lengths, keys,
                                                                    q.shape[0], heads, qh.shape[-2], k_len)
            if gidx:
                pattern = pattern.with_globals(gidx)
            if keys is None:
                outs.append(self._attend_split(qh, cache, heads, pattern, bias))
                continue
            if lens is not None and not stepping:
                pattern = pattern.with_padding(lens)
            outs.append(attention(qh, *keys, pattern, kernel=self.spec.kernel, dropout_p=dropout, bias=bias))
        return outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)

    def _with_persistent(self, pattern, bias, global_idx, lengths, keys, batch, heads, q_len, k_len):
        """Put the persistent slots in front of the keys: every query sees them (global
        keys), they carry no position (zero bias), and context positions shift by ``N``."""
        if self.persistent is None:
            return pattern, bias, tuple(global_idx), lengths, keys
        N = self.persistent.n
        pk, pv = self.persistent(batch, heads)
        if keys is not None:
            kh, vh = keys
            keys = (torch.cat([pk.to(kh.dtype), kh], 2), torch.cat([pv.to(vh.dtype), vh], 2))
        if bias is not None:
            dense = bias.to_dense(q_len, k_len, k_len - q_len, pk.device, pk.dtype)
            dense = torch.cat([dense.new_zeros(*dense.shape[:-1], N), dense], dim=-1)
            bias = DenseBias(dense)
        gidx = tuple(range(N)) + tuple(int(i) + N for i in global_idx)
        return pattern, bias, gidx, None if lengths is None else lengths + N, keys

    def _attend_split(self, q: Tensor, cache: KVCache, heads: slice, pattern: Pattern,
                      bias: ScoreBias | None) -> Tensor:
        """``q (B R, h, l, D)``, the newest ``l`` positions of ``R`` paths, over the shared
        prefix (persistent slots in front) plus each path's suffix (heads ``heads``)."""
        BR, H, lq, D = q.shape
        B, R = cache.batch, cache.repeat
        (pk, pv), (sk, sv, n) = cache.prefix(), cache.suffix_buffers()
        pk, pv = pk[:, heads], pv[:, heads]
        if self.persistent is not None:
            mk, mv = self.persistent(B, heads)
            pk, pv = torch.cat([mk.to(pk.dtype), pk], 2), torch.cat([mv.to(pv.dtype), pv], 2)
        qp = q.reshape(B, R, H, lq, D)  # path-major, as the step's rows are
        out = split_attention(qp, pk, pv, sk[:, :, :, heads], sv[:, :, :, heads], pattern, bias=bias, suffix_len=n)
        return out.view(BR, H, lq, -1)

    @staticmethod
    def merge(o: Tensor) -> Tensor:
        """``(B, H, L, D)`` -> ``(B, L, H D)``."""
        B, H, L, D = o.shape
        return o.transpose(1, 2).reshape(B, L, H * D)


def rename_keys(old_to_new: dict[str, str]):
    """A load-state-dict pre-hook renaming keys that start with ``prefix + old`` (checkpoints
    written before a parameter moved)."""

    def hook(state_dict, prefix, *args):
        for key in list(state_dict):
            for old, new in old_to_new.items():
                if key.startswith(prefix + old):
                    state_dict[prefix + new + key[len(prefix + old):]] = state_dict.pop(key)

    return hook
__all__ = ["POSITIONS", "AttentionLayer", "AttentionSpec", "rename_keys"]


def _add_biases(a: ScoreBias | None, b: ScoreBias, q_len: int, k_len: int) -> ScoreBias:
    """``a + b``; two biases of different kinds become one dense bias."""
    if a is None:
        return b
    off = k_len - q_len
    dense = a.to_dense(q_len, k_len, off, b.tensors()[0].device) + b.to_dense(q_len, k_len, off, b.tensors()[0].device)
    return DenseBias(dense)
