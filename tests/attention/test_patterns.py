"""Property tests (hypothesis) for the pattern mask logic."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tsformer.attention import (
    Causal,
    Full,
    GlobalTokens,
    KeyPadding,
    LogSparse,
    OffsetTableBias,
    SlidingWindow,
    SlopeBias,
    attention,
    nnz,
    pattern_from_config,
    unwrap,
)

lengths_ = st.integers(1, 70)


@st.composite
def windows(draw):
    return SlidingWindow(
        window=draw(st.integers(1, 40)), one_sided=draw(st.booleans()), dilation=draw(st.integers(1, 4))
    )


@st.composite
def logsparses(draw):
    return LogSparse(local=draw(st.integers(1, 6)), restart=draw(st.one_of(st.none(), st.integers(1, 30))))


@given(windows(), lengths_)
def test_window_mask_definition(p, L):
    m = p.to_dense(L)
    i = torch.arange(L)[:, None]
    j = torch.arange(L)[None, :]
    d = i - j
    want = (d <= p.before * p.dilation) & (-d <= p.after * p.dilation) & (d % p.dilation == 0)
    assert torch.equal(m, want)
    # Row i sees at most before + after + 1 keys; the diagonal always.
    assert int(m.sum(1).max()) <= p.before + p.after + 1
    assert bool(m.diagonal().all())
    if p.one_sided:
        assert not bool(m.triu(1).any())  # causal
        assert p.causal
    else:
        assert torch.equal(m, m.T)  # symmetric
    assert nnz(p, L) == int(m.sum())


@given(logsparses(), lengths_)
def test_logsparse_mask_matches_offsets(p, L):
    m = p.to_dense(L)
    offs = p.offsets(L)
    assert offs == sorted(set(offs)) and offs[0] == 0
    assert len(offs) <= p.local + L.bit_length()  # O(log L) keys per query
    for i in range(L):
        seen = {i - j for j in range(L) if bool(m[i, j])}
        want = {d for d in offs if d <= i}
        if p.restart is not None:
            want = {d for d in want if (i - d) // p.restart == i // p.restart}
        assert seen == want
    assert not bool(m.triu(1).any())
    if p.restart is None:
        assert nnz(p, L) == int(m.sum())


@given(st.one_of(windows(), logsparses(), st.just(Full()), st.just(Causal())), lengths_, st.data())
def test_padding_and_globals_compose(p, L, data):
    B = 3
    lengths = torch.tensor(data.draw(st.lists(st.integers(0, L), min_size=B, max_size=B)))
    idx = data.draw(st.lists(st.integers(0, L + 3), max_size=4))
    base = p.to_dense(L)
    gflag = torch.zeros(L, dtype=torch.bool)
    for i in idx:
        if i < L:
            gflag[i] = True
    keep = torch.arange(L)[None, :] < lengths[:, None]  # (B, L)
    want = (base | gflag[:, None] | gflag[None, :])[None] & keep[:, None, :]
    # Either composition order: padding always wins over global tokens.
    for q in (p.with_globals(idx).with_padding(lengths), p.with_padding(lengths).with_globals(idx)):
        assert isinstance(q, KeyPadding) and isinstance(q.base, GlobalTokens)
        assert torch.equal(q.to_dense(L)[:, 0], want)
        core, lens, globals_ = unwrap(q)
        assert core == p and torch.equal(lens, lengths) and globals_ == tuple(idx)
    # mask_fn (FlexAttention's mask_mod) agrees with the dense mask element-wise.
    fn = p.with_globals(idx).with_padding(lengths).mask_fn(L, L)
    b = torch.arange(B)[:, None, None]
    i = torch.arange(L)[None, :, None]
    j = torch.arange(L)[None, None, :]
    assert torch.equal(fn(b, torch.zeros((), dtype=torch.long), i, j), want)


@settings(max_examples=25, deadline=None)
@given(st.one_of(windows(), logsparses()), st.integers(1, 90), st.data())
def test_sparse_kernel_exact_on_random_patterns(p, L, data):
    torch.manual_seed(0)
    lengths = torch.tensor([L, data.draw(st.integers(1, L))])
    pattern = p.with_padding(lengths)
    q, k, v = (torch.randn(2, 2, L, 4, dtype=torch.float64, requires_grad=True) for _ in range(3))
    out = attention(q, k, v, pattern, kernel="sparse")
    ref = attention(q, k, v, pattern, kernel="reference")
    torch.testing.assert_close(out, ref)
    g1 = torch.autograd.grad(out.square().sum(), (q, k, v))
    g2 = torch.autograd.grad(ref.square().sum(), (q, k, v))
    for a, b in zip(g1, g2, strict=True):
        torch.testing.assert_close(a, b)


@settings(max_examples=40, deadline=None)
@given(st.one_of(windows(), logsparses()), st.integers(1, 40), st.integers(1, 90), st.data())
def test_sparse_kernel_exact_with_offsets_and_biases(p, Lq, Lk, data):
    """Random query offsets (queries past the last key too), relative biases, global tokens
    and padding: outputs and the gradients of q, k, v and the bias's tensors."""
    torch.manual_seed(0)
    off = data.draw(st.integers(0, Lk + 3), label="q_offset")
    kind = data.draw(st.sampled_from(["none", "slope", "slope_symmetric", "table_head", "table_query"]))
    pattern = p
    globals_ = data.draw(st.lists(st.integers(0, Lk + Lq), max_size=3), label="globals")
    if globals_:
        pattern = pattern.with_globals(globals_)
    if data.draw(st.booleans(), label="padding"):
        pattern = pattern.with_padding(torch.tensor([Lk, data.draw(st.integers(1, Lk))]))
    q = torch.randn(2, 2, Lq, 4, dtype=torch.float64, requires_grad=True)
    k, v = (torch.randn(2, 2, Lk, 4, dtype=torch.float64, requires_grad=True) for _ in range(2))
    R = data.draw(st.integers(0, 6), label="max_distance")
    bias = {
        "none": None,
        "slope": SlopeBias(torch.rand(2, dtype=torch.float64, requires_grad=True)),
        "slope_symmetric": SlopeBias(torch.rand(2, dtype=torch.float64, requires_grad=True), symmetric=True),
        "table_head": OffsetTableBias(torch.randn(1, 2, 1, 2 * R + 1, dtype=torch.float64, requires_grad=True), R),
        "table_query": OffsetTableBias(torch.randn(2, 1, Lq, 2 * R + 1, dtype=torch.float64, requires_grad=True), R),
    }[kind]
    kw = dict(bias=bias, q_offset=off)
    out = attention(q, k, v, pattern, kernel="sparse", **kw)
    ref = attention(q, k, v, pattern, kernel="reference", **kw)
    torch.testing.assert_close(out, ref)
    leaves = [q, k, v, *(bias.tensors() if bias is not None else ())]
    g1 = torch.autograd.grad(out.square().sum(), leaves, allow_unused=True)
    g2 = torch.autograd.grad(ref.square().sum(), leaves, allow_unused=True)
    for a, b in zip(g1, g2, strict=True):
        a = torch.zeros_like(b) if a is None else a
        b = torch.zeros_like(a) if b is None else b
        torch.testing.assert_close(a, b)


def test_pattern_from_config():
    assert pattern_from_config("logsparse", local=2) == LogSparse(local=2)
    assert pattern_from_config("window", window=8, one_sided=True) == SlidingWindow(8, one_sided=True)
    with pytest.raises(ValueError):
        pattern_from_config("nope")
