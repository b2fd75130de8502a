"""Mixed precision parts: fp32 LayerNorm statistics under autocast, and bf16 autocast
where the hardware has it (MosaicBERT's recipe, Portes et al. 2023, Sec. 2.1: bf16
mixed precision; Micikevicius et al. 2018 keep reductions such as normalisation
statistics in fp32)."""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import Tensor, nn

AUTOCAST = (None, "bf16")
"""``model.autocast`` values: None (the trainer's precision), ``bf16``."""


class FP32LayerNorm(nn.LayerNorm):
    """``nn.LayerNorm`` that computes its statistics and output in fp32 under autocast
    (CPU autocast would keep a bf16 input in bf16), returned in the input's dtype.
    Identical to ``nn.LayerNorm`` in fp32; same parameters and state-dict names."""

    def forward(self, x: Tensor) -> Tensor:
        if x.dtype == torch.float32 and not torch.is_autocast_enabled(x.device.type):
            return super().forward(x)
        with torch.autocast(x.device.type, enabled=False):
            w = None if self.weight is None else self.weight.float()
            b = None if self.bias is None else self.bias.float()
            return F.layer_norm(x.float(), self.normalized_shape, w, b, self.eps).to(x.dtype)


def bf16_available(device: torch.device) -> bool:
    """Whether ``device`` computes in bf16 natively: a CUDA GPU with bf16 (Ampere or later),
    or a CPU with AVX512-BF16 or AMX (elsewhere bf16 is emulated, slower than fp32)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
        return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)
    return False


def autocast(kind: str | None, device: torch.device):
    """The context ``model.autocast`` asks for on ``device`` (a no-op for None, or where
    :func:`bf16_available` says no)."""
    if kind not in AUTOCAST:
        raise ValueError(f"model.autocast={kind!r}; choose one of {AUTOCAST}")
    if kind is None or not bf16_available(device):
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


__all__ = ["AUTOCAST", "FP32LayerNorm", "autocast", "bf16_available"]
