"""Writes ``pre_layers.pt``: small networks' weights, inputs and outputs from before the
attention layers became modules (commit 934e7ff), so the tests can check that old
checkpoints load into the new layers and compute the same thing.

Run from the repository root at that commit: ``python tests/nn/golden/make_pre_layers.py``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from tsformer.nn.conformer import ConformerCTC
from tsformer.nn.conv_transformer import ConvTransformerForecaster
from tsformer.nn.longformer import LongformerCharLM, LongformerClassifier
from tsformer.nn.patch_forecaster import PatchForecaster

SPECS = {
    "forecaster": (ConvTransformerForecaster, dict(num_series=3, num_covariates=2, d_model=16, n_heads=2, n_layers=2,
                                                   d_ff=32, conv_kernel=3, dropout=0.0,
                                                   attention={"pattern": "logsparse", "kernel": "auto"})),
    "patch": (PatchForecaster, dict(context_length=48, horizon=8, patch_len=8, stride=4, d_model=16, n_heads=2,
                                    n_layers=2, d_ff=32, conv_kernel=1, dropout=0.0)),
    "conformer_relative": (ConformerCTC, dict(input_dim=20, vocab_size=7, d_model=16, n_heads=2, n_layers=2, d_ff=32,
                                              conv_kernel=3, dropout=0.0,
                                              attention={"type": "mhsa", "pattern": "full", "pos": "relative",
                                                         "max_relative": 4})),
    "conformer_lsra": (ConformerCTC, dict(input_dim=20, vocab_size=7, d_model=16, n_heads=2, n_layers=2, d_ff=32,
                                          conv_kernel=3, dropout=0.0,
                                          attention={"type": "lsra", "pattern": "window", "window": 5,
                                                     "pos": "rotary", "conv_kernel": 3, "conv_heads": 2})),
    "longformer": (LongformerClassifier, dict(vocab_size=30, num_classes=3, d_model=16, n_heads=2, n_layers=2,
                                              d_ff=32, window=[4, 6], dilation=[1, 2], dilated_heads=1,
                                              max_tokens=64, dropout=0.0)),
    "charlm": (LongformerCharLM, dict(vocab_size=20, d_model=16, n_heads=2, n_layers=2, d_ff=32, window=[4, 8],
                                      dilation=[1, 2], dilated_heads=1, max_tokens=64, positions="rotary",
                                      dropout=0.0)),
}


def inputs(name: str) -> tuple:
    g = torch.Generator().manual_seed(0)
    if name == "forecaster":
        return torch.randn(2, 30, generator=g), torch.randn(2, 30, 2, generator=g), torch.tensor([0, 2])
    if name == "patch":
        return (torch.randn(2, 48, generator=g),)
    if name.startswith("conformer"):
        return torch.randn(2, 60, 20, generator=g), torch.tensor([60, 41])
    if name == "longformer":
        return torch.randint(1, 30, (2, 23), generator=g), torch.tensor([23, 15])
    return (torch.randint(0, 20, (2, 37), generator=g),)


def main() -> None:
    out = {}
    for name, (cls, kw) in SPECS.items():
        torch.manual_seed(1)
        net = cls(**kw).eval()
        args = inputs(name)
        with torch.no_grad():
            y = net(*args)
        entry = {"kwargs": kw, "state_dict": net.state_dict(), "inputs": args, "outputs": y}
        if name == "forecaster":
            with torch.no_grad():
                ctx, cov, sid = args
                entry["samples"] = net.sample(ctx[:, :21], cov[:, :28], sid, num_samples=5,
                                              generator=torch.Generator().manual_seed(3))
        out[name] = entry
    torch.save(out, Path(__file__).with_name("pre_layers.pt"))


if __name__ == "__main__":
    main()
