"""PanGu-π's two block parts (Wang et al. 2023, "PanGu-π: Enhancing Language Model
Architectures via Nonlinearity Compensation", https://arxiv.org/abs/2312.17276, Sec. 4) and
the paper's feature-diversity measures (Sec. 3 and 5.2).

Equations as in the paper's own text (arXiv v1, 27 Dec 2023; read from the extracted text
of the paper, there is no official code):

- Series informed activation, Sec. 4.2, Eq. 7: ``sum_{i=1..n} sigma_i(a_i x + b_i)`` with a
  learned scale ``a_i`` and bias ``b_i`` per term ("to prevent simple accumulation"), and
  Eq. 9, ``SIAF-MLP(Z) = (sum_i sigma_i(Z W_1)) W_2``, where the paper adds that the series
  "learn[s] the global information by varying the inputs from their neighbors". It does not
  write that neighbour mixing out; it comes from VanillaNet (Chen et al. 2023, "VanillaNet:
  the Power of Minimalism in Deep Learning", Eq. 7: ``sum_{i,j} a_{i,j,c} A(x_{h+i,w+j,c} +
  b_c)``, a depthwise convolution over the activated map). Here it is ``model.series.context``
  (default 0: none): a depthwise convolution over the *previous* ``context`` positions only
  (left-padded), so that a causal model stays causal; the paper's two-sided image version
  would read later tokens. Per-channel ``a_i, b_i`` (the paper leaves their shape open), and
  each term weighted by a learned ``c_i`` as in VanillaNet's Eq. 6 (``sum_i a_i A(x + b_i)``),
  so the series can start as exactly the plain activation (``c = (1, 0, ...)``) with distinct
  shifts ``b_i`` that let the terms learn apart; the paper gives no initialisation.
- Augmented shortcut, Sec. 4.1, Eq. 4: ``AugMSA(Z) = MSA(Z) + Z + sum_{i=1..T} T_i(Z)``,
  Eq. 5: ``T_i(Z) = sigma(Z Theta_i)`` with ``Theta_i`` ``d x d`` (``reduction: null``), and
  the form the paper trains its LLMs with: "a simpler bottleneck module ... two FC layers with
  a nonlinear activation function (e.g., GeLU). The first FC layer reduces the d-dimension
  feature into a low-dimension space by a reduction ratio r and the second FC layer restores
  the original feature dimension", ``r = 32`` chosen in Table 3. ``T`` bottlenecks of width
  ``d/r`` summed equal one bottleneck of width ``T d/r`` (the sum of the up-projections is one
  matrix over the stacked hidden units), so they are computed as one. The block-circulant
  form of Augmented Shortcuts (Tang et al. 2021, NeurIPS) is not implemented. Each branch
  reads each token on its own, so it never mixes positions.
- Feature diversity, Sec. 3: ``d_M(H) = min_{Y in M} ||H - Y||_F`` with ``M = {1 x^T}``, the
  distance of the ``N x d`` token features from "all tokens equal" (minimised by the mean
  token, so ``d_M(H) = ||H - 1 mean(H)^T||_F``); :func:`feature_diversity` divides it by
  ``||H||_F`` so layers of any scale compare. Sec. 5.2's effective dimension ``d(0.8)`` (the
  number of principal components explaining 80% of the variance) is
  :func:`effective_dimension`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tsformer.nn.decoding import KVCache

SERIES_KEYS = ("terms", "context")
AUGMENTED_KEYS = ("branches", "reduction")


def _options(options: dict | None, keys: tuple[str, ...], name: str) -> dict:
    options = dict(options or {})
    unknown = sorted(set(options) - set(keys))
    if unknown:
        raise ValueError(f"model.{name} takes {list(keys)}, not {unknown}")
    return options


class SeriesActivation(nn.Module):
    """``y_t = sum_{j=0..k} m_j * u_{t-j}``, ``u_t = sum_{i=1..n} c_i * GELU(a_i * x_t + b_i)``
    (PanGu-π Eq. 7 with VanillaNet's term weights ``c_i``; the causal neighbour mix ``m`` only
    when ``context = k > 0``).

    Initialised as the plain GELU: ``c = (1, 0, ...)``, ``a_i = 1``, ``b = (0, 1, -1, 2, ...)``
    (distinct shifts, so the terms get different gradients and do not move in lockstep);
    ``m_0 = 1``, the rest 0.

    Args:
        width: channels (the feed-forward's hidden width).
        terms: ``n``, the number of shifted, scaled activations summed.
        context: ``k``, earlier positions mixed in (0: token-wise).
    """

    def __init__(self, width: int, terms: int = 2, context: int = 0):
        super().__init__()
        if terms < 1:
            raise ValueError(f"model.series.terms={terms}; needs at least 1 term")
        if context < 0:
            raise ValueError(f"model.series.context={context}; must be >= 0")
        self.terms, self.context = int(terms), int(context)
        shifts = torch.tensor([0.0] + [(1 + i // 2) * (1 if i % 2 == 0 else -1) for i in range(terms - 1)])
        weight = torch.zeros(terms, width)
        weight[0] = 1.0
        self.scale = nn.Parameter(torch.ones(terms, width))
        self.bias = nn.Parameter(shifts[:, None].expand(terms, width).clone())
        self.weight = nn.Parameter(weight)
        if context:
            mix = torch.zeros(context + 1, width)
            mix[0] = 1.0
            self.mix = nn.Parameter(mix)

    def forward(self, x: Tensor, past: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """``x``: ``(B, L, W)``; ``past``: ``(B, k, W)`` the series of the ``k`` positions
        before ``x`` (None: zeros, the sequence starts here). Returns ``y`` ``(B, L, W)`` and
        the ``past`` for the next positions (None when ``k = 0``)."""
        u = (F.gelu(x.unsqueeze(-2) * self.scale + self.bias) * self.weight).sum(-2)
        if not self.context:
            return u, None
        k, L = self.context, x.shape[1]
        if past is None:
            past = u.new_zeros(u.shape[0], k, u.shape[-1])
        full = torch.cat([past.to(u.dtype), u], dim=1)  # (B, k + L, W): left padding, never the future
        y = sum(self.mix[j] * full[:, k - j : k - j + L] for j in range(k + 1))
        return y, full[:, -k:]


class SeriesFeedForward(nn.Module):
    """PanGu-π's SIAF-MLP (Eq. 9): ``Linear -> SeriesActivation -> Linear`` (``model.ffn=series``),
    dropout where the ``mlp`` has it. Keeps the last ``context`` series in a decoding cache.

    Args:
        d_model, d_ff: widths. dropout, inner_dropout: as :func:`tsformer.nn.blocks.make_ffn`.
        terms, context: :class:`SeriesActivation`.
    """

    takes_cache = True

    def __init__(self, d_model: int, d_ff: int, dropout: float = 0.0, inner_dropout: bool = True, terms: int = 2,
                 context: int = 0):
        super().__init__()
        self.w1 = nn.Linear(d_model, d_ff)
        self.act = SeriesActivation(d_ff, terms, context)
        self.w2 = nn.Linear(d_ff, d_model)
        p = dropout if inner_dropout else 0.0
        self.drop1, self.drop2 = nn.Dropout(p), nn.Dropout(p)

    def forward(self, x: Tensor, cache: KVCache | None = None) -> Tensor:
        """``(B, L, d)`` -> ``(B, L, d)``; with a cache, ``x`` is the next positions."""
        past = None if cache is None else cache.state.get("series_ffn")
        h, keep = self.act(self.w1(x), past)
        if cache is not None and keep is not None:
            if past is None and cache.repeat > 1:  # every path continues from its element's prompt
                keep = keep.repeat_interleave(cache.repeat, 0)
            cache.state["series_ffn"] = keep
        return self.drop2(self.w2(self.drop1(h)))


class AugmentedShortcut(nn.Module):
    """``sum_{i=1..T} T_i(z)`` beside attention (PanGu-π Eq. 4), each branch a bottleneck
    ``Linear(d, d/r) -> GELU -> Linear(d/r, d)`` (the paper's LLM form) or, with
    ``reduction=None``, Eq. 5's ``GELU(z Theta_i)``. Token-wise. The bottleneck's output layer
    starts at zero.

    Args:
        d_model: width. branches: ``T`` (>= 1). reduction: ``r`` (None: Eq. 5, no bottleneck).
    """

    def __init__(self, d_model: int, branches: int = 1, reduction: int | None = 32):
        super().__init__()
        if branches < 1:
            raise ValueError(f"model.augmented.branches={branches}; use >= 1 (or model.shortcut=identity)")
        self.branches, self.reduction = int(branches), reduction
        if reduction is None:
            self.theta = nn.Linear(d_model, branches * d_model, bias=False)
        else:
            if reduction < 1:
                raise ValueError(f"model.augmented.reduction={reduction}; must be >= 1 (or null for Eq. 5)")
            hidden = branches * max(1, d_model // int(reduction))
            self.down = nn.Linear(d_model, hidden)
            self.up = nn.Linear(hidden, d_model)
            # Zero, as adapters start (the paper gives no initialisation): the block starts as the
            # plain one; PyTorch's default for a fan-in of d/r (4 at d = 128) would add an output
            # far larger than attention's.
            nn.init.zeros_(self.up.weight)
            nn.init.zeros_(self.up.bias)

    def forward(self, z: Tensor) -> Tensor:
        """``(..., d)`` -> ``(..., d)``."""
        if self.reduction is None:
            return F.gelu(self.theta(z)).unflatten(-1, (self.branches, z.shape[-1])).sum(-2)
        return self.up(F.gelu(self.down(z)))


def make_series(d_model: int, d_ff: int, dropout: float, inner_dropout: bool, options: dict | None) -> SeriesFeedForward:
    """``model.ffn=series`` with ``model.series`` (``terms``, default 2 as the paper's Table 2
    choice; ``context``, default 0)."""
    o = _options(options, SERIES_KEYS, "series")
    terms, context = o.get("terms"), o.get("context")
    return SeriesFeedForward(d_model, d_ff, dropout, inner_dropout, 2 if terms is None else int(terms),
                             0 if context is None else int(context))


def make_shortcut(kind: str, d_model: int, options: dict | None = None) -> AugmentedShortcut | None:
    """``model.shortcut``: ``identity`` (None: the plain residual) or ``augmented`` with
    ``model.augmented`` (``branches`` T, default 1; ``reduction`` r, default 32, null for Eq. 5).
    ``branches: 0`` is the plain block."""
    if kind not in SHORTCUTS:
        raise ValueError(f"model.shortcut={kind!r}; choose one of {SHORTCUTS}")
    o = _options(options, AUGMENTED_KEYS, "augmented")
    if kind == "identity":
        return None
    branches = 1 if o.get("branches") is None else int(o["branches"])
    if branches == 0:
        return None
    reduction = o.get("reduction", 32)
    return AugmentedShortcut(d_model, branches, None if reduction is None else int(reduction))


SHORTCUTS = ("identity", "augmented")


def feature_diversity(h: Tensor, relative: bool = True) -> Tensor:
    """PanGu-π's ``d_M(H) = min_x ||H - 1 x^T||_F`` per sequence: ``h`` ``(B, N, d)`` ->
    ``(B,)``; ``relative`` divides by ``||H||_F`` (0: every token the same, 1: tokens average
    to zero)."""
    h = h.float()
    d = (h - h.mean(1, keepdim=True)).flatten(1).norm(dim=1)
    return d / h.flatten(1).norm(dim=1).clamp_min(1e-12) if relative else d


def effective_dimension(h: Tensor, ratio: float = 0.8) -> int:
    """PanGu-π Sec. 5.2's ``d(ratio)``: the fewest principal components of the token features
    ``h`` (``(..., d)``, all leading dims pooled) explaining ``ratio`` of their variance."""
    x = h.reshape(-1, h.shape[-1]).double()
    x = x - x.mean(0)
    var = torch.linalg.svdvals(x).square()
    frac = var.cumsum(0) / var.sum().clamp_min(1e-300)
    return int((frac < ratio).sum()) + 1


__all__ = ["AugmentedShortcut", "SeriesActivation", "SeriesFeedForward", "effective_dimension",
           "feature_diversity", "make_series", "make_shortcut"]
