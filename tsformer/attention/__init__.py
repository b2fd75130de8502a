"""Efficient attention: typed patterns and kernels behind one interface.

Every kernel is a stateless :class:`Kernel` with one signature, ``forward(q, k, v,
pattern, *, scale, dropout_p, bias, q_offset)`` on ``(B, H, L, D)`` tensors: a pattern
(:mod:`~tsformer.attention.patterns`), an optional typed score bias
(:mod:`~tsformer.attention.bias`) and a query offset (queries aligned bottom-right against
longer keys by default). ``supports(q, k, v, pattern, ...)`` returns None or the reason a
kernel cannot serve a call (``forward`` then raises ``ValueError`` with that reason).
:func:`attention` dispatches by name through :data:`KERNELS`, the names
``model.attention.kernel`` takes:

- ``reference``: dense masked ``softmax(QK^T + bias)V``, the ground truth (anything, dropout).
- ``sdpa``: the same through PyTorch's fused ``scaled_dot_product_attention`` (flash /
  memory-efficient kernels for full and causal; a dense boolean mask otherwise).
- ``flex``: PyTorch FlexAttention with a block mask from the pattern; compiled; inference
  only on CPU (no CPU backward in PyTorch 2.14).
- ``sparse``: work and memory follow the pattern's non-zeros, forward and backward:
  ``logsparse`` (:class:`LogSparseAttention`, O(L log L)) and ``window``
  (:class:`WindowAttention`, blocked O(L w), dilation, global tokens); query offsets
  (a decoding step costs O(log L) or O(w) keys) and slope or offset-table biases, not a
  dense bias.
- ``auto``: the fastest kernel that serves the request (:func:`choose_kernel`).
"""

from __future__ import annotations

from torch import Tensor

from tsformer.attention._common import global_rows
from tsformer.attention.base import Kernel
from tsformer.attention.bias import DenseBias, OffsetTableBias, ScoreBias, SlopeBias
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


class AutoAttention(Kernel):
    """Picks, once per call, the fastest kernel that serves it (see :func:`choose_kernel`)."""

    name = "auto"

    def _attend(self, q, k, v, pattern, scale, dropout_p, bias, q_offset) -> Tensor:
        kernel = choose_kernel(q, k, v, pattern, dropout_p=dropout_p, bias=bias, q_offset=q_offset)
        return _INSTANCES[kernel]._attend(q, k, v, pattern, scale, dropout_p, bias, q_offset)


KERNELS: dict[str, type[Kernel]] = {
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

_INSTANCES: dict[str, Kernel] = {name: cls() for name, cls in KERNELS.items()}

# On CPU, compiled flex beats fused dense SDPA on full/causal inference from this length up.
_FLEX_MIN_LEN_CPU = 2048
# On CUDA (H100, fp32), the sparse kernels overtake fused dense SDPA from about this length
# (benchmarks/RESULTS.md: L=8192 about even, L=16384 2-3x faster fwd+bwd).
_SPARSE_MIN_LEN_CUDA = 8192


def choose_kernel(
    q: Tensor,
    k: Tensor | None = None,
    v: Tensor | None = None,
    pattern: Pattern | None = None,
    *,
    dropout_p: float = 0.0,
    bias: ScoreBias | None = None,
    q_offset: int | None = None,
) -> str:
    """Name of the kernel ``auto`` uses for this call: the first that serves it in the
    order below.

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

    A kernel that refuses the call (a dense bias the sparse kernels do not take, gradients
    flex cannot give on CPU) is skipped; ``sdpa`` and ``reference`` serve everything.
    """
    k = q if k is None else k
    v = k if v is None else v
    if pattern is None:
        raise ValueError("choose_kernel needs the call's pattern")
    if dropout_p > 0:
        return "reference"
    call = dict(dropout_p=dropout_p, bias=bias, q_offset=q_offset)
    flex_ok = _INSTANCES["flex"].supports(q, k, v, pattern, **call) is None
    sparse_ok = _INSTANCES["sparse"].supports(q, k, v, pattern, **call) is None
    if q.device.type == "cuda":
        return "sparse" if sparse_ok and q.shape[-2] >= _SPARSE_MIN_LEN_CUDA else "sdpa"
    if sparse_ok:
        return "sparse"
    return "flex" if flex_ok and q.shape[-2] >= _FLEX_MIN_LEN_CPU else "sdpa"


def get_kernel(name: str) -> Kernel:
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
        **kwargs: ``scale``, ``dropout_p``, ``bias`` (a :class:`ScoreBias`), ``q_offset``.
    Returns:
        ``(B, H, Lq, D)``.
    """
    return get_kernel(kernel)(q, k, v, pattern, **kwargs)


__all__ = [
    "KERNELS",
    "AutoAttention",
    "Causal",
    "DenseBias",
    "Kernel",
    "OffsetTableBias",
    "ScoreBias",
    "SlopeBias",
    "global_rows",
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
