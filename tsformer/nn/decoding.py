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

import torch
from torch import Tensor


@dataclass
class KVCache:
    """Keys and values of one attention layer.

    With one path per element (``repeat == 1``: a prompt) they sit in one buffer, so the
    attention kernels serve the step directly (queries aligned with the last keys). With
    ``R`` paths per element (forecast sample paths) the prefix is kept once and shared, and
    each path gets a suffix buffer of its own
    (:func:`tsformer.attention.split.split_attention` joins them in one softmax).

    Attributes:
        batch: ``B``, the batch elements (series, prompts).
        repeat: ``R``, paths per batch element. Step inputs are ``(B * R, l, d)``, path-major
            within each element (row ``b * R + r``).
        max_len: longest sequence (prefix included) the cache must hold.
        prefix_len: positions of the prefix (0 before the prefill).
        n: positions decoded after the prefix.
        state: layer-specific extras (e.g. ``"tail"``, a convolution's last inputs).
    """

    batch: int
    repeat: int
    max_len: int
    prefix_len: int = 0
    n: int = 0
    state: dict[str, Any] = field(default_factory=dict)
    _k: Tensor | None = field(default=None, repr=False)  # (B, H, max_len, D), or the prefix (B, H, P, D)
    _v: Tensor | None = field(default=None, repr=False)
    _sk: Tensor | None = field(default=None, repr=False)  # (B, H, R, max_len - P, D) when R > 1
    _sv: Tensor | None = field(default=None, repr=False)

    @property
    def length(self) -> int:
        """Positions held (prefix and suffix)."""
        return self.prefix_len + self.n

    @property
    def prefilled(self) -> bool:
        return self._k is not None

    @property
    def shared(self) -> bool:
        """Whether paths share a prefix and keep suffixes of their own (``repeat > 1``)."""
        return self.repeat > 1

    def set_prefix(self, k: Tensor, v: Tensor) -> None:
        """Store the prefix's keys and values ``(B, H, P, D)`` and allocate the rest."""
        B, H, P, D = k.shape
        if B != self.batch:
            raise ValueError(f"prefix of batch {B} for a cache of batch {self.batch}")
        if P > self.max_len:
            raise ValueError(f"prefix of {P} positions is longer than the cache's max_len={self.max_len}")
        self.prefix_len, self.n = P, 0
        if self.shared:
            self._k, self._v = k, v
            self._sk = k.new_zeros(B, H, self.repeat, self.max_len - P, D)
            self._sv = v.new_zeros(B, H, self.repeat, self.max_len - P, v.shape[-1])
        else:
            self._k = k.new_empty(B, H, self.max_len, D)
            self._v = v.new_empty(B, H, self.max_len, v.shape[-1])
            self._k[:, :, :P], self._v[:, :, :P] = k, v

    def append(self, k: Tensor, v: Tensor) -> None:
        """Add ``l`` new positions of every path: ``k, v`` are ``(B * R, H, l, D)``."""
        BR, H, lq, D = k.shape
        B, R = self.batch, self.repeat
        if self.length + lq > self.max_len:
            raise ValueError(f"cache full: {self.length} + {lq} positions exceed max_len={self.max_len}")
        if self.shared:
            self._sk[:, :, :, self.n : self.n + lq] = k.view(B, R, H, lq, D).transpose(1, 2)
            self._sv[:, :, :, self.n : self.n + lq] = v.view(B, R, H, lq, -1).transpose(1, 2)
        else:
            t = self.length
            self._k[:, :, t : t + lq], self._v[:, :, t : t + lq] = k, v
        self.n += lq

    def advance(self, length: int) -> None:
        """Count ``length`` positions a layer keeps as state rather than keys (a recurrent
        layer such as RWKV): the first call is the prefix."""
        if self.length == 0:
            self.prefix_len = length
        else:
            self.n += length

    def keys_values(self) -> tuple[Tensor, Tensor]:
        """All keys and values ``(B, H, length, D)`` (one path per element only)."""
        if self.shared:
            raise ValueError("a cache shared by several paths has no single key sequence; use prefix() and suffix()")
        return self._k[:, :, : self.length], self._v[:, :, : self.length]

    def prefix(self) -> tuple[Tensor, Tensor]:
        """The shared prefix ``(B, H, P, D)``."""
        return (self._k, self._v) if self.shared else (self._k[:, :, : self.prefix_len], self._v[:, :, : self.prefix_len])

    def suffix(self) -> tuple[Tensor, Tensor]:
        """Each path's keys and values after the prefix, ``(B, H, R, n, D)`` views."""
        if self.shared:
            return self._sk[:, :, :, : self.n], self._sv[:, :, :, : self.n]
        P, t = self.prefix_len, self.length
        return self._k[:, :, None, P:t], self._v[:, :, None, P:t]

    def truncate(self, length: int) -> None:
        """Forget positions from ``length`` on (a rejected guess of parallel decoding)."""
        if not self.prefix_len <= length <= self.length:
            raise ValueError(f"can only truncate the suffix: {length} not in [{self.prefix_len}, {self.length}]")
        self.n = length - self.prefix_len


