"""The forecast command's allocator setting (issue #19, section 2): glibc keeps freed
buffers for reuse; off glibc it says it did nothing rather than failing."""

from __future__ import annotations

import ctypes
import platform

import pytest

from tsformer.forecast import DEFAULTS, reuse_freed_memory


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_reuse_freed_memory_takes_effect_on_glibc():
    assert reuse_freed_memory() is True
    assert DEFAULTS["reuse_memory"] is True


def test_reuse_freed_memory_without_glibc_is_a_no_op(monkeypatch):
    def missing(name, *a, **k):
        raise OSError(f"{name}: not found")

    monkeypatch.setattr(ctypes, "CDLL", missing)
    assert reuse_freed_memory() is False
