"""Efficient attention: typed patterns and kernels behind one interface.

Every kernel is an ``nn.Module`` with ``forward(q, k, v, pattern, *, scale, dropout_p,
global_qkv)`` on ``(B, H, L, D)`` tensors and a ``supports(q, pattern, dropout_p)`` method
returning None or the reason it cannot serve a request (``forward`` then raises
``ValueError`` with that reason). :func:`attention` dispatches by name through
:data:`KERNELS`, the names ``model.attention.kernel`` takes:

- ``reference``: dense masked ``softmax(QK^T)V``, the ground truth (any pattern, dropout).
- ``sdpa``: the same through PyTorch's fused ``scaled_dot_product_attention`` (flash /
  memory-efficient kernels for full and causal; a dense boolean mask otherwise).
- ``flex``: PyTorch FlexAttention with a block mask from the pattern; compiled; inference
  only on CPU (no CPU backward in PyTorch 2.14).
- ``sparse``: work and memory follow the pattern's non-zeros, forward and backward:
  ``logsparse`` (:class:`LogSparseAttention`, O(L log L)) and ``window``
  (:class:`WindowAttention`, blocked O(L w), dilation, global tokens).
- ``auto``: the fastest kernel that serves the request (:func:`choose_kernel`).
"""

from __future__ import annotations

from torch import Tensor, nn

from tsformer.attention.flex import FlexAttention
from tsformer.attention.logsparse import LogSparseAttention
from tsformer.attention.patterns import (
    Causal,
    Full,
    GlobalTokens,
    KeyPadding,
    LogSparse,
    Pattern,
    SlidingWindow,
    nnz,
    pattern_from_config,
    unwrap,
)
from tsformer.attention.reference import ReferenceAttention
from tsformer.attention.sdpa import SDPAAttention
from tsformer.attention.sparse import SparseAttention
from tsformer.attention.window import WindowAttention


class AutoAttention(nn.Module):
    """Picks the fastest kernel that can serve the request (see :func:`choose_kernel`)."""

    name = "auto"

    def supports(self, q: Tensor, pattern: Pattern, dropout_p: float = 0.0) -> str | None:
        """Always None: ``reference`` serves everything."""
        return None

    def forward(self, q: Tensor, k: Tensor, v: Tensor, pattern: Pattern, **kwargs) -> Tensor:
        """Attention with the kernel :func:`choose_kernel` picks; same arguments as the others."""
        kernel = choose_kernel(q, pattern, kwargs.get("dropout_p", 0.0), k, v, *(kwargs.get("global_qkv") or ()))
        return _INSTANCES[kernel](q, k, v, pattern, **kwargs)


KERNELS: dict[str, type[nn.Module]] = {
    "reference": ReferenceAttention,
    "sdpa": SDPAAttention,
    "flex": FlexAttention,
    "sparse": SparseAttention,
    "logsparse": LogSparseAttention,
    "window": WindowAttention,
    "auto": AutoAttention,
}
"""Registry of attention kernels by config name (``model.attention.kernel``).

``logsparse`` and ``window`` are the two halves of ``sparse``, addressable on their own.
"""

_INSTANCES: dict[str, nn.Module] = {name: cls() for name, cls in KERNELS.items()}

# On CPU, compiled flex beats fused dense SDPA on full/causal inference from this length up.
_FLEX_MIN_LEN_CPU = 2048
# On CUDA (H100, fp32), the sparse kernels overtake fused dense SDPA from about this length
# (benchmarks/RESULTS.md: L=8192 about even, L=16384 2-3x faster fwd+bwd).
_SPARSE_MIN_LEN_CUDA = 8192


def choose_kernel(q: Tensor, pattern: Pattern, dropout_p: float = 0.0, *more: Tensor) -> str:
    """Name of the kernel ``auto`` uses for this request.

    Rule (from ``benchmarks/attention.py``, B=1, H=8, D=64, fp32; see RESULTS.md):

    - attention dropout: ``reference`` (the only kernel with dropout).
    - CUDA (measured on an H100, fp32): ``sparse`` for LogSparse and sliding-window
      patterns from ``_SPARSE_MIN_LEN_CUDA`` queries up, fused dense ``sdpa`` otherwise;
      compiled ``flex`` measured 3-4x slower than ``sdpa`` there and is not picked.
    - CPU, LogSparse and sliding window: ``sparse``, faster than compiled ``flex`` forward
      (the window kernel runs ATen's fused CPU flash kernel over strided window views),
      with a backward and no compile stall.
    - CPU, full/causal: ``flex`` for inference from ``_FLEX_MIN_LEN_CPU`` up, else
      ``sdpa``.

    ``more`` are the other tensors of the call (k, v, global q/k/v) whose ``requires_grad``
    decides between inference and training.
    """
    if dropout_p > 0:
        return "reference"
    flex_ok = _INSTANCES["flex"].supports(q, pattern, dropout_p, *more) is None
    sparse_ok = _INSTANCES["sparse"].supports(q, pattern, dropout_p) is None
    if q.device.type == "cuda":
        return "sparse" if sparse_ok and q.shape[-2] >= _SPARSE_MIN_LEN_CUDA else "sdpa"
    if sparse_ok:
        return "sparse"
    return "flex" if flex_ok and q.shape[-2] >= _FLEX_MIN_LEN_CPU else "sdpa"


def get_kernel(name: str) -> nn.Module:
    """The kernel registered under ``name``; ValueError listing the choices otherwise."""
    try:
        return _INSTANCES[name]
    except KeyError:
        raise ValueError(f"unknown attention kernel {name!r}; choose one of {sorted(KERNELS)}") from None


def attention(q: Tensor, k: Tensor, v: Tensor, pattern: Pattern, kernel: str = "auto", **kwargs) -> Tensor:
    """Attention of ``q`` over ``k, v`` under ``pattern`` with the named kernel.

    Args:
        q: ``(B, H, Lq, D)``. k, v: ``(B, H, Lk, D)``.
        pattern: a :class:`Pattern`.
        kernel: a name in :data:`KERNELS`.
    Returns:
        ``(B, H, Lq, D)``.
    """
    return get_kernel(kernel)(q, k, v, pattern, **kwargs)


__all__ = [
    "KERNELS",
    "AutoAttention",
    "Causal",
    "FlexAttention",
    "Full",
    "GlobalTokens",
    "KeyPadding",
    "LogSparse",
    "LogSparseAttention",
    "Pattern",
    "ReferenceAttention",
    "SDPAAttention",
    "SlidingWindow",
    "SparseAttention",
    "WindowAttention",
    "attention",
    "choose_kernel",
    "get_kernel",
    "nnz",
    "pattern_from_config",
    "unwrap",
]
