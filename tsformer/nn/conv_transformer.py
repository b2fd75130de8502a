"""Decoder-only Transformer with convolutional self-attention for forecasting.

Li et al., NeurIPS 2019, "Enhancing the Locality and Breaking the Memory Bottleneck of
Transformer on Time Series Forecasting" (https://arxiv.org/abs/1907.00235):
queries and keys come from a causal 1-D convolution over time, so that attention
compares local shapes rather than single points; with a LogSparse pattern each layer
costs O(L log L).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from tsformer.nn.attention import AttentionLayer, build_attention
from tsformer.nn.blocks import ReversibleCall, make_ffn, merge_pair, run_reversible
from tsformer.nn.decoding import DecodeCache, KVCache, decode_values
from tsformer.nn.likelihoods import GaussianHead
from tsformer.nn.pangu import make_shortcut


class ConvTransformerBlock(nn.Module):
    """Pre-norm block: self-attention (an injected :class:`AttentionLayer`), then a
    feed-forward network.

    Args:
        d_model, d_ff: widths.
        attn: the attention layer (``(B, L, d) -> (B, L, d)``).
        dropout: feed-forward dropout.
        ffn: ``mlp``, ``glu``, ``rwkv``, ``series`` or ``none`` (:data:`tsformer.nn.blocks.FFNS`);
            ``series``: its ``model.series`` options.
        shortcut, augmented: ``model.shortcut`` (``identity`` | ``augmented``: PanGu-π's
            augmented shortcuts beside attention, :func:`tsformer.nn.pangu.make_shortcut`) and
            ``model.augmented`` options.
    """

    def __init__(self, d_model: int, d_ff: int, attn: AttentionLayer, dropout: float, ffn: str = "mlp",
                 layer: int = 0, n_layers: int = 1, series: dict | None = None, shortcut: str = "identity",
                 augmented: dict | None = None):
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = attn
        self.aug = make_shortcut(shortcut, d_model, augmented)
        self.ff = make_ffn(ffn, d_model, d_ff, dropout, layer=layer, n_layers=n_layers, series=series)
        if self.ff is not None:
            self.ln2 = nn.LayerNorm(d_model)

    def forward(self, x: Tensor, lengths: Tensor | None = None, cache: KVCache | None = None) -> Tensor:
        """``(B, L, d)`` -> ``(B, L, d)``; with a cache, ``x`` is the next positions."""
        x = x + self.attn_branch(x, lengths, cache=cache)
        return x + self.ff_branch(x, cache=cache)

    def attn_branch(self, x: Tensor, lengths: Tensor | None = None, cache: KVCache | None = None) -> Tensor:
        """The attention residual branch (also a reversible layer's ``F``)."""
        h = self.ln1(x)
        y = self.attn(h, lengths, cache=cache)
        return y if self.aug is None else y + self.aug(h)  # PanGu-π Eq. 4: MSA(z) + z + sum_i T_i(z)

    def ff_branch(self, x: Tensor, cache: KVCache | None = None) -> Tensor:
        """The feed-forward residual branch (a reversible layer's ``G``); zero without one."""
        if self.ff is None:
            return torch.zeros_like(x)
        h = self.ln2(x)
        return self.ff(h, cache=cache) if getattr(self.ff, "takes_cache", False) else self.ff(h)

    def fill_cache(self, x: Tensor, cache: KVCache) -> None:
        """State propagation for early exit (:func:`tsformer.nn.early_exit.propagate`): keys
        and values (and a recurrent feed-forward's state) from the exited state ``x``."""
        self.attn(self.ln1(x), cache=cache)
        if getattr(self.ff, "takes_cache", False):
            self.ff(self.ln2(x), cache=cache)


def conv_blocks(attention: Mapping[str, Any] | None, n_layers: int, d_model: int, n_heads: int, d_ff: int,
                conv_kernel: int, dropout: float, causal: bool | None, network: str, ffn: str = "mlp",
                **parts) -> nn.ModuleList:
    """The forecasters' blocks: attention from ``model.attention`` (default: LogSparse
    convolutional self-attention, Li et al. 2019) with the model's ``conv_kernel``; ``parts``:
    ``series``, ``shortcut``, ``augmented`` (:class:`ConvTransformerBlock`)."""
    defaults = {"type": "conv", "pattern": "logsparse"}
    shared: dict = {}
    return nn.ModuleList(
        ConvTransformerBlock(
            d_model, d_ff,
            build_attention(attention, d_model, n_heads, causal=causal, defaults=defaults, network=network,
                            shared=shared, kernel_size=conv_kernel, out_dropout=dropout, layer=i, n_layers=n_layers),
            dropout, ffn, i, n_layers, **parts,
        )
        for i in range(n_layers)
    )


def run_blocks(blocks: nn.ModuleList, x: Tensor, reversible: bool = False, cache: DecodeCache | None = None) -> Tensor:
    """``x (B, L, d)`` through the blocks: a plain residual stack, or a reversible one
    (Reformer, Sec. 4); with a cache, the next positions of incremental decoding."""
    if reversible and cache is not None:
        return merge_pair(cache.run([ReversibleCall(b) for b in blocks], torch.cat([x, x], dim=-1)))
    if cache is not None:
        return cache.run(blocks, x)
    if reversible:
        return run_reversible(blocks, x)
    for block in blocks:
        x = block(x)
    return x


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
        attention: ``model.attention`` (:class:`~tsformer.nn.attention.AttentionSpec`):
            ``type`` (default ``conv``; any causal-capable type), a causal ``pattern``
            (default ``logsparse``; ``causal``, one-sided ``window``) and its options,
            ``kernel``, ``positions``.
        static_cardinalities: number of categories of each static categorical series
            feature (code 0 = unknown); each gets its own embedding.
        static_embedding_dim: size of each static feature's embedding.
        ffn: ``mlp`` or ``none`` (see :class:`ConvTransformerBlock`).
        reversible: reversible residual layers (Reformer, Sec. 4;
            :func:`tsformer.nn.blocks.run_reversible`): activations are recomputed in the
            backward instead of stored.
        series, shortcut, augmented: PanGu-π's parts (see :class:`ConvTransformerBlock`).
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
        ffn: str = "mlp",
        reversible: bool = False,
        series: dict | None = None,
        shortcut: str = "identity",
        augmented: dict | None = None,
    ):
        super().__init__()
        self.reversible = bool(reversible)
        self.num_series = num_series
        self.embed = nn.Embedding(max(num_series, 1), embedding_dim)
        cards = [int(c) for c in (static_cardinalities or [])]
        self.static_embeds = nn.ModuleList(nn.Embedding(max(c, 1), static_embedding_dim) for c in cards)
        self.inp = nn.Linear(1 + num_covariates + embedding_dim + len(cards) * static_embedding_dim, d_model)
        self.blocks = conv_blocks(attention, n_layers, d_model, n_heads, d_ff, conv_kernel, dropout, causal=True,
                                  network="the forecaster (ConvTransformerForecaster)", ffn=ffn, series=series,
                                  shortcut=shortcut, augmented=augmented)
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
        return self.head(self.ln(run_blocks(self.blocks, x, self.reversible)))

    def hidden_states(self, inputs: Tensor, covariates: Tensor, series: Tensor,
                      static: Tensor | None = None) -> list[Tensor]:
        """Every block's output ``(B, L, d)`` (arguments as :meth:`forward`): the states
        CALM's per-layer heads (:meth:`readout`) and exit classifier read."""
        if self.reversible:
            raise ValueError("per-layer outputs (module.exit_heads) need the plain residual stack; "
                             "model.reversible=true carries two streams per block")
        x = self._embed(inputs, covariates, series, static)
        out = []
        for block in self.blocks:
            x = block(x)
            out.append(x)
        return out

    def readout(self, h: Tensor) -> tuple[Tensor, Tensor]:
        """The shared likelihood head (final norm, Gaussian) on any block's states."""
        return self.head(self.ln(h))

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

    def _embed(self, inputs: Tensor, covariates: Tensor, series: Tensor | None, static: Tensor | None = None,
               features: Tensor | None = None) -> Tensor:
        """``(B, L, d)`` block inputs; ``features``: :meth:`series_features`, when computed already."""
        B, L = inputs.shape
        emb = (self.series_features(series, static) if features is None else features)[:, None, :].expand(B, L, -1)
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
        decode: dict[str, Any] | None = None,
        early_exit: Any = None,
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
            decode: the ``decode`` options (:func:`tsformer.nn.decoding.decode_values`):
                ``method=jacobi`` updates all horizon positions per forward pass from
                pre-drawn noise (drawn here from ``generator`` when ``noise`` is None) and
                reaches the paths that sequential sampling gives with that noise.
            early_exit: a CALM exit rule (:class:`tsformer.nn.early_exit.EarlyExit`) for
                the sampled steps, or None (every layer).
        Returns:
            ``(B, num_samples, H)`` scaled sample paths.
        """
        # The context is encoded once per series (the cache's shared prefix); each sampled
        # step then costs one position per layer and path, with keys and values cached.
        B, C1 = inputs.shape
        L = covariates.shape[1]
        H = L - C1 + 1
        S = num_samples
        if noise is None and (decode or {}).get("method", "sequential") != "sequential":
            # Parallel decoding needs every path's noise up front.
            noise = torch.randn(B, S, H, generator=generator, device=inputs.device, dtype=inputs.dtype)
        cache = DecodeCache.create(len(self.blocks), B, S, L)
        if early_exit is not None and self.reversible:
            raise ValueError("early exit (CALM) needs the plain residual stack, not model.reversible=true")
        cache.early_exit = early_exit
        x = run_blocks(self.blocks, self._embed(inputs, covariates[:, :C1], series, static), self.reversible, cache)
        mu, sigma = self.head(self.ln(x[:, -1:]))
        # Each path's series features, looked up once rather than at every step.
        feats = self.series_features(series, static).repeat_interleave(S, 0)
        eps = None if noise is None else noise.reshape(B * S, H)
        first = GaussianHead.sample(mu[:, -1].repeat_interleave(S, 0), sigma[:, -1].repeat_interleave(S, 0),
                                    generator, None if eps is None else eps[:, 0])

        def step(prev: Tensor, start: int) -> Tensor:
            # prev: (B S, m) draws of horizon steps start .. start + m - 1, fed as inputs
            pos = C1 + start
            m = prev.shape[1]
            cov = covariates[:, pos : pos + m].repeat_interleave(S, 0)
            mu, sigma = self.head(self.ln(run_blocks(self.blocks, self._embed(prev, cov, None, features=feats), self.reversible, cache)))
            return GaussianHead.sample(mu, sigma, generator, None if eps is None else eps[:, start + 1 : start + 1 + m])

        out, _ = decode_values(step, first, H, cache, decode)
        return out.view(B, S, H)

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
