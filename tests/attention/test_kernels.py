"""Every kernel x pattern x causal x padding combination against the dense reference."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from tsformer.attention import (
    Causal,
    DenseBias,
    Full,
    LogSparse,
    SlidingWindow,
    SlopeBias,
    attention,
    choose_kernel,
    get_kernel,
    global_rows,
    unwrap,
)

CUDA = torch.cuda.is_available()

# Causal: Causal, LogSparse*, one-sided windows; non-causal: Full, symmetric windows.
PATTERNS = {
    "full": Full(),
    "causal": Causal(),
    "logsparse": LogSparse(),
    "logsparse_local3": LogSparse(local=3),
    "logsparse_restart5": LogSparse(local=2, restart=5),
    "window5": SlidingWindow(5),
    "window4_causal": SlidingWindow(4, one_sided=True),
    "window5_dil2": SlidingWindow(5, dilation=2),
    "window3_causal_dil3": SlidingWindow(3, one_sided=True, dilation=3),
    "window5_globals": SlidingWindow(5).with_globals([0, 6, 40]),
    "window2_causal_globals": SlidingWindow(2, one_sided=True).with_globals([3]),
    "window3_dil2_globals": SlidingWindow(3, dilation=2).with_globals([1, 2]),
    "logsparse_globals": LogSparse(local=2).with_globals([0, 5]),
}
# Odd, 1, and lengths that are not multiples of any block size (32/64/128).
LENGTHS = [1, 2, 7, 33, 130]
# Lengths per kernel: every length for the sparse kernels, a spread for the others.
KERNEL_LENGTHS = {"sparse": LENGTHS, "sdpa": [1, 7, 33, 130], "flex": [1, 33, 130], "auto": [7, 130]}
TOL = dict(rtol=1e-4, atol=2e-5)


def _inputs(L: int, B: int = 2, H: int = 2, D: int = 8, device="cpu", grad=True, seed=0):
    g = torch.Generator().manual_seed(seed + L)
    return [
        torch.randn(B, H, L, D, generator=g).to(device).requires_grad_(grad) for _ in range(3)
    ]


def _padded(pattern, L: int, B: int = 2, device="cpu"):
    # One full row, one padded to about half (at least 1 key).
    lengths = torch.tensor([L, max(1, (L + 1) // 2)][:B], device=device)
    return pattern.with_padding(lengths)


def _grad_outputs(out: torch.Tensor) -> torch.Tensor:
    g = torch.Generator().manual_seed(123)
    return torch.randn(out.shape, generator=g).to(out.device)


def _serves(kernel: str, q, k, v, pattern) -> bool:
    return get_kernel(kernel).supports(q, k, v, pattern) is None


def _must_serve(kernel: str, q, pattern) -> bool:
    """What each kernel is declared to serve here (a refusal of these fails the test):
    everything, except ``sparse`` (LogSparse and windows only) and ``flex`` (no backward on
    CPU)."""
    core = unwrap(pattern)[0]
    if kernel == "sparse":
        return isinstance(core, (LogSparse, SlidingWindow))
    if kernel in ("logsparse", "window"):
        return isinstance(core, LogSparse if kernel == "logsparse" else SlidingWindow)
    if kernel == "flex":
        return q.device.type == "cuda" or not q.requires_grad
    return True


def _with_global_rows(out, pattern, gqkv):
    """Longformer's global projections: rows of global tokens recomputed from ``gqkv``
    (the layer's business, after any kernel)."""
    _, lengths, globals_ = unwrap(pattern)
    return global_rows(out, *gqkv, globals_, lengths)


def _check(kernel, pattern, L, device="cpu", global_qkv=False, grad=True):
    q, k, v = _inputs(L, device=device, grad=grad)
    gqkv = _inputs(L, device=device, grad=grad, seed=7) if global_qkv else None
    if not _serves(kernel, q, k, v, pattern):
        assert not _must_serve(kernel, q, pattern), get_kernel(kernel).supports(q, k, v, pattern)
        with pytest.raises(ValueError):
            attention(q, k, v, pattern, kernel=kernel)
        return
    out = attention(q, k, v, pattern, kernel=kernel)
    ref = attention(q, k, v, pattern, kernel="reference")
    if gqkv:
        out, ref = _with_global_rows(out, pattern, gqkv), _with_global_rows(ref, pattern, gqkv)
    assert out.shape == ref.shape
    assert_close(out, ref, **TOL)
    if not grad:
        return
    leaves = [q, k, v] + list(gqkv or [])
    w = _grad_outputs(out)
    got = torch.autograd.grad((out * w).sum(), leaves, allow_unused=True)
    want = torch.autograd.grad((ref * w).sum(), leaves, allow_unused=True)
    for a, b in zip(got, want, strict=True):
        a = torch.zeros_like(b) if a is None and b is not None else a
        b = torch.zeros_like(a) if b is None and a is not None else b
        if a is not None:
            assert torch.isfinite(a).all()
            assert_close(a, b, **TOL)


@pytest.mark.parametrize("padding", [False, True], ids=["nopad", "pad"])
@pytest.mark.parametrize("name", list(PATTERNS))
@pytest.mark.parametrize(
    ("kernel", "L"), [(kernel, L) for kernel, lengths in KERNEL_LENGTHS.items() for L in lengths]
)
def test_kernel_matches_reference(kernel, L, name, padding):
    pattern = _padded(PATTERNS[name], L) if padding else PATTERNS[name]
    # On CPU flex has no backward: check its forward, and that it refuses gradients.
    _check(kernel, pattern, L, grad=not (kernel == "flex" and not CUDA))
    if kernel == "flex" and not CUDA:
        _check(kernel, pattern, L, grad=True)  # must raise ValueError


@pytest.mark.parametrize("L", [1, 9, 70])
@pytest.mark.parametrize("padding", [False, True], ids=["nopad", "pad"])
@pytest.mark.parametrize("kernel", ["sparse"])
@pytest.mark.parametrize("name", ["window5_globals", "window3_dil2_globals", "logsparse_globals"])
def test_global_projections(kernel, name, padding, L):
    pattern = _padded(PATTERNS[name], L) if padding else PATTERNS[name]
    _check(kernel, pattern, L, global_qkv=True)


def test_flex_global_projections_forward():
    pattern = _padded(PATTERNS["window5_globals"], 50)
    _check("flex", pattern, 50, global_qkv=True, grad=False)


def test_fully_masked_rows_are_zero_with_zero_grads():
    # Causal window past the padding: those queries see no key at all.
    L = 20
    pattern = SlidingWindow(3, one_sided=True).with_padding(torch.tensor([20, 4]))
    for kernel in ["sparse", "reference"]:
        _check(kernel, pattern, L)
        q, k, v = _inputs(L)
        out = attention(q, k, v, pattern, kernel=kernel)
        assert (out[1, :, 7:] == 0).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("core", [SlidingWindow(3, one_sided=True), LogSparse(local=2)], ids=["window", "logsparse"])
def test_rows_without_any_key_have_finite_gradients(core, dtype):
    """Rows with no core key whose global keys are all padded: zero outputs and gradients
    equal to the reference's, also for output gradients above 4 (the merge once divided by
    the smallest normal number there, and 4 / tiny overflows to inf, then 0 * inf = NaN)."""
    L = 20
    pattern = core.with_globals([15]).with_padding(torch.tensor([20, 4]))
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 2, L, 8, generator=g).to(dtype).requires_grad_() for _ in range(3))
    out = attention(q, k, v, pattern, kernel="sparse")
    ref = attention(q, k, v, pattern, kernel="reference")
    empty = ~pattern.to_dense(L).any(-1)  # (B, 1, L): rows with no key
    assert empty.any()
    assert (out.masked_fill(~empty[..., None], 0) == 0).all() and (out[~empty.expand(2, 2, L)] != 0).any()
    got = torch.autograd.grad((out * 8).sum(), [q, k, v])
    want = torch.autograd.grad((ref * 8).sum(), [q, k, v])
    for a, b in zip(got, want, strict=True):
        assert torch.isfinite(a).all()
        assert_close(a, b, **(TOL if dtype == torch.float32 else {}))


