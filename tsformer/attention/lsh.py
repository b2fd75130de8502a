"""LSH attention math (Kitaev, Kaiser & Levskaya 2020, "Reformer: The Efficient Transformer",
ICLR, https://arxiv.org/abs/2001.04451, Sec. 3): hashing, sorted chunked attention and its
dense reference twin, on ``(B, H, L, D)`` tensors. Imports only torch.

- :func:`lsh_buckets`: angular LSH by random rotations, ``h(x) = argmax([xR; -xR])`` for a
  random ``R`` of shape ``(D, b/2)`` per hash round (Sec. 3, after Andoni et al. 2015).
- :func:`lsh_attention`: each round sorts the positions by ``(bucket, position)``, cuts the
  sorted sequence into chunks of ``chunk`` and lets each chunk attend to itself and the
  previous chunk (Sec. 3, Eq. 4 and Fig. 2); rounds are combined by the softmax of their
  log-sum-exps (Sec. 3 "Multi-round LSH attention", Appendix A), i.e. each round's output
  weighted by its share of the total attention mass.
- :func:`lsh_attention_reference`: the same sets written as a dense mask, O(L^2): the ground
  truth the test suite compares the chunked path against, and the decoding-step path.

Attention sets. Query ``i`` of round ``r`` attends to key ``j`` when both fall in the same
bucket and ``j``'s rank among that bucket's positions (``rank_j = #{j' < j in the bucket}``)
lies in ``i``'s chunk or the one before, ``floor(rank_j / chunk) in {floor(rank_i / chunk) - 1,
floor(rank_i / chunk)}``; the causal form also needs ``j <= i``. This differs from the paper
in one respect, on purpose: every bucket starts a new chunk (buckets are padded to a chunk
multiple in the sorted order), so a chunk never spans two buckets. In the paper a chunk
boundary depends on how many positions hash to lower buckets, later positions included, so
the causal form would leak the future through where the chunks fall; with bucket-aligned
chunks position ``i`` sees a set that depends only on positions ``<= i``. (The paper's
``h(q_i) = h(k_j)`` condition, Eq. 3, holds exactly rather than approximately.)

Queries and keys are shared (Sec. 3 "Shared-QK Transformer"): the caller passes the keys as
the unit-normalised queries. A position attends to itself only when nothing else is
available: its own score is replaced by :data:`SELF_SCORE` (-1e5, finite, so a lone position
still attends to itself). Padded positions (``>= lengths``) are never attended to, are
placed in no chunk (so the real positions' chunks do not depend on how a batch is padded),
and get zero outputs.
"""

from __future__ import annotations

import torch
from torch import Tensor

SELF_SCORE = -1e5
"""Score of a position against itself (Sec. 3: attend to oneself only when nothing else is
available; finite so that a position with no other key still gets its own value)."""
MASKED = -1e9
"""Score of a pair outside the attention set (finite: fully masked rows give no NaN)."""


def check_buckets(buckets: int) -> None:
    """ValueError unless ``buckets`` is 1 or even (hashing takes the argmax over ``b/2``
    rotated directions and their negatives)."""
    if buckets < 1 or (buckets > 1 and buckets % 2):
        raise ValueError(f"LSH attention needs buckets = 1 or an even number >= 2, got {buckets}")


