"""FAVOR+: softmax attention through random features in linear time (Choromanski et al. 2021,
"Rethinking Attention with Performers", ICLR, https://arxiv.org/abs/2009.14794).

``exp(q . k) = E_w[phi(q) . phi(k)]`` for ``w ~ N(0, I_d)``, with the positive features of
Lemma 1, ``phi(x) = exp(w^T x - |x|^2 / 2) / sqrt(m)`` (``m`` draws ``w_1 .. w_m``), or the
trigonometric ones of Sec. 2.3, ``phi(x) = exp(|x|^2 / 2) [sin(w^T x), cos(w^T x)] / sqrt(m)``.
Attention then costs ``O(L m d)``: ``D^-1 phi(Q) (phi(K)^T V)`` (Sec. 2.2, Eq. 5), and the
causal form keeps prefix sums of ``phi(k_j) v_j^T`` (Sec. 2.6). Rows of ``W`` are drawn
orthogonal in blocks of ``d`` (Sec. 2.4; each row keeps a chi-distributed length, so every
row is still marginally ``N(0, I_d)`` and the estimate stays unbiased with lower variance).

Stabilisers (each a constant that cancels exactly in the attention ratio):

- queries: each query's features are divided by their own largest one (``|q|^2 / 2`` and
  the trigonometric ``exp(|q|^2 / 2)`` are per-query constants too, so they are dropped);
- keys: positive features use one constant for every key that depends on ``W`` only:
  ``w^T k - |k|^2 / 2 = |w|^2 / 2 - |k - w|^2 / 2 <= |w|^2 / 2``, so with
  ``s = max_r |w_r|^2 / 2 - HEADROOM`` no key feature exceeds ``e^HEADROOM``. Being
  independent of the data it leaks nothing from later positions in the causal form (a max
  over the sequence, as in the authors' code, would: an early key can underflow because of
  a large later one) and a decoding step uses the very same features. Trigonometric key
  features carry ``exp(|k|^2 / 2)``, which has no such bound: they are shifted by the max
  over the (valid) keys, so they serve the bidirectional form only.

Everything is stateless and imports only torch; the layer
(:class:`tsformer.nn.attention.performer.PerformerAttention`) owns the projection.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

FEATURE_KINDS = ("positive", "trig")
"""``positive``: Lemma 1's ``exp(w^T x - |x|^2/2)`` (FAVOR+); ``trig``: ``sin``/``cos`` features."""

HEADROOM = 40.0
"""Largest log-value of a positive key feature (``e^40 * 1e12`` keys still fits fp32)."""

BLOCK = 4096
"""Positions per checkpointed block of the bidirectional form (``O(BLOCK m)`` features live)."""
CAUSAL_BLOCK = 1024
"""Positions per checkpointed block of the causal form: besides the features, a block holds
``BLOCK / chunk`` prefix-sum states of ``m x Dv`` and their gradients (with ``m = 256``,
``Dv = 64``, ``chunk = 64``: 8 MB per head at 1024 positions, 32 MB at 4096)."""

State = tuple[Tensor, Tensor]
"""``(S, z)``: the causal prefix sums ``sum_j phi(k_j) v_j^T`` ``(B, H, m, Dv)`` and
``sum_j phi(k_j)`` ``(B, H, m)``."""


def gaussian_projection(m: int, d: int, orthogonal: bool = True, generator: torch.Generator | None = None,
                        device: torch.device | str | None = None) -> Tensor:
    """``(m, d)`` random features ``w_r``, each marginally ``N(0, I_d)``.

    Args:
        m: number of features. d: their dimension (the head dimension).
        orthogonal: rows orthogonal within blocks of ``d`` (Sec. 2.4: a Haar rotation from
            the QR decomposition of a Gaussian matrix, signs fixed by ``diag(R)``), each
            scaled by an independent chi(d) length, the norm of a Gaussian vector; else i.i.d.
    """
    kw = dict(generator=generator, device=device, dtype=torch.float32)
    if not orthogonal:
        return torch.randn(m, d, **kw)
    blocks = []
    for _ in range(math.ceil(m / d)):
        q, r = torch.linalg.qr(torch.randn(d, d, **kw))
        blocks.append((q * torch.sign(torch.diagonal(r))[None, :]).T)  # rows: a Haar-random orthonormal frame
    lengths = torch.randn(m, d, **kw).norm(dim=1)
    return torch.cat(blocks)[:m] * lengths[:, None]