def test_zero_length_batch_element():
    pattern = LogSparse().with_padding(torch.tensor([9, 0]))
    _check("sparse", pattern, 9)


def test_larger_window_matches_reference():
    # Several query blocks of 128 with a window spanning more than one block.
    pattern = SlidingWindow(300).with_padding(torch.tensor([515, 260]))
    _check("sparse", pattern, 515)
    _check("sparse", LogSparse(local=4, restart=100), 515)


def test_custom_scale():
    q, k, v = _inputs(17)
    for pattern in [SlidingWindow(5), LogSparse()]:
        out = attention(q, k, v, pattern, kernel="sparse", scale=0.3)
        ref = attention(q, k, v, pattern, kernel="reference", scale=0.3)
        assert_close(out, ref, **TOL)


def test_sparse_refuses_what_it_cannot_do():
    q, k, v = _inputs(8)
    with pytest.raises(ValueError, match="Full"):
        attention(q, k, v, Full(), kernel="sparse")
    with pytest.raises(ValueError, match="dropout"):
        attention(q, k, v, LogSparse(), kernel="sparse", dropout_p=0.1)
    with pytest.raises(ValueError, match="dropout"):
        attention(q, k, v, SlidingWindow(3), kernel="flex", dropout_p=0.1)
    with pytest.raises(ValueError, match="head dims"):
        attention(q, k, v[..., :4], SlidingWindow(3), kernel="sparse")
    with pytest.raises(ValueError, match="DenseBias"):
        attention(q, k, v, SlidingWindow(3), kernel="sparse", bias=DenseBias(torch.zeros(1, 1, 8, 8)))
    # Fewer queries than keys are served (bottom-right by default), not refused.
    for pattern in [SlidingWindow(3), LogSparse()]:
        out = attention(q[:, :, :5], k, v, pattern, kernel="sparse")
        assert_close(out, attention(q[:, :, :5], k, v, pattern, kernel="reference"), **TOL)
    with pytest.raises(ValueError, match="unknown attention kernel"):
        attention(q, k, v, Full(), kernel="nope")


