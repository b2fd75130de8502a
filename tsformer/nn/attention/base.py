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

from tsformer.attention import OffsetTableBias, Pattern, ScoreBias, attention, get_kernel, pattern_from_config
from tsformer.attention.split import split_attention
from tsformer.nn.decoding import KVCache

POSITIONS = ("none", "learned", "rotary", "relative")
"""``model.attention.positions`` values. ``learned``: absolute positions the network adds to
its input embedding (the layer adds nothing)."""


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


class Positions(nn.Module):
    """Positions inside attention: rotate queries and keys, or bias the scores.

    ``none`` and ``learned`` (added by the network at its input) do nothing here.
    """

    def __init__(self, kind: str, head_dim: int, max_relative: int = 64, rotary_base: float = 10000.0):
        super().__init__()
        self.kind = kind
        if kind == "rotary":
            if head_dim % 2:
                raise ValueError(f"rotary positions need an even head dim, got {head_dim}")
            inv = 1.0 / rotary_base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
            self.register_buffer("inv_freq", inv, persistent=False)
        if kind == "relative":
            # Shaw et al. 2018, "Self-Attention with Relative Position Representations":
            # one key embedding per clipped offset j - i, scored against the query.
            self.max_relative = int(max_relative)
            self.rel_k = nn.Embedding(2 * self.max_relative + 1, head_dim)

    def rotate(self, x: Tensor, start: int = 0) -> Tensor:
        """Rotary embedding (Su et al. 2021, RoFormer) of ``(..., L, D)`` at positions
        ``start .. start + L - 1``: ``q_i . k_j`` then depends on ``i - j`` only."""
        if self.kind != "rotary":
            return x
        L = x.shape[-2]
        pos = torch.arange(start, start + L, device=x.device, dtype=torch.float32)
        ang = pos[:, None] * self.inv_freq.to(x.device)[None]  # (L, D/2)
        cos, sin = ang.cos().to(x.dtype), ang.sin().to(x.dtype)
        x1, x2 = x[..., 0::2], x[..., 1::2]
        return torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)

    def bias(self, q: Tensor, scale: float) -> ScoreBias | None:
        """Score bias for queries ``q (B, H, Lq, D)``: Shaw's ``scale * q_i . a_{clip(j - i)}``
        as a per-query table over clipped offsets (served by every kernel that takes it)."""
        if self.kind != "relative":
            return None
        table = torch.matmul(q, self.rel_k.weight.t()) * scale  # (B, H, Lq, 2R + 1)
        return OffsetTableBias(table, self.max_relative)


class AttentionLayer(nn.Module):
    """Base class of attention layers (see the module docstring for the convention).

    Subclasses declare ``patterns`` (the pattern names they take, None: any) and
    ``causal_capable`` (whether they can serve a decoder), and set ``self.spec``,
    ``self.pattern``, ``self.positions``, ``self.n_heads``, ``self.head_dim``.
    """

    patterns: ClassVar[tuple[str, ...] | None] = None
    causal_capable: ClassVar[bool] = True

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
                f"it takes {list(self.patterns)}"
            )
        if width % n_heads:
            raise ValueError(f"attention width {width} is not divisible by n_heads={n_heads}")
        self.spec, self.n_heads, self.head_dim = spec, n_heads, width // n_heads
        self.pattern = spec.build_pattern()
        self.positions = Positions(spec.positions, self.head_dim, spec.max_relative, spec.rotary_base)

    @property
    def causal(self) -> bool:
        return self.pattern.causal

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
        """Positions, padding, global tokens and the kernel (or the cache) for ``(B, H, L, D)``
        queries, keys and values of the new positions.

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
        q, k = self.positions.rotate(q, start), self.positions.rotate(k, start)
        stepping = cache is not None and cache.prefilled
        if cache is not None:
            cache.append(k, v) if stepping else cache.set_prefix(k, v)
        dropout = self.spec.dropout if self.training else 0.0
        outs = []
        for heads, pattern in groups:
            part = heads != slice(None)
            qh = q[:, heads].contiguous() if part else q
            bias = self.positions.bias(qh, self.head_dim**-0.5)
            if global_idx:
                pattern = pattern.with_globals(global_idx)
            if stepping:
                outs.append(self._attend_cache(qh, cache, heads, pattern, bias))
                continue
            kh, vh = (k[:, heads].contiguous(), v[:, heads].contiguous()) if part else (k, v)
            if lengths is not None:
                pattern = pattern.with_padding(lengths)
            outs.append(attention(qh, kh, vh, pattern, kernel=self.spec.kernel, dropout_p=dropout, bias=bias))
        return outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)

    def _attend_cache(self, q: Tensor, cache: KVCache, heads: slice, pattern: Pattern,
                      bias: ScoreBias | None) -> Tensor:
        """``q (B R, h, l, D)``, the newest ``l`` positions, over the cached keys (heads ``heads``).

        One path per element: the configured kernel over the cache's key sequence, queries
        aligned with its last keys. Several paths: the shared prefix plus each path's suffix.
        """
        if not cache.shared:
            k, v = cache.keys_values()
            return attention(q, k[:, heads], v[:, heads], pattern, kernel=self.spec.kernel, bias=bias)
        BR, H, lq, D = q.shape
        B, R = cache.batch, cache.repeat
        (pk, pv), (sk, sv) = cache.prefix(), cache.suffix()
        qp = q.view(B, R, H, lq, D).transpose(1, 2)  # (B, h, R, l, D)
        out = split_attention(qp, pk[:, heads], pv[:, heads], sk[:, heads], sv[:, heads], pattern, bias=bias)
        return out.transpose(1, 2).reshape(BR, H, lq, -1)

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
__all__ = ["POSITIONS", "AttentionLayer", "AttentionSpec", "Positions", "rename_keys"]
