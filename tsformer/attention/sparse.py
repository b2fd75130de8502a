"""The ``sparse`` kernel: dispatches on the pattern to the kernels whose work and memory
follow the pattern's non-zeros.

- :class:`LogSparse` -> :class:`~tsformer.attention.logsparse.LogSparseAttention`
  (Li et al. 2019), ``O(L log L)``.
- :class:`SlidingWindow` -> :class:`~tsformer.attention.window.WindowAttention`
  (Beltagy et al. 2020), ``O(L w)``.

Both handle key padding and global tokens (with optional global projections) and run
forward and backward.
"""

from __future__ import annotations

from torch import Tensor, nn

from tsformer.attention.logsparse import LogSparseAttention
from tsformer.attention.patterns import LogSparse, Pattern, SlidingWindow, unwrap
from tsformer.attention.window import WindowAttention


class SparseAttention(nn.Module):
    """Pattern-dispatching sparse kernel. Cannot serve: dense patterns (full, causal),
    attention dropout, ``Lq != Lk``."""

    name = "sparse"

    def __init__(self) -> None:
        super().__init__()
        self.logsparse = LogSparseAttention()
        self.window = WindowAttention()

    def _pick(self, pattern: Pattern) -> nn.Module | None:
        core, _, _ = unwrap(pattern)
        if isinstance(core, LogSparse):
            return self.logsparse
        if isinstance(core, SlidingWindow):
            return self.window
        return None

    def supports(self, q: Tensor, pattern: Pattern, dropout_p: float = 0.0) -> str | None:
        """None if this kernel can serve the request, else the reason it cannot."""
        kernel = self._pick(pattern)
        if kernel is None:
            core, _, _ = unwrap(pattern)
            return (
                "the sparse kernel serves LogSparse and SlidingWindow patterns, "
                f"not {type(core).__name__} (use flex or reference)"
            )
        return kernel.supports(q, pattern, dropout_p)

    def forward(self, q: Tensor, k: Tensor, v: Tensor, pattern: Pattern, **kwargs) -> Tensor:
        """Sparse attention; see :class:`LogSparseAttention` and :class:`WindowAttention`.

        Args:
            q, k, v: ``(B, H, L, D)``.
            pattern: a :class:`LogSparse` or :class:`SlidingWindow`, possibly with key
                padding and global tokens.
            **kwargs: ``scale``, ``dropout_p``, ``global_qkv``.
        Returns:
            ``(B, H, L, D)``.
        """
        reason = self.supports(q, pattern, kwargs.get("dropout_p", 0.0))
        if reason is not None:
            raise ValueError(reason)
        return self._pick(pattern)(q, k, v, pattern, **kwargs)