def test_flex_refuses_cpu_backward():
    q, k, v = _inputs(8)
    with pytest.raises(ValueError, match="backward on CPU"):
        attention(q, k, v, Causal(), kernel="flex")


def test_registry_names():
    from tsformer.attention import KERNELS

    assert {"reference", "sdpa", "flex", "sparse", "auto", "logsparse", "window"} <= set(KERNELS)


def test_auto_choice_on_cpu():
    q, k, v = _inputs(64)
    assert choose_kernel(q, k, v, LogSparse()) == "sparse"
    assert choose_kernel(q, k, v, SlidingWindow(8).with_globals([0])) == "sparse"
    assert choose_kernel(q, k, v, Causal()) == "sdpa"
    assert choose_kernel(q, k, v, SlidingWindow(8), dropout_p=0.1) == "reference"
    with torch.no_grad():
        long_q = torch.zeros(1, 1, 4096, 8)
        assert choose_kernel(long_q, long_q, long_q, SlidingWindow(512)) == "sparse"
        assert choose_kernel(long_q, long_q, long_q, LogSparse()) == "sparse"
        assert choose_kernel(long_q, long_q, long_q, Full()) == "flex"
    # Relative biases and query offsets: the sparse kernels serve them, a dense bias not.
    slopes = SlopeBias(torch.ones(2, requires_grad=True))
    assert choose_kernel(q[:, :, :1], k, v, LogSparse(), bias=slopes) == "sparse"
    assert choose_kernel(q[:, :, :3], k, v, SlidingWindow(8), bias=slopes, q_offset=0) == "sparse"
    assert choose_kernel(q, k, v, SlidingWindow(8), bias=DenseBias(torch.zeros(1, 2, 64, 64))) == "sdpa"
    # Training at length: flex has no CPU backward, so auto must not pick it.
    long_q.requires_grad_(True)
    assert choose_kernel(long_q, long_q, long_q, SlidingWindow(512)) == "sparse"
    assert choose_kernel(long_q, long_q, long_q, Full()) == "sdpa"


def test_auto_with_dropout_runs():
    q, k, v = _inputs(10)
    out = attention(q, k, v, SlidingWindow(3), kernel="auto", dropout_p=0.5)
    assert out.shape == q.shape


@pytest.mark.slow
def test_flex_compiled_forward_cpu():
    # One compiled run (compile takes ~30 s on 2 cores); the rest of the suite uses eager flex.
    from tsformer.attention.flex import FlexAttention

    L = 512
    q, k, v = _inputs(L, B=1, grad=False)
    pattern = SlidingWindow(64).with_padding(torch.tensor([400]))
    out = FlexAttention(compile=True)(q, k, v, pattern)
    assert_close(out, attention(q, k, v, pattern, kernel="reference"), **TOL)


