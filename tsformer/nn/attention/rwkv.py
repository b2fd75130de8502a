"""RWKV-4 time mixing and channel mixing (Peng et al. 2023, "RWKV: Reinventing RNNs for the
Transformer Era", https://arxiv.org/abs/2305.13048, Sec. 4): ``model.attention.type=rwkv``
and ``model.ffn=rwkv``.

Time mixing replaces attention by a per-channel exponentially decaying average (paper,
Eq. 14, with ``w = -exp(time_decay)`` per channel, and ``u`` the bonus of the current token)::

    wkv_t = (sum_{i<t} e^{(t-1-i) w + k_i} v_i + e^{u + k_t} v_t)
            / (sum_{i<t} e^{(t-1-i) w + k_i} + e^{u + k_t})
    out_t = W_o (sigmoid(r_t) * wkv_t)

with ``r, k, v`` linear maps of a token-shifted mix ``mu x_t + (1 - mu) x_{t-1}``. Two modes
with the same weights and the same result: parallel over the sequence for training
(:func:`wkv_chunked`: chunks of the sequence in closed form, the state carried between
them) and recurrent, one step at a time with a constant state per layer (:func:`wkv_step`),
for generation and forecast sampling through the decoding cache. Both keep the running sums
divided by ``e^p`` for a running maximum ``p`` (the authors' numerically stable form), so
nothing overflows on long sequences or large keys.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from tsformer.nn.attention.base import AttentionLayer, AttentionSpec
from tsformer.nn.decoding import KVCache

State = tuple[Tensor, Tensor, Tensor]
"""``(a, b, p)``, each ``(B, C)``: numerator and denominator sums over the past divided by
``e^p``."""


def empty_state(batch: int, channels: int, like: Tensor) -> State:
    zeros = like.new_zeros(batch, channels)
    return zeros, zeros.clone(), torch.full_like(zeros, -1e38)


def wkv_step(w: Tensor, u: Tensor, k: Tensor, v: Tensor, state: State) -> tuple[Tensor, State]:
    """One position: ``k, v`` ``(B, C)``; ``w`` (negative) and ``u`` ``(C,)``."""
    a, b, p = state
    q = torch.maximum(p, u + k)
    e1, e2 = torch.exp(p - q), torch.exp(u + k - q)
    y = (e1 * a + e2 * v) / (e1 * b + e2)
    q = torch.maximum(p + w, k)
    e1, e2 = torch.exp(p + w - q), torch.exp(k - q)
    return y, (e1 * a + e2 * v, e1 * b + e2, q)


def wkv_recurrent(w: Tensor, u: Tensor, k: Tensor, v: Tensor, state: State | None = None) -> tuple[Tensor, State]:
    """The recurrence position by position (the reference twin): ``k, v`` ``(B, T, C)``."""
    B, T, C = k.shape
    state = empty_state(B, C, k) if state is None else state
    ys = []
    for t in range(T):
        y, state = wkv_step(w, u, k[:, t], v[:, t], state)
        ys.append(y)
    return torch.stack(ys, 1), state


def wkv_chunked(w: Tensor, u: Tensor, k: Tensor, v: Tensor, state: State | None = None,
                chunk: int = 32) -> tuple[Tensor, State]:
    """The same as :func:`wkv_recurrent`, parallel within chunks of ``chunk`` positions.

    In a chunk starting at ``c``, position ``t`` weighs the carried state by ``e^{(t-c) w}``
    (log weight ``p + (t - c) w``), earlier positions ``i`` of the chunk by
    ``e^{(t-1-i) w + k_i}`` and itself by ``e^{u + k_t}``: a ``(T_c, T_c + 1)`` table of log
    weights per channel, normalised by its row maximum. Memory ``O(B T_c^2 C)`` per chunk.
    """
    B, T, C = k.shape
    a, b, p = empty_state(B, C, k) if state is None else state
    ys = []
    for c0 in range(0, T, chunk):
        kc, vc = k[:, c0 : c0 + chunk], v[:, c0 : c0 + chunk]
        n = kc.shape[1]
        t = torch.arange(n, device=k.device, dtype=k.dtype)
        # log weight of key i (chunk-relative) for query t: (t - 1 - i) w + k_i for i < t.
        dist = (t[:, None] - 1 - t[None, :])  # (n, n)
        logw = dist[None, :, :, None] * w + kc[:, None, :, :]  # (B, n, n, C)
        causal = (t[None, :] < t[:, None])[None, :, :, None]
        logw = torch.where(causal, logw, torch.full_like(logw, float("-inf")))
        diag = torch.eye(n, dtype=torch.bool, device=k.device)[None, :, :, None]
        logw = torch.where(diag, (u + kc)[:, None, :, :].expand_as(logw), logw)
        log_state = (p[:, None, :] + t[None, :, None] * w)  # (B, n, C): the carried sums' weight
        top = torch.maximum(logw.amax(2), log_state)  # (B, n, C)
        e = torch.exp(logw - top[:, :, None, :])  # (B, n, n, C)
        es = torch.exp(log_state - top)  # (B, n, C)
        num = es * a[:, None, :] + torch.einsum("btic,bic->btc", e, vc)
        den = es * b[:, None, :] + e.sum(2)
        ys.append(num / den)
        # The state after the chunk: sums over everything up to its last position.
        last = n - 1
        log_keys = (last - t)[None, :, None] * w + kc  # (B, n, C): e^{(last - i) w + k_i}
        log_prev = p + n * w  # the carried sums, decayed over the chunk
        q = torch.maximum(log_keys.amax(1), log_prev)
        ek, ep = torch.exp(log_keys - q[:, None, :]), torch.exp(log_prev - q)
        a = ep * a + (ek * vc).sum(1)
        b = ep * b + ek.sum(1)
        p = q
    return torch.cat(ys, 1), (a, b, p)


def _ratio_inits(layer: int, n_layers: int, channels: int) -> dict[str, Tensor]:
    """The authors' layer-dependent initial mixes, decays and bonuses (RWKV-4 code)."""
    r01 = layer / max(1, n_layers - 1)
    r10 = 1.0 - layer / max(1, n_layers)
    h = torch.arange(channels, dtype=torch.float32)
    x = h / channels
    zigzag = ((h + 1) % 3 - 1) * 0.5
    return {
        "decay": -5 + 8 * (h / max(1, channels - 1)) ** (0.7 + 1.3 * r01),
        "first": torch.full((channels,), float(torch.log(torch.tensor(0.3)))) + zigzag,
        "mix_k": x**r10,
        "mix_v": x**r10 + 0.3 * r01,
        "mix_r": x ** (0.5 * r10),
    }