def draw_rotations(heads: int, rounds: int, dim: int, buckets: int, *, device=None, dtype=None,
                   generator: torch.Generator | None = None) -> Tensor:
    """Gaussian random rotations ``(heads, rounds, dim, buckets // 2)`` for :func:`lsh_buckets`."""
    check_buckets(buckets)
    return torch.randn(heads, rounds, dim, buckets // 2, device=device, dtype=dtype, generator=generator)


def lsh_buckets(x: Tensor, rotations: Tensor) -> Tensor:
    """Bucket of each position in each round.

    Args:
        x: ``(B, H, L, D)`` the vectors to hash (queries; a positive rescaling does not
            change the bucket, so normalised keys hash alike).
        rotations: ``(H, R, D, b/2)`` from :func:`draw_rotations` (``b/2 = 0``: one bucket).
    Returns:
        ``(B, H, R, L)`` long, buckets in ``[0, b)``.
    """
    B, H, L, _ = x.shape
    if rotations.shape[-1] == 0:
        return torch.zeros(B, H, rotations.shape[1], L, dtype=torch.long, device=x.device)
    rotated = torch.einsum("bhld,hrdk->bhrlk", x.to(rotations.dtype), rotations)
    # argmax([xR; -xR]) without building the concatenation (twice the rotated tensor):
    # the largest of xR, or the most negative of xR in the second half; a tie goes to the
    # first half, as argmax over the concatenation takes the first maximum.
    hi, lo = rotated.max(dim=-1), rotated.min(dim=-1)
    return torch.where(hi.values >= -lo.values, hi.indices, lo.indices + rotated.shape[-1])


def _valid(lengths: Tensor | None, B: int, L: int, device) -> Tensor:
    """``(B, L)`` bool: position ``< lengths``."""
    pos = torch.arange(L, device=device)
    if lengths is None:
        return torch.ones(B, L, dtype=torch.bool, device=device)
    return pos[None, :] < lengths.to(device)[:, None]


def _wide(scores: Tensor) -> Tensor:
    """Scores in at least fp32 (the -1e5 / -1e9 sentinels and the log-sum-exp need the range)."""
    return scores.to(torch.promote_types(scores.dtype, torch.float32))


def combine_rounds(out: Tensor, lse: Tensor) -> Tensor:
    """Rounds weighted by their share of the attention mass (Reformer, Appendix A):
    ``out (B, H, R, L, D)``, ``lse (B, H, R, L)`` -> ``(B, H, L, D)``."""
    w = torch.softmax(lse, dim=2)
    return (out * w[..., None].to(out.dtype)).sum(dim=2)


BLOCK_SCORES = 2**24
"""Largest score volume (heads x rounds x slots x 2 chunk) computed in one piece; above it
:func:`lsh_attention` runs one head and round at a time (:class:`_Pieces`), each piece
recomputed in the backward, so memory stays O(L) in the sequence length."""


SEGMENT_SCORES = 2**21
"""Largest score volume of one run of sorted chunks in a head-and-round piece; a longer sorted
sequence is attended in segments, forward and backward (:func:`_piece_backward`), so a
piece's working memory does not grow with the length."""


def lsh_attention(q: Tensor, k: Tensor | None, v: Tensor, buckets: Tensor, n_buckets: int, chunk: int, *,
                  causal: bool = False, lengths: Tensor | None = None, scale: float | None = None,
                  dropout_p: float = 0.0, max_block_scores: int = BLOCK_SCORES,
                  segment_scores: int = SEGMENT_SCORES) -> Tensor:
    """Sorted, chunked LSH attention: O(R L chunk) time and memory.

    Args:
        q: ``(B, H, L, D)`` queries. k: ``(B, H, L, D)`` keys, or None for shared-QK keys
            (``q`` unit-normalised, computed piece by piece: neither full-size keys nor
            their gradient are kept).
        v: ``(B, H, L, Dv)``.
        buckets: ``(B, H, R, L)`` from :func:`lsh_buckets`, values in ``[0, n_buckets)``.
        n_buckets: number of buckets. chunk: positions per chunk (``>= 1``).
        causal: keys at later positions are never attended to.
        lengths: ``(B,)`` valid positions, or None.
        scale: score scale (default ``D ** -0.5``).
        dropout_p: dropout on the attention probabilities.
        max_block_scores: see :data:`BLOCK_SCORES`. segment_scores: see :data:`SEGMENT_SCORES`
            (heads and rounds one at a time only).
    Returns:
        ``(B, H, L, Dv)``; zeros at padded positions.
    """
    B, H, L, D = q.shape
    R = buckets.shape[2]
    if chunk < 1:
        raise ValueError(f"LSH chunk must be >= 1, got {chunk}")
    scale = D**-0.5 if scale is None else scale
    valid = _valid(lengths, B, L, q.device)
    args = (n_buckets, chunk, causal, valid, scale, dropout_p)
    if B * H * R * (L + n_buckets * chunk) * 2 * chunk <= max_block_scores:
        out, lse = _lsh_rounds(q, _keys(q) if k is None else k, v, buckets, *args)
        return combine_rounds(out, lse) * valid[:, None, :, None].to(out.dtype)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (q, k, v)):
        return _Pieces.apply(q, k, v, buckets, *args, segment_scores)
    with torch.no_grad():
        return _Pieces.forward(None, q, k, v, buckets, *args, segment_scores)