def key_shift(w: Tensor) -> Tensor:
    """The positive key features' constant ``max_r |w_r|^2 / 2 - HEADROOM`` (a scalar)."""
    return w.square().sum(-1).amax() / 2 - HEADROOM


def softmax_features(x: Tensor, w: Tensor, kind: str = "positive", *, query: bool = False,
                     shift: Tensor | float = 0.0) -> Tensor:
    """Random features of ``x`` for the softmax kernel ``exp(q . k)``.

    Args:
        x: ``(..., L, d)``, already scaled (``q / d^{1/4}`` for attention).
        w: ``(m, d)`` projection.
        kind: one of :data:`FEATURE_KINDS`.
        query: divide each row by a per-row constant (its largest positive feature; for
            ``trig`` drop ``exp(|x|^2/2)``), which cancels in attention. False: the plain
            features, divided by ``e^shift``.
        shift: the keys' common log-constant (see the module docstring).
    Returns:
        ``(..., L, m)`` (``positive``) or ``(..., L, 2m)`` (``trig``) with
        ``E[phi(q) . phi(k)] = exp(q . k - shift)`` when neither is a query.
    """
    proj = torch.matmul(x, w.t().to(x.dtype))  # (..., L, m)
    norm = 1.0 / math.sqrt(w.shape[0])
    if kind == "positive":
        if query:
            return torch.exp(proj - proj.amax(-1, keepdim=True).detach()) * norm
        return torch.exp(proj - x.square().sum(-1, keepdim=True) / 2 - shift) * norm
    if kind == "trig":
        f = torch.cat([torch.sin(proj), torch.cos(proj)], -1) * norm
        return f if query else f * torch.exp(x.square().sum(-1, keepdim=True) / 2 - shift)
    raise ValueError(f"feature kind {kind!r}; choose one of {FEATURE_KINDS}")


def _divide(num: Tensor, den: Tensor) -> Tensor:
    """``num / den[..., None]``; rows whose ``|den|`` is below ``tiny^(3/4)`` (every key
    feature underflowed, or trigonometric features cancelled) give 0, and no gradient: a
    division by such a ``den`` would overflow the backward pass (``1/den`` times the
    gradient), and ``inf * 0`` at the underflowed features is nan."""
    ok = den.abs() > torch.finfo(den.dtype).tiny ** 0.75
    den = torch.where(ok, den, torch.ones_like(den))[..., None]
    return torch.where(ok[..., None], num / den, torch.zeros_like(num))


def linear_attention_reference(qf: Tensor, kf: Tensor, v: Tensor, causal: bool = False) -> Tensor:
    """The quadratic twin: ``A = phi(Q) phi(K)^T`` (lower triangle if causal), ``A V / A 1``.

    Args:
        qf: ``(B, H, L, m)`` query features. kf: ``(B, H, Lk, m)``. v: ``(B, H, Lk, Dv)``.
    Returns:
        ``(B, H, L, Dv)``.
    """
    a = torch.matmul(qf, kf.transpose(-1, -2))
    if causal:
        a = torch.tril(a, diagonal=a.shape[-1] - a.shape[-2])
    return _divide(torch.matmul(a, v), a.sum(-1))


