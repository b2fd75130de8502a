"""Attention over a split key/value cache: a prefix shared by ``R`` paths plus each path's
own suffix, joined in one softmax.

Incremental decoding of many sample paths from one context (forecast sampling) would
otherwise copy the context's keys once per path. Here the context is scored once per
series against all ``R`` paths' queries (one matmul) and each path's suffix separately; the
pattern, the score bias and the query offset apply to the joined key axis exactly as in
any other kernel, so the result equals the reference kernel over the concatenated keys.
Work is ``O(R l (P + n) D)`` for ``l`` new queries: meant for decoding steps (small ``l``).
A sparse pattern that lets the queries see at most half the keys (LogSparse: ``O(log L)``
of them) scores only those, gathered once for all paths: ``O(R l k D)`` for ``k`` keys
(on CPU a few suffix keys are read in place instead of gathered).
"""

from __future__ import annotations

import torch
from torch import Tensor

from tsformer.attention.bias import ScoreBias
from tsformer.attention.patterns import Pattern

# On CPU, a step of one query per path reads up to this many suffix keys in place, one at a time.
_LOOP_KEYS = 32


def split_attention(
    q: Tensor,
    prefix_k: Tensor,
    prefix_v: Tensor,
    suffix_k: Tensor,
    suffix_v: Tensor,
    pattern: Pattern,
    *,
    scale: float | None = None,
    bias: ScoreBias | None = None,
    q_offset: int | None = None,
    suffix_len: int | None = None,
) -> Tensor:
    """Attention of each path's queries over the shared prefix and its own suffix.

    The paths' tensors are path-major, as decoding steps produce them (row ``b * R + r`` of
    a ``(B R, ...)`` step input), and the suffix is position-major: key ``j`` of every
    path, ``suffix_k[:, j]``, is one contiguous ``(R, H, D)`` block per element, so that a
    decoding cache appends a step and reads a key column as whole blocks.

    Args:
        q: ``(B, R, H, l, D)``: ``l`` queries of each of ``R`` paths per batch element.
        prefix_k, prefix_v: ``(B, H, P, D)``, shared by the ``R`` paths (``P`` may be 0).
        suffix_k, suffix_v: ``(B, N, R, H, D)``, each path's own keys after the prefix: the
            first ``suffix_len`` positions (default all ``N``); a decoding cache passes its
            whole preallocated buffer.
        pattern: over the joined key axis ``0 .. P + n - 1`` (key padding: ``(B,)`` lengths).
        bias: score bias over the joined axis; its batch dimension, if any, is ``B * R``
            (path-major within each element: row ``b * R + r``).
        q_offset: position of the first query; default ``P + n - l`` (bottom-right).
    Returns:
        ``(B, R, H, l, D)``; a query with no allowed key gives zeros.
    """
    B, R, H, lq, D = q.shape
    P = prefix_k.shape[-2]
    n = suffix_k.shape[1] if suffix_len is None else int(suffix_len)
    Lk = P + n
    off = Lk - lq if q_offset is None else int(q_offset)
    scale = D**-0.5 if scale is None else scale
    mask = pattern.to_dense(lq, Lk, device=q.device, q_offset=off)  # (l, Lk) or (B, 1, l, Lk)
    dense = None if bias is None else bias.to_dense(lq, Lk, off, q.device, q.dtype)  # (B R | 1, H | 1, l, Lk)
    cols = _few_columns(mask)
    suf = None  # the suffix positions scored, (k,); None: the first n
    if cols is not None:
        # A sparse pattern (LogSparse) lets these queries see a few keys only: score those,
        # not the whole cache (a masked key adds exactly zero to the softmax).
        pre, suf = cols[cols < P], cols[cols >= P] - P
        prefix_k, prefix_v = prefix_k.index_select(-2, pre), prefix_v.index_select(-2, pre)
        mask = mask.index_select(-1, cols)
        dense = None if dense is None else dense.index_select(-1, cols)
        P, Lk = len(pre), len(cols)
    k_suf = n if suf is None else len(suf)
    # One query per path and few suffix keys, on CPU: read each key column in place (one
    # contiguous block per element) rather than gather them and multiply in a batched
    # matmul of B R H tiny matrices (benchmarks/RESULTS.md, "split attention: suffix keys in
    # place": 2.98x for a LogSparse step; 1.4x for a causal one). With several queries per
    # path the matmul wins again (0.85x for the loop at 4 causal queries).
    loop = q.device.type == "cpu" and lq == 1 and 0 < k_suf <= _LOOP_KEYS
    if loop:
        cols_suf = list(range(n)) if suf is None else suf.tolist()
    else:
        # (B, R, H, k, D): the scored keys, path-major like the queries.
        pick = (lambda t: t[:, :n]) if suf is None else (lambda t: t.index_select(1, suf))
        suffix_k, suffix_v = pick(suffix_k).permute(0, 2, 3, 1, 4), pick(suffix_v).permute(0, 2, 3, 1, 4)
    q = q * scale  # on the few queries, not on the (R l x Lk) scores
    # (B, H, R l, P): one matmul for every path's queries against the shared prefix.
    qh = q.transpose(1, 2).reshape(B, H, R * lq, D)
    s_pre = torch.matmul(qh, prefix_k.transpose(-1, -2)).view(B, H, R, lq, P).transpose(1, 2)
    if loop:  # key j of every path: (B, R, H, 1, D)
        s_suf = torch.stack([(q * suffix_k[:, j, :, :, None]).sum(-1) for j in cols_suf], -1)
    else:
        s_suf = torch.matmul(q, suffix_k.transpose(-1, -2))  # (B, R, H, l, k)
    scores = torch.cat([s_pre, s_suf], dim=-1)  # (B, R, H, l, Lk), a fresh tensor: updated in place
    if dense is not None:
        scores += dense.view(B, R, *dense.shape[1:]) if dense.shape[0] > 1 else dense
    mask = mask if mask.dim() == 2 else mask.unsqueeze(1)  # (B, 1, 1, l, Lk)
    if not (cols is not None and bool(mask.all())):  # gathered columns are often all visible
        scores.masked_fill_(~mask, float("-inf"))
    probs = _softmax(scores)
    if not bool(mask.any(-1).all()):  # a query with no allowed key: zeros, as the reference gives
        probs = torch.nan_to_num(probs, nan=0.0)
    p_pre = probs[..., :P].transpose(1, 2).reshape(B, H, R * lq, P)
    out = torch.matmul(p_pre, prefix_v).view(B, H, R, lq, -1).transpose(1, 2).contiguous()  # (B, R, H, l, Dv)
    if not loop:
        return out.add_(torch.matmul(probs[..., P:], suffix_v))
    for i, j in enumerate(cols_suf):
        out.addcmul_(probs[..., P + i, None], suffix_v[:, j, :, :, None])
    return out


def _softmax(scores: Tensor) -> Tensor:
    """Softmax over the last axis. PyTorch's CPU kernel takes a scalar path for fewer keys
    than its vector width (16 floats): about 5x slower than these four vectorised passes at
    the 9 to 15 keys a LogSparse decoding step sees (rows of all ``-inf`` give NaN either way)."""
    if scores.shape[-1] >= 16 or scores.device.type != "cpu":
        return torch.softmax(scores, -1)
    e = (scores - scores.amax(-1, keepdim=True)).exp_()
    if torch.is_grad_enabled() and e.requires_grad:  # the in-place division would break backward
        return e / e.sum(-1, keepdim=True)
    return e.div_(e.sum(-1, keepdim=True))


def _few_columns(mask: Tensor) -> Tensor | None:
    """The key columns any query may see, ``(k,)`` ascending, when a shared ``(l, Lk)`` mask
    allows at most half of them (worth gathering); None otherwise (or a per-element mask)."""
    if mask.dim() != 2:
        return None
    cols = mask.any(0).nonzero().squeeze(1)
    return cols if 0 < 2 * len(cols) <= mask.shape[-1] else None


__all__ = ["split_attention"]