def _keys(q: Tensor) -> Tensor:
    """Shared-QK keys: the unit-normalised queries (Sec. 3)."""
    return torch.nn.functional.normalize(q, dim=-1)


def _piece(q: Tensor, k: Tensor | None, v: Tensor, buckets: Tensor, h: int, r: int, *args,
           state: tuple | None = None) -> tuple[Tensor, Tensor]:
    """:func:`_lsh_rounds` for head ``h`` and round ``r``, ``(B, 1, 1, L, Dv)`` and
    ``(B, 1, 1, L)``; ``q, k, v`` may be that head already (one head), ``state`` the
    generator state to replay dropout from."""
    def head(t):
        return t if t.shape[1] == 1 else t[:, h : h + 1]

    qh = head(q)
    kh = _keys(qh) if k is None else head(k)
    with torch.random.fork_rng(devices=[q.device] if q.device.type == "cuda" else [], enabled=state is not None):
        _restore(state, q.device)
        return _lsh_rounds(qh, kh, head(v), buckets[:, h : h + 1, r : r + 1], *args)


def _rng_state(device: torch.device) -> tuple:
    """The generator states a piece's dropout draws from (replayed in the backward)."""
    return torch.get_rng_state(), (torch.cuda.get_rng_state(device) if device.type == "cuda" else None)


def _restore(state: tuple | None, device: torch.device) -> None:
    """Set the generator states kept by :func:`_rng_state` (None: leave them)."""
    if state is not None:
        torch.set_rng_state(state[0])
        if state[1] is not None:
            torch.cuda.set_rng_state(state[1], device)


class _Pieces(torch.autograd.Function):
    """:func:`lsh_attention` one head and round at a time, the rounds of a head combined as
    they are computed: the forward keeps no per-round outputs nor any score, and writes the
    combined output into one preallocated tensor; the backward recomputes each piece and
    adds the gradients of ``q, k, v`` into preallocated tensors (slicing the inputs under
    autograd would build a full-size gradient per piece). Each piece runs twice in the
    backward: once without gradients for the rounds' weights in the combination (their
    softmax needs every round of the head), once segment by segment with them
    (:func:`_piece_backward`). Dropout is replayed exactly (the generator state before each
    piece is kept)."""

    @staticmethod
    def forward(ctx, q, k, v, buckets, n_buckets, chunk, causal, valid, scale, dropout_p, segment):
        B, H, L, _ = q.shape
        R = buckets.shape[2]
        args = (n_buckets, chunk, causal, valid, scale, dropout_p, segment)
        vmask = valid[:, None, :, None].to(v.dtype)
        out = v.new_empty(B, H, L, v.shape[-1])
        states = []
        for h in range(H):
            parts = []
            for r in range(R):
                states.append(_rng_state(q.device) if dropout_p > 0 else None)
                parts.append(_piece(q, k, v, buckets, h, r, *args))
            out[:, h : h + 1] = combine_rounds(torch.cat([o for o, _ in parts], 2),
                                               torch.cat([s for _, s in parts], 2)) * vmask
            del parts
        if ctx is not None:
            ctx.save_for_backward(q, k, v, buckets, valid)
            ctx.args, ctx.states = (n_buckets, chunk, causal, scale, dropout_p, segment), states
        return out

    @staticmethod
    def backward(ctx, g_out):
        q, k, v, buckets, valid = ctx.saved_tensors
        n_buckets, chunk, causal, scale, dropout_p, segment = ctx.args
        args = (n_buckets, chunk, causal, valid, scale, dropout_p, segment)
        H, R = q.shape[1], buckets.shape[2]
        dq, dv = torch.zeros_like(q), torch.zeros_like(v)
        dk = None if k is None else torch.zeros_like(k)
        vmask = valid[:, None, :, None].to(g_out.dtype)

        def run(h, r):
            return _piece(qh, kh, vh, buckets, h, r, *args, state=ctx.states[h * R + r])

        for h in range(H):
            g = g_out[:, h : h + 1] * vmask  # (B, 1, L, Dv)
            qh = q[:, h : h + 1].detach().requires_grad_()
            kh = None if k is None else k[:, h : h + 1].detach().requires_grad_()
            vh = v[:, h : h + 1].detach().requires_grad_()
            with torch.no_grad():  # each round's share of the mass, and <g, round output>
                lse, dots = [], []
                for r in range(R):
                    o_r, s_r = run(h, r)
                    lse.append(s_r[:, :, 0])
                    dots.append((o_r[:, :, 0] * g).sum(-1))
                    del o_r
                w = torch.softmax(torch.stack(lse, 2), dim=2)  # (B, 1, R, L)
                dots = torch.stack(dots, 2)
                g_lse = w * (dots - (w * dots).sum(2, keepdim=True))  # softmax backward
            # Then each round again, its gradients scattered into the head's gradients; the
            # shared-QK keys' gradient goes through the normalisation at the end.
            with torch.enable_grad():
                keys = _keys(qh) if k is None else kh
            dkh = torch.zeros_like(keys) if k is None else dk[:, h : h + 1]
            head_grads = (dq[:, h : h + 1], dkh, dv[:, h : h + 1])
            for r in range(R):
                with torch.random.fork_rng(devices=[q.device] if q.device.type == "cuda" else [],
                                           enabled=ctx.states[h * R + r] is not None):
                    _restore(ctx.states[h * R + r], q.device)
                    _piece_backward(qh.detach(), keys.detach(), vh.detach(), buckets[:, h : h + 1, r : r + 1],
                                    g[:, :, None] * w[:, :, r : r + 1, :, None].to(g.dtype), g_lse[:, :, r : r + 1],
                                    head_grads, *args)
            if k is None:
                dq[:, h : h + 1] += torch.autograd.grad(keys, qh, dkh)[0]
        return dq, dk, dv, *([None] * 8)


