"""Block parts chosen by config (``model.ffn``), shared by the networks' blocks."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

FFNS = ("mlp", "glu", "rwkv", "series", "none")
"""``model.ffn`` values:

- ``mlp``: two linear layers around GELU (Vaswani et al. 2017);
- ``glu``: a gated linear unit, ``(GELU(x W) * x V) W_o`` (Shazeer 2020, "GLU Variants
  Improve Transformer"; MosaicBERT's feed-forward, Portes et al. 2023), its width chosen so
  the parameters equal the ``mlp``'s (:func:`glu_width`);
- ``rwkv``: RWKV-4 channel mixing (Peng et al. 2023; it reads the previous position, so it
  keeps its own state in a decoding cache);
- ``series``: PanGu-π's SIAF-MLP (Wang et al. 2023, Eq. 9), the MLP with a learned series of
  shifted, scaled GELUs (``model.series``: ``terms``, ``context``;
  :class:`tsformer.nn.pangu.SeriesFeedForward`);
- ``none``: no feed-forward sublayer: with ``model.attention.persistent``, the all-attention
  layer of Sukhbaatar et al. 2019, whose persistent vectors take the feed-forward's place.
"""


def check_ffn(ffn: str) -> None:
    """ValueError naming the choices unless ``ffn`` is one of :data:`FFNS`."""
    if ffn not in FFNS:
        raise ValueError(f"model.ffn={ffn!r}; choose one of {FFNS}")


def glu_width(d_model: int, d_ff: int) -> int:
    """Hidden width ``h`` of a GLU with the parameters of a ``d_model -> d_ff -> d_model``
    MLP: ``3 d h + 2 h + d = 2 d d_ff + d_ff + d`` (weights and biases), rounded."""
    return max(1, round((2 * d_model * d_ff + d_ff) / (3 * d_model + 2)))


class GLUFeedForward(nn.Module):
    """``(GELU(x W) * x V) W_o`` with dropout before the output projection.

    Args:
        d_model: model width. d_ff: the MLP width whose parameter count to match.
        dropout: dropout on the gated hidden units.
    """

    def __init__(self, d_model: int, d_ff: int, dropout: float = 0.0):
        super().__init__()
        self.hidden = glu_width(d_model, d_ff)
        self.wi = nn.Linear(d_model, 2 * self.hidden)  # gate and value in one matmul
        self.wo = nn.Linear(self.hidden, d_model)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        gate, value = self.wi(x).chunk(2, dim=-1)
        return self.wo(self.drop(F.gelu(gate) * value))


def make_ffn(kind: str, d_model: int, d_ff: int, dropout: float, inner_dropout: bool = True, layer: int = 0,
             n_layers: int = 1, series: dict | None = None) -> nn.Module | None:
    """The feed-forward sublayer ``model.ffn`` names (None for ``none``). A module with
    ``takes_cache`` is called as ``ff(x, cache=...)`` by the blocks. ``series``: the
    ``model.series`` options of ``series``.

    ``mlp`` keeps the layout the networks' checkpoints were written with:
    ``Linear, GELU, [Dropout], Linear, [Dropout]`` with dropout only where ``inner_dropout``.
    """
    check_ffn(kind)
    if kind == "none":
        return None
    if kind == "rwkv":
        from tsformer.nn.attention.rwkv import RWKVChannelMix

        return RWKVChannelMix(d_model, d_ff, layer, n_layers)
    if kind == "series":
        from tsformer.nn.pangu import make_series

        return make_series(d_model, d_ff, dropout, inner_dropout, series)
    if kind == "glu":
        return nn.Sequential(GLUFeedForward(d_model, d_ff, dropout if inner_dropout else 0.0),
                             *([nn.Dropout(dropout)] if inner_dropout else []))
    if inner_dropout:
        return nn.Sequential(nn.Linear(d_model, d_ff), nn.GELU(), nn.Dropout(dropout), nn.Linear(d_ff, d_model),
                             nn.Dropout(dropout))
    return nn.Sequential(nn.Linear(d_model, d_ff), nn.GELU(), nn.Linear(d_ff, d_model))

