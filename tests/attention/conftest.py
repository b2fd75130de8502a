"""Fixtures shared by the attention tests."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: threading only adds overhead, and the CPU is shared."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(params=["flash", "bmm"])
def window_path(request, monkeypatch):
    """Run a test on each path of the window kernel: ATen's CPU flash kernel over window
    views, and blocked matmuls (CUDA, other dtypes, the backward of a bias needing grad)."""
    from tsformer.attention import window

    if request.param == "bmm":
        monkeypatch.setattr(window, "_flash_ok", lambda q: False)
    else:
        assert window._flash_ok(torch.zeros(1, 1, 1))
        # Small calls: exercise the chunking over rows and blocks at test sizes.
        monkeypatch.setattr(window, "_FLASH_CHUNK_ELEMS", 64 * 8)
    return request.param