def causal_linear_attention(qf: Tensor, kf: Tensor, v: Tensor, state: State | None = None,
                            chunk: int = 64) -> tuple[Tensor, State]:
    """Causal linear attention by prefix sums, ``chunk`` positions at a time (Sec. 2.6).

    Inside a chunk the scores are the masked quadratic ``(chunk, chunk)`` product; the sums
    over earlier chunks enter through their states. Memory ``O(L m Dv / chunk)`` for the
    chunk states instead of ``O(L m Dv)`` for a prefix sum at every position.

    Args:
        qf, kf: ``(B, H, L, m)`` features. v: ``(B, H, L, Dv)``.
        state: the sums over earlier positions (a previous call), or None.
        chunk: positions per chunk.
    Returns:
        ``(B, H, L, Dv)`` and the state after the last position.
    """
    B, H, L, m = qf.shape
    Dv = v.shape[-1]
    if state is None:
        state = (qf.new_zeros(B, H, m, Dv), qf.new_zeros(B, H, m))
    S, z = state
    if L == 0:
        return v.new_zeros(B, H, 0, Dv), state
    C = max(1, min(chunk, L))
    pad = (-L) % C
    if pad:  # zero features: the padded keys add nothing, the padded queries are cut
        qf, kf, v = (F.pad(t, (0, 0, 0, pad)) for t in (qf, kf, v))
    n = (L + pad) // C
    qc, kc, vc = qf.view(B, H, n, C, m), kf.view(B, H, n, C, m), v.view(B, H, n, C, Dv)
    dS = torch.matmul(kc.transpose(-1, -2), vc)  # (B, H, n, m, Dv): each chunk's own sums
    dz = kc.sum(-2)  # (B, H, n, m)
    # The sums before each chunk (an exclusive cumulative sum, no subtraction).
    S_before = S[:, :, None] + torch.cat([torch.zeros_like(dS[:, :, :1]), dS[:, :, :-1]], 2).cumsum(2)
    z_before = z[:, :, None] + torch.cat([torch.zeros_like(dz[:, :, :1]), dz[:, :, :-1]], 2).cumsum(2)
    a = torch.tril(torch.matmul(qc, kc.transpose(-1, -2)))  # (B, H, n, C, C)
    num = torch.matmul(a, vc) + torch.matmul(qc, S_before)
    den = a.sum(-1) + torch.matmul(qc, z_before[..., None])[..., 0]
    out = _divide(num, den).reshape(B, H, n * C, Dv)[:, :, :L]
    return out, (S_before[:, :, -1] + dS[:, :, -1], z_before[:, :, -1] + dz[:, :, -1])


# The blocks scale q and k themselves (``scale = d^-1/4``): scaling the whole sequence first
# would keep two more full-size tensors alive through the pass.


def _key_sums(k: Tensor, v: Tensor, w: Tensor, valid: Tensor | None, kind: str, shift: Tensor,
              scale: float) -> State:
    kf = softmax_features(k * scale, w, kind, shift=shift)
    if valid is not None:
        kf = kf * valid[:, None, :, None]
    return torch.matmul(kf.transpose(-1, -2), v), kf.sum(-2)


def _query_out(q: Tensor, w: Tensor, kind: str, S: Tensor, z: Tensor, scale: float) -> Tensor:
    qf = softmax_features(q * scale, w, kind, query=True)
    return _divide(torch.matmul(qf, S), torch.matmul(qf, z[..., None])[..., 0])


def _causal_block(q: Tensor, k: Tensor, v: Tensor, w: Tensor, valid: Tensor | None, kind: str, shift: Tensor,
                  S: Tensor, z: Tensor, chunk: int, scale: float) -> tuple[Tensor, Tensor, Tensor]:
    kf = softmax_features(k * scale, w, kind, shift=shift)
    if valid is not None:
        kf = kf * valid[:, None, :, None]
    out, (S, z) = causal_linear_attention(softmax_features(q * scale, w, kind, query=True), kf, v, (S, z), chunk)
    return out, S, z


