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

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch import Tensor


class InputTail(NamedTuple):
    """A layer's recent inputs kept in its cache state (a causal convolution's left context),
    so that :meth:`KVCache.truncate` can rewind them too.

    Attributes:
        x: ``(B R, C, T)`` the inputs of positions ``end - T .. end - 1``.
        end: cache length after the last of them.
    """

    x: Tensor
    end: int


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
    _sk: Tensor | None = field(default=None, repr=False)  # (B, max_len - P, R, H, D) when R > 1
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
            # Uninitialised: only the first n suffix positions, written by append, are read.
            # Position-major: a step's keys (path-major, as steps produce them) and a key of
            # every path are contiguous blocks (see split_attention).
            self._sk = k.new_empty(B, self.max_len - P, self.repeat, H, D)
            self._sv = v.new_empty(B, self.max_len - P, self.repeat, H, v.shape[-1])
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
            self._sk[:, self.n : self.n + lq] = k.view(B, R, H, lq, D).permute(0, 3, 1, 2, 4)
            self._sv[:, self.n : self.n + lq] = v.view(B, R, H, lq, -1).permute(0, 3, 1, 2, 4)
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
            return self._sk[:, : self.n].permute(0, 3, 2, 1, 4), self._sv[:, : self.n].permute(0, 3, 2, 1, 4)
        P, t = self.prefix_len, self.length
        return self._k[:, :, None, P:t], self._v[:, :, None, P:t]

    def suffix_buffers(self) -> tuple[Tensor, Tensor, int]:
        """The suffix buffers ``(B, max_len - P, R, H, D)`` whole (shared caches only:
        position-major, as :func:`~tsformer.attention.split.split_attention` takes them) and
        ``n``, the positions of them written (what :meth:`suffix` returns as views)."""
        if not self.shared:
            raise ValueError("suffix_buffers() is for caches shared by several paths; use suffix()")
        return self._sk, self._sv, self.n

    def truncate(self, length: int) -> None:
        """Forget positions from ``length`` on (a rejected guess of parallel decoding).

        Layer state other than :class:`InputTail` entries is left alone: see
        :attr:`rewindable`, and :meth:`DecodeCache.restore` for undoing a whole step.
        """
        if not self.prefix_len <= length <= self.length:
            raise ValueError(f"can only truncate the suffix: {length} not in [{self.prefix_len}, {self.length}]")
        self.n = length - self.prefix_len

    @property
    def rewindable(self) -> bool:
        """Whether :meth:`truncate` leaves the layer exactly as if the forgotten positions had
        never been fed: its state holds only keys, values and :class:`InputTail` entries
        (a recurrent state, e.g. RWKV's, cannot forget positions)."""
        return all(isinstance(v, InputTail) for v in self.state.values())

    def keep_inputs(self, name: str, x: Tensor, added: int) -> None:
        """Keep ``x (B R, C, T)``, a layer's inputs up to the ``added`` positions the running
        step adds (called before the step's :meth:`append`)."""
        self.state[name] = InputTail(x, self.length + added)

    def recent_inputs(self, name: str, k: int) -> Tensor | None:
        """The last ``k`` inputs kept under ``name`` as of the current length (earlier ones
        after a :meth:`truncate`), ``(B R, C, k)``; None if nothing is kept. Called before
        the running step appends."""
        entry = self.state.get(name)
        if entry is None:
            return None
        x, end = entry
        drop = end - self.length
        if drop < 0 or drop > x.shape[-1] - k:
            raise ValueError(f"cache state {name!r} kept up to position {end}, cannot serve length {self.length}")
        return x[..., x.shape[-1] - drop - k : x.shape[-1] - drop]


