"""Every kernel x pattern x score bias x query offset x padding against the reference.

``SERVES`` is this suite's statement of what each kernel must serve: a kernel that refuses
a case it is listed for fails, and one that accepts a case it is not listed for must match
the reference too (a refusal of an unlisted case is the expected ``ValueError``). For the
kernels in ``EXACT`` the statement is exact: accepting an unlisted case fails too.
"""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from tsformer.attention import (
    Causal,
    DenseBias,
    Full,
    LogSparse,
    OffsetTableBias,
    SlidingWindow,
    SlopeBias,
    attention,
    get_kernel,
    unwrap,
)

TOL = dict(rtol=1e-4, atol=2e-5)
H = 2

PATTERNS = {
    "full": Full(),
    "causal": Causal(),
    "logsparse_local2": LogSparse(local=2),
    "logsparse_restart5": LogSparse(local=2, restart=5),
    "window5": SlidingWindow(5),
    "window4_causal": SlidingWindow(4, one_sided=True),
    "window3_dil2": SlidingWindow(3, dilation=2),
    "window5_globals": SlidingWindow(5).with_globals([0, 6]),
}

BIASES = ["none", "slope", "slope_symmetric", "table_head", "table_query", "dense"]
# (Lq, Lk, q_offset): square; fewer queries aligned bottom-right (the default) and top-left;
# one query over many keys (a decoding step).
SHAPES = [(7, 7, None), (33, 33, None), (5, 12, None), (5, 12, 0), (1, 9, None), (1, 1, None)]


def _all(*_):
    return True


def _serves_core(*cores):
    """Patterns with these cores (any restart, dilation, padding, global tokens), any query
    offset, every bias but a dense one (a relative bias is gathered at the visited offsets;
    a dense one would cost the Lq x Lk the sparse kernels avoid)."""

    def serves(pattern, bias, Lq, Lk, off):
        core, _, _ = unwrap(pattern)
        return isinstance(core, cores) and bias != "dense"

    return serves


SERVES = {
    "reference": _all,
    "sdpa": _all,
    "flex": _all,
    "auto": _all,
    "sparse": _serves_core(LogSparse, SlidingWindow),
    "logsparse": _serves_core(LogSparse),
    "window": _serves_core(SlidingWindow),
}
EXACT = {"sparse", "logsparse", "window"}


def _make_bias(kind: str, B: int, Lq: int, Lk: int, g: torch.Generator, grad: bool = True, dtype=torch.float32):
    def leaf(x):
        return x.to(dtype).requires_grad_(grad)

    if kind == "none":
        return None
    if kind.startswith("slope"):
        return SlopeBias(leaf(torch.rand(H, generator=g).add(0.1)), symmetric=kind == "slope_symmetric")
    if kind == "table_head":
        return OffsetTableBias(leaf(torch.randn(1, H, 1, 7, generator=g)), max_distance=3)
    if kind == "table_query":
        return OffsetTableBias(leaf(torch.randn(B, H, Lq, 9, generator=g)), max_distance=4)
    return DenseBias(leaf(torch.randn(B, H, Lq, Lk, generator=g)))


