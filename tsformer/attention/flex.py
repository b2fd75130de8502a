"""FlexAttention kernel: PyTorch's ``flex_attention`` with a block mask built from the pattern.

Dong et al. 2024, "Flex Attention: A Programming Model for Generating Optimized Attention
Kernels" (https://arxiv.org/abs/2412.05496). The pattern's ``mask_fn`` is the
``mask_mod``; :func:`create_block_mask` turns it into a block-sparse mask (128 x 128 tiles)
so fully masked tiles are skipped. Block masks are cached per (pattern, shape, device).

In PyTorch 2.14 on CPU, compiled FlexAttention runs inference only: any input requiring
grad raises ``NotImplementedError`` (eager too), so :meth:`FlexAttention.supports`
reports it and ``auto`` uses the ``sparse`` kernels for CPU training.
"""

from __future__ import annotations

import warnings
from collections import OrderedDict
from typing import Any

import torch
from torch import Tensor, nn

from tsformer.attention.patterns import KeyPadding, Pattern, unwrap
from tsformer.attention.reference import _global_rows

try:  # FlexAttention appeared in PyTorch 2.5
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention
except ImportError:  # pragma: no cover - older torch
    create_block_mask = flex_attention = None

_COMPILED: dict[str, Any] = {}
_BLOCK_MASKS: OrderedDict[tuple, Any] = OrderedDict()
_MAX_CACHED_MASKS = 32
# Below this many queries on CPU the eager (math) path beats a 30 s compile.
_COMPILE_MIN_LEN = 512


def _pattern_key(pattern: Pattern) -> tuple:
    """Hashable value key: key padding is keyed by its lengths, not by tensor identity."""
    if isinstance(pattern, KeyPadding):
        return ("pad", _pattern_key(pattern.base), tuple(int(x) for x in pattern.lengths.tolist()))
    return ("pat", pattern)


def block_mask_for(pattern: Pattern, batch: int, q_len: int, k_len: int, device: torch.device):
    """Cached FlexAttention ``BlockMask`` of ``pattern`` (batch-dependent only with key padding)."""
    _, lengths, _ = unwrap(pattern)
    B = batch if lengths is not None else None
    key = (_pattern_key(pattern), B, q_len, k_len, str(device))
    bm = _BLOCK_MASKS.get(key)
    if bm is None:
        fn = pattern.mask_fn(q_len, k_len, device)
        bm = create_block_mask(fn, B, None, q_len, k_len, device=str(device))
        _BLOCK_MASKS[key] = bm
        if len(_BLOCK_MASKS) > _MAX_CACHED_MASKS:
            _BLOCK_MASKS.popitem(last=False)
    else:
        _BLOCK_MASKS.move_to_end(key)
    return bm


_RECOMPILE_LIMIT = 64


def _compiled_flex():
    if "fn" not in _COMPILED:
        _COMPILED["fn"] = torch.compile(flex_attention, dynamic=False)
    return _COMPILED["fn"]


def _needs_grad(*tensors: Tensor | None) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


class FlexAttention(nn.Module):
    """FlexAttention (``torch.nn.attention.flex_attention``) for every pattern.

    Args:
        compile: run the ``torch.compile``-d kernel. None (default): compile on CUDA and on
            CPU from ``512`` queries up; below that the eager path is faster than compiling.

    Cannot serve: attention dropout, backward on CPU (PyTorch 2.14 lacks it, compiled or
    eager), PyTorch without FlexAttention.
    """

    name = "flex"

    def __init__(self, compile: bool | None = None) -> None:
        super().__init__()
        self.compile = compile

    def supports(self, q: Tensor, pattern: Pattern, dropout_p: float = 0.0, *more: Tensor) -> str | None:
        """None if this kernel can serve the request, else the reason it cannot."""
        if flex_attention is None:
            return "the flex kernel needs torch.nn.attention.flex_attention (PyTorch >= 2.5)"
        if dropout_p > 0:
            return "the flex kernel does not support attention dropout"
        if q.device.type == "cpu" and _needs_grad(q, *more):
            return "the flex kernel has no backward on CPU in this PyTorch (use the sparse or reference kernel)"
        return None

    def forward(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        pattern: Pattern,
        *,
        scale: float | None = None,
        dropout_p: float = 0.0,
        global_qkv: tuple[Tensor, Tensor, Tensor] | None = None,
    ) -> Tensor:
        """Attention under ``pattern`` through FlexAttention.

        Args:
            q: ``(B, H, Lq, D)``. k, v: ``(B, H, Lk, D)``.
            pattern: any pattern; rows with no allowed key give zeros.
            scale: score scale, default ``D ** -0.5``.
            global_qkv: optional ``(qg, kg, vg)``, each ``(B, H, L, D)``: rows of global
                tokens are recomputed densely from them (``G x L`` work).
        Returns:
            ``(B, H, Lq, D)``.
        """
        reason = self.supports(q, pattern, dropout_p, k, v, *(global_qkv or ()))
        if reason is not None:
            raise ValueError(reason)
        B, H, Lq, _ = q.shape
        Lk = k.shape[-2]
        bm = block_mask_for(pattern, B, Lq, Lk, q.device)
        compile = self.compile
        if compile is None:
            compile = q.device.type == "cuda" or Lq >= _COMPILE_MIN_LEN
        if compile:
            # One compiled graph per (pattern, shape): dynamo's default of 8 recompiles would
            # silently drop to the O(L^2) eager path in a process that sees more.
            with torch._dynamo.config.patch(recompile_limit=_RECOMPILE_LIMIT):
                out = _compiled_flex()(q, k, v, block_mask=bm, scale=scale)
        else:
            with warnings.catch_warnings():  # the eager path is deliberate for small inputs
                warnings.filterwarnings("ignore", message=".*flex_attention called without torch.compile.*")
                out = flex_attention(q, k, v, block_mask=bm, scale=scale)
        if global_qkv is not None:
            out = _global_rows(out, pattern, global_qkv, scale, 0.0)
        return out
