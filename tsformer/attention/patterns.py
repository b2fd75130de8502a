"""Attention patterns: small typed descriptions of which keys each query may see.

A pattern knows nothing about tensors of activations. It answers one question, "may
the query at position ``i`` attend to the key at position ``j``?", through
:meth:`Pattern.mask_fn`, an element-wise predicate in the shape FlexAttention's ``mask_mod``
expects. :meth:`Pattern.to_dense` turns it into the boolean mask used by the reference
kernel; fast kernels read the pattern's fields directly.

Positions are absolute. With fewer queries than keys (a decoding step over a cache, a
segment over memory) query row ``r`` sits at position ``r + q_offset``; the default
offset ``Lk - Lq`` aligns the queries with the last keys (bottom-right, as xformers'
``attn_bias`` does), and is 0 for square calls.

Patterns compose: ``with_padding`` adds key padding to any pattern and
``with_globals`` adds global tokens (Longformer) to any pattern.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

MaskFn = Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]
"""``fn(b, h, q_idx, k_idx) -> bool tensor``, broadcasting over its index arguments."""


@dataclass(frozen=True)
class Pattern:
    """Base class of all attention patterns."""

    @property
    def causal(self) -> bool:
        """Whether no query ever sees a key to its right."""
        return False

    def mask_fn(self, q_len: int, k_len: int, device: torch.device | str | None = None, q_offset: int = 0) -> MaskFn:
        """Element-wise predicate ``fn(b, h, q_pos, k_pos)`` on absolute positions; True where
        attention is allowed. ``q_len`` and ``q_offset`` bound the query positions."""
        raise NotImplementedError

    def to_dense(
        self,
        q_len: int,
        k_len: int | None = None,
        device: torch.device | str | None = None,
        q_offset: int | None = None,
    ) -> Tensor:
        """Dense boolean mask for the reference path.

        Args:
            q_offset: position of the first query; default ``k_len - q_len`` (bottom-right).
        Returns:
            ``(q_len, k_len)`` bool tensor, or ``(B, 1, q_len, k_len)`` for patterns that
            depend on the batch element (key padding).
        """
        k_len = q_len if k_len is None else k_len
        q_offset = k_len - q_len if q_offset is None else q_offset
        fn = self.mask_fn(q_len, k_len, device, q_offset)
        q = torch.arange(q_len, device=device)[:, None] + q_offset
        k = torch.arange(k_len, device=device)[None, :]
        zero = torch.zeros((), dtype=torch.long, device=device)
        return fn(zero, zero, q, k).expand(q_len, k_len).clone()

    def with_padding(self, lengths: Tensor) -> KeyPadding:
        """Return this pattern restricted to the first ``lengths[b]`` keys of each batch element."""
        return KeyPadding(self, lengths)

    def with_globals(self, indices: tuple[int, ...] | list[int]) -> GlobalTokens:
        """Return this pattern with global tokens at ``indices`` (they see all, all see them)."""
        return GlobalTokens(self, tuple(int(i) for i in indices))


@dataclass(frozen=True)
class Full(Pattern):
    """Every query sees every key."""

    def mask_fn(self, q_len, k_len, device=None, q_offset=0):
        return lambda b, h, q, k: (q >= 0) & (k >= 0)


@dataclass(frozen=True)
class Causal(Pattern):
    """Query ``i`` sees keys ``j <= i`` (queries and keys aligned at the start)."""

    @property
    def causal(self) -> bool:
        return True

    def mask_fn(self, q_len, k_len, device=None, q_offset=0):
        return lambda b, h, q, k: k <= q


def _is_pow2(x: Tensor) -> Tensor:
    return (x > 0) & ((x & (x - 1)) == 0)


@dataclass(frozen=True)
class LogSparse(Pattern):
    """LogSparse causal attention (Li et al., NeurIPS 2019, "Enhancing the Locality and
    Breaking the Memory Bottleneck of Transformer on Time Series Forecasting").

    Query ``i`` sees itself and the keys at distances ``1, 2, 4, 8, ...``. With
    ``local > 1`` it sees its ``local`` nearest cells (itself included) densely, then keys at
    exponentially growing distances beyond that window: ``local - 1 + 2**k``. With
    ``restart`` set, the sequence is cut into sub-sequences of that length and the pattern
    restarts in each one (the paper's "restart attention range").

    Args:
        local: size of the dense local window, ``>= 1`` (1: plain LogSparse).
        restart: sub-sequence length, or None for no restart.
    """

    local: int = 1
    restart: int | None = None

    def __post_init__(self) -> None:
        if self.local < 1:
            raise ValueError(f"LogSparse.local must be >= 1, got {self.local}")
        if self.restart is not None and self.restart < 1:
            raise ValueError(f"LogSparse.restart must be >= 1 or None, got {self.restart}")

    @property
    def causal(self) -> bool:
        return True

    def offsets(self, length: int) -> list[int]:
        """Distances ``i - j`` a query may look back, ascending, all ``< length``."""
        span = length if self.restart is None else min(length, self.restart)
        out = list(range(min(self.local, span)))
        step = 1
        while self.local - 1 + step < span:
            out.append(self.local - 1 + step)
            step *= 2
        return out

    def mask_fn(self, q_len, k_len, device=None, q_offset=0):
        local, restart = self.local, self.restart

        def fn(b, h, q, k):
            d = q - k
            ok = (d >= 0) & ((d < local) | _is_pow2(d - local + 1))
            if restart is not None:
                ok = ok & (torch.div(q, restart, rounding_mode="floor") == torch.div(k, restart, rounding_mode="floor"))
            return ok

        return fn

    def keys_per_query(self, length: int) -> int:
        """Upper bound on the keys one query sees: ``O(log length)``."""
        return len(self.offsets(length))


@dataclass(frozen=True)
class SlidingWindow(Pattern):
    """Sliding-window attention (Beltagy et al. 2020, "Longformer").

    Symmetric: query ``i`` sees keys ``j`` with ``|i - j| <= window // 2``. One-sided
    (``causal=True``): keys with ``0 <= i - j < window``. With ``dilation > 1`` only every
    ``dilation``-th key in the (``dilation`` times wider) window is seen.

    Args:
        window: number of keys in the window (``>= 1``), before dilation.
        causal: one-sided window looking left only.
        dilation: gap between attended keys (``>= 1``).
    """

    window: int
    one_sided: bool = False
    dilation: int = 1

    def __post_init__(self) -> None:
        if self.window < 1:
            raise ValueError(f"SlidingWindow.window must be >= 1, got {self.window}")
        if self.dilation < 1:
            raise ValueError(f"SlidingWindow.dilation must be >= 1, got {self.dilation}")

    @property
    def causal(self) -> bool:
        return self.one_sided

    @property
    def before(self) -> int:
        """Keys seen to the left, in dilated steps."""
        return self.window - 1 if self.one_sided else self.window // 2

    @property
    def after(self) -> int:
        """Keys seen to the right, in dilated steps."""
        return 0 if self.one_sided else self.window // 2

    def mask_fn(self, q_len, k_len, device=None, q_offset=0):
        before, after, dil = self.before, self.after, self.dilation

        def fn(b, h, q, k):
            d = q - k
            ok = (d <= before * dil) & (-d <= after * dil)
            if dil > 1:
                ok = ok & (torch.remainder(d, dil) == 0)
            return ok

        return fn


@dataclass(frozen=True, eq=False)
class KeyPadding(Pattern):
    """``base`` restricted to the first ``lengths[b]`` keys of batch element ``b``.

    Queries past the length still get outputs (from the valid keys); callers ignore them.
    """

    base: Pattern
    lengths: Tensor = field(repr=False)

    @property
    def causal(self) -> bool:
        return self.base.causal

    def mask_fn(self, q_len, k_len, device=None, q_offset=0):
        base = self.base.mask_fn(q_len, k_len, device, q_offset)
        lengths = self.lengths.to(device) if device is not None else self.lengths
        return lambda b, h, q, k: base(b, h, q, k) & (k < lengths[b])

    def to_dense(self, q_len, k_len=None, device=None, q_offset=None):
        k_len = q_len if k_len is None else k_len
        dense = self.base.to_dense(q_len, k_len, device, q_offset)
        lengths = self.lengths.to(dense.device)
        keep = torch.arange(k_len, device=dense.device)[None, :] < lengths[:, None]
        return (dense[None] & keep[:, None, :])[:, None]

    def with_globals(self, indices: tuple[int, ...] | list[int]) -> KeyPadding:
        """Global tokens inside the padding: padded keys stay invisible to global rows too."""
        return KeyPadding(self.base.with_globals(indices), self.lengths)


@dataclass(frozen=True)
class GlobalTokens(Pattern):
    """``base`` plus global tokens: positions that see every key and that every query sees.

    Kernels accept separate query/key/value projections for the global rows
    (``global_qkv``), as Longformer uses.
    """

    base: Pattern
    indices: tuple[int, ...] = ()

    @property
    def causal(self) -> bool:
        return False

    def flags(self, length: int, device=None) -> Tensor:
        """Bool ``(length,)``: True at global positions (indices beyond ``length`` ignored)."""
        f = torch.zeros(length, dtype=torch.bool, device=device)
        idx = [i for i in self.indices if 0 <= i < length]
        if idx:
            f[torch.tensor(idx, device=device)] = True
        return f

    def mask_fn(self, q_len, k_len, device=None, q_offset=0):
        base = self.base.mask_fn(q_len, k_len, device, q_offset)
        g = self.flags(max(q_len + q_offset, k_len), device)
        return lambda b, h, q, k: base(b, h, q, k) | g[q] | g[k]

    def with_padding(self, lengths: Tensor) -> KeyPadding:
        return KeyPadding(self, lengths)


def unwrap(pattern: Pattern) -> tuple[Pattern, Tensor | None, tuple[int, ...]]:
    """Split a pattern into ``(core, lengths or None, global indices)``."""
    lengths = None
    globals_: tuple[int, ...] = ()
    while isinstance(pattern, (KeyPadding, GlobalTokens)):
        if isinstance(pattern, KeyPadding):
            lengths = pattern.lengths
        else:
            globals_ = pattern.indices
        pattern = pattern.base
    return pattern, lengths, globals_


def nnz(pattern: Pattern, length: int) -> int:
    """Number of allowed (query, key) pairs of a square ``length`` pattern, per head."""
    core, _, globals_ = unwrap(pattern)
    if isinstance(core, Full):
        n = length * length
    elif isinstance(core, Causal):
        n = length * (length + 1) // 2
    elif isinstance(core, LogSparse) and core.restart is None:
        n = sum(length - d for d in core.offsets(length))
    elif isinstance(core, SlidingWindow):
        n = sum(
            max(0, length - abs(d) * core.dilation)
            for d in range(-core.after, core.before + 1)
        )
    else:
        n = int(core.to_dense(length).sum())
    if globals_:
        # Exact count needs the union with the core; this is close enough for FLOP bounds.
        g = len([i for i in globals_ if 0 <= i < length])
        n = min(length * length, n + 2 * g * length)
    return n


def pattern_from_config(
    name: str,
    *,
    local: int = 1,
    restart: int | None = None,
    window: int = 256,
    one_sided: bool = False,
    dilation: int = 1,
) -> Pattern:
    """Build a pattern from its config name (``full``, ``causal``, ``logsparse``, ``window``)."""
    if name == "full":
        return Full()
    if name == "causal":
        return Causal()
    if name == "logsparse":
        return LogSparse(local=local, restart=restart)
    if name == "window":
        return SlidingWindow(window=window, one_sided=one_sided, dilation=dilation)
    raise ValueError(f"unknown attention pattern {name!r}; choose full, causal, logsparse or window")
