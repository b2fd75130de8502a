"""Reformer LSH attention (Kitaev, Kaiser & Levskaya 2020, "Reformer: The Efficient
Transformer", ICLR, https://arxiv.org/abs/2001.04451, Sec. 3): ``model.attention.type=lsh``.

Queries and keys are shared (keys are the unit-normalised queries), positions are hashed
into ``buckets`` by random rotations in each of ``rounds`` hash rounds, and each position
attends within its bucket, to the positions of its chunk of ``lsh_chunk`` and the previous
chunk in the order sorted by (bucket, position); the rounds are combined by their
log-sum-exps. The math is in :mod:`tsformer.attention.lsh` (see there for the attention sets
and the one deliberate difference from the paper: chunks never span two buckets, which keeps
the causal form strictly causal).

The rotations are drawn anew from the global random generator at every training forward
(so a seeded run replays them, and the reversible layers' backward, which restores the
generator state, recomputes the same buckets) and are fixed in evaluation: drawn from a
generator seeded by the ``hash_seed`` buffer (stored with the checkpoint), the same for any
number of rounds, so ``eval_rounds`` may differ from ``rounds``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tsformer.attention.lsh import (
    check_buckets,
    draw_rotations,
    lsh_attention,
    lsh_attention_reference,
    lsh_buckets,
)
from tsformer.nn.attention.base import AttentionLayer, AttentionSpec
from tsformer.nn.decoding import KVCache


class LSHAttention(AttentionLayer):
    """Shared-QK multi-head LSH attention.

    Args:
        d_model, n_heads: width and heads.
        spec: the attention config (pattern ``full`` or ``causal``; kernel ``auto``, the
            sorted chunks, or ``reference``, the dense O(L^2) twin; positions ``none``,
            ``learned`` or ``rotary``), or None.
        buckets: hash buckets per round (1 or even; paper: about ``2 L / lsh_chunk``).
        rounds: hash rounds in training (paper: 1 .. 8; more rounds, closer to full attention).
        lsh_chunk: positions per chunk of the sorted order (paper: 64 .. 128).
        eval_rounds: hash rounds in evaluation (None: ``rounds``).
        **config: config keys instead of ``spec``.
    """

    patterns = ("full", "causal")
    defaults = {"pattern": "full"}

    def __init__(self, d_model: int, n_heads: int, spec: AttentionSpec | None = None, buckets: int = 32,
                 rounds: int = 2, lsh_chunk: int = 64, eval_rounds: int | None = None, **config):
        super().__init__()
        self.setup(spec, d_model, n_heads, config)
        check_buckets(int(buckets))
        if rounds < 1 or lsh_chunk < 1 or (eval_rounds is not None and eval_rounds < 1):
            raise ValueError(f"LSH attention needs rounds, eval_rounds and lsh_chunk >= 1, got rounds={rounds}, "
                             f"eval_rounds={eval_rounds}, lsh_chunk={lsh_chunk}")
        s = self.spec
        if s.positions not in ("none", "learned", "rotary") or s.persistent or s.span:
            raise ValueError(
                "attention type 'lsh' attends within hash buckets, so it takes no score-bias positions "
                f"(positions={s.positions!r}), persistent slots or adaptive spans; use positions none, learned or rotary"
            )
        if s.kernel not in ("auto", "reference"):
            raise ValueError(f"attention type 'lsh' runs its own sorted-chunk kernel ('auto') or the dense twin "
                             f"('reference'), not kernel={s.kernel!r}")
        if s.kernel == "reference" and s.dropout:
            raise ValueError("attention type 'lsh' with kernel='reference' takes no attention dropout")
        self.buckets, self.rounds, self.chunk = int(buckets), int(rounds), int(lsh_chunk)
        self.eval_rounds = self.rounds if eval_rounds is None else int(eval_rounds)
        self.qk = nn.Linear(d_model, d_model)  # shared queries and keys (Sec. 3)
        self.v = nn.Linear(d_model, d_model)
        self.out = nn.Linear(d_model, d_model)
        # Evaluation hashing is a function of this seed (drawn from the run's seeded generator).
        self.register_buffer("hash_seed", torch.randint(0, 2**62, ()), persistent=True)
        self._eval_rot: tuple | None = None

    def rotations(self, device: torch.device, dtype: torch.dtype) -> Tensor:
        """``(H, R, D, b/2)``: a fresh draw in training, the fixed ones in evaluation."""
        H, D = self.n_heads, self.head_dim
        if self.training:
            return draw_rotations(H, self.rounds, D, self.buckets, device=device, dtype=dtype)
        key = (int(self.hash_seed), self.eval_rounds, device, dtype)
        if self._eval_rot is None or self._eval_rot[0] != key:
            # One draw per round from a seeded CPU generator: the same rotations on any
            # device, and round r is the same whatever eval_rounds is.
            g = torch.Generator().manual_seed(key[0])
            rot = torch.cat([draw_rotations(H, 1, D, self.buckets, generator=g) for _ in range(self.eval_rounds)], 1)
            self._eval_rot = (key, rot.to(device, dtype))
        return self._eval_rot[1]

    def forward(self, x: Tensor, lengths: Tensor | None = None, global_idx: Sequence[int] = (),
                cache: KVCache | None = None) -> Tensor:
        """``(B, L, d_model)`` -> ``(B, L, d_model)`` (padded rows: zeros before the output
        projection). With a cache, ``x`` holds the next positions (``B R`` rows); each
        attends over everything cached by the dense twin with the evaluation rotations, which
        gives the same sets as a full pass (the sets of a position depend only on it and the
        positions before it)."""
        if len(global_idx):
            raise ValueError("attention type 'lsh' has no global tokens; set model.global_tokens=[] "
                             "(and e.g. model.pooling=mean) to use it in a classifier")
        B, L, _ = x.shape
        start = 0 if cache is None else cache.length
        q = self.positions.rotate(self.heads(self.qk(x)), start)
        v = self.heads(self.v(x))
        k = F.normalize(q, dim=-1)
        causal = self.pattern.causal
        if cache is not None and cache.prefilled:
            if not causal:
                raise ValueError("attention type 'lsh' decodes step by step only with pattern=causal")
            cache.append(k, v)
            keys, values = _cached(cache)
            buckets = lsh_buckets(keys, self.rotations(x.device, torch.float32))
            y = lsh_attention_reference(q, keys, values, buckets, self.buckets, self.chunk, causal=True)
            return self.out(self.merge(y))
        if cache is not None:
            cache.set_prefix(k, v)
        buckets = lsh_buckets(k, self.rotations(x.device, torch.float32))  # hashed like the cached keys
        if self.spec.kernel == "reference":
            y = lsh_attention_reference(q, k, v, buckets, self.buckets, self.chunk, causal=causal, lengths=lengths)
        else:
            p = self.spec.dropout if self.training else 0.0
            del k  # the kernel normalises the queries itself (shared-QK), head by head at long lengths
            y = lsh_attention(q, None, v, buckets, self.buckets, self.chunk, causal=causal, lengths=lengths,
                              dropout_p=p)
        return self.out(self.merge(y))

    def extra_repr(self) -> str:
        return (f"buckets={self.buckets}, rounds={self.rounds}, eval_rounds={self.eval_rounds}, "
                f"lsh_chunk={self.chunk}, causal={self.pattern.causal}")


def _cached(cache: KVCache) -> tuple[Tensor, Tensor]:
    """Every cached key and value, ``(B R, H, length, D)`` (the shared prefix repeated per path)."""
    if not cache.shared:
        return cache.keys_values()
    (pk, pv), (sk, sv) = cache.prefix(), cache.suffix()
    R = cache.repeat

    def join(p: Tensor, s: Tensor) -> Tensor:
        B, H, P, D = p.shape
        full = torch.cat([p[:, :, None].expand(B, H, R, P, D), s], dim=3)  # (B, H, R, length, D)
        return full.transpose(1, 2).reshape(B * R, H, -1, D)

    return join(pk, sk), join(pv, sv)


__all__ = ["LSHAttention"]