@pytest.mark.parametrize("L", [1, 33, 300])
@pytest.mark.parametrize("kernel", ["sdpa", "flex", "sparse", "auto"])
@pytest.mark.parametrize("name", ["causal", "logsparse_restart5", "window5_dil2", "window5_globals"])
@pytest.mark.parametrize("padding", [False, True], ids=["nopad", "pad"])
@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_kernel_matches_reference_cuda(padding, name, kernel, L):
    pattern = _padded(PATTERNS[name], L, device="cuda") if padding else PATTERNS[name]
    _check(kernel, pattern, L, device="cuda")


def _naive(q, k, v, mask, scale):
    """Row-by-row softmax with Python loops: independent of the reference's code path."""
    B, H, L, D = q.shape
    out = torch.zeros_like(q)
    for b in range(B):
        for h in range(H):
            for i in range(L):
                keys = [j for j in range(L) if bool(mask[b, i, j])]
                if not keys:
                    continue
                s = torch.stack([q[b, h, i] @ k[b, h, j] * scale for j in keys])
                p = torch.softmax(s, 0)
                out[b, h, i] = sum(p[n] * v[b, h, j] for n, j in enumerate(keys))
    return out


def _brute_mask(pattern, L, B):
    """``(B, L, L)`` mask from the pattern's documented definition, in plain Python."""
    from tsformer.attention import unwrap

    core, lengths, globals_ = unwrap(pattern)
    m = torch.zeros(B, L, L, dtype=torch.bool)
    for b in range(B):
        n = L if lengths is None else int(lengths[b])
        for i in range(L):
            for j in range(min(n, L)):
                d = i - j
                if isinstance(core, Full):
                    ok = True
                elif isinstance(core, Causal):
                    ok = d >= 0
                elif isinstance(core, LogSparse):
                    e = d - core.local + 1
                    ok = d >= 0 and (d < core.local or (e > 0 and e & (e - 1) == 0))
                    if core.restart is not None:
                        ok = ok and i // core.restart == j // core.restart
                else:
                    r = core.dilation
                    ok = -core.after * r <= d <= core.before * r and d % r == 0
                m[b, i, j] = ok or i in globals_ or j in globals_
    return m


@pytest.mark.parametrize("name", ["full", "causal", "logsparse_restart5", "window5_dil2", "window5_globals"])
@pytest.mark.parametrize("L", [1, 11])
def test_reference_matches_naive(name, L):
    pattern = _padded(PATTERNS[name], L)
    q, k, v = _inputs(L, grad=False)
    mask = _brute_mask(pattern, L, 2)
    assert torch.equal(pattern.to_dense(L).expand(2, 1, L, L)[:, 0], mask)
    out = attention(q, k, v, pattern, kernel="reference")
    assert_close(out, _naive(q, k, v, mask, 8**-0.5), **TOL)


# --- the two window paths: ATen's CPU flash kernel over window views, and blocked matmuls
# (CUDA, other dtypes, and the backward fallback). Both must match the reference; the
# ``window_path`` fixture (conftest.py) runs a test on each.

WINDOW_NAMES = [n for n in PATTERNS if n.startswith("window")]


@pytest.mark.parametrize("L", [1, 33, 130])
@pytest.mark.parametrize("padding", [False, True], ids=["nopad", "pad"])
@pytest.mark.parametrize("name", WINDOW_NAMES)
def test_window_paths_match_reference(window_path, name, padding, L):
    pattern = _padded(PATTERNS[name], L) if padding else PATTERNS[name]
    _check("window", pattern, L, global_qkv="globals" in name)


def test_window_paths_larger(window_path):
    pattern = SlidingWindow(300).with_padding(torch.tensor([515, 260]))
    _check("window", pattern, 515)
    _check("window", SlidingWindow(100, dilation=3).with_globals([0, 200]), 400)


def _dense_lse(q, k, pattern, scale):
    mask = pattern.to_dense(q.shape[-2], device=q.device)
    s = (q @ k.transpose(-1, -2) * scale).masked_fill(~mask, float("-inf"))
    return torch.logsumexp(s, -1)


