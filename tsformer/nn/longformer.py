"""Longformer (Beltagy, Peters & Cohan 2020, "Longformer: The Long-Document Transformer",
https://arxiv.org/abs/2004.05150): a document classifier and a character language model.

Each layer attends within a sliding window (its own size per layer, optionally dilated on
some heads), plus global attention at marked positions (the classification token), which
uses its own query/key/value projections as in the paper. The attention itself runs
through :func:`tsformer.attention.attention` with the configured kernel.

``LongformerClassifier`` with ``attention.pattern=full`` and ``truncate=512`` is the
"plain Transformer on the first 512 tokens" comparison (``model=transformer_truncated``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tsformer.attention import Full, Pattern, SlidingWindow, attention, global_rows


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


class RotaryEmbedding(nn.Module):
    """Rotary position embedding (Su et al. 2021, RoFormer) on ``(B, H, L, D)`` queries/keys."""

    def __init__(self, head_dim: int, max_len: int, base: float = 10000.0):
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"rotary positions need an even head dim, got {head_dim}")
        inv = 1.0 / base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
        ang = torch.arange(max_len, dtype=torch.float32)[:, None] * inv[None, :]  # (L, D/2)
        self.register_buffer("cos", ang.cos(), persistent=False)
        self.register_buffer("sin", ang.sin(), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        L = x.shape[-2]
        cos, sin = self.cos[:L].to(x.dtype), self.sin[:L].to(x.dtype)
        x1, x2 = x[..., 0::2], x[..., 1::2]
        return torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)


class LongformerSelfAttention(nn.Module):
    """Sliding-window self-attention with global tokens (Beltagy et al. 2020, Sec. 3).

    Local attention uses ``query/key/value``; rows of global tokens use ``query_global``
    against ``key_global/value_global`` of every position, while every position sees the
    global tokens' local keys (as in the paper and Hugging Face's implementation). The
    output is the per-head context, concatenated, before the output projection (like
    Hugging Face's ``LongformerSelfAttention``, whose weights load with the same names).

    Args:
        d_model, n_heads: width and heads.
        window: keys in the window (``window // 2`` each side, or ``window`` to the left
            when ``one_sided``), before dilation.
        dilation, dilated_heads: the last ``dilated_heads`` heads use this dilation
            (0 heads with ``dilation > 1``: all heads dilated).
        one_sided: causal window (language modelling).
        pattern: ``window`` or ``full`` (dense, for the truncated baseline).
        kernel: attention kernel name (``auto``, ``sparse``, ``reference``, ...).
        rotary: rotary embedding applied to queries and keys, or None.
    """

    def __init__(self, d_model: int, n_heads: int, window: int = 512, dilation: int = 1, dilated_heads: int = 0,
                 one_sided: bool = False, pattern: str = "window", kernel: str = "auto",
                 rotary: RotaryEmbedding | None = None):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model {d_model} is not divisible by n_heads {n_heads}")
        if pattern not in ("window", "full"):
            raise ValueError(f"attention pattern must be window or full, got {pattern!r}")
        if not 0 <= dilated_heads <= n_heads:
            raise ValueError(f"dilated_heads must be in 0..{n_heads}, got {dilated_heads}")
        self.d_model, self.n_heads, self.head_dim = d_model, n_heads, d_model // n_heads
        self.window, self.dilation, self.one_sided, self.pattern, self.kernel = window, dilation, one_sided, pattern, kernel
        self.dilated_heads = (n_heads if dilated_heads == 0 else dilated_heads) if dilation > 1 else 0
        self.rotary = rotary
        # Global projections only where global tokens can occur: unused parameters would
        # break DDP's gradient reduction (and waste memory) in the causal LM and the dense baseline.
        self.has_global = pattern == "window" and not one_sided
        names = ("query", "key", "value") + (("query_global", "key_global", "value_global") if self.has_global else ())
        for name in names:
            setattr(self, name, nn.Linear(d_model, d_model))

    def _patterns(self) -> list[tuple[slice, Pattern]]:
        """``(head slice, pattern)`` per head group."""
        if self.pattern == "full":
            return [(slice(0, self.n_heads), Full())]
        plain = self.n_heads - self.dilated_heads
        groups = []
        if plain:
            groups.append((slice(0, plain), SlidingWindow(self.window, self.one_sided, 1)))
        if self.dilated_heads:
            groups.append((slice(plain, self.n_heads), SlidingWindow(self.window, self.one_sided, self.dilation)))
        return groups

    def _heads(self, t: Tensor) -> Tensor:
        B, L, _ = t.shape
        return t.view(B, L, self.n_heads, self.head_dim).transpose(1, 2)

    def forward(self, x: Tensor, lengths: Tensor | None = None, global_idx: Sequence[int] = ()) -> Tensor:
        """Args:
            x: ``(B, L, E)``.
            lengths: ``(B,)`` valid positions per element (keys beyond are masked), or None.
            global_idx: positions with global attention (shared by the batch).
        Returns:
            ``(B, L, E)`` concatenated head outputs.
        """
        B, L, E = x.shape
        gidx = sorted({int(i) for i in global_idx if 0 <= int(i) < L}) if self.has_global else []
        names = ["query", "key", "value"] + (["key_global", "value_global"] if gidx else [])
        # One packed matmul for all full-length projections: fewer passes over x.
        w = torch.cat([getattr(self, n).weight for n in names])
        b = torch.cat([getattr(self, n).bias for n in names])
        proj = F.linear(x, w, b).split(E, dim=-1)
        q, k, v = (self._heads(t) for t in proj[:3])
        global_qkv = None
        if gidx:
            sel = torch.tensor(gidx, device=x.device)
            # The global query is only needed at the global rows.
            qg_rows = self.query_global(x.index_select(1, sel))  # (B, G, E)
            qg = x.new_zeros(B, L, E).index_copy(1, sel, qg_rows)
            global_qkv = (self._heads(qg), self._heads(proj[3]), self._heads(proj[4]))
        if self.rotary is not None:
            q, k = self.rotary(q), self.rotary(k)
            if global_qkv is not None:
                global_qkv = (self.rotary(global_qkv[0]), self.rotary(global_qkv[1]), global_qkv[2])
        outs = []
        groups = self._patterns()
        for heads, pat in groups:
            if gidx:
                pat = pat.with_globals(gidx)
            if lengths is not None:
                pat = pat.with_padding(lengths)
            if len(groups) == 1:
                outs.append(attention(q, k, v, pat, kernel=self.kernel))
            else:
                outs.append(attention(q[:, heads].contiguous(), k[:, heads].contiguous(), v[:, heads].contiguous(),
                                      pat, kernel=self.kernel))
        out = outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)
        if global_qkv is not None:  # rows of global tokens: their own projections, all valid keys
            out = global_rows(out, *global_qkv, gidx, lengths)
        return out.transpose(1, 2).reshape(B, L, E)


class LongformerLayer(nn.Module):
    """Pre-norm Transformer layer with :class:`LongformerSelfAttention` (pre-norm trains
    more stably from scratch than the paper's post-norm RoBERTa layout)."""

    def __init__(self, d_model: int, n_heads: int, d_ff: int, dropout: float, **attn):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.attn = LongformerSelfAttention(d_model, n_heads, **attn)
        self.out = nn.Linear(d_model, d_model)
        self.ff = nn.Sequential(nn.Linear(d_model, d_ff), nn.GELU(), nn.Linear(d_ff, d_model))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, lengths: Tensor | None, global_idx: Sequence[int]) -> Tensor:
        x = x + self.drop(self.out(self.attn(self.norm1(x), lengths, global_idx)))
        return x + self.drop(self.ff(self.norm2(x)))


class LongformerEncoder(nn.Module):
    """Token embedding, positions and a stack of Longformer layers.

    Args:
        vocab_size: token ids are ``0..vocab_size-1`` (0 = padding).
        d_model, n_heads, n_layers, d_ff: sizes.
        window: window size, one per layer or one for all (the paper grows it with depth).
        dilation: dilation per layer (or one for all); ``dilated_heads`` heads use it.
        dilated_heads: how many heads (the last ones) are dilated; 0 = all of them.
        max_tokens: longest input; learned positions are allocated up to it.
        positions: ``learned`` or ``rotary``.
        one_sided: causal windows (character LM).
        attention: ``pattern`` (``window`` | ``full``) and ``kernel``.
        truncate: keep only the first ``truncate`` tokens (None: all).
        dropout: residual and embedding dropout.
    """

    def __init__(self, vocab_size: int, d_model: int = 128, n_heads: int = 4, n_layers: int = 2, d_ff: int = 256,
                 window: int | Sequence[int] = 256, dilation: int | Sequence[int] = 1, dilated_heads: int = 0,
                 max_tokens: int = 4096, positions: str = "learned", one_sided: bool = False,
                 attention: dict | None = None, truncate: int | None = None, dropout: float = 0.1):
        super().__init__()
        attention = dict(attention or {})
        pattern, kernel = attention.get("pattern", "window"), attention.get("kernel", "auto")
        if positions not in ("learned", "rotary"):
            raise ValueError(f"positions must be learned or rotary, got {positions!r}")
        self.max_tokens, self.truncate = int(max_tokens), truncate
        self.embed = nn.Embedding(vocab_size, d_model, padding_idx=0)
        self.pos = nn.Embedding(self.max_tokens, d_model) if positions == "learned" else None
        rotary = RotaryEmbedding(d_model // n_heads, self.max_tokens) if positions == "rotary" else None
        windows = _per_layer(window, n_layers, "window")
        dilations = _per_layer(dilation, n_layers, "dilation")
        self.layers = nn.ModuleList(
            LongformerLayer(d_model, n_heads, d_ff, dropout, window=w, dilation=r, dilated_heads=dilated_heads,
                            one_sided=one_sided, pattern=pattern, kernel=kernel, rotary=rotary)
            for w, r in zip(windows, dilations)
        )
        self.norm = nn.LayerNorm(d_model)
        self.drop = nn.Dropout(dropout)
        nn.init.normal_(self.embed.weight, std=0.02)
        if self.pos is not None:
            nn.init.normal_(self.pos.weight, std=0.02)

    def forward(self, tokens: Tensor, lengths: Tensor | None = None, global_idx: Sequence[int] = ()) -> Tensor:
        """Args:
            tokens: ``(B, L)`` ids, 0 = padding.
            lengths: ``(B,)`` real lengths, or None (all ``L``).
            global_idx: positions with global attention.
        Returns:
            ``(B, L', E)`` with ``L' = min(L, truncate)``.
        """
        if self.truncate is not None and tokens.shape[1] > self.truncate:
            tokens = tokens[:, : self.truncate]
        if lengths is not None:
            lengths = lengths.clamp(max=tokens.shape[1])
        L = tokens.shape[1]
        if L > self.max_tokens:
            raise ValueError(f"input of {L} tokens is longer than max_tokens={self.max_tokens}")
        x = self.embed(tokens)
        if self.pos is not None:
            x = x + self.pos.weight[:L]
        x = self.drop(x)
        for layer in self.layers:
            x = layer(x, lengths, global_idx)
        return self.norm(x)


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

    def __init__(self, vocab_size: int, dropout: float = 0.1, **encoder):
        super().__init__()
        encoder["one_sided"] = True
        self.encoder = LongformerEncoder(vocab_size, dropout=dropout, **encoder)
        self.lm_head = nn.Linear(self.encoder.embed.embedding_dim, vocab_size, bias=False)
        self.lm_head.weight = self.encoder.embed.weight  # tied (Press & Wolf 2017)

    def forward(self, tokens: Tensor) -> Tensor:
        """``(B, L)`` ids -> ``(B, L, vocab)`` logits of the next character."""
        return self.lm_head(self.encoder(tokens))


def bits_per_char(logits: Tensor, targets: Tensor, weight: Tensor | None = None) -> Tensor:
    """Mean cross-entropy in bits: ``(B, L, V)`` logits, ``(B, L)`` targets and weights."""
    nll = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), reduction="none")
    w = torch.ones_like(nll) if weight is None else weight.flatten().to(nll.dtype)
    return (nll * w).sum() / w.sum().clamp_min(1) / math.log(2)