def _lsh_rounds(q: Tensor, k: Tensor, v: Tensor, buckets: Tensor, n_buckets: int, chunk: int, causal: bool,
                valid: Tensor, scale: float, dropout_p: float, segment: int | None = None) -> tuple[Tensor, Tensor]:
    """Each round's output ``(B, H, R, L, Dv)`` and log-sum-exp ``(B, H, R, L)`` (see
    :func:`lsh_attention`); ``segment``: the sorted chunks in runs of at most that score
    volume (:data:`SEGMENT_SCORES`; the pieces of :class:`_Pieces`, which run without
    autograd and have a backward of their own, :func:`_piece_backward`), or None: one run."""
    B, H, L, D = q.shape
    R = buckets.shape[2]
    src, qpos, qb, kpos, kb, where, T = _slots(buckets, valid, n_buckets, chunk)

    def gather(t: Tensor) -> Tensor:  # (B, H, L, E) -> (B, H, R, T/c, c, E) by slot
        return _by_slot(t, src, chunk)

    qc, kc, vc = gather(q), gather(k), gather(v)
    n = T // chunk
    # Chunk n attends to itself and chunk n-1; chunk 0 has no previous chunk (its look-back
    # keys are empty slots, masked): it reads zeros, which add nothing.
    step = n if segment is None else max(1, segment // (B * H * R * chunk * 2 * chunk))
    outs, lses = [], []
    for s0 in range(0, n, step):
        s1 = min(n, s0 + step)
        args = (qc[:, :, :, s0:s1], kc[:, :, :, s0:s1], vc[:, :, :, s0:s1], _previous(kc, s0, s1), _previous(vc, s0, s1),
                qpos[:, :, :, s0:s1], qb[:, :, :, s0:s1], kpos[:, :, :, s0:s1], kb[:, :, :, s0:s1], causal, scale, dropout_p)
        o, s_ = _attend_chunks(*args)
        outs.append(o)
        lses.append(s_)
    out = (outs[0] if len(outs) == 1 else torch.cat(outs, 3)).view(B, H, R, T, -1)
    lse = lses[0] if len(lses) == 1 else torch.cat(lses, 3)
    # Back to positions: the slot of each position.
    out = out.gather(3, where[..., None].expand(-1, -1, -1, -1, out.shape[-1]))
    return out, lse.view(B, H, R, T).gather(3, where)


def _slots(buckets: Tensor, valid: Tensor, n_buckets: int, chunk: int) -> tuple:
    """The sorted, bucket-aligned slots of each round (integers only).

    Returns:
        ``src (B, H, R, T)``: the position in each slot (empty slots: 0); ``qpos, qb
        (B, H, R, T/c, c)``: position (-1: empty) and bucket (-1) of each slot; ``kpos, kb
        (B, H, R, T/c, 2c)``: those of its keys (the previous chunk, then its own);
        ``where (B, H, R, L)``: the slot of each position (padding: slot ``T - 1``, zeroed
        later); ``T``.
    """
    B, H, R, L = buckets.shape
    dev = buckets.device
    b = buckets.masked_fill(~valid[:, None, None, :], n_buckets)  # padding: an extra, unplaced bucket
    pos = torch.arange(L, device=dev)
    order = (b * L + pos).argsort(dim=-1)  # sorted index -> position, sorted by (bucket, position)
    sb = b.gather(-1, order)  # bucket of each sorted index
    counts = torch.zeros(B, H, R, n_buckets + 1, dtype=torch.long, device=dev).scatter_add_(-1, b, torch.ones_like(b))
    start = counts.cumsum(-1) - counts  # first sorted index of each bucket
    padded = (counts + chunk - 1) // chunk * chunk  # every bucket starts a chunk
    padded[..., n_buckets] = 0
    pstart = padded.cumsum(-1) - padded
    T = max(int(padded.sum(-1).max()) if padded.numel() else 0, chunk)
    rank = pos - start.gather(-1, sb)  # rank within the bucket
    dest = torch.where(sb < n_buckets, pstart.gather(-1, sb) + rank, T)  # slot of each sorted index (T: dropped)
    slot_pos = torch.full((B, H, R, T + 1), -1, dtype=torch.long, device=dev).scatter_(-1, dest, order)[..., :T]
    filled = slot_pos >= 0
    src = slot_pos.clamp(min=0)
    slot_b = torch.where(filled, b.gather(-1, src), -1)

    def look_back(t: Tensor, fill) -> Tensor:  # chunk n joined with chunk n-1 along the chunk positions
        prev = torch.cat([torch.full_like(t[:, :, :, :1], fill), t[:, :, :, :-1]], dim=3)
        return torch.cat([prev, t], dim=4)

    qpos, qb = slot_pos.view(B, H, R, -1, chunk), slot_b.view(B, H, R, -1, chunk)
    where = torch.empty_like(dest).scatter_(-1, order, dest).clamp(max=T - 1)
    return src, qpos, qb, look_back(qpos, -1), look_back(qb, -1), where, T


def _by_slot(t: Tensor, src: Tensor, chunk: int) -> Tensor:
    """``t (B, H, L, E)`` at the positions ``src (B, H, R, S)``: ``(B, H, R, S/c, c, E)``."""
    B, H, R, S = src.shape
    idx = src[..., None].expand(-1, -1, -1, -1, t.shape[-1])
    return t[:, :, None].expand(-1, -1, R, -1, -1).gather(3, idx).view(B, H, R, S // chunk, chunk, t.shape[-1])


def _piece_backward(q: Tensor, k: Tensor, v: Tensor, buckets: Tensor, g_out: Tensor, g_lse: Tensor,
                    grads: tuple[Tensor, Tensor, Tensor], n_buckets: int, chunk: int, causal: bool, valid: Tensor,
                    scale: float, dropout_p: float, segment: int | None) -> None:
    """The backward of :func:`_lsh_rounds` for one head and round, segment by segment:
    each segment's slots are gathered, attended again under autograd and their gradients
    scattered (added) into ``grads``; nothing of the size of the whole piece is built.

    Args:
        q, k, v: ``(B, 1, L, E)`` (detached). buckets: ``(B, 1, 1, L)``.
        g_out: ``(B, 1, 1, L, Dv)``, g_lse: ``(B, 1, 1, L)`` the gradients of the round's
            output and log-sum-exp.
        grads: ``(B, 1, L, E)`` tensors the gradients of ``q, k, v`` are added to.
    """
    src, qpos, qb, kpos, kb, where, T = _slots(buckets, valid, n_buckets, chunk)
    B, Dv = q.shape[0], v.shape[-1]
    # Slot gradients: each position reads one slot (padding's zero gradient goes to the last).
    g_slot = g_out.new_zeros(B, 1, 1, T, Dv).scatter_add_(3, where[..., None].expand(-1, -1, -1, -1, Dv), g_out)
    g_slse = g_lse.new_zeros(B, 1, 1, T).scatter_add_(3, where, g_lse)
    n = T // chunk
    step = n if segment is None else max(1, segment // (B * chunk * 2 * chunk))
    for s0 in range(0, n, step):
        s1 = min(n, s0 + step)
        a, e = s0 * chunk, s1 * chunk
        own = src[..., a:e]
        prev = src[..., max(0, a - chunk) : e - chunk]
        ts = [_by_slot(t, own, chunk) for t in (q, k, v)] + [_by_slot(t, prev, chunk) for t in (k, v)]
        if s0 == 0:  # chunk 0 reads a chunk of zeros before it (masked)
            ts[3:] = [torch.cat([t.new_zeros(B, 1, 1, 1, chunk, t.shape[-1]), t], dim=3) for t in ts[3:]]
        leaves = [t.requires_grad_() for t in ts]
        with torch.enable_grad():
            o, lse = _attend_chunks(*leaves, qpos[:, :, :, s0:s1], qb[:, :, :, s0:s1], kpos[:, :, :, s0:s1],
                                    kb[:, :, :, s0:s1], causal, scale, dropout_p)
            gq, gk, gv, gkp, gvp = torch.autograd.grad(
                (o, lse), leaves, (g_slot[..., a:e, :].view_as(o), g_slse[..., a:e].view_as(lse)))
        if s0 == 0:
            gkp, gvp = gkp[:, :, :, 1:], gvp[:, :, :, 1:]
        for d, gr, idx in ((grads[0], gq, own), (grads[1], gk, own), (grads[2], gv, own), (grads[1], gkp, prev),
                           (grads[2], gvp, prev)):
            d.scatter_add_(2, idx[:, 0, ..., None].expand(-1, -1, -1, d.shape[-1]), gr.reshape(B, 1, -1, d.shape[-1]))


def _previous(t: Tensor, s0: int, s1: int) -> Tensor:
    """Chunks ``s0 - 1 .. s1 - 2`` of ``t (B, H, R, n, c, E)``, zeros before chunk 0."""
    if s0 > 0:
        return t[:, :, :, s0 - 1 : s1 - 1]
    return torch.cat([torch.zeros_like(t[:, :, :, :1]), t[:, :, :, : s1 - 1]], dim=3)


def _attend_chunks(qc: Tensor, kc: Tensor, vc: Tensor, kprev: Tensor, vprev: Tensor, qpos: Tensor, qb: Tensor,
                   kpos: Tensor, kb: Tensor, causal: bool, scale: float, dropout_p: float) -> tuple[Tensor, Tensor]:
    """Sorted chunks attending to themselves and the chunk before (Eq. 4 within the chunks).

    Args:
        qc, kc, vc: ``(B, H, R, n, c, E)`` queries, keys, values by slot. kprev, vprev: the
            chunk before each. qpos, qb: ``(B, H, R, n, c)`` position (-1: empty slot) and
            bucket of each slot; kpos, kb: ``(B, H, R, n, 2c)`` those of the keys
            (previous chunk, then own).
    Returns:
        ``(B, H, R, n, c, Dv)`` outputs and ``(B, H, R, n, c, 1)`` log-sum-exps.
    """
    scores = torch.cat([_wide(torch.matmul(qc, kprev.transpose(-1, -2))), _wide(torch.matmul(qc, kc.transpose(-1, -2)))],
                       dim=-1) * scale  # (B, H, R, n, c, 2c)
    allowed = (kpos[..., None, :] >= 0) & (kb[..., None, :] == qb[..., :, None])
    if causal:
        allowed &= kpos[..., None, :] <= qpos[..., :, None]
    scores.masked_fill_(~allowed, MASKED)
    scores.masked_fill_(allowed & (kpos[..., None, :] == qpos[..., :, None]), SELF_SCORE)
    lse = scores.logsumexp(dim=-1, keepdim=True)
    probs = torch.exp(scores - lse).to(vc.dtype)
    if dropout_p > 0:
        probs = torch.nn.functional.dropout(probs, p=dropout_p)
    c = qc.shape[-2]
    return torch.matmul(probs[..., c:], vc) + torch.matmul(probs[..., :c], vprev), lse


def bucket_ranks(buckets: Tensor, valid: Tensor, n_buckets: int) -> Tensor:
    """``(B, H, R, L)`` rank of each position among the earlier valid positions of its bucket
    (padding: -1)."""
    onehot = torch.nn.functional.one_hot(buckets, n_buckets) * valid[:, None, None, :, None]
    before = onehot.cumsum(dim=3) - onehot
    rank = before.gather(-1, buckets[..., None]).squeeze(-1)
    return rank.masked_fill(~valid[:, None, None, :], -1)


def lsh_attention_reference(q: Tensor, k: Tensor, v: Tensor, buckets: Tensor, n_buckets: int, chunk: int, *,
                            causal: bool = False, lengths: Tensor | None = None,
                            scale: float | None = None) -> Tensor:
    """The attention sets of :func:`lsh_attention` as a dense mask, O(R Lq Lk): the ground truth,
    and the decoding path (queries aligned bottom-right, the last ``Lq`` of ``Lk`` positions).

    Args:
        q: ``(B, H, Lq, D)``. k: ``(B, H, Lk, D)``. v: ``(B, H, Lk, Dv)``.
        buckets: ``(B, H, R, Lk)`` buckets of the key positions (a query shares its
            position's bucket).
        n_buckets, chunk, causal, lengths (``(B,)`` valid key positions), scale: as in
            :func:`lsh_attention`.
    Returns:
        ``(B, H, Lq, Dv)``; zeros at padded positions.
    """
    B, H, Lq, D = q.shape
    Lk = k.shape[2]
    off = Lk - Lq
    scale = D**-0.5 if scale is None else scale
    valid = _valid(lengths, B, Lk, q.device)
    rank = bucket_ranks(buckets, valid, n_buckets)  # (B, H, R, Lk)
    qb, qrank = buckets[..., off:], rank[..., off:]
    ci, cj = qrank.div(chunk, rounding_mode="floor"), rank.div(chunk, rounding_mode="floor")
    allowed = (qb[..., :, None] == buckets[..., None, :]) & valid[:, None, None, None, :]
    allowed &= (cj[..., None, :] <= ci[..., :, None]) & (cj[..., None, :] >= ci[..., :, None] - 1)
    qpos = torch.arange(off, Lk, device=q.device)[:, None]
    kpos = torch.arange(Lk, device=q.device)[None, :]
    if causal:
        allowed &= kpos <= qpos
    scores = (_wide(torch.matmul(q, k.transpose(-1, -2))) * scale)[:, :, None]  # (B, H, 1, Lq, Lk)
    scores = torch.where(allowed, scores, MASKED)
    scores = torch.where(allowed & (kpos == qpos), SELF_SCORE, scores)
    lse = scores.logsumexp(dim=-1)  # (B, H, R, Lq)
    out = torch.matmul(torch.softmax(scores, dim=-1).to(v.dtype), v[:, :, None])  # (B, H, R, Lq, Dv)
    return combine_rounds(out, lse) * valid[:, None, off:, None].to(out.dtype)


__all__ = [
    "BLOCK_SCORES",
    "MASKED",
    "SEGMENT_SCORES",
    "SELF_SCORE",
    "bucket_ranks",
    "check_buckets",
    "combine_rounds",
    "draw_rotations",
    "lsh_attention",
    "lsh_attention_reference",
    "lsh_buckets",
]
