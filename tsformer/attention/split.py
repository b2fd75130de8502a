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
(on CPU each path's few suffix keys are read in place instead of gathered).
"""

from __future__ import annotations

import torch
from torch import Tensor

from tsformer.attention.bias import ScoreBias
from tsformer.attention.patterns import Pattern

# On CPU, up to this many gathered suffix keys are read in place, one at a time.
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

    Args:
        q: ``(B, H, R, l, D)``: ``l`` queries of each of ``R`` paths per batch element.
        prefix_k, prefix_v: ``(B, H, P, D)``, shared by the ``R`` paths (``P`` may be 0).
        suffix_k, suffix_v: ``(B, H, R, N, D)``, each path's own keys after the prefix: the
            first ``suffix_len`` positions (default all ``N``). A decoding cache passes its
            whole preallocated buffer: gathering a few keys from a contiguous tensor takes
            the fast copy, from a slice of it the generic one (about 2x slower on CPU).
        pattern: over the joined key axis ``0 .. P + n - 1`` (key padding: ``(B,)`` lengths).
        bias: score bias over the joined axis; its batch dimension, if any, is ``B * R``
            (path-major within each element: row ``b * R + r``).
        q_offset: position of the first query; default ``P + n - l`` (bottom-right).
    Returns:
        ``(B, H, R, l, D)``; a query with no allowed key gives zeros.
    """
    B, H, R, lq, D = q.shape
    P = prefix_k.shape[-2]
    n = suffix_k.shape[-2] if suffix_len is None else int(suffix_len)
    Lk = P + n
    off = Lk - lq if q_offset is None else int(q_offset)
    scale = D**-0.5 if scale is None else scale
    mask = pattern.to_dense(lq, Lk, device=q.device, q_offset=off)  # (l, Lk) or (B, 1, l, Lk)
    dense = None if bias is None else bias.to_dense(lq, Lk, off, q.device, q.dtype)  # (B R | 1, H | 1, l, Lk)
    cols = _few_columns(mask)
    loop = None  # suffix columns scored one at a time (CPU, a few of them), else None
    if cols is not None:
        # A sparse pattern (LogSparse) lets these queries see a few keys only: score those,
        # not the whole cache (a masked key adds exactly zero to the softmax).
        pre, suf = cols[cols < P], cols[cols >= P] - P
        prefix_k, prefix_v = prefix_k.index_select(-2, pre), prefix_v.index_select(-2, pre)
        if q.device.type == "cpu" and 0 < len(suf) <= _LOOP_KEYS:
            # Gathering a few keys out of (B, H, R, N, D) copies B H R rows of D floats per
            # key through index_select's generic strided path: at a forecast step (256 x 4
            # x 100 rows of 16 floats) about 4x slower than reading each key column in
            # place below (benchmarks/RESULTS.md, "split attention: suffix keys in place").
            loop = suf.tolist()
        else:
            suffix_k, suffix_v = suffix_k.index_select(-2, suf), suffix_v.index_select(-2, suf)
        mask = mask.index_select(-1, cols)
        dense = None if dense is None else dense.index_select(-1, cols)
        P, Lk = len(pre), len(cols)
    else:
        suffix_k, suffix_v = suffix_k[..., :n, :], suffix_v[..., :n, :]
    q = q * scale  # on the few queries, not on the (R l x Lk) scores
    # (B, H, R l, P): one matmul for every path's queries against the shared prefix.
    s_pre = torch.matmul(q.reshape(B, H, R * lq, D), prefix_k.transpose(-1, -2)).view(B, H, R, lq, P)
    if loop is None:
        s_suf = torch.matmul(q, suffix_k.transpose(-1, -2))  # (B, H, R, l, n)
    else:  # key j of every path, (B, H, R, 1, D), is a strided view of the buffer
        s_suf = torch.stack([(q * suffix_k[..., j : j + 1, :]).sum(-1) for j in loop], -1)  # (B, H, R, l, k)
    scores = torch.cat([s_pre, s_suf], dim=-1)  # (B, H, R, l, Lk), a fresh tensor: updated in place
    if dense is not None:
        if dense.shape[0] > 1:
            dense = dense.view(B, R, dense.shape[1], lq, Lk).transpose(1, 2)
        else:
            dense = dense.unsqueeze(2)
        scores += dense
    mask = mask if mask.dim() == 2 else mask.unsqueeze(2)
    if not (cols is not None and bool(mask.all())):  # gathered columns are often all visible
        scores.masked_fill_(~mask, float("-inf"))
    probs = _softmax(scores)
    if not bool(mask.any(-1).all()):  # a query with no allowed key: zeros, as the reference gives
        probs = torch.nan_to_num(probs, nan=0.0)
    out = torch.matmul(probs[..., :P].reshape(B, H, R * lq, P), prefix_v).view(B, H, R, lq, -1)
    if loop is None:
        return out + torch.matmul(probs[..., P:], suffix_v)
    for i, j in enumerate(loop):
        out.addcmul_(probs[..., P + i, None], suffix_v[..., j : j + 1, :])
    return out


def _softmax(scores: Tensor) -> Tensor:
    """Softmax over the last axis. PyTorch's CPU kernel takes a scalar path for fewer keys
    than its vector width (16 floats): about 5x slower than these four vectorised passes at
    the 9 to 15 keys a LogSparse decoding step sees (rows of all ``-inf`` give NaN either way)."""
    if scores.shape[-1] >= 16 or scores.device.type != "cpu":
        return torch.softmax(scores, -1)
    e = (scores - scores.amax(-1, keepdim=True)).exp_()
    return e.div_(e.sum(-1, keepdim=True))


def _few_columns(mask: Tensor) -> Tensor | None:
    """The key columns any query may see, ``(k,)`` ascending, when a shared ``(l, Lk)`` mask
    allows at most half of them (worth gathering); None otherwise (or a per-element mask)."""
    if mask.dim() != 2:
        return None
    cols = mask.any(0).nonzero().squeeze(1)
    return cols if 0 < 2 * len(cols) <= mask.shape[-1] else None


__all__ = ["split_attention"]