def token_shift(x: Tensor, last: Tensor | None) -> Tensor:
    """``x_{t-1}`` for every position: ``(B, T, C)``; ``last`` ``(B, C)`` before position 0."""
    first = x.new_zeros(x.shape[0], 1, x.shape[2]) if last is None else last[:, None]
    return torch.cat([first, x[:, :-1]], 1)


class RWKVTimeMix(AttentionLayer):
    """RWKV-4 time mixing as an attention layer (causal; positions come from the decay).

    Args:
        d_model: width (one channel per feature; ``n_heads`` is not used by the math).
        n_heads: accepted for the common signature.
        spec: the attention config (pattern ``causal``), or None.
        layer, n_layers: this layer's index and the depth (the initial decays depend on them).
        chunk: positions per parallel chunk in training.
    """

    patterns = ("causal",)
    defaults = {"pattern": "causal"}

    def __init__(self, d_model: int, n_heads: int = 1, spec: AttentionSpec | None = None, layer: int = 0,
                 n_layers: int = 1, chunk: int = 32, **config):
        super().__init__()
        self.setup(spec, d_model, 1, config)
        s = self.spec
        if s.positions not in ("none", "learned") or s.persistent or s.span:
            raise ValueError("attention type 'rwkv' orders positions by its decay: it takes no positions "
                             f"({s.positions!r}), persistent slots or spans")
        init = _ratio_inits(layer, n_layers, d_model)
        self.time_decay = nn.Parameter(init["decay"])
        self.time_first = nn.Parameter(init["first"])
        self.time_mix_k = nn.Parameter(init["mix_k"])
        self.time_mix_v = nn.Parameter(init["mix_v"])
        self.time_mix_r = nn.Parameter(init["mix_r"])
        self.key = nn.Linear(d_model, d_model, bias=False)
        self.value = nn.Linear(d_model, d_model, bias=False)
        self.receptance = nn.Linear(d_model, d_model, bias=False)
        self.output = nn.Linear(d_model, d_model, bias=False)
        self.chunk = int(chunk)

    def forward(self, x: Tensor, lengths: Tensor | None = None, global_idx: Sequence[int] = (),
                cache: KVCache | None = None) -> Tensor:
        """``(B, T, d_model)`` -> ``(B, T, d_model)``; with a cache, ``x`` continues the
        cached sequence (constant state: the last input and the sums ``(a, b, p)``)."""
        st = None if cache is None else cache.state.get("rwkv")
        if cache is not None and st is not None and x.shape[0] != st[0].shape[0]:
            raise ValueError(f"rwkv cache holds {st[0].shape[0]} rows, the step has {x.shape[0]}")
        xx = token_shift(x, None if st is None else st[0])
        xk = x * self.time_mix_k + xx * (1 - self.time_mix_k)
        xv = x * self.time_mix_v + xx * (1 - self.time_mix_v)
        xr = x * self.time_mix_r + xx * (1 - self.time_mix_r)
        k, v, r = self.key(xk), self.value(xv), torch.sigmoid(self.receptance(xr))
        w, u = -torch.exp(self.time_decay.float()), self.time_first.float()
        state = None if st is None else st[1:]
        if x.shape[1] == 1 and state is not None:
            y, state = wkv_step(w, u, k[:, 0].float(), v[:, 0].float(), state)
            y = y[:, None]
        else:
            y, state = wkv_chunked(w, u, k.float(), v.float(), state, self.chunk)
        if cache is not None:
            if st is None and cache.repeat > 1:  # every path continues from its element's context
                state = tuple(s.repeat_interleave(cache.repeat, 0) for s in state)
                last = x[:, -1].repeat_interleave(cache.repeat, 0)
            else:
                last = x[:, -1]
            cache.state["rwkv"] = (last, *state)
            cache.advance(x.shape[1])
        return self.output(r * y.to(x.dtype))