@dataclass
class DecodeCache:
    """The whole decoder's cache: one :class:`KVCache` per attention layer.

    Attributes:
        layers: per-layer caches, in network order.
        hidden: each block's output at the newest positions, ``(B * R, l, d)``, refreshed
            by every prefill and step (early exit and parallel decoding read them).
        early_exit: a CALM exit rule (:class:`tsformer.nn.early_exit.EarlyExit`) that
            :meth:`run` hands single-position steps to, or None (every layer runs).
    """

    layers: list[KVCache]
    hidden: list[Tensor] = field(default_factory=list)
    early_exit: Any = None

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
        """Forget positions from ``length`` on, in every layer (key/value positions only;
        see :meth:`snapshot` for layer state such as a convolution's last inputs)."""
        for layer in self.layers:
            layer.truncate(length)

    def snapshot(self) -> tuple[int, list[dict]]:
        """What :meth:`restore` needs to undo later steps: the length and each layer's extra
        state (replaced, never changed in place, by the layers)."""
        return self.length, [dict(layer.state) for layer in self.layers]

    def restore(self, snap: tuple[int, list[dict]]) -> None:
        """Back to a :meth:`snapshot`: positions decoded since are forgotten."""
        length, states = snap
        self.truncate(length)
        for layer, state in zip(self.layers, states):
            layer.state = dict(state)

    def run(self, blocks, x: Tensor, **kwargs) -> Tensor:
        """Feed ``x`` (the prefix, ``(B, P, d)``, then the next positions, ``(B R, l, d)``)
        through ``blocks`` (each called as ``block(x, cache=layer_cache, **kwargs)``),
        keeping every block's output in :attr:`hidden`. Returns the last block's output."""
        if len(blocks) != len(self.layers):
            raise ValueError(f"{len(blocks)} blocks for a cache of {len(self.layers)} layers")
        if self.early_exit is not None and x.shape[1] == 1 and self.length > 0:
            return self.early_exit.run(blocks, self, x, **kwargs)
        self.hidden = []
        for block, layer in zip(blocks, self.layers):
            x = block(x, cache=layer, **kwargs)
            self.hidden.append(x)
        return x