@pytest.mark.parametrize("padding", [False, True], ids=["nopad", "pad"])
def test_window_core_lse_and_its_gradient(window_path, padding):
    """The core's log-sum-exp (which global tokens merge through) and its gradient, also
    on rows whose output gets no gradient (the flash path then falls back)."""
    from tsformer.attention.window import window_core

    L = 70
    q, k, v = _inputs(L)
    core = SlidingWindow(6, one_sided=True)
    lengths = torch.tensor([70, 30])
    bias = torch.zeros(2, L).masked_fill_(torch.arange(L)[None] >= lengths[:, None], float("-inf"))
    pattern = core.with_padding(lengths) if padding else core
    out, lse = window_core(q, k, v, bias if padding else None, core, 0.3)
    want_lse = _dense_lse(q, k, pattern, 0.3)
    assert_close(lse, want_lse, **TOL)
    assert_close(out, attention(q, k, v, pattern, kernel="reference", scale=0.3), **TOL)
    w, c = _grad_outputs(out), torch.randn(lse.shape, generator=torch.Generator().manual_seed(5))
    for zero_rows in (False, True):
        wo = w.clone()
        if zero_rows:
            wo[:, :, 10:20] = 0  # dO = 0 there, dlse != 0
        fin = torch.isfinite(want_lse)
        got = torch.autograd.grad((out * wo).sum() + (lse.where(fin, 0) * c).sum(), [q, k, v], retain_graph=True)
        ref_out = attention(q, k, v, pattern, kernel="reference", scale=0.3)
        ref_lse = _dense_lse(q, k, pattern, 0.3)
        want = torch.autograd.grad((ref_out * wo).sum() + (ref_lse.where(fin, 0) * c).sum(), [q, k, v])
        for a, b in zip(got, want, strict=True):
            assert_close(a, b, **TOL)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_window_other_dtypes(window_path, dtype):
    pattern = SlidingWindow(9).with_globals([0]).with_padding(torch.tensor([50, 31]))
    q, k, v = (t.detach().to(dtype).requires_grad_() for t in _inputs(50))
    out = attention(q, k, v, pattern, kernel="window")
    ref = attention(*(t.double() for t in (q, k, v)), pattern, kernel="reference")
    tol = dict(rtol=1e-7, atol=1e-9) if dtype == torch.float64 else dict(rtol=2e-2, atol=2e-2)
    assert out.dtype == dtype
    assert_close(out.double(), ref, **tol)
    out.float().sum().backward()
    assert all(torch.isfinite(t.grad.float()).all() for t in (q, k, v))


def test_window_strided_inputs(window_path):
    """Heads-interleaved ``(B, L, H, D)`` storage, as a packed projection produces it."""
    L = 150
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(2, L, 3, 8, generator=g).transpose(1, 2).requires_grad_() for _ in range(3))
    pattern = SlidingWindow(40).with_globals([0, 77]).with_padding(torch.tensor([150, 101]))
    _check_given("window", pattern, q, k, v)


def _check_given(kernel, pattern, q, k, v):
    out = attention(q, k, v, pattern, kernel=kernel)
    ref = attention(q, k, v, pattern, kernel="reference")
    assert_close(out, ref, **TOL)
    w = _grad_outputs(out)
    got = torch.autograd.grad((out * w).sum(), [q, k, v])
    want = torch.autograd.grad((ref * w).sum(), [q, k, v])
    for a, b in zip(got, want, strict=True):
        assert_close(a, b, **TOL)


def test_window_feature_major_inputs(window_path):
    """Queries and keys laid out feature-major, ``(B, H, D, L)`` viewed as ``(B, H, L, D)``
    (a convolution's output, as the LogSparse layer's ``conv`` projection gives): the flash
    path used to return garbage for them."""
    g = torch.Generator().manual_seed(4)
    qk = torch.randn(2, 2 * 3 * 8, 70, generator=g)
    q, k = (t.reshape(2, 3, 8, 70).transpose(-1, -2).requires_grad_() for t in qk.chunk(2, dim=1))
    v = torch.randn(2, 70, 3, 8, generator=g).transpose(1, 2).requires_grad_()
    _check_given("window", SlidingWindow(16, one_sided=True).with_padding(torch.tensor([70, 41])), q, k, v)
