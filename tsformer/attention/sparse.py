"""The ``sparse`` kernel: dispatches on the pattern to the kernels whose work and memory
follow the pattern's non-zeros.

- :class:`LogSparse` -> :class:`~tsformer.attention.logsparse.LogSparseAttention`
  (Li et al. 2019), ``O(L log L)``.
- :class:`SlidingWindow` -> :class:`~tsformer.attention.window.WindowAttention`
  (Beltagy et al. 2020), ``O(L w)``.

Both handle key padding, global tokens, query offsets (fewer queries than keys: a decoding
step costs the queries' keys, not the cache's) and the relative score biases
(:class:`~tsformer.attention.bias.SlopeBias`, :class:`~tsformer.attention.bias.OffsetTableBias`,
with gradients into their slopes and tables), and run forward and backward. A dense bias
(:class:`~tsformer.attention.bias.DenseBias`) they refuse: ``auto`` then picks ``sdpa``.
"""

from __future__ import annotations

from torch import Tensor

from tsformer.attention.base import Kernel
from tsformer.attention.logsparse import LogSparseAttention
from tsformer.attention.patterns import LogSparse, Pattern, SlidingWindow, unwrap
from tsformer.attention.window import WindowAttention


class SparseAttention(Kernel):
    """Pattern-dispatching sparse kernel. Serves what its two halves serve; cannot serve
    dense patterns (full, causal), attention dropout or a dense score bias."""

    name = "sparse"

    def __init__(self) -> None:
        super().__init__()
        self.logsparse = LogSparseAttention()
        self.window = WindowAttention()

    def _pick(self, pattern: Pattern) -> Kernel | None:
        core, _, _ = unwrap(pattern)
        if isinstance(core, LogSparse):
            return self.logsparse
        if isinstance(core, SlidingWindow):
            return self.window
        return None

    def _supports(self, q, k, v, pattern, dropout_p, bias, q_offset) -> str | None:
        kernel = self._pick(pattern)
        if kernel is None:
            core, _, _ = unwrap(pattern)
            return (
                "the sparse kernel serves LogSparse and SlidingWindow patterns, "
                f"not {type(core).__name__} (use flex or reference)"
            )
        return kernel._supports(q, k, v, pattern, dropout_p, bias, q_offset)

    def _attend(self, q, k, v, pattern, scale, dropout_p, bias, q_offset) -> Tensor:
        return self._pick(pattern)._attend(q, k, v, pattern, scale, dropout_p, bias, q_offset)
