"""Convolutional self-attention (Li et al., NeurIPS 2019, "Enhancing the Locality and
Breaking the Memory Bottleneck of Transformer on Time Series Forecasting",
https://arxiv.org/abs/1907.00235, Sec. 3.2): queries and keys come from a causal 1-D
convolution over time, so attention compares local shapes rather than single points.
``model.attention.type=conv``; ``kernel_size=1`` is ordinary attention.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tsformer.nn.attention.base import AttentionLayer, AttentionSpec
from tsformer.nn.decoding import KVCache


class ConvSelfAttention(AttentionLayer):
    """Multi-head self-attention whose queries and keys are causal convolutions.

    Args:
        d_model: hidden size.
        n_heads: attention heads (``d_model`` must divide evenly).
        spec: the attention config, or None (then ``**config``; default pattern ``logsparse``).
        kernel_size: convolution width ``k`` for queries and keys (1: ordinary attention).
        out_dropout: dropout on the output projection.
    """

    defaults = {"pattern": "logsparse"}

    def __init__(self, d_model: int, n_heads: int, spec: AttentionSpec | None = None, kernel_size: int = 1,
                 out_dropout: float = 0.0, **config):
        super().__init__()
        self.setup(spec, d_model, n_heads, config)
        self.kernel_size = int(kernel_size)
        self.qk = nn.Conv1d(d_model, 2 * d_model, self.kernel_size)
        self.v = nn.Linear(d_model, d_model)
        self.out = nn.Linear(d_model, d_model)
        self.drop = nn.Dropout(out_dropout)

    def forward(self, x: Tensor, lengths: Tensor | None = None, global_idx: Sequence[int] = (),
                cache: KVCache | None = None) -> Tensor:
        """``x``: ``(B, L, d_model)`` -> ``(B, L, d_model)``.

        With a cache, ``x`` holds the next positions and the convolution continues from the
        cached last inputs (``cache.state["tail"]``, an :class:`~tsformer.nn.decoding.InputTail`).
        """
        B, L, C = x.shape
        xt = x.transpose(1, 2)  # (B, C, L)
        k1 = self.kernel_size - 1
        tail = None if cache is None else cache.recent_inputs("tail", k1)
        # Left context keeps the convolution causal: position t sees t-k+1 .. t.
        if tail is None:
            xc = F.pad(xt, (self.kernel_size - 1, 0))
        else:
            # Joined time-major, (B, k - 1 + L, C): rows of C floats copy as blocks (joining
            # along the last axis of (B, C, T) moves one float at a time: 2x slower at a
            # forecast step's 25,600 rows); xc is its (B, C, T) view.
            xc = torch.cat([tail.transpose(1, 2), x], dim=1).transpose(1, 2)
        if L == 1 and tail is not None:
            # A convolution over exactly k positions is one matrix product (time-major
            # flattening, so the weight's (out, C, k) is reordered to (out, k, C)).
            w = self.qk.weight.transpose(1, 2).flatten(1)
            qk = F.linear(xc.transpose(1, 2).flatten(1), w, self.qk.bias)[..., None]
        else:
            qk = self.qk(xc)  # (B, 2C, L)
        q, k = (t.reshape(B, self.n_heads, self.head_dim, L).transpose(-1, -2) for t in qk.chunk(2, dim=1))
        v = self.heads(self.v(x))
        if cache is not None:
            # After the prefill every path continues from its element's context; a step
            # keeps all its inputs, so that a truncated cache (parallel decoding) rewinds.
            keep = xc[:, :, xc.shape[-1] - k1 :].repeat_interleave(cache.repeat, 0) if tail is None else xc
            cache.keep_inputs("tail", keep, L)
        o = self.attend(q, k, v, lengths, cache, global_idx)
        return self.drop(self.out(self.merge(o)))
