"""Decoder-only Transformer with convolutional self-attention for forecasting.

Li et al., NeurIPS 2019, "Enhancing the Locality and Breaking the Memory Bottleneck of
Transformer on Time Series Forecasting" (https://arxiv.org/abs/1907.00235):
queries and keys come from a causal 1-D convolution over time, so that attention
compares local shapes rather than single points; with a LogSparse pattern each layer
costs O(L log L).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tsformer.attention import Pattern, attention, get_kernel, pattern_from_config
from tsformer.nn.likelihoods import GaussianHead


class ConvSelfAttention(nn.Module):
    """Multi-head self-attention whose queries and keys are causal convolutions.

    Args:
        d_model: hidden size.
        n_heads: attention heads (``d_model`` must divide evenly).
        kernel_size: convolution width ``k`` for queries and keys (1: ordinary attention).
        kernel: attention kernel name (see :data:`tsformer.attention.KERNELS`).
        dropout: dropout on the output projection.
    """

    def __init__(self, d_model: int, n_heads: int, kernel_size: int = 1, kernel: str = "auto", dropout: float = 0.0):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} is not divisible by n_heads={n_heads}")
        get_kernel(kernel)  # fail at construction on a bad name
        self.n_heads, self.kernel_size, self.kernel = n_heads, kernel_size, kernel
        self.qk = nn.Conv1d(d_model, 2 * d_model, kernel_size)
        self.v = nn.Linear(d_model, d_model)
        self.out = nn.Linear(d_model, d_model)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, pattern: Pattern) -> Tensor:
        """``x``: ``(B, L, d_model)`` -> ``(B, L, d_model)``."""
        B, L, C = x.shape
        # Left padding keeps the convolution causal: position t sees t-k+1 .. t.
        xc = F.pad(x.transpose(1, 2), (self.kernel_size - 1, 0))
        q, k = self.qk(xc).chunk(2, dim=1)  # (B, C, L) each
        q = q.view(B, self.n_heads, C // self.n_heads, L).transpose(-1, -2)
        k = k.view(B, self.n_heads, C // self.n_heads, L).transpose(-1, -2)
        v = self.v(x).view(B, L, self.n_heads, C // self.n_heads).transpose(1, 2)
        o = attention(q, k, v, pattern, kernel=self.kernel)
        return self.drop(self.out(o.transpose(1, 2).reshape(B, L, C)))

    # -- incremental decoding ------------------------------------------------------
    def prefill(self, x: Tensor, pattern: Pattern, max_len: int, repeat: int) -> tuple[Tensor, DecodeState]:
        """Run over a prefix and keep what later steps need, each row repeated ``repeat`` times.

        Args:
            x: ``(B, L, d_model)`` prefix.
            max_len: longest sequence the state must hold.
        Returns:
            ``(B, L, d_model)`` output and the state for :meth:`step` (batch ``B * repeat``).
        """
        B, L, C = x.shape
        xc = F.pad(x.transpose(1, 2), (self.kernel_size - 1, 0))
        q, k = self.qk(xc).chunk(2, dim=1)
        q = q.view(B, self.n_heads, C // self.n_heads, L).transpose(-1, -2)
        k = k.view(B, self.n_heads, C // self.n_heads, L).transpose(-1, -2)
        v = self.v(x).view(B, L, self.n_heads, C // self.n_heads).transpose(1, 2)
        o = attention(q, k, v, pattern, kernel=self.kernel)
        out = self.drop(self.out(o.transpose(1, 2).reshape(B, L, C)))
        # The prefix is shared by all sample paths of a series: keep it once, and give each
        # path its own buffer only for the positions it decodes.
        suffix = k.new_zeros(B, self.n_heads, repeat, max(max_len - L, 0), C // self.n_heads)
        tail = xc[:, :, xc.shape[-1] - (self.kernel_size - 1) :].repeat_interleave(repeat, 0)
        return out, DecodeState(tail, k, v, suffix, torch.zeros_like(suffix), L, repeat)

    def step(self, x: Tensor, state: DecodeState, pattern: Pattern) -> Tensor:
        """Output at the next position from its input ``x`` ``(B * repeat, 1, d_model)``; updates ``state``."""
        BS, _, C = x.shape
        H, D = self.n_heads, C // self.n_heads
        t, P, R = state.length, state.prefix_len, state.repeat
        window = torch.cat([state.tail, x.transpose(1, 2)], dim=-1)  # (BS, C, k)
        # A convolution over exactly k positions is one matrix product.
        q, k = F.linear(window.flatten(1), self.qk.weight.flatten(1), self.qk.bias).chunk(2, dim=1)  # (BS, C)
        state.keys[:, :, :, t - P] = k.view(BS // R, R, H, D).transpose(1, 2)
        state.values[:, :, :, t - P] = self.v(x).view(BS // R, R, H, D).transpose(1, 2)
        state.tail = window[:, :, 1:]
        state.length = t + 1
        # One query row over the keys its pattern row allows: shared prefix plus own suffix,
        # joined in one softmax.
        zero = torch.zeros((), dtype=torch.long, device=x.device)
        row = pattern.mask_fn(t + 1, t + 1, x.device)(zero, zero, torch.tensor(t, device=x.device),
                                                      torch.arange(t + 1, device=x.device))
        scale = D**-0.5
        qh = q.view(BS // R, R, H, D).transpose(1, 2)  # (B, H, R, D)
        s_pre = torch.matmul(qh, state.prefix_keys.transpose(-1, -2)) * scale  # (B, H, R, P)
        n = t + 1 - P
        suf_k, suf_v = state.keys[:, :, :, :n], state.values[:, :, :, :n]  # (B, H, R, n, D) views
        s_suf = torch.matmul(qh.unsqueeze(-2), suf_k.transpose(-1, -2)).squeeze(-2) * scale  # (B, H, R, n)
        scores = torch.cat([s_pre, s_suf], dim=-1).masked_fill(~row, float("-inf"))
        probs = torch.softmax(scores, dim=-1)
        o = torch.matmul(probs[..., :P], state.prefix_values)
        o = o + torch.matmul(probs[..., P:].unsqueeze(-2), suf_v).squeeze(-2)
        o = o.transpose(1, 2).reshape(BS, 1, C)  # (B, R, H, D) -> rows in (series, path) order
        return self.drop(self.out(o))


@dataclass
class DecodeState:
    """Per-layer state of incremental decoding for ``repeat`` sample paths per series.

    Attributes:
        tail: ``(B * repeat, d_model, k - 1)`` last attention inputs, for the causal convolution.
        prefix_keys, prefix_values: ``(B, H, prefix_len, D)``, shared by a series' paths.
        keys, values: ``(B, H, repeat, max_len - prefix_len, D)`` per-path buffers.
        length: positions decoded so far (prefix included).
        prefix_len: length of the shared prefix.
        repeat: sample paths per series.
    """

    tail: Tensor
    prefix_keys: Tensor
    prefix_values: Tensor
    keys: Tensor
    values: Tensor
    length: int
    repeat: int = 1

    def __post_init__(self) -> None:
        self.prefix_len = self.prefix_keys.shape[-2]


class ConvTransformerBlock(nn.Module):
    """Pre-norm block: convolutional self-attention, then a feed-forward network."""

    def __init__(self, d_model: int, n_heads: int, d_ff: int, kernel_size: int, kernel: str, dropout: float):
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = ConvSelfAttention(d_model, n_heads, kernel_size, kernel, dropout)
        self.ln2 = nn.LayerNorm(d_model)
        self.ff = nn.Sequential(
            nn.Linear(d_model, d_ff), nn.GELU(), nn.Dropout(dropout), nn.Linear(d_ff, d_model), nn.Dropout(dropout)
        )

    def forward(self, x: Tensor, pattern: Pattern) -> Tensor:
        x = x + self.attn(self.ln1(x), pattern)
        return x + self.ff(self.ln2(x))

    def prefill(self, x: Tensor, pattern: Pattern, max_len: int, repeat: int) -> tuple[Tensor, DecodeState]:
        a, state = self.attn.prefill(self.ln1(x), pattern, max_len, repeat)
        x = x + a
        return x + self.ff(self.ln2(x)), state

    def step(self, x: Tensor, state: DecodeState, pattern: Pattern) -> Tensor:
        x = x + self.attn.step(self.ln1(x), state, pattern)
        return x + self.ff(self.ln2(x))


class ConvTransformerForecaster(nn.Module):
    """Probabilistic autoregressive forecaster (Li et al. 2019).

    Input at each position: the previous (scaled) value, the covariates, and a learned
    embedding of the series id. Output: a Gaussian over the current value.

    Args:
        num_series: number of series ids for the embedding.
        num_covariates: covariates per step.
        d_model, n_heads, n_layers, d_ff: Transformer sizes.
        conv_kernel: convolution width for queries and keys (``k`` in the paper).
        embedding_dim: size of the series-id embedding. A series id ``-1`` (a series not
            seen in training) gets the mean of the learned embeddings.
        dropout: dropout rate.
        attention: pattern settings, ``pattern`` (``logsparse``, ``causal``) and its
            options (``local``, ``restart``), and ``kernel`` (``auto``, ``reference``, ...).
        static_cardinalities: number of categories of each static categorical series
            feature (code 0 = unknown); each gets its own embedding.
        static_embedding_dim: size of each static feature's embedding.
    """

    def __init__(
        self,
        num_series: int,
        num_covariates: int,
        d_model: int = 64,
        n_heads: int = 4,
        n_layers: int = 3,
        d_ff: int = 128,
        conv_kernel: int = 3,
        embedding_dim: int = 16,
        dropout: float = 0.1,
        attention: dict[str, Any] | None = None,
        static_cardinalities: list[int] | None = None,
        static_embedding_dim: int = 4,
    ):
        super().__init__()
        att = dict(attention or {"pattern": "logsparse"})
        kernel = att.pop("kernel", "auto")
        self.pattern = pattern_from_config(att.pop("pattern", "logsparse"), **att)
        if not self.pattern.causal:
            raise ValueError(f"a forecaster needs a causal attention pattern, got {self.pattern}")
        self.num_series = num_series
        self.embed = nn.Embedding(max(num_series, 1), embedding_dim)
        cards = [int(c) for c in (static_cardinalities or [])]
        self.static_embeds = nn.ModuleList(nn.Embedding(max(c, 1), static_embedding_dim) for c in cards)
        self.inp = nn.Linear(1 + num_covariates + embedding_dim + len(cards) * static_embedding_dim, d_model)
        self.blocks = nn.ModuleList(
            ConvTransformerBlock(d_model, n_heads, d_ff, conv_kernel, kernel, dropout) for _ in range(n_layers)
        )
        self.ln = nn.LayerNorm(d_model)
        self.head = GaussianHead(d_model)

    def forward(
        self, inputs: Tensor, covariates: Tensor, series: Tensor, static: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Distribution of each position's value given everything before it.

        Args:
            inputs: ``(B, L)`` previous scaled values.
            covariates: ``(B, L, F)``.
            series: ``(B,)`` series ids (``-1``: unknown series).
            static: ``(B, S)`` static category codes (``S = len(static_cardinalities)``).
        Returns:
            ``mu, sigma``: each ``(B, L)``.
        """
        x = self._embed(inputs, covariates, series, static)
        for block in self.blocks:
            x = block(x, self.pattern)
        return self.head(self.ln(x))

    def series_features(self, series: Tensor, static: Tensor | None = None) -> Tensor:
        """``(B, E)`` per-series input features: id embedding and static embeddings."""
        known = self.embed(series.clamp(0, self.embed.num_embeddings - 1))
        # A series unseen in training: the average series.
        emb = torch.where((series < 0)[:, None], self.embed.weight.mean(0).expand_as(known), known)
        if len(self.static_embeds):
            if static is None:
                static = torch.zeros(len(series), len(self.static_embeds), dtype=torch.long, device=series.device)
            parts = [e(static[:, i].clamp(0, e.num_embeddings - 1)) for i, e in enumerate(self.static_embeds)]
            emb = torch.cat([emb, *parts], dim=-1)
        return emb

    def _embed(self, inputs: Tensor, covariates: Tensor, series: Tensor, static: Tensor | None = None) -> Tensor:
        B, L = inputs.shape
        emb = self.series_features(series, static)[:, None, :].expand(B, L, -1)
        return self.inp(torch.cat([inputs[..., None], covariates, emb], dim=-1))

    @torch.no_grad()
    def sample(
        self,
        inputs: Tensor,
        covariates: Tensor,
        series: Tensor,
        num_samples: int = 100,
        generator: torch.Generator | None = None,
        noise: Tensor | None = None,
        static: Tensor | None = None,
    ) -> Tensor:
        """Ancestral sampling of future paths.

        Args:
            inputs: ``(B, C + 1)`` scaled values known at forecast time (lagged by one).
            covariates: ``(B, C + H, F)`` covariates of the context and the horizon.
            series: ``(B,)``.
            num_samples: sample paths per series.
            generator: random source for the draws.
            noise: optional ``(B, num_samples, H)`` standard-normal draws to use instead,
                so that forecasts do not depend on batching or on the global random state.
            static: ``(B, S)`` static category codes.
        Returns:
            ``(B, num_samples, H)`` scaled sample paths.
        """
        # The context is encoded once per series; each sampled step then costs one
        # position per layer, with keys and values cached.
        B, C1 = inputs.shape
        L = covariates.shape[1]
        H = L - C1 + 1
        S = num_samples
        x = self._embed(inputs, covariates[:, :C1], series, static)
        states = []
        for block in self.blocks:
            x, st = block.prefill(x, self.pattern, L, S)
            states.append(st)
        mu, sigma = self.head(self.ln(x[:, -1:]))
        mu, sigma = mu.repeat_interleave(S, 0), sigma.repeat_interleave(S, 0)
        sid = series.repeat_interleave(S, 0)
        eps = None if noise is None else noise.reshape(B * S, H)
        sst = None if static is None else static.repeat_interleave(S, 0)
        out = []
        for h in range(H):
            draw = GaussianHead.sample(mu[:, -1], sigma[:, -1], generator, None if eps is None else eps[:, h])
            out.append(draw)
            if h == H - 1:
                break
            pos = C1 + h
            cov = covariates[:, pos : pos + 1].repeat_interleave(S, 0)
            xt = self._embed(draw[:, None], cov, sid, sst)
            for block, st in zip(self.blocks, states):
                xt = block.step(xt, st, self.pattern)
            mu, sigma = self.head(self.ln(xt))
        return torch.stack(out, dim=1).view(B, S, H)

    @torch.no_grad()
    def sample_reference(
        self,
        inputs: Tensor,
        covariates: Tensor,
        series: Tensor,
        num_samples: int = 100,
        generator: torch.Generator | None = None,
        static: Tensor | None = None,
    ) -> Tensor:
        """:meth:`sample` by re-running the whole sequence each step: slow, for tests."""
        B, C1 = inputs.shape
        L = covariates.shape[1]
        H = L - C1 + 1
        S = num_samples
        x = inputs.repeat_interleave(S, 0)
        cov = covariates.repeat_interleave(S, 0)
        sid = series.repeat_interleave(S, 0)
        sst = None if static is None else static.repeat_interleave(S, 0)
        out = []
        for h in range(H):
            n = C1 + h  # positions 0..n-1 have inputs; we predict position n-1
            mu, sigma = self(x, cov[:, :n], sid, sst)
            draw = GaussianHead.sample(mu[:, -1], sigma[:, -1], generator)
            out.append(draw)
            x = torch.cat([x, draw[:, None]], dim=1)
        return torch.stack(out, dim=1).view(B, S, H)
