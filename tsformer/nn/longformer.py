"""Longformer (Beltagy, Peters & Cohan 2020, "Longformer: The Long-Document Transformer",
https://arxiv.org/abs/2004.05150): a document classifier and a character language model.

Each layer attends within a sliding window (its own size per layer, optionally dilated on
some heads), plus global attention at marked positions (the classification token), which
uses its own query/key/value projections as in the paper
(:class:`~tsformer.nn.attention.LongformerSelfAttention`, or any attention type that fits,
from ``model.attention.type``).

``LongformerClassifier`` with ``attention.pattern=full`` and ``truncate=512`` is the
"plain Transformer on the first 512 tokens" comparison (``model=transformer_truncated``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tsformer.nn.attention import AttentionLayer, build_attention
from tsformer.nn.attention.base import rename_keys
from tsformer.nn.blocks import ReversibleCall, make_ffn, merge_pair, run_reversible
from tsformer.nn.decoding import DecodeCache, KVCache
from tsformer.nn.pangu import make_shortcut
from tsformer.nn.precision import AUTOCAST, FP32LayerNorm
from tsformer.nn.precision import autocast as autocast_context
from tsformer.nn.unpad import Packing


def _per_layer(value: int | Sequence[int], n_layers: int, name: str) -> list[int]:
    """Broadcast an int to ``n_layers`` values, or check a list has ``n_layers`` entries."""
    if isinstance(value, int):
        return [value] * n_layers
    out = [int(v) for v in value]
    if len(out) != n_layers:
        raise ValueError(f"{name} has {len(out)} entries for {n_layers} layers")
    return out


def draw_token_mask(tokens: Tensor, prob: float, keep: Sequence[int] = (),
                    generator: torch.Generator | None = None) -> Tensor:
    """``(B, L)`` bool: each position drawn with probability ``prob``, never those in ``keep``
    (global tokens). Shared by word dropout and masked-LM pretraining."""
    drop = torch.rand(tokens.shape, device=tokens.device, generator=generator) < prob
    drop[:, [i for i in keep if i < tokens.shape[1]]] = False
    return drop


class LongformerLayer(nn.Module):
    """Pre-norm Transformer layer around an attention layer (pre-norm trains more stably
    from scratch than the paper's post-norm RoBERTa layout).

    Args:
        d_model, d_ff: widths.
        attn: the attention layer (output projection included).
        dropout: residual dropout.
        ffn: ``mlp``, ``glu``, ``rwkv``, ``series`` or ``none`` (:data:`tsformer.nn.blocks.FFNS`).
        series, shortcut, augmented: PanGu-π's parts (``model.series``, ``model.shortcut``,
            ``model.augmented``; see :class:`tsformer.nn.conv_transformer.ConvTransformerBlock`).
    """

    def __init__(self, d_model: int, d_ff: int, attn: AttentionLayer, dropout: float, ffn: str = "mlp",
                 layer: int = 0, n_layers: int = 1, series: dict | None = None, shortcut: str = "identity",
                 augmented: dict | None = None):
        super().__init__()
        self.norm1 = FP32LayerNorm(d_model)
        self.attn = attn
        self.aug = make_shortcut(shortcut, d_model, augmented)
        self.ff = make_ffn(ffn, d_model, d_ff, dropout, inner_dropout=False, layer=layer, n_layers=n_layers,
                           series=series)
        if self.ff is not None:
            self.norm2 = FP32LayerNorm(d_model)
        self.drop = nn.Dropout(dropout)
        # The output projection moved into the attention layer.
        self._register_load_state_dict_pre_hook(rename_keys({"out.": "attn.out."}))

    def forward(self, x: Tensor, lengths: Tensor | None = None, global_idx: Sequence[int] = (),
                cache: KVCache | None = None, memory: Tensor | None = None, packing: Packing | None = None) -> Tensor:
        """``memory``: this layer's input hidden states of earlier segments (Transformer-XL),
        normalised here like the segment's. ``packing``: ``x`` is ``(T, E)``, the packed real
        tokens (``model.unpad``); attention re-pads them (:meth:`AttentionLayer.forward_packed`)."""
        x = x + self.attn_branch(x, lengths, global_idx, cache=cache, memory=memory, packing=packing)
        return x + self.ff_branch(x, cache=cache)

    def attn_branch(self, x: Tensor, lengths: Tensor | None = None, global_idx: Sequence[int] = (),
                    cache: KVCache | None = None, memory: Tensor | None = None,
                    packing: Packing | None = None) -> Tensor:
        """The attention residual branch (also a reversible layer's ``F``)."""
        h = self.norm1(x)
        if packing is not None:
            y = self.attn.forward_packed(h, packing, global_idx)
            return self.drop(y if self.aug is None else y + self.aug(h))
        kw = {} if memory is None else {"memory": self.norm1(memory)}
        y = self.attn(h, lengths, global_idx, cache=cache, **kw)
        return self.drop(y if self.aug is None else y + self.aug(h))  # PanGu-π Eq. 4

    def ff_branch(self, x: Tensor, cache: KVCache | None = None) -> Tensor:
        """The feed-forward residual branch (a reversible layer's ``G``); zero without one."""
        if self.ff is None:
            return torch.zeros_like(x)
        h = self.norm2(x)
        return self.drop(self.ff(h, cache=cache) if getattr(self.ff, "takes_cache", False) else self.ff(h))

    def fill_cache(self, x: Tensor, cache: KVCache) -> None:
        """State propagation for early exit (:func:`tsformer.nn.early_exit.propagate`): this
        layer's keys and values (and a recurrent feed-forward's state) for ``x (B, l, d)``, the
        exited state copied up; the output is not needed, so the feed-forward is skipped."""
        self.attn(self.norm1(x), cache=cache)
        if getattr(self.ff, "takes_cache", False):
            self.ff(self.norm2(x), cache=cache)


class LongformerEncoder(nn.Module):
    """Token embedding, positions and a stack of Longformer layers.

    Args:
        vocab_size: token ids are ``0..vocab_size-1`` (0 = padding).
        d_model, n_heads, n_layers, d_ff: sizes.
        window: window size, one per layer or one for all (the paper grows it with depth).
        dilation: dilation per layer (or one for all); ``dilated_heads`` heads use it.
        dilated_heads: how many heads (the last ones) are dilated; 0 = all of them.
        max_tokens: longest input; learned positions are allocated up to it.
        positions: ``model.attention.positions`` where that is not set (``learned``, an
            input table up to ``max_tokens``; ``rotary``; ``relative``; ``none``).
        one_sided: causal windows (character LM).
        attention: ``model.attention``: ``type`` (default ``longformer``; any type that
            fits), ``pattern`` (``window`` | ``full`` for Longformer), ``kernel``, ...
        truncate: keep only the first ``truncate`` tokens (None: all).
        dropout: residual and embedding dropout.
        ffn: ``mlp``, ``glu``, ``rwkv``, ``series`` or ``none`` (:data:`tsformer.nn.blocks.FFNS`).
        unpad: run embeddings, projections, feed-forward and norms on the real tokens of a
            padded batch only, packed (MosaicBERT, Portes et al. 2023; :mod:`tsformer.nn.unpad`);
            attention still sees each document's own tokens. Bidirectional encoders only.
        autocast: ``bf16``: run under bf16 autocast where the device has native bf16
            (:func:`tsformer.nn.precision.bf16_available`); LayerNorm statistics stay fp32.
        reversible: reversible residual layers (Reformer, Sec. 4;
            :func:`tsformer.nn.blocks.run_reversible`): activations are recomputed in the
            backward instead of stored, so training memory does not grow with depth.
        series, shortcut, augmented: PanGu-π's parts (:class:`LongformerLayer`).
    """

    def __init__(self, vocab_size: int, d_model: int = 128, n_heads: int = 4, n_layers: int = 2, d_ff: int = 256,
                 window: int | Sequence[int] = 256, dilation: int | Sequence[int] = 1, dilated_heads: int = 0,
                 max_tokens: int = 4096, positions: str = "learned", one_sided: bool = False,
                 attention: dict | None = None, truncate: int | None = None, dropout: float = 0.1,
                 ffn: str = "mlp", series: dict | None = None, shortcut: str = "identity",
                 augmented: dict | None = None, unpad: bool = False, autocast: str | None = None,
                 reversible: bool = False):
        super().__init__()
        if unpad and one_sided:
            raise ValueError("model.unpad needs a bidirectional encoder on padded batches; the character LM "
                             "(LongformerCharLM) reads unpadded windows and decodes through a cache")
        if unpad and ffn == "rwkv":
            raise ValueError("model.unpad cannot take model.ffn=rwkv: its token shift reads the previous "
                             "position of the padded layout, which packing removes")
        if unpad and ffn == "series" and (series or {}).get("context", 0):
            raise ValueError("model.unpad cannot take model.series.context > 0: the packed rows of neighbouring "
                             "documents are adjacent, so the series would mix them; use context: 0")
        if unpad and reversible:
            raise ValueError("model.unpad and model.reversible cannot be combined yet: the packed path runs "
                             "the plain residual stack")
        if autocast not in AUTOCAST:
            raise ValueError(f"model.autocast={autocast!r}; choose one of {AUTOCAST}")
        self.unpad, self.autocast, self.reversible = bool(unpad), autocast, bool(reversible)
        attention = {"positions": positions, **dict(attention or {})}
        self.positions = attention["positions"] = attention.pop("pos", attention["positions"])
        self.max_tokens, self.truncate = int(max_tokens), truncate
        self.embed = nn.Embedding(vocab_size, d_model, padding_idx=0)
        self.pos = nn.Embedding(self.max_tokens, d_model) if self.positions == "learned" else None
        windows = _per_layer(window, n_layers, "window")
        dilations = _per_layer(dilation, n_layers, "dilation")
        name = "the character LM (LongformerCharLM)" if one_sided else "LongformerEncoder"
        defaults = {"type": "longformer", "pattern": "window", "one_sided": one_sided}
        shared: dict = {}  # parts the layers share (Linformer sharing=layer)
        self.layers = nn.ModuleList(
            LongformerLayer(d_model, d_ff, build_attention(
                {**attention, "window": w, "dilation": r}, d_model, n_heads, causal=one_sided or None,
                defaults=defaults, network=name, shared=shared, dilated_heads=dilated_heads,
                max_len=self.max_tokens, layer=i, n_layers=n_layers), dropout, ffn, i, n_layers, series, shortcut,
                augmented)
            for i, (w, r) in enumerate(zip(windows, dilations))
        )
        self.norm = FP32LayerNorm(d_model)
        self.drop = nn.Dropout(dropout)
        nn.init.normal_(self.embed.weight, std=0.02)
        if self.pos is not None:
            nn.init.normal_(self.pos.weight, std=0.02)

    def embed_tokens(self, tokens: Tensor, start: int = 0, cached: bool = False) -> Tensor:
        """``(B, L)`` ids at positions ``start..`` -> ``(B, L, d)`` layer inputs (embedding,
        learned positions, dropout)."""
        L = self.check_length(tokens.shape[1], start, cached)
        x = self.embed(tokens)
        if self.pos is not None:
            x = x + self.pos.weight[start : start + L]
        return self.drop(x)

    def check_length(self, L: int, start: int = 0, cached: bool = False) -> int:
        """``L`` tokens at ``start`` fit: a learned table ends at ``max_tokens``; relative
        positions only limit one full pass."""
        if start + L > self.max_tokens and (self.pos is not None or not cached):
            raise ValueError(f"input of {start + L} tokens is longer than max_tokens={self.max_tokens}")
        return L

    def forward(self, tokens: Tensor, lengths: Tensor | None = None, global_idx: Sequence[int] = (),
                cache: DecodeCache | None = None) -> Tensor:
        """Args:
            tokens: ``(B, L)`` ids, 0 = padding; with a cache, the next tokens of each path.
            lengths: ``(B,)`` real lengths, or None (all ``L``).
            global_idx: positions with global attention.
            cache: incremental decoding (causal encoders): the first call fills it, later
                calls continue at position ``cache.length``.
        Returns:
            ``(B, L', E)`` with ``L' = min(L, truncate)`` (zeros at the padding with ``unpad``).
        """
        with autocast_context(self.autocast, tokens.device):
            return self._forward(tokens, lengths, global_idx, cache)

    def _forward(self, tokens: Tensor, lengths: Tensor | None, global_idx: Sequence[int],
                 cache: DecodeCache | None) -> Tensor:
        if self.truncate is not None and tokens.shape[1] > self.truncate:
            tokens = tokens[:, : self.truncate]
        if lengths is not None:
            lengths = lengths.clamp(max=tokens.shape[1])
        start = 0 if cache is None else cache.length
        if self.unpad and lengths is not None and cache is None:
            self.check_length(tokens.shape[1], start, cached=False)
            return self._forward_packed(tokens, Packing.from_lengths(lengths, tokens.shape[1]), global_idx)
        x = self.embed_tokens(tokens, start, cache is not None)
        if cache is not None and self.reversible:
            pair = cache.run([ReversibleCall(layer) for layer in self.layers], torch.cat([x, x], dim=-1))
            return self.norm(merge_pair(pair))
        if cache is not None:
            return self.norm(cache.run(self.layers, x))
        if self.reversible:
            return self.norm(run_reversible(self.layers, x, lengths, global_idx))
        for layer in self.layers:
            x = layer(x, lengths, global_idx)
        return self.norm(x)

    def _forward_packed(self, tokens: Tensor, packing: Packing, global_idx: Sequence[int]) -> Tensor:
        """MosaicBERT's unpadded encoder: ``(T, E)`` packed rows from the embeddings to the
        final norm, padded once at the end."""
        x = self.embed(packing.unpad(tokens))
        if self.pos is not None:
            x = x + self.pos(packing.positions())
        x = self.drop(x)
        for layer in self.layers:
            x = layer(x, global_idx=global_idx, packing=packing)
        return packing.pad(self.norm(x))


class LongformerClassifier(nn.Module):
    """Document classifier: the encoder's output at the classification token (position 0,
    with global attention), or its mean over the document, through a small head.

    Args:
        vocab_size, num_classes: from the data.
        global_tokens: positions with global attention (the ``<cls>`` token at 0).
        pooling: ``cls`` (the paper's readout), ``mean`` (over valid positions) or
            ``cls_mean`` (their sum).
        token_dropout: in training, the share of input tokens (global positions excepted)
            replaced by padding's zero embedding: word dropout (Iyyer et al. 2015), a
            regularizer for small training sets.
        **encoder: :class:`LongformerEncoder` arguments.
    """

    POOLING = ("cls", "mean", "cls_mean")

    def __init__(self, vocab_size: int, num_classes: int, global_tokens: Sequence[int] = (0,),
                 dropout: float = 0.1, pooling: str = "cls", token_dropout: float = 0.0, **encoder):
        super().__init__()
        if pooling not in self.POOLING:
            raise ValueError(f"model.pooling must be one of {self.POOLING}, got {pooling!r}")
        if not 0.0 <= token_dropout < 1.0:
            raise ValueError(f"model.token_dropout must be in [0, 1), got {token_dropout}")
        self.pooling, self.token_dropout = pooling, float(token_dropout)
        self.encoder = LongformerEncoder(vocab_size, dropout=dropout, **encoder)
        self.global_tokens = tuple(int(i) for i in global_tokens)
        d = self.encoder.norm.normalized_shape[0]
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(d, d), nn.Tanh(), nn.Dropout(dropout),
                                  nn.Linear(d, num_classes))

    def forward(self, tokens: Tensor, lengths: Tensor | None = None, global_idx: Sequence[int] | None = None) -> Tensor:
        """Args:
            tokens: ``(B, L)``, ``<cls>`` first. lengths: ``(B,)`` or None.
            global_idx: extra global positions a task marks (beside ``global_tokens``).
        Returns:
            ``(B, num_classes)`` logits.
        """
        g = tuple(sorted(set(self.global_tokens) | set(global_idx or ())))
        if self.training and self.token_dropout > 0:
            tokens = tokens.masked_fill(draw_token_mask(tokens, self.token_dropout, g), 0)  # id 0: padding_idx, a zero embedding
        h = self.encoder(tokens, lengths, g)  # (B, L', E), L' <= L when truncated
        if self.pooling == "cls":
            return self.head(h[:, 0])
        L = h.shape[1]
        n = torch.full((h.shape[0],), L, device=h.device) if lengths is None else lengths.clamp(1, L)
        valid = (torch.arange(L, device=h.device)[None, :] < n[:, None]).to(h.dtype)  # (B, L')
        pooled = (h * valid[..., None]).sum(1) / n[:, None].to(h.dtype)
        return self.head(pooled if self.pooling == "mean" else pooled + h[:, 0])