def favor_attention(q: Tensor, k: Tensor, v: Tensor, w: Tensor, *, causal: bool = False, kind: str = "positive",
                    valid: Tensor | None = None, state: State | None = None, chunk: int = 64,
                    block: int | None = None) -> tuple[Tensor, State | None]:
    """FAVOR+ attention approximating ``softmax(q k^T / sqrt(d)) v``.

    The sequence runs in blocks of ``block`` positions; when gradients are needed and there
    is more than one block, the backward pass recomputes one block at a time
    (:class:`_Blockwise`), so memory holds ``O(block m)`` features, not ``O(L m)``.
    Half-precision inputs are computed in fp32.

    Args:
        q: ``(B, H, L, d)``. k, v: ``(B, H, L, d)`` / ``(B, H, L, Dv)`` (self-attention:
            query ``i`` is key ``i``).
        w: ``(m, d)`` projection (:func:`gaussian_projection`).
        causal: query ``i`` sees keys ``<= i`` (prefix sums), else all keys.
        kind: one of :data:`FEATURE_KINDS` (``trig``: bidirectional only).
        valid: bool ``(B, L)``, False at padded keys (they contribute nothing), or None.
        state: causal only: the sums of earlier positions (incremental decoding).
        chunk: causal positions per chunk. block: positions per checkpointed block (None:
            :data:`BLOCK`, or :data:`CAUSAL_BLOCK` for the causal form, whose block also
            holds a ``(m, Dv)`` state per chunk).
    Returns:
        ``(B, H, L, Dv)`` in ``v``'s dtype, and the state after the last position (causal)
        or None.
    """
    if kind not in FEATURE_KINDS:
        raise ValueError(f"feature kind {kind!r}; choose one of {FEATURE_KINDS}")
    if kind == "trig" and causal:
        raise ValueError("trigonometric features carry exp(|k|^2/2) per key, which has no stabiliser that ignores "
                         "later positions: use positive features for causal attention")
    if state is not None and not causal:
        raise ValueError("a carried state is the causal form's prefix sums; bidirectional attention has none")
    dtype = v.dtype
    if dtype in (torch.float16, torch.bfloat16):
        q, k, v = q.float(), k.float(), v.float()
    scale = q.shape[-1] ** -0.25  # q . k / sqrt(d) = (q d^-1/4) . (k d^-1/4)
    w = w.to(q.dtype)
    vmask = None if valid is None else valid.to(q.dtype)
    if kind == "positive":
        shift = key_shift(w)
    else:  # the largest key norm among the valid keys (a constant for every key)
        sq = k.detach().square().sum(-1) * scale**2 / 2
        if valid is not None:
            sq = sq.masked_fill(~valid[:, None, :], float("-inf"))
        shift = sq.amax().clamp_min(0.0)
    B, H, L, _ = q.shape
    if block is None:
        block = CAUSAL_BLOCK if causal else BLOCK
    step = max(chunk, block // chunk * chunk) if causal else max(1, block)
    spans = [(a, min(L, a + step)) for a in range(0, L, step)] or [(0, 0)]
    if state is None and causal:
        state = (q.new_zeros(B, H, w.shape[0], v.shape[-1]), q.new_zeros(B, H, w.shape[0]))
    args = (w, vmask, kind, shift, causal, chunk, spans, scale)
    if len(spans) > 1 and torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v, *(state or ()))):
        out, S, z = _Blockwise.apply(q, k, v, *(state or (None, None)), *args)
    else:
        out, S, z = _blockwise(q, k, v, state, *args)
    return out.to(dtype), ((S, z) if causal else None)


def _blockwise(q, k, v, state, w, vmask, kind, shift, causal, chunk, spans, scale, keep=None):
    """The blocks one after the other (differentiable as they stand); ``keep`` collects the
    causal state before each block, or the bidirectional sums, for :class:`_Blockwise`."""
    def part(t, a, e):
        return None if t is None else t[..., a:e] if t.dim() == 2 else t[:, :, a:e]

    if causal:
        S, z = state
        outs = []
        for a, e in spans:
            if keep is not None:
                keep.append((S, z))
            o, S, z = _causal_block(part(q, a, e), part(k, a, e), part(v, a, e), w, part(vmask, a, e), kind, shift,
                                    S, z, chunk, scale)
            outs.append(o)
        return torch.cat(outs, 2), S, z
    S = z = None
    for a, e in spans:
        dS, dz = _key_sums(part(k, a, e), part(v, a, e), w, part(vmask, a, e), kind, shift, scale)
        S, z = (dS, dz) if S is None else (S + dS, z + dz)
    if keep is not None:
        keep.append((S, z))
    return torch.cat([_query_out(part(q, a, e), w, kind, S, z, scale) for a, e in spans], 2), None, None