class RWKVChannelMix(nn.Module):
    """RWKV-4 channel mixing, the feed-forward of an RWKV block (``model.ffn=rwkv``):
    ``sigmoid(W_r x_r) * W_v relu(W_k x_k)^2`` over token-shifted mixes.

    Args:
        d_model: width. d_ff: hidden width. layer, n_layers: for the initial mixes.
    """

    takes_cache = True

    def __init__(self, d_model: int, d_ff: int, layer: int = 0, n_layers: int = 1):
        super().__init__()
        init = _ratio_inits(layer, n_layers, d_model)
        self.time_mix_k = nn.Parameter(init["mix_k"])
        self.time_mix_r = nn.Parameter(init["mix_k"].clone())
        self.key = nn.Linear(d_model, d_ff, bias=False)
        self.value = nn.Linear(d_ff, d_model, bias=False)
        self.receptance = nn.Linear(d_model, d_model, bias=False)

    def forward(self, x: Tensor, cache: KVCache | None = None) -> Tensor:
        last = None if cache is None else cache.state.get("rwkv_ffn")
        xx = token_shift(x, last)
        xk = x * self.time_mix_k + xx * (1 - self.time_mix_k)
        xr = x * self.time_mix_r + xx * (1 - self.time_mix_r)
        if cache is not None:
            keep = x[:, -1]
            if last is None and cache.repeat > 1:
                keep = keep.repeat_interleave(cache.repeat, 0)
            cache.state["rwkv_ffn"] = keep
        return torch.sigmoid(self.receptance(xr)) * self.value(torch.relu(self.key(xk)).square())


__all__ = ["RWKVChannelMix", "RWKVTimeMix", "token_shift", "wkv_chunked", "wkv_recurrent", "wkv_step"]