class LongformerMaskedLM(nn.Module):
    """Masked-language-model pretraining of :class:`LongformerEncoder` on unlabeled documents
    (Devlin et al. 2019; Longformer's own pretraining objective, Beltagy et al. 2020, Sec. 5).

    A share ``mask_prob`` of the real tokens (``<cls>`` excepted) is replaced by padding's zero
    embedding, the same "missing word" input that word dropout gives the classifier, and
    predicted from the encoder output through the tied input embedding. The encoder's weights
    then start a classifier (``init_from=<checkpoint>``).

    Args:
        vocab_size: from the data.
        mask_prob: share of real tokens masked and predicted.
        num_classes: ignored (the text data module passes it to every text model).
        **encoder: :class:`LongformerEncoder` arguments.
    """

    def __init__(self, vocab_size: int, mask_prob: float = 0.15, dropout: float = 0.1, num_classes: int | None = None,
                 **encoder):
        super().__init__()
        if not 0.0 < mask_prob < 1.0:
            raise ValueError(f"model.mask_prob must be in (0, 1), got {mask_prob}")
        self.mask_prob = float(mask_prob)
        self.encoder = LongformerEncoder(vocab_size, dropout=dropout, **encoder)

    def forward(self, tokens: Tensor, lengths: Tensor | None = None,
                generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Args:
            tokens: ``(B, L)`` ids, ``<cls>`` first, 0 = padding. lengths: ``(B,)`` or None.
            generator: draws the mask (a seeded one makes evaluation repeatable).
        Returns:
            Summed cross-entropy over the masked tokens, how many of them the argmax got
            right, and how many were masked (scalars).
        """
        if self.encoder.truncate is not None:
            tokens = tokens[:, : self.encoder.truncate]
        B, L = tokens.shape
        n = torch.full((B,), L, device=tokens.device) if lengths is None else lengths.clamp(max=L)
        real = (torch.arange(L, device=tokens.device)[None, :] < n[:, None]) & (tokens != 0)
        sel = draw_token_mask(tokens, self.mask_prob, (0,), generator) & real  # <cls> is never a target
        h = self.encoder(tokens.masked_fill(sel, 0), n, (0,))
        logits = F.linear(h[sel], self.encoder.embed.weight).float()  # (N, V), tied embedding
        target = tokens[sel]
        nll = F.cross_entropy(logits, target, reduction="sum")
        return nll, (logits.argmax(-1) == target).sum(), sel.sum()


class LongformerCharLM(nn.Module):
    """Causal character LM with one-sided sliding-window attention (Beltagy et al. 2020,
    Sec. 4: windows growing with depth, dilation on the upper layers).

    Args:
        vocab_size: from the data.
        **encoder: :class:`LongformerEncoder` arguments (``one_sided`` is forced on).
    """

    def __init__(self, vocab_size: int, dropout: float = 0.1, memory: dict | None = None, **encoder):
        super().__init__()
        encoder["one_sided"] = True
        self.encoder = LongformerEncoder(vocab_size, dropout=dropout, **encoder)
        self.lm_head = nn.Linear(self.encoder.embed.embedding_dim, vocab_size, bias=False)
        self.lm_head.weight = self.encoder.embed.weight  # tied (Press & Wolf 2017)
        memory = dict(memory or {})
        unknown = sorted(set(memory) - {"length", "eval_length"})
        if unknown:
            raise ValueError(f"model.memory takes length and eval_length, not {unknown}")
        self.memory_length = int(memory.get("length") or 0)
        self.eval_memory_length = int(memory.get("eval_length") or self.memory_length)
        if self.memory_length or self.eval_memory_length:
            if self.encoder.reversible:
                raise ValueError("model.memory cannot be combined with model.reversible=true: the segment memory "
                                 "keeps every layer's input, which reversible layers recompute instead of storing")
            if self.encoder.positions == "learned":
                raise ValueError("model.memory needs relative positions (xl, rotary, alibi, relative or none): "
                                 "a learned table cannot place memory positions before the segment")
            for layer in self.encoder.layers:
                if not type(layer.attn).segment_memory:
                    raise ValueError(f"model.memory: attention type {layer.attn.spec.type!r} has no segment memory; "
                                     "use mhsa, mqa or longformer")

    @property
    def uses_memory(self) -> bool:
        """Whether training and evaluation run segment by segment with a memory."""
        return self.memory_length > 0 or self.eval_memory_length > 0

    def forward_segment(self, tokens: Tensor, memory: list[Tensor] | None = None,
                        length: int | None = None) -> tuple[Tensor, list[Tensor]]:
        """One segment with Transformer-XL's recurrence (Dai et al. 2019, Sec. 3.2).

        Args:
            tokens: ``(B, L)`` the segment.
            memory: per layer, ``(B, M, d)`` that layer's inputs over the previous positions
                (from the previous call), or None at the start of a stream.
            length: memory kept for the next segment (default: ``memory.length`` in training,
                ``memory.eval_length`` in evaluation).
        Returns:
            ``(B, L, vocab)`` logits and the next memory, taken without gradient.
        """
        if length is None:
            length = self.memory_length if self.training else self.eval_memory_length
        enc = self.encoder
        x = enc.drop(enc.embed(tokens))
        new_memory = []
        for n, layer in enumerate(enc.layers):
            mem = None if not memory else memory[n]
            joined = x if mem is None else torch.cat([mem, x], dim=1)
            new_memory.append(joined[:, max(0, joined.shape[1] - length) :].detach())
            x = layer(x, memory=mem if mem is not None and mem.shape[1] else None)
        return self.lm_head(enc.norm(x)), new_memory

    def forward(self, tokens: Tensor, cache: DecodeCache | None = None) -> Tensor:
        """``(B, L)`` ids -> ``(B, L, vocab)`` logits of the next character.

        With a cache (:meth:`new_cache`), the first call encodes the prompt and each later
        call only the new characters, attending over everything cached.
        """
        return self.lm_head(self.encoder(tokens, cache=cache))

    def hidden_states(self, tokens: Tensor) -> list[Tensor]:
        """Every layer's output ``(B, L, d)`` for ``(B, L)`` ids (no cache, no memory): the
        states CALM's per-layer heads (:meth:`readout`) and exit classifier read."""
        if self.uses_memory:
            raise ValueError("per-layer outputs (module.exit_heads) are not available with model.memory")
        if self.encoder.reversible:
            raise ValueError("per-layer outputs (module.exit_heads) need the plain residual stack; "
                             "model.reversible=true carries two streams per layer")
        x = self.encoder.embed_tokens(tokens)
        out = []
        for layer in self.encoder.layers:
            x = layer(x)
            out.append(x)
        return out

    def readout(self, h: Tensor) -> Tensor:
        """The shared output head (final norm and tied projection) on any layer's states:
        ``(..., d)`` -> ``(..., vocab)`` logits."""
        return self.lm_head(self.encoder.norm(h))

    def new_cache(self, batch: int, max_len: int, repeat: int = 1) -> DecodeCache:
        """An empty decoding cache for ``batch`` prompts of ``repeat`` paths, up to ``max_len``."""
        return DecodeCache.create(len(self.encoder.layers), batch, repeat, max_len)


def bits_per_char(logits: Tensor, targets: Tensor, weight: Tensor | None = None) -> Tensor:
    """Mean cross-entropy in bits: ``(B, L, V)`` logits, ``(B, L)`` targets and weights."""
    nll = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), reduction="none")
    w = torch.ones_like(nll) if weight is None else weight.flatten().to(nll.dtype)
    return (nll * w).sum() / w.sum().clamp_min(1) / math.log(2)