def _run(kernel, pattern, bias_kind, Lq, Lk, off, padding, grad, bias_grad=None, dtype=torch.float32):
    """One case against the reference: outputs, and with ``grad`` the gradients of
    ``q, k, v`` and of the bias's tensors (when ``bias_grad``, default ``grad``).

    ``float64`` (tolerances ``assert_close``'s own) for long keys: a slope's gradient sums
    the score gradient times distances in the hundreds, beyond float32's ``TOL``.
    """
    B, D = 2, 8
    g = torch.Generator().manual_seed(Lq * 100 + Lk)
    q = torch.randn(B, H, Lq, D, generator=g).to(dtype).requires_grad_(grad)
    k = torch.randn(B, H, Lk, D, generator=g).to(dtype).requires_grad_(grad)
    v = torch.randn(B, H, Lk, D, generator=g).to(dtype).requires_grad_(grad)
    bias = _make_bias(bias_kind, B, Lq, Lk, g, grad if bias_grad is None else bias_grad, dtype)
    tol = TOL if dtype == torch.float32 else {}
    if padding:
        pattern = pattern.with_padding(torch.tensor([Lk, max(1, (Lk + 1) // 2)]))
    kw = dict(bias=bias, q_offset=off)
    listed = SERVES[kernel](pattern, bias_kind, Lq, Lk, off)
    refused = get_kernel(kernel).supports(q, k, v, pattern, **kw)
    if refused is not None:
        assert not listed, f"{kernel} refuses a case it must serve: {refused}"
        with pytest.raises(ValueError):
            attention(q, k, v, pattern, kernel=kernel, **kw)
        return
    assert listed or kernel not in EXACT, f"{kernel} serves a case SERVES does not list"
    out = attention(q, k, v, pattern, kernel=kernel, **kw)
    ref = attention(q, k, v, pattern, kernel="reference", **kw)
    assert out.shape == (B, H, Lq, D)
    assert_close(out, ref, **tol)
    if not grad:
        return
    leaves = [t for t in (q, k, v, *(bias.tensors() if bias is not None else ())) if t.requires_grad]
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(dtype)
    got = torch.autograd.grad((out * w).sum(), leaves, allow_unused=True)
    want = torch.autograd.grad((ref * w).sum(), leaves, allow_unused=True)
    for a, b in zip(got, want, strict=True):
        a = torch.zeros_like(b) if a is None else a
        b = torch.zeros_like(a) if b is None else b
        assert torch.isfinite(a).all()
        assert_close(a, b, **tol)


@pytest.mark.parametrize("padding", [False, True], ids=["nopad", "pad"])
@pytest.mark.parametrize(("Lq", "Lk", "off"), SHAPES, ids=[f"q{a}k{b}o{c}" for a, b, c in SHAPES])
@pytest.mark.parametrize("bias", BIASES)
@pytest.mark.parametrize("name", list(PATTERNS))
@pytest.mark.parametrize("kernel", ["sdpa", "sparse", "flex", "auto"])
def test_bias_offset_matrix(kernel, name, bias, Lq, Lk, off, padding):
    cpu_flex = kernel == "flex"  # no CPU backward: forward here, and the refusal of gradients
    _run(kernel, PATTERNS[name], bias, Lq, Lk, off, padding, grad=not cpu_flex)
    if cpu_flex:
        with pytest.raises(ValueError, match="backward on CPU"):
            _run_grad_call("flex", PATTERNS[name], Lq, Lk, off)


# --- the sparse kernels beyond the matrix: keys longer than a block, both window paths,
# queries past the last key, frozen biases, and decoding steps that read O(Lq) keys.

LONG_PATTERNS = {
    "window5": SlidingWindow(5),
    "window4_causal": SlidingWindow(4, one_sided=True),
    "window3_dil2": SlidingWindow(3, dilation=2),
    "window5_globals": SlidingWindow(5).with_globals([0, 6, 250]),
    "window150": SlidingWindow(150),  # reaches beyond a query block on both sides
}
# Keys longer than a query block (32..128): one query and 17 over 300 keys, bottom-right,
# top-left and in the middle; a square call; queries reaching past the last key, and query
# blocks whose whole window lies past it.
LONG_SHAPES = [
    (1, 300, None), (17, 300, None), (17, 300, 0), (17, 300, 101), (300, 300, None), (4, 6, 5), (200, 60, 10)
]
LONG_BIASES = ["none", "slope", "table_head", "table_query"]


@pytest.mark.parametrize("padding", [False, True], ids=["nopad", "pad"])
@pytest.mark.parametrize(("Lq", "Lk", "off"), LONG_SHAPES, ids=[f"q{a}k{b}o{c}" for a, b, c in LONG_SHAPES])
@pytest.mark.parametrize("bias", LONG_BIASES)
@pytest.mark.parametrize("name", list(LONG_PATTERNS))
def test_window_paths_long_keys(window_path, name, bias, Lq, Lk, off, padding):
    _run("window", LONG_PATTERNS[name], bias, Lq, Lk, off, padding, grad=True, dtype=torch.float64)


@pytest.mark.parametrize(("Lq", "Lk", "off"), [(17, 300, None), (33, 33, None), (5, 12, 0)])
@pytest.mark.parametrize("bias", ["slope", "table_query"])
@pytest.mark.parametrize("name", ["window5_globals", "window3_dil2", "window150"])
def test_window_paths_frozen_bias(window_path, name, bias, Lq, Lk, off):
    """A bias without gradient: the flash path keeps its own backward, the bias in its mask."""
    _run("window", LONG_PATTERNS[name], bias, Lq, Lk, off, padding=True, grad=True, bias_grad=False,
         dtype=torch.float64)


@pytest.mark.parametrize("padding", [False, True], ids=["nopad", "pad"])
@pytest.mark.parametrize(("Lq", "Lk", "off"), LONG_SHAPES, ids=[f"q{a}k{b}o{c}" for a, b, c in LONG_SHAPES])
@pytest.mark.parametrize("bias", LONG_BIASES)
@pytest.mark.parametrize(
    "pattern",
    [LogSparse(local=2), LogSparse(local=3, restart=100), LogSparse().with_globals([0, 9, 290])],
    ids=["local2", "restart100", "globals"],
)
def test_logsparse_long_keys(pattern, bias, Lq, Lk, off, padding):
    _run("logsparse", pattern, bias, Lq, Lk, off, padding, grad=True, dtype=torch.float64)


def _reachable(pattern, Lq, Lk, off, margin):
    """Bool ``(Lk,)``: keys some query may see, widened by ``margin`` on each side (a
    restart does not narrow it: the kernel visits the same distances, masked)."""
    core, _, _ = unwrap(pattern)
    if isinstance(core, LogSparse):
        core = LogSparse(local=core.local)
    seen = core.to_dense(Lq, Lk, q_offset=off).any(0)
    idx = seen.nonzero().flatten()
    if margin:
        near = (torch.arange(Lk)[:, None] - idx[None, :]).abs() <= margin
        return near.any(1)
    return seen


@pytest.mark.parametrize("bias", ["none", "slope", "table_query"])
@pytest.mark.parametrize(
    ("kernel", "pattern", "margin"),
    [
        ("logsparse", LogSparse(local=2), 0),
        ("logsparse", LogSparse(local=2, restart=700), 0),
        ("window", SlidingWindow(9), 128),  # a query block's span reads past the band
        ("window", SlidingWindow(200, one_sided=True), 128),
        ("window", SlidingWindow(5, dilation=3), 2),  # cut to the reach (all residues) before the split
    ],
    ids=["logsparse", "logsparse_restart", "window9", "window200_causal", "window5_dil3"],
)
@pytest.mark.parametrize(("Lq", "off"), [(1, None), (3, 1500)], ids=["decode", "middle"])
def test_decoding_reads_only_reachable_keys(window_path, kernel, pattern, margin, bias, Lq, off):
    """A few queries over a long cache: keys no query reaches (beyond a block's margin for
    the window kernel) hold NaN and must not reach the outputs or gradients, so the kernels
    never score them: the work is O(Lq n) (log-sparse) or O((Lq + w) w) (window), not O(Lk)."""
    B, D, Lk = 2, 8, 4000
    g = torch.Generator().manual_seed(7)
    q = torch.randn(B, H, Lq, D, generator=g, requires_grad=True)
    k, v = (torch.randn(B, H, Lk, D, generator=g) for _ in range(2))
    poison = ~_reachable(pattern, Lq, Lk, Lk - Lq if off is None else off, margin)
    assert poison.sum() > Lk - 800
    kp, vp = (x.masked_fill(poison[:, None], float("nan")).requires_grad_() for x in (k, v))
    k.requires_grad_(), v.requires_grad_()
    b = _make_bias(bias, B, Lq, Lk, g)
    pattern = pattern.with_padding(torch.tensor([Lk, Lk - 5]))
    out = attention(q, kp, vp, pattern, kernel=kernel, bias=b, q_offset=off)
    ref = attention(q, k, v, pattern, kernel="reference", bias=b, q_offset=off)
    assert_close(out, ref, **TOL)
    leaves = [q, *(b.tensors() if b is not None else ())]
    w = torch.randn(out.shape, generator=g)
    got = torch.autograd.grad((out * w).sum(), [*leaves, kp, vp])
    want = torch.autograd.grad((ref * w).sum(), [*leaves, k, v])
    for a, z in zip(got, want, strict=True):
        assert_close(a, z, **TOL)


def _run_grad_call(kernel, pattern, Lq, Lk, off):
    q = torch.randn(1, H, Lq, 4, requires_grad=True)
    k = torch.randn(1, H, Lk, 4)
    return attention(q, k, k, pattern, kernel=kernel, q_offset=off)


# --- the reference itself, against explicit formulas ---------------------------------


def _naive_biased(q, k, v, pattern, bias_fn, off):
    """Loops over (b, h, i, j): allowed keys from the pattern's predicate on absolute
    positions, the bias from a hand formula."""
    B, Hh, Lq, D = q.shape
    Lk = k.shape[-2]
    core, lengths, _ = unwrap(pattern)
    fn = core.mask_fn(Lq, Lk)
    out = torch.zeros(B, Hh, Lq, v.shape[-1])
    for b in range(B):
        n = Lk if lengths is None else int(lengths[b])
        for h in range(Hh):
            for i in range(Lq):
                pos = i + off
                keys = [j for j in range(n) if bool(fn(torch.tensor(b), torch.tensor(h), torch.tensor(pos), torch.tensor(j)))]
                if not keys:
                    continue
                s = torch.stack([q[b, h, i] @ k[b, h, j] * D**-0.5 + bias_fn(b, h, i, pos, j) for j in keys])
                p = torch.softmax(s, 0)
                out[b, h, i] = sum(p[m] * v[b, h, j] for m, j in enumerate(keys))
    return out


@pytest.mark.parametrize("name", ["causal", "window5", "logsparse_local2", "full"])
@pytest.mark.parametrize(("Lq", "Lk", "off"), [(4, 4, 0), (3, 8, 5), (3, 8, 0), (1, 6, 5)])
def test_reference_bias_matches_formulas(name, Lq, Lk, off):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, H, n, 4, generator=g) for n in (Lq, Lk, Lk))
    pattern = PATTERNS[name].with_padding(torch.tensor([Lk, max(1, Lk - 2)]))
    slopes = torch.tensor([0.5, 0.125])
    table = torch.randn(1, H, 1, 5, generator=g)
    per_query = torch.randn(2, H, Lq, 5, generator=g)
    cases = [
        (SlopeBias(slopes), lambda b, h, i, p, j: -slopes[h] * (p - j)),
        (SlopeBias(slopes, symmetric=True), lambda b, h, i, p, j: -slopes[h] * abs(p - j)),
        (OffsetTableBias(table, 2), lambda b, h, i, p, j: table[0, h, 0, max(-2, min(2, j - p)) + 2]),
        (OffsetTableBias(per_query, 2), lambda b, h, i, p, j: per_query[b, h, i, max(-2, min(2, j - p)) + 2]),
    ]
    for bias, fn in cases:
        out = attention(q, k, v, pattern, kernel="reference", bias=bias, q_offset=off)
        assert_close(out, _naive_biased(q, k, v, pattern, fn, off), **TOL)


@pytest.mark.parametrize("kind", ["slope", "slope_symmetric", "table_head", "table_query"])
def test_relative_matches_dense(kind):
    """``ScoreBias.relative``, the form the sparse kernels gather, equals the reference's
    ``to_dense`` at every pair, on a subset of query rows, and with one row of offsets
    shared by every query."""
    B, Lq, Lk, off = 2, 5, 12, 4
    bias = _make_bias(kind, B, Lq, Lk, torch.Generator().manual_seed(3), grad=False)
    dense = bias.to_dense(Lq, Lk, off).expand(B, H, Lq, Lk)
    pos = torch.arange(Lq) + off
    rel = torch.arange(Lk)[None, :] - pos[:, None]  # (Lq, Lk)
    assert_close(bias.relative(rel).expand(B, H, Lq, Lk), dense)
    rows = torch.tensor([3, 0])
    assert_close(bias.relative(rel[rows], rows=rows).expand(B, H, 2, Lk), dense[:, :, rows])
    shared = torch.tensor([[-4, -1, 0, 2]])  # key minus query, the same for every row
    got = bias.relative(shared).expand(B, H, Lq, 4)
    assert_close(got, dense.gather(-1, (pos[:, None] + shared).expand(B, H, Lq, 4)))
    with pytest.raises(NotImplementedError, match="DenseBias"):
        DenseBias(torch.zeros(1, 1, Lq, Lk)).relative(rel)


def test_default_offset_is_bottom_right():
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, H, 3, 4, generator=g), torch.randn(1, H, 10, 4, generator=g)
    for kernel in ["reference", "sdpa"]:
        a = attention(q, k, k, Causal(), kernel=kernel)
        b = attention(q, k, k, Causal(), kernel=kernel, q_offset=7)
        assert_close(a, b)
    # The last query row of a square call equals a one-query call over the same keys.
    kk = torch.randn(1, H, 10, 4, generator=g)
    full = attention(kk, kk, kk, LogSparse(), kernel="reference")
    step = attention(kk[:, :, -1:], kk, kk, LogSparse(), kernel="reference")
    assert_close(full[:, :, -1:], step)


def test_bad_calls_name_what_is_wrong():
    q = torch.randn(1, H, 3, 4)
    k = torch.randn(1, H, 5, 4)
    with pytest.raises(ValueError, match="q_offset must be >= 0"):
        attention(q, k, k, Full(), kernel="reference", q_offset=-1)
    with pytest.raises(ValueError, match="disagree"):
        attention(q, k[:, :1], k, Full(), kernel="sdpa")
    with pytest.raises(ValueError, match=r"SlopeBias.slopes of shape \(3,\)"):
        attention(q, k, k, Full(), kernel="reference", bias=SlopeBias(torch.ones(3)))
    with pytest.raises(ValueError, match="2R\\+1"):
        OffsetTableBias(torch.ones(1, H, 1, 4), max_distance=2)
    # The sparse kernels refuse a dense bias by name (they gather relative biases only).
    dense = DenseBias(torch.zeros(1, H, 3, 5))
    for kernel, pattern in [("sparse", LogSparse()), ("logsparse", LogSparse()), ("window", SlidingWindow(3))]:
        with pytest.raises(ValueError, match=f"the {kernel if kernel != 'sparse' else 'logsparse'} kernel does "
                                             "not take a DenseBias score bias"):
            attention(q, k, k, pattern, kernel=kernel, bias=dense)
