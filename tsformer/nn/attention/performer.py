"""Performer self-attention, FAVOR+ (Choromanski et al. 2021, "Rethinking Attention with
Performers", ICLR, https://arxiv.org/abs/2009.14794): ``model.attention.type=performer``.

Softmax attention estimated by ``features`` random features per head
(:mod:`tsformer.attention.favor`): positive orthogonal features by default (Lemma 1,
Sec. 2.4), bidirectional in ``O(L m d)`` or causal by prefix sums (Sec. 2.6). The layer
owns the ``(features, head_dim)`` projection, shared by its heads, as a buffer (saved with
the checkpoint, so evaluation reuses the features training ended with) and redraws it
every ``redraw`` training forward passes (the paper's feature redrawing, Sec. 4.2); it is
never redrawn in evaluation. The causal form decodes on the shared cache as a recurrent
state (the prefix sums), one step costing ``O(m d)`` whatever the context.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from tsformer.attention.favor import FEATURE_KINDS, favor_attention, gaussian_projection
from tsformer.nn.attention.base import AttentionLayer, AttentionSpec
from tsformer.nn.decoding import KVCache


class PerformerAttention(AttentionLayer):
    """Multi-head attention through FAVOR+ random features.

    Args:
        d_model, n_heads: width and heads.
        spec: the attention config (pattern ``full`` or ``causal``), or None.
        features: random features ``m`` per head (the paper: 256 for ``d = 64``).
        redraw: training forward passes between feature redraws (0: never).
        feature_kind: ``positive`` (FAVOR+) or ``trig`` (sin/cos; bidirectional only;
            unstable, for comparison).
        orthogonal: orthogonal random features (else i.i.d. Gaussian).
        chunk: causal positions per prefix-sum chunk.
        **config: config keys instead of ``spec``.
    """

    patterns = ("full", "causal")
    defaults = {"pattern": "full"}

    def __init__(self, d_model: int, n_heads: int, spec: AttentionSpec | None = None, features: int = 256,
                 redraw: int = 1000, feature_kind: str = "positive", orthogonal: bool = True, chunk: int = 64,
                 **config):
        super().__init__()
        self.setup(spec, d_model, n_heads, config)
        s = self.spec
        if s.positions not in ("none", "learned", "rotary") or s.persistent or s.span:
            raise ValueError(
                "attention type 'performer' never forms the score matrix, so it takes no score-bias positions "
                f"(positions={s.positions!r}), persistent slots or adaptive spans; use positions none, learned or rotary"
            )
        if s.dropout:
            raise ValueError(f"attention type 'performer' has no attention probabilities to drop "
                             f"(model.attention.dropout={s.dropout}); leave it 0")
        if feature_kind not in FEATURE_KINDS:
            raise ValueError(f"model.attention.feature_kind={feature_kind!r}; choose one of {FEATURE_KINDS}")
        if feature_kind == "trig" and self.pattern.causal:
            raise ValueError("model.attention.feature_kind='trig' cannot be causal: its keys' exp(|k|^2/2) factor "
                             "has no stabiliser that ignores later positions; use feature_kind=positive")
        if int(features) < 1 or int(redraw) < 0 or int(chunk) < 1:
            raise ValueError(f"Performer needs features >= 1, redraw >= 0 and chunk >= 1, got features={features}, "
                             f"redraw={redraw}, chunk={chunk}")
        self.features, self.redraw, self.chunk = int(features), int(redraw), int(chunk)
        self.feature_kind, self.orthogonal = feature_kind, bool(orthogonal)
        self.causal = self.pattern.causal
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)
        self.register_buffer("projection", gaussian_projection(self.features, self.head_dim, self.orthogonal))
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))  # training passes since the last draw

    @torch.no_grad()
    def redraw_features(self) -> None:
        """Draw a new projection (from torch's global generator) and restart the count."""
        w = gaussian_projection(self.features, self.head_dim, self.orthogonal, device=self.projection.device)
        # A new tensor, not an in-place copy: a graph still holding the old features (its
        # backward recomputes blocks from them) stays valid.
        self.projection = w.to(self.projection.dtype)
        self.calls.zero_()

    def forward(self, x: Tensor, lengths: Tensor | None = None, global_idx: Sequence[int] = (),
                cache: KVCache | None = None) -> Tensor:
        """``(B, L, d_model)`` -> ``(B, L, d_model)``; with a cache (causal only), ``x``
        continues the cached sequence and the state is the prefix sums."""
        if global_idx and self.causal:
            raise ValueError("causal Performer attention cannot give tokens global attention (they would see later "
                             "positions)")
        if cache is not None and not self.causal:
            raise ValueError("bidirectional Performer attention has no incremental decoding; use pattern=causal")
        if self.training and self.redraw:
            if int(self.calls) >= self.redraw:
                self.redraw_features()
            self.calls += 1
        B, L, _ = x.shape
        q, k, v = self.qkv(x).view(B, L, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        start = 0 if cache is None else cache.length
        q, k = self.positions.rotate(q, start), self.positions.rotate(k, start)
        valid = None
        if lengths is not None and cache is None:
            valid = torch.arange(L, device=x.device)[None, :] < lengths[:, None].to(x.device)
        state = None if cache is None else cache.state.get("performer")
        if state is not None and state[0].shape[0] != B:
            raise ValueError(f"performer cache holds {state[0].shape[0]} rows, the step has {B}")
        y, state = favor_attention(q, k, v, self.projection, causal=self.causal, kind=self.feature_kind, valid=valid,
                                   state=state, chunk=self.chunk)
        if cache is not None:
            if "performer" not in cache.state and cache.repeat > 1:  # every path continues from its element's prefix
                state = tuple(t.repeat_interleave(cache.repeat, 0) for t in state)
            cache.state["performer"] = state
            cache.advance(L)
        return self.out(self.merge(y))

    def extra_repr(self) -> str:
        return (f"features={self.features}, kind={self.feature_kind}, orthogonal={self.orthogonal}, "
                f"redraw={self.redraw}, causal={self.causal}")


__all__ = ["PerformerAttention"]
