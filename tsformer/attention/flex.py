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
from torch import Tensor

from tsformer.attention.base import Kernel
from tsformer.attention.patterns import KeyPadding, Pattern, unwrap

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


def block_mask_for(pattern: Pattern, batch: int, q_len: int, k_len: int, device: torch.device, q_offset: int = 0):
    """Cached FlexAttention ``BlockMask`` of ``pattern`` (batch-dependent only with key padding)."""
    _, lengths, _ = unwrap(pattern)
    B = batch if lengths is not None else None
    key = (_pattern_key(pattern), B, q_len, k_len, q_offset, str(device))
    bm = _BLOCK_MASKS.get(key)
    if bm is None:
        fn = pattern.mask_fn(q_len, k_len, device, q_offset)
        mask_mod = fn if q_offset == 0 else (lambda b, h, q, k: fn(b, h, q + q_offset, k))
        bm = create_block_mask(mask_mod, B, None, q_len, k_len, device=str(device))
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


class FlexAttention(Kernel):
    """FlexAttention (``torch.nn.attention.flex_attention``) for every pattern, bias (as a
    ``score_mod``) and query offset.

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

    def _supports(self, q, k, v, pattern, dropout_p, bias, q_offset) -> str | None:
        if flex_attention is None:
            return "the flex kernel needs torch.nn.attention.flex_attention (PyTorch >= 2.5)"
        if dropout_p > 0:
            return "the flex kernel does not support attention dropout"
        more = bias.tensors() if bias is not None else ()
        if q.device.type == "cpu" and _needs_grad(q, k, v, *more):
            return "the flex kernel has no backward on CPU in this PyTorch (use the sparse or reference kernel)"
        return None

    def _attend(self, q, k, v, pattern, scale, dropout_p, bias, q_offset) -> Tensor:
        B, H, Lq, _ = q.shape
        Lk = k.shape[-2]
        bm = block_mask_for(pattern, B, Lq, Lk, q.device, q_offset)
        score_mod = None if bias is None else bias.score_mod(q_offset)
        compile = self.compile
        if compile is None:
            compile = q.device.type == "cuda" or Lq >= _COMPILE_MIN_LEN
        if compile:
            # One compiled graph per (pattern, shape): dynamo's default of 8 recompiles would
            # silently drop to the O(L^2) eager path in a process that sees more.
            with torch._dynamo.config.patch(recompile_limit=_RECOMPILE_LIMIT):
                return _compiled_flex()(q, k, v, score_mod=score_mod, block_mask=bm, scale=scale)
        with warnings.catch_warnings():  # the eager path is deliberate for small inputs
            warnings.filterwarnings("ignore", message=".*flex_attention called without torch.compile.*")
            return flex_attention(q, k, v, score_mod=score_mod, block_mask=bm, scale=scale)