@torch.no_grad()
def generate_tokens(
    net,
    prompt: Tensor,
    steps: int,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    cache: bool = True,
    max_context: int | None = None,
) -> Tensor:
    """Sample ``steps`` tokens after ``prompt`` from a causal token model.

    ``net(tokens, cache=...)`` gives ``(B, L, V)`` next-token logits, and
    ``net.new_cache(batch, max_len)`` an empty :class:`DecodeCache`. With ``cache`` the
    prompt is encoded once and each new token costs one position per layer; without it
    every step re-runs the last ``max_context`` tokens (the reference twin, for tests and
    timing).

    Args:
        prompt: ``(B, L)`` token ids.
        temperature: softmax temperature; 0 is greedy (argmax).
        max_context: longest input the model takes (None: no limit). With the cache the
            prompt plus continuation must fit; without it the window slides.
    Returns:
        ``(B, L + steps)``.
    """
    x = prompt

    def pick(logits: Tensor) -> Tensor:
        if temperature <= 0:
            return logits.argmax(-1, keepdim=True)
        return torch.multinomial((logits / temperature).softmax(-1), 1, generator=generator)

    if not cache:
        for _ in range(steps):
            ctx = x if max_context is None else x[:, -max_context:]
            x = torch.cat([x, pick(net(ctx)[:, -1].float())], dim=1)
        return x
    total = x.shape[1] + steps
    if max_context is not None and total > max_context:
        raise ValueError(
            f"prompt ({x.shape[1]}) + {steps} steps exceed the model's {max_context} positions; "
            "generate without the cache (cache=False) to slide the window"
        )
    state = net.new_cache(x.shape[0], total)
    logits = net(x, cache=state)[:, -1]
    for _ in range(steps):
        nxt = pick(logits.float())
        x = torch.cat([x, nxt], dim=1)
        if x.shape[1] < total:
            logits = net(nxt, cache=state)[:, -1]
    return x


@torch.no_grad()
def jacobi_tokens(net, prompt: Tensor, steps: int, block: int = 8, max_context: int | None = None,
                  guess: int = 0) -> tuple[Tensor, dict[str, int]]:
    """Greedy continuation by Jacobi iteration (Santilli et al. 2023, "Accelerating
    Transformer Inference for Translation via Parallel Decoding", Sec. 3).

    A block of ``block`` guessed tokens is fed in one forward pass over the cache; each
    position's argmax becomes its next guess; the block is re-run until nothing changes.
    The fixed point is exactly what sequential greedy decoding gives (position ``i`` is
    final once positions ``< i`` are), so the output equals :func:`generate_tokens` with
    ``temperature=0``; the gain is fewer passes when later guesses converge early. Between
    iterations the cache forgets the block (:meth:`DecodeCache.restore`).

    Args:
        net: as for :func:`generate_tokens`.
        prompt: ``(B, L)`` token ids.
        steps: tokens to add.
        block: guesses per pass.
        guess: the token the first guesses start from.
    Returns:
        ``(B, L + steps)`` and counts: ``passes`` (forward passes after the prompt) and
        ``tokens`` (``steps``).
    """
    total = prompt.shape[1] + steps
    if max_context is not None and total > max_context:
        raise ValueError(f"prompt ({prompt.shape[1]}) + {steps} steps exceed the model's {max_context} positions")
    cache = net.new_cache(prompt.shape[0], total + block)
    x = prompt
    nxt = net(x, cache=cache)[:, -1:].float().argmax(-1)  # (B, 1): the next token is known
    passes = 0
    while x.shape[1] < total:
        m = min(block, total - x.shape[1])
        guesses = torch.cat([nxt, torch.full((x.shape[0], m - 1), guess, dtype=x.dtype, device=x.device)], 1)
        snap = cache.snapshot()
        while True:
            logits = net(guesses, cache=cache).float()  # (B, m, V): the token after each guess
            passes += 1
            new = torch.cat([nxt, logits[:, :-1].argmax(-1)], 1)
            if torch.equal(new, guesses):
                break
            guesses = new
            cache.restore(snap)
        x = torch.cat([x, guesses], 1)
        nxt = logits[:, -1:].argmax(-1)
    return x[:, :total], {"passes": passes, "tokens": steps}


__all__ = ["DecodeCache", "KVCache", "generate_tokens", "jacobi_tokens"]