@dataclass
class DecodeCache:
    """The whole decoder's cache: one :class:`KVCache` per attention layer.

    Attributes:
        layers: per-layer caches, in network order.
        hidden: each block's output at the newest positions, ``(B * R, l, d)``, refreshed
            by every prefill and step (early exit and parallel decoding read them).
        early_exit: a CALM exit rule (:class:`tsformer.nn.early_exit.EarlyExit`) that
            :meth:`run` hands single-position steps to, or None (every layer runs).
        start: the length after the first prefill (where generated positions begin), or
            None before it.
        pending: per layer, the inputs ``(B * R, k, d)`` of the last ``k`` positions that
            layer has not run yet (early exit with ``skipped="defer"``), or None; the next
            feed through that layer takes them along.
    """

    layers: list[KVCache]
    hidden: list[Tensor] = field(default_factory=list)
    early_exit: Any = None
    start: int | None = None
    pending: list[Tensor | None] = field(default_factory=list)

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

    @property
    def rewindable(self) -> bool:
        """Whether every layer can forget positions (:attr:`KVCache.rewindable`)."""
        return all(layer.rewindable for layer in self.layers)

    def truncate(self, length: int) -> None:
        """Forget positions from ``length`` on, in every layer (parallel decoding cuts the
        cache back to the accepted prefix). A ValueError if a layer keeps a state that
        cannot forget positions (then :meth:`restore` a snapshot and feed again)."""
        self._no_pending("truncate")
        if length < self.length:
            bad = [i for i, layer in enumerate(self.layers) if not layer.rewindable]
            if bad:
                keys = sorted(self.layers[bad[0]].state)
                raise ValueError(f"layer {bad[0]} keeps a state {keys} that cannot forget positions (a recurrent "
                                 "layer); restore a snapshot instead")
        for layer in self.layers:
            layer.truncate(length)

    def _no_pending(self, what: str) -> None:
        if any(p is not None for p in self.pending):
            raise ValueError(f"cannot {what} a cache whose upper layers wait for positions deferred by early exit "
                             "(skipped='defer'); parallel decoding runs without early exit")

    def snapshot(self) -> tuple[int, list[dict]]:
        """What :meth:`restore` needs to undo later steps: the length and each layer's extra
        state (replaced, never changed in place, by the layers)."""
        self._no_pending("snapshot")
        return self.length, [dict(layer.state) for layer in self.layers]

    def restore(self, snap: tuple[int, list[dict]]) -> None:
        """Back to a :meth:`snapshot`: positions decoded since are forgotten."""
        length, states = snap
        for layer, state in zip(self.layers, states):
            layer.truncate(length)
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
        new = x.shape[1]
        for i, (block, layer) in enumerate(zip(blocks, self.layers)):
            if self.pending and self.pending[i] is not None:  # positions deferred by early exit
                x = torch.cat([self.pending[i], x], dim=1)
                self.pending[i] = None
            x = block(x, cache=layer, **kwargs)
            self.hidden.append(x[:, -new:])
        x = x[:, -new:]
        if self.start is None:
            self.start = self.length
        return x





def gumbel_noise(batch: int, steps: int, vocab: int, generator: torch.Generator | None = None,
                 device: torch.device | str | None = None) -> Tensor:
    """Pre-drawn noise for sampling ``steps`` tokens: ``(B, steps, V)`` standard Gumbel.

    With it a sampled token is ``argmax(logits / T + noise)`` (the Gumbel-max trick: a draw
    from ``softmax(logits / T)``), a deterministic function of the model's output, so
    parallel decoding (Jacobi, lookahead) reproduces sequential sampling exactly.
    """
    u = torch.rand(batch, steps, vocab, generator=generator, device=device).clamp_(1e-20, 1.0)
    return -torch.log(-torch.log(u).clamp_min(1e-20))


def pick_tokens(logits: Tensor, temperature: float = 0.0, noise: Tensor | None = None,
                generator: torch.Generator | None = None) -> Tensor:
    """Next tokens from ``(..., V)`` logits: argmax (``temperature <= 0``), Gumbel-max with
    pre-drawn ``noise`` of the same shape, or a multinomial draw from ``generator``.
    Returns ``(...)`` ids."""
    logits = logits.float()
    if temperature <= 0:
        return logits.argmax(-1)
    if noise is not None:
        return (logits / temperature + noise).argmax(-1)
    flat = (logits / temperature).softmax(-1).reshape(-1, logits.shape[-1])
    return torch.multinomial(flat, 1, generator=generator).view(logits.shape[:-1])


