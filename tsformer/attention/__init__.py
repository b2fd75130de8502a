"""Efficient attention: typed patterns and kernels behind one interface.

Every kernel is an ``nn.Module`` with ``forward(q, k, v, pattern)`` on ``(B, H, L, D)``
tensors and a ``supports(q, pattern, dropout_p)`` method returning None or the reason it
cannot serve a request. :func:`attention` dispatches by name through :data:`KERNELS`.
"""

from __future__ import annotations

from torch import Tensor, nn

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


class AutoAttention(nn.Module):
    """Picks the fastest kernel that can serve the request (see :func:`choose_kernel`)."""

    name = "auto"

    def supports(self, q, pattern, dropout_p=0.0):
        return None

    def forward(self, q, k, v, pattern, **kwargs) -> Tensor:
        kernel = choose_kernel(q, pattern, kwargs.get("dropout_p", 0.0))
        return _INSTANCES[kernel](q, k, v, pattern, **kwargs)


KERNELS: dict[str, type[nn.Module]] = {
    "reference": ReferenceAttention,
    "logsparse": LogSparseAttention,
    "auto": AutoAttention,
}
"""Registry of attention kernels by config name (``model.attention.kernel``)."""

_INSTANCES: dict[str, nn.Module] = {name: cls() for name, cls in KERNELS.items()}

# Preference order for `auto`, fastest first; the first that supports a request wins.
_AUTO_ORDER = ("logsparse", "reference")


def choose_kernel(q: Tensor, pattern: Pattern, dropout_p: float = 0.0) -> str:
    """Name of the kernel `auto` uses for this request."""
    for name in _AUTO_ORDER:
        if _INSTANCES[name].supports(q, pattern, dropout_p) is None:
            return name
    return "reference"


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
    "Full",
    "GlobalTokens",
    "KeyPadding",
    "LogSparse",
    "LogSparseAttention",
    "Pattern",
    "ReferenceAttention",
    "SlidingWindow",
    "attention",
    "choose_kernel",
    "get_kernel",
    "nnz",
    "pattern_from_config",
    "unwrap",
]