class _Blockwise(torch.autograd.Function):
    """:func:`_blockwise` whose backward recomputes one block at a time and writes the
    gradients of ``q, k, v`` into preallocated tensors: memory holds one block's features
    and the inputs' gradients, never ``L x m`` features (nor a second copy of the gradients,
    as slicing or splitting the inputs under autograd would)."""

    @staticmethod
    def forward(ctx, q, k, v, S0, z0, w, vmask, kind, shift, causal, chunk, spans, scale):
        keep: list = []
        with torch.no_grad():
            out, S, z = _blockwise(q, k, v, (S0, z0), w, vmask, kind, shift, causal, chunk, spans, scale, keep)
        ctx.save_for_backward(q, k, v)
        ctx.keep, ctx.args = keep, (w, vmask, kind, shift, chunk, scale)
        ctx.causal, ctx.spans = causal, spans
        return (out, S, z) if causal else (out, out.new_zeros(()), out.new_zeros(()))

    @staticmethod
    def backward(ctx, g_out, g_S, g_z):
        q, k, v = ctx.saved_tensors
        w, vmask, kind, shift, chunk, scale = ctx.args
        dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)

        def leaf(t):
            return t.detach().requires_grad_()

        def mask(a, e):
            return None if vmask is None else vmask[:, a:e]

        if ctx.causal:
            gS = torch.zeros_like(ctx.keep[-1][0]) if g_S is None else g_S
            gz = torch.zeros_like(ctx.keep[-1][1]) if g_z is None else g_z
            for (a, e), (S_b, z_b) in reversed(list(zip(ctx.spans, ctx.keep))):
                qb, kb, vb, Sb, zb = (leaf(t) for t in (q[:, :, a:e], k[:, :, a:e], v[:, :, a:e], S_b, z_b))
                with torch.enable_grad():
                    o, S_e, z_e = _causal_block(qb, kb, vb, w, mask(a, e), kind, shift, Sb, zb, chunk, scale)
                    grads = torch.autograd.grad((o, S_e, z_e), (qb, kb, vb, Sb, zb), (g_out[:, :, a:e], gS, gz),
                                                allow_unused=True)
                for d, g in zip((dq, dk, dv), grads[:3]):
                    if g is not None:
                        d[:, :, a:e] = g
                gS, gz = (torch.zeros_like(Sb) if g is None else g for g in grads[3:])
            return dq, dk, dv, gS, gz, *([None] * 8)
        S, z = (leaf(t) for t in ctx.keep[0])
        gS, gz = torch.zeros_like(S), torch.zeros_like(z)
        for a, e in ctx.spans:  # queries: their gradients, and those of the sums they read
            qb = leaf(q[:, :, a:e])
            with torch.enable_grad():
                o = _query_out(qb, w, kind, S, z, scale)
                gq, gSb, gzb = torch.autograd.grad(o, (qb, S, z), g_out[:, :, a:e])
            dq[:, :, a:e] = gq
            gS, gz = gS + gSb, gz + gzb
        for a, e in ctx.spans:  # keys and values, through the sums
            kb, vb = leaf(k[:, :, a:e]), leaf(v[:, :, a:e])
            with torch.enable_grad():
                sums = _key_sums(kb, vb, w, mask(a, e), kind, shift, scale)
                gk, gv = torch.autograd.grad(sums, (kb, vb), (gS, gz))
            dk[:, :, a:e], dv[:, :, a:e] = gk, gv
        return dq, dk, dv, None, None, *([None] * 8)


__all__ = [
    "BLOCK",
    "CAUSAL_BLOCK",
    "FEATURE_KINDS",
    "HEADROOM",
    "causal_linear_attention",
    "favor_attention",
    "gaussian_projection",
    "key_shift",
    "linear_attention_reference",
    "softmax_features",
]