@torch.no_grad()
def generate_tokens(
    net,
    prompt: Tensor,
    steps: int,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    cache: bool = True,
    max_context: int | None = None,
    noise: Tensor | None = None,
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
        noise: ``(B, steps, V)`` pre-drawn Gumbel noise (:func:`gumbel_noise`): sample by
            Gumbel-max instead of drawing from ``generator`` (what parallel decoding matches).
    Returns:
        ``(B, L + steps)``.
    """
    x = prompt

    def pick(logits: Tensor, i: int) -> Tensor:
        return pick_tokens(logits, temperature, None if noise is None else noise[:, i], generator)[:, None]

    if not cache:
        for i in range(steps):
            ctx = x if max_context is None else x[:, -max_context:]
            x = torch.cat([x, pick(net(ctx)[:, -1], i)], dim=1)
        return x
    total = x.shape[1] + steps
    if max_context is not None and total > max_context:
        raise ValueError(
            f"prompt ({x.shape[1]}) + {steps} steps exceed the model's {max_context} positions; "
            "generate without the cache (cache=False) to slide the window"
        )
    state = net.new_cache(x.shape[0], total)
    logits = net(x, cache=state)[:, -1]
    for i in range(steps):
        nxt = pick(logits, i)
        x = torch.cat([x, nxt], dim=1)
        if x.shape[1] < total:
            logits = net(nxt, cache=state)[:, -1]
    return x


@torch.no_grad()
def jacobi_decode(
    step: Callable[[Tensor, int], Tensor],
    first: Tensor,
    steps: int,
    cache: DecodeCache,
    block: int | None = None,
    rtol: float = 0.0,
    guess: Tensor | float | int | None = None,
) -> tuple[Tensor, dict[str, int]]:
    """Jacobi iteration for any autoregressive decoder whose next value is a deterministic
    function of the values before it (greedy tokens; samples with pre-drawn noise).

    Santilli et al. 2023, "Accelerating Transformer Inference for Translation via Parallel
    Decoding", Sec. 3: guess a block of future values, recompute them all in one forward
    pass from the guesses, repeat. Value ``p`` is final once the values before it are:
    after each pass the longest prefix whose inputs were final (or reproduced within
    ``rtol``) is accepted, the cache is cut back to the accepted inputs
    (:meth:`DecodeCache.truncate`; a cache that cannot forget positions is restored to
    the pass's start and the accepted inputs fed again) and the block slides on. Every pass
    accepts at least one value, so there are never more passes than positions; the fixed
    point is what sequential decoding gives.

    Args:
        step: ``step(inputs (N, m), start) -> (N, m)``: feeds the values of positions
            ``start .. start + m - 1`` through the cache (after what it holds) and returns the
            values of positions ``start + 1 .. start + m``.
        first: ``(N,)`` the value of position 0 (from the prefill: known).
        steps: positions to decode (``first`` included).
        cache: the decoder's cache, holding everything before position 0.
        block: inputs fed per pass (None: all remaining).
        rtol: relative (and absolute) tolerance for accepting a reproduced float value
            (0: exact; tokens compare exactly).
        guess: initial guess of the unknown positions (default: ``first``).
    Returns:
        ``(N, steps)`` values and counts ``passes`` (forward passes after the prefill) and
        ``positions`` (``steps``).
    """
    y = first[:, None].repeat(1, steps)
    if guess is not None:
        y[:, 1:] = guess
    base, rewind = cache.length, cache.rewindable
    block = steps if block is None else max(1, int(block))
    fed = done = passes = 0  # inputs the cache holds; positions final (0 .. done)
    while done < steps - 1:
        end = min(steps - 1, fed + block)  # feed inputs fed .. end - 1
        snap = None if rewind else cache.snapshot()
        new = step(y[:, fed:end], fed)  # (N, end - fed): positions fed + 1 .. end
        passes += 1
        old = y[:, fed + 1 : end + 1]
        same = (old == new) if rtol <= 0 or not new.is_floating_point() else torch.isclose(old, new, rtol, rtol)
        # Position done + 1 is final (its inputs were); each reproduced value after it
        # makes the next one final too.
        j = done + 1
        while j < end and bool(same[:, j - fed - 1].all()):
            j += 1
        keep = y[:, : j].clone()  # inputs the accepted values were computed from
        y[:, fed + 1 : end + 1] = new
        y[:, : j] = keep
        y[:, j] = new[:, j - fed - 1]
        if j == end or rewind:  # keep the keys of inputs 0 .. j - 1, all accepted
            cache.truncate(base + j)
            fed = j
        else:  # a recurrent state cannot forget positions: feed them again
            cache.restore(snap)
        done = j
    return y, {"passes": passes, "positions": steps}


DECODE_METHODS = ("sequential", "jacobi", "lookahead")


def decode_values(
    step: Callable[[Tensor, int], Tensor],
    first: Tensor,
    steps: int,
    cache: DecodeCache,
    decode: dict[str, Any] | None = None,
) -> tuple[Tensor, dict[str, int]]:
    """Decode ``steps`` positions of a deterministic autoregression (sample paths with
    pre-drawn noise; greedy tokens) as ``decode`` says.

    Args:
        step, first, steps, cache: as for :func:`jacobi_decode`.
        decode: the ``decode`` options (``conf/decode/<name>.yaml``): ``method``
            ``sequential`` (one position per pass) or ``jacobi`` (with ``block``, ``rtol``);
            None: sequential.
    Returns:
        ``(N, steps)`` and counts ``passes`` and ``positions``.
    """
    decode = dict(decode or {})
    method = decode.get("method") or "sequential"
    if method == "jacobi":
        return jacobi_decode(step, first, steps, cache, block=decode.get("block"), rtol=float(decode.get("rtol") or 0.0))
    if method != "sequential":
        raise ValueError(f"decode.method={method!r} cannot decode these values; choose sequential or jacobi")
    out = [first]
    for h in range(1, steps):
        out.append(step(out[-1][:, None], h - 1)[:, 0])
    return torch.stack(out, 1), {"passes": steps - 1, "positions": steps}


@torch.no_grad()
def jacobi_tokens(net, prompt: Tensor, steps: int, block: int = 8, max_context: int | None = None,
                  guess: int = 0, temperature: float = 0.0, noise: Tensor | None = None) -> tuple[Tensor, dict[str, int]]:
    """Greedy (or pre-drawn-noise sampled) continuation by Jacobi iteration
    (:func:`jacobi_decode`; Santilli et al. 2023, Sec. 3).

    A block of ``block`` guessed tokens is fed in one forward pass over the cache; each
    position's argmax becomes its next guess; the accepted prefix is kept and the block
    slides on. The output equals :func:`generate_tokens` with ``temperature=0`` (or with
    the same ``noise``); the gain is fewer passes when later guesses converge early.

    Args:
        net: as for :func:`generate_tokens`.
        prompt: ``(B, L)`` token ids.
        steps: tokens to add.
        block: guesses per pass.
        guess: the token the first guesses start from.
        temperature, noise: sampling by Gumbel-max with ``(B, steps, V)`` pre-drawn noise
            (:func:`gumbel_noise`); greedy when ``temperature <= 0``.
    Returns:
        ``(B, L + steps)`` and counts: ``passes`` (forward passes after the prompt) and
        ``tokens`` (``steps``).
    """
    if temperature > 0 and noise is None:
        raise ValueError("sampled Jacobi decoding needs pre-drawn noise (gumbel_noise)")
    if steps <= 0:
        return prompt, {"passes": 0, "tokens": 0}
    total = prompt.shape[1] + steps
    if max_context is not None and total > max_context:
        raise ValueError(f"prompt ({prompt.shape[1]}) + {steps} steps exceed the model's {max_context} positions")
    cache = net.new_cache(prompt.shape[0], total + block)

    def pick(logits: Tensor, start: int) -> Tensor:  # (B, m, V) for positions start ..
        return pick_tokens(logits, temperature, None if noise is None else noise[:, start : start + logits.shape[1]])

    first = pick(net(prompt, cache=cache)[:, -1:], 0)[:, 0]  # the next token is known
    out, counts = jacobi_decode(lambda x, start: pick(net(x, cache=cache), start + 1), first, steps, cache,
                                block=block, guess=guess)
    return torch.cat([prompt, out], 1), {"passes": counts["passes"], "tokens": steps}


@torch.no_grad()
def lookahead_tokens(net, prompt: Tensor, steps: int, window: int = 8, ngram: int = 4, pool: int = 8,
                     max_context: int | None = None, temperature: float = 0.0, noise: Tensor | None = None,
                     pool_text: bool = True) -> tuple[Tensor, dict[str, int]]:
    """Greedy (or pre-drawn-noise sampled) continuation by lookahead decoding (Fu et al.
    2024, "Break the Sequential Dependency of LLM Inference Using Lookahead Decoding",
    Sec. 3).

    Each forward pass runs two branches over the cached accepted text:

    - the lookahead branch: a Jacobi iteration over the next ``window`` positions; its
      trajectory (the last ``ngram - 1`` iterations) yields n-grams along the diagonals,
      each token predicted right after the one before it (the paper's 2-D window);
    - the verification branch: up to ``pool`` n-grams from the pool that start with the
      last accepted token, checked against the model's own choices.

    The longest verified run (or the Jacobi guesses' own, or just the one certain next
    token) is accepted, so the output equals sequential decoding token for token.

    The branches are rows of one batched pass that share the accepted text in the cache
    (its shared-prefix paths, :class:`KVCache` with ``repeat = 1 + pool``): the same
    attention as the paper's mask over [prefix | lookahead | candidates] in which each
    branch sees the prefix and itself causally, served by every attention layer with its
    own pattern and positions. The cache is then cut back to the accepted text.
    ``pool_text`` also collects n-grams of the prompt and accepted text (repetitions, as
    prompt-lookup decoding does), beside the trajectory's.

    Args:
        net: as for :func:`generate_tokens`; its cache must be able to forget positions
            (:attr:`DecodeCache.rewindable`: not a recurrent layer such as RWKV).
        prompt: ``(B, L)``; each row is decoded on its own.
        window: Jacobi positions of the lookahead branch (``W``).
        ngram: n-gram size ``N`` (candidates verify ``N - 1`` tokens after the last one).
        pool: candidates verified per pass (``G``), and n-grams kept per first token.
        temperature, noise: as for :func:`jacobi_tokens`.
    Returns:
        ``(B, L + steps)`` and counts ``passes`` (after the prompt) and ``tokens``.
    """
    if window < 1 or ngram < 2 or pool < 0:
        raise ValueError(f"lookahead needs window >= 1, ngram >= 2 and pool >= 0 (got {window}, {ngram}, {pool})")
    if temperature > 0 and noise is None:
        raise ValueError("sampled lookahead decoding needs pre-drawn noise (gumbel_noise)")
    total = prompt.shape[1] + steps
    if max_context is not None and total > max_context:
        raise ValueError(f"prompt ({prompt.shape[1]}) + {steps} steps exceed the model's {max_context} positions")
    rows, passes = [], 0
    for b in range(prompt.shape[0]):
        nz = None if noise is None else noise[b : b + 1]
        out, n = _lookahead_one(net, prompt[b : b + 1], steps, window, ngram, pool, temperature, nz, pool_text)
        rows.append(out)
        passes += n
    return torch.cat(rows, 0), {"passes": passes, "tokens": steps * prompt.shape[0]}


@torch.no_grad()
def decode_tokens(
    net,
    prompt: Tensor,
    steps: int,
    temperature: float = 0.0,
    decode: dict[str, Any] | None = None,
    noise: Tensor | None = None,
    generator: torch.Generator | None = None,
    cache: bool = True,
    max_context: int | None = None,
    early_exit: Any = None,
) -> tuple[Tensor, dict[str, int]]:
    """Continue ``prompt (B, L)`` by ``steps`` tokens as the ``decode`` options say: the one
    entry point of token decoding (the char LM's ``generate``, ``python -m tsformer.generate``).

    Args:
        net: a causal token model (``net(tokens, cache=...)``, ``new_cache``).
        temperature: 0 is greedy; sampling uses ``noise`` (Gumbel-max, :func:`gumbel_noise`;
            what every method reproduces) or else a multinomial draw from ``generator``
            (sequential only).
        decode: ``conf/decode/<name>.yaml`` options: ``method`` sequential | jacobi (``block``)
            | lookahead (``window``, ``ngram``, ``pool``, ``pool_text``); None: sequential.
        cache: sequential decoding with the cache (else every step re-runs the last
            ``max_context`` tokens: a sliding window).
        early_exit: a CALM exit rule (:class:`tsformer.nn.early_exit.EarlyExit`): each new
            token stops at its exit layer (sequential with the cache only).
    Returns:
        ``(B, L + steps)`` and counts ``passes`` (forward passes, the prompt's included) and
        ``tokens`` (``steps``).
    """
    decode = dict(decode or {})
    method = decode.get("method") or "sequential"
    if method not in DECODE_METHODS:
        raise ValueError(f"decode.method={method!r}: choose one of {DECODE_METHODS}")
    if early_exit is not None:
        if method != "sequential" or not cache:
            raise ValueError("early exit decides per position, one position per pass with the cache: "
                             "use decode=sequential within the model's max_tokens")
        from tsformer.nn.early_exit import early_exit_tokens

        out = early_exit_tokens(net, prompt, steps, early_exit, temperature, generator, max_context, noise)
        return out, {"passes": steps, "tokens": steps}
    if method == "sequential":
        out = generate_tokens(net, prompt, steps, temperature, generator, cache, max_context, noise)
        return out, {"passes": steps, "tokens": steps}
    if temperature > 0 and noise is None:
        raise ValueError(f"decode={method}: sampling needs pre-drawn noise (gumbel_noise) so that the parallel "
                         "decoder reproduces sequential sampling")
    if not cache:
        raise ValueError(f"decode={method}: prompt ({prompt.shape[1]}) + {steps} steps exceed the model's "
                         f"max_tokens={max_context}; shorten them or use decode=sequential (sliding window)")
    if method == "jacobi":
        out, counts = jacobi_tokens(net, prompt, steps, block=int(decode.get("block") or 16), max_context=max_context,
                                    temperature=temperature, noise=noise)
    else:
        out, counts = lookahead_tokens(net, prompt, steps, window=int(decode.get("window", 8)),
                                       ngram=int(decode.get("ngram", 4)), pool=int(decode.get("pool", 8)),
                                       max_context=max_context, temperature=temperature, noise=noise,
                                       pool_text=bool(decode.get("pool_text", True)))
    return out, {"passes": counts["passes"] + 1, "tokens": steps}


def _lookahead_one(net, prompt: Tensor, steps: int, W: int, N: int, G: int, temperature: float,
                   noise: Tensor | None, pool_text: bool) -> tuple[Tensor, int]:
    """:func:`lookahead_tokens` for one prompt ``(1, L)``: the row and its passes."""
    if steps <= 0:
        return prompt, 0
    width = max(W, N - 1)
    R = 1 + G
    cache = net.new_cache(1, prompt.shape[1] + steps + 2 * width + 2, repeat=R)

    def pick(logits: Tensor, start: int) -> Tensor:  # (r, m, V) for continuation positions start ..
        if noise is None or temperature <= 0:
            return pick_tokens(logits, temperature)
        nz = noise[:, start : start + logits.shape[1]]
        if nz.shape[1] < logits.shape[1]:  # positions past the end: any choice will do
            nz = torch.cat([nz, nz.new_zeros(1, logits.shape[1] - nz.shape[1], nz.shape[-1])], 1)
        return pick_tokens(logits, temperature, nz)

    logits = net(prompt, cache=cache)[:, -1:]
    if not cache.rewindable:
        raise ValueError("lookahead decoding cuts the cache back to the accepted text; this network's cache "
                         f"keeps a state that cannot forget positions ({sorted(cache.layers[0].state)})")
    out = pick(logits, 0)[0].tolist()  # continuation tokens accepted so far
    text = prompt[0].tolist()
    ngrams: dict[int, list[tuple[int, ...]]] = {}

    def remember(key: int, rest: tuple[int, ...]) -> None:
        lst = ngrams.setdefault(key, [])
        if rest in lst:
            lst.remove(rest)
        lst.insert(0, rest)  # most recent first
        del lst[G:]

    if pool_text:
        for i in range(max(0, len(text) - 4 * W * N), len(text) - 1):
            rest = tuple(text[i + 1 : i + N] + out[: max(0, i + N - len(text))])
            if len(rest) == N - 1:
                remember(text[i], rest)
    # Jacobi state: guesses for continuation positions len(out) .. len(out) + W - 1, seeded
    # from the prompt's last characters (any guess converges to the same text).
    seed = text[-W:] if len(text) >= W else (text * W)[:W]
    jac = list(seed)
    levels: list[tuple[int, list[int], list[int]]] = []  # (first position, inputs, outputs) per pass
    uncached = list(out)  # accepted tokens whose keys the cache does not hold yet
    dev = prompt.device
    passes = 0
    while len(out) < steps:
        base = len(out)  # continuation position of the first guess
        cands = ngrams.get(out[-1], [])[:G]
        u = len(uncached)
        batch = [uncached + jac[:width] + [jac[-1]] * (width - len(jac[:width]))]
        for c in cands:
            batch.append(uncached + list(c) + [c[-1]] * (width - len(c)))
        batch += [batch[0]] * (R - len(batch))
        x = torch.tensor(batch, dtype=prompt.dtype, device=dev)  # (R, u + width)
        length = cache.length
        logits = net(x, cache=cache)
        passes += 1
        # pred[r, i]: the token at continuation position base - u + i + 1 after row r's first i + 1 tokens
        pred = pick(logits[:, u - 1 :], base).tolist()
        best, best_row = 0, 0
        for r in range(1 + len(cands)):
            guess = batch[r][u:]
            m = 0
            while m < len(guess) and base + m < steps and guess[m] == pred[r][m]:
                m += 1
            if m > best:
                best, best_row = m, r
        new = batch[best_row][u : u + best] + [pred[best_row][best]]
        new = new[: steps - base]
        # The lookahead branch's trajectory: inputs jac at base .., outputs after each.
        levels.append((base, list(jac[:W]), pred[0][1 : W + 1]))
        del levels[: -(N - 1)]
        if len(levels) == N - 1:
            for p in range(levels[0][0], levels[0][0] + W):
                gram = _diagonal(levels, p, N)
                if gram is not None:
                    remember(gram[0], tuple(gram[1:]))
        out += new
        cache.truncate(length + u)  # keep the accepted tokens fed this pass
        uncached = list(new)
        if pool_text:
            full = text + out
            for i in range(max(0, len(full) - len(new) - N), len(full) - N + 1):
                remember(full[i], tuple(full[i + 1 : i + N]))
        # Slide the Jacobi window past the accepted tokens (Jacobi update of the rest).
        jac = pred[0][len(new) : len(new) + W]  # pred[0][k]: the guess for position base + k
        jac = (jac + [jac[-1] if jac else out[-1]] * W)[:W]
    return torch.cat([prompt, torch.tensor([out[:steps]], dtype=prompt.dtype, device=dev)], 1), passes


def _diagonal(levels: list[tuple[int, list[int], list[int]]], p: int, N: int) -> list[int] | None:
    """The n-gram along the Jacobi trajectory's diagonal from position ``p``: the oldest
    level's input at ``p``, then each later level's output one position further (each token
    predicted right after the one before it); None where the window does not reach."""
    start, inputs, _ = levels[0]
    if not 0 <= p - start < len(inputs):
        return None
    gram = [inputs[p - start]]
    for lvl, (s, _, outs) in enumerate(levels):
        q = p + lvl + 1 - s - 1  # outs[i] is the prediction for position s + 1 + i
        if not 0 <= q < len(outs):
            return None
        gram.append(outs[q])
    if len(gram) < N:
        return None
    return gram[:N]


__all__ = ["DECODE_METHODS", "DecodeCache", "InputTail", "KVCache", "decode_tokens", "decode_values", "generate_tokens",
           "gumbel_noise",
           "jacobi_decode",
           "jacobi_tokens", "lookahead_tokens", "pick_tokens"]