def mosaicbert(task: str, vocab_size: int, num_classes: int | None = None, mask_prob: float = 0.3,
               global_tokens: Sequence[int] = (0,), pooling: str = "mean", token_dropout: float = 0.0,
               **encoder) -> nn.Module:
    """MosaicBERT's recipe (Portes et al. 2023, "MosaicBERT: A Bidirectional Encoder Optimized
    for Fast Pretraining", NeurIPS, Sec. 2) on the Longformer encoder, as the network of the
    task in hand (``model=mosaicbert``): ALiBi, a GLU feed-forward, unpadding, 30% masking
    and bf16 autocast come from ``conf/model/mosaicbert.yaml``.

    Args:
        task: ``task_name``: ``mlm`` builds :class:`LongformerMaskedLM` (masking ``mask_prob``
            of the real tokens); any other task a :class:`LongformerClassifier` (with
            ``num_classes``, ``global_tokens``, ``pooling``, ``token_dropout``). Both keep the
            encoder under ``encoder.``, so a pretraining checkpoint starts the classifier.
        **encoder: :class:`LongformerEncoder` arguments (``dropout`` included).
    """
    if task == "mlm":
        return LongformerMaskedLM(vocab_size, mask_prob=mask_prob, **encoder)
    if num_classes is None:
        raise ValueError(f"model=mosaicbert for task {task!r} builds a classifier and needs num_classes")
    return LongformerClassifier(vocab_size, num_classes, global_tokens, pooling=pooling, token_dropout=token_dropout,
                                **encoder)
