"""Block parts chosen by config (``model.ffn``), shared by the networks' blocks."""

from __future__ import annotations

import torch
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


# --- Reversible residual layers -------------------------------------------------------------


class ReversibleCall:
    """One block as a reversible layer (Gomez et al. 2017, "The Reversible Residual Network:
    Backpropagation Without Storing Activations"; Kitaev et al. 2020, Reformer, Sec. 4) on the
    pair of activations joined along features, ``(B, L, 2 d)``::

        Y1 = X1 + Attention(X2),    Y2 = X2 + FeedForward(Y1)

    ``block`` provides ``attn_branch(x, *args, cache=None, **kwargs)`` and
    ``ff_branch(x, cache=None)``, its two residual branches (norms and dropout inside). A
    plain callable, not a module, so that :meth:`DecodeCache.run` can run a reversible stack
    block by block (decoding needs no backward, so nothing is recomputed there).
    """

    def __init__(self, block: nn.Module):
        self.block = block

    def __call__(self, x: Tensor, *args, cache=None, **kwargs) -> Tensor:
        x1, x2 = x.chunk(2, dim=-1)
        y1 = x1 + self.block.attn_branch(x2, *args, cache=cache, **kwargs)
        return torch.cat([y1, x2 + self.block.ff_branch(y1, cache=cache)], dim=-1)


def _rng_state(device: torch.device) -> tuple:
    return torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.type == "cuda" else None


class _ReversibleStack(torch.autograd.Function):
    """Forward without storing activations; backward recomputes each block's input from its
    output (``X2 = Y2 - G(Y1)``, ``X1 = Y1 - F(X2)``) with the random generator restored to
    its state before each branch, so dropout masks and LSH rotations are drawn again exactly.
    Parameter gradients accumulate into ``.grad`` during the recomputation."""

    @staticmethod
    def forward(ctx, x, blocks, args, kwargs):
        ctx.blocks, ctx.args, ctx.kwargs = blocks, args, kwargs
        ctx.autocast = (torch.is_autocast_enabled(x.device.type), torch.get_autocast_dtype(x.device.type))
        x1, x2 = x.chunk(2, dim=-1)
        ctx.states = []
        for block in blocks:
            sf = _rng_state(x.device)
            x1 = x1 + block.attn_branch(x2, *args, **kwargs)
            sg = _rng_state(x.device)
            x2 = x2 + block.ff_branch(x1)
            ctx.states.append((sf, sg))
        y = torch.cat([x1, x2], dim=-1)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def _replay(ctx, state, device, fn, *args, **kwargs):
        """``fn(*args, **kwargs)`` with the generator as it was in the forward, the outer one untouched."""
        cuda = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda), torch.autocast(device.type, dtype=ctx.autocast[1],
                                                                  enabled=ctx.autocast[0]):
            torch.set_rng_state(state[0])
            if cuda:
                torch.cuda.set_rng_state(state[1], device)
            return fn(*args, **kwargs)

    @staticmethod
    def backward(ctx, dy):
        (y,) = ctx.saved_tensors
        y1, y2 = (t.detach() for t in y.chunk(2, dim=-1))
        dy1, dy2 = dy.chunk(2, dim=-1)
        dev = y.device
        for block, (sf, sg) in zip(reversed(ctx.blocks), reversed(ctx.states)):
            with torch.enable_grad():
                y1.requires_grad_(True)
                g = _ReversibleStack._replay(ctx, sg, dev, block.ff_branch, y1)
                torch.autograd.backward(g, dy2)
            with torch.no_grad():
                x2 = y2 - g
                dy1 = dy1 + (y1.grad if y1.grad is not None else 0)
                y1 = y1.detach()
            with torch.enable_grad():
                x2.requires_grad_(True)
                f = _ReversibleStack._replay(ctx, sf, dev, block.attn_branch, x2, *ctx.args, **ctx.kwargs)
                torch.autograd.backward(f, dy1)
            with torch.no_grad():
                x1 = y1 - f
                dy2 = dy2 + (x2.grad if x2.grad is not None else 0)
                x2 = x2.detach()
            y1, y2 = x1, x2
        return torch.cat([dy1, dy2], dim=-1), None, None, None


def run_reversible(blocks, x: Tensor, *args, **kwargs) -> Tensor:
    """A stack of reversible blocks on ``x (B, L, d)``: the input duplicated into the pair
    ``(X1, X2) = (x, x)`` (Reformer, Sec. 4), the pair averaged at the end. With gradients on,
    only the last pair is kept for the backward, whatever the depth.

    Args:
        blocks: modules with ``attn_branch`` and ``ff_branch`` (see :class:`ReversibleCall`).
        *args, **kwargs: passed to every ``attn_branch`` (lengths, global positions ...).
    Returns:
        ``(B, L, d)``.
    """
    pair = torch.cat([x, x], dim=-1)
    if torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for b in blocks for p in b.parameters())):
        if not pair.requires_grad:  # the backward must run for the parameters' gradients
            pair = pair.detach().requires_grad_(True)
        pair = _ReversibleStack.apply(pair, list(blocks), args, kwargs)
    else:
        for block in blocks:
            pair = ReversibleCall(block)(pair, *args, **kwargs)
    return merge_pair(pair)


def merge_pair(pair: Tensor) -> Tensor:
    """``(B, L, 2 d)`` -> ``(B, L, d)``: the mean of the two halves of a reversible stack."""
    a, b = pair.chunk(2, dim=-1)
    return 0.5 * (a + b)
