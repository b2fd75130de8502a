"""CTC decoding (Graves et al. 2006): greedy best path and prefix beam search."""

from __future__ import annotations

import math
from collections import defaultdict

import torch
from torch import Tensor

NEG_INF = -math.inf


def _logsumexp(*xs: float) -> float:
    m = max(xs)
    if m == NEG_INF:
        return NEG_INF
    return m + math.log(sum(math.exp(x - m) for x in xs))


def ctc_greedy_decode(log_probs: Tensor, lengths: Tensor | None = None, blank: int = 0) -> list[list[int]]:
    """Best path: the arg-max token per frame, repeats merged, blanks removed.

    Args:
        log_probs: ``(B, T, V)`` (or ``(T, V)`` for one utterance).
        lengths: ``(B,)`` valid frames per utterance (all ``T`` if None).
        blank: the blank id.
    Returns:
        One token-id list per utterance.
    """
    if log_probs.dim() == 2:
        log_probs = log_probs[None]
    B, T, _ = log_probs.shape
    lengths = torch.full((B,), T) if lengths is None else lengths
    best = log_probs.argmax(-1).cpu()
    out = []
    for b in range(B):
        path = best[b, : int(lengths[b])].tolist()
        seq, prev = [], None
        for t in path:
            if t != prev and t != blank:
                seq.append(t)
            prev = t
        out.append(seq)
    return out


def ctc_prefix_beam_search(log_probs: Tensor, beam_width: int = 8, blank: int = 0, prune: float = -12.0) -> list[int]:
    """CTC prefix beam search over one utterance (Hannun et al. 2014, no language model).

    Each prefix keeps the log-probability of its paths ending in blank and in non-blank, so
    that different alignments of the same labelling are summed.

    Args:
        log_probs: ``(T, V)`` log-probabilities.
        beam_width: prefixes kept after each frame.
        blank: the blank id.
        prune: tokens with a frame log-probability below this are not extended.
    Returns:
        The best labelling as token ids.
    """
    lp = log_probs.detach().float().cpu()
    beams: dict[tuple[int, ...], tuple[float, float]] = {(): (0.0, NEG_INF)}  # prefix -> (blank, non-blank)
    for t in range(lp.shape[0]):
        row = lp[t]
        cand = [int(v) for v in torch.nonzero(row >= prune).flatten()]
        if not cand:
            cand = [int(row.argmax())]
        nxt: dict[tuple[int, ...], list[float]] = defaultdict(lambda: [NEG_INF, NEG_INF])
        for prefix, (pb, pnb) in beams.items():
            total = _logsumexp(pb, pnb)
            for v in cand:
                p = float(row[v])
                if v == blank:
                    e = nxt[prefix]
                    e[0] = _logsumexp(e[0], total + p)
                    continue
                last = prefix[-1] if prefix else None
                ext = prefix + (v,)
                e = nxt[ext]
                if v == last:
                    # A repeat needs a blank in between to count as a new label ...
                    e[1] = _logsumexp(e[1], pb + p)
                    # ... otherwise it merges into the same prefix.
                    s = nxt[prefix]
                    s[1] = _logsumexp(s[1], pnb + p)
                else:
                    e[1] = _logsumexp(e[1], total + p)
        ranked = sorted(nxt.items(), key=lambda kv: _logsumexp(*kv[1]), reverse=True)[:beam_width]
        beams = {k: (v[0], v[1]) for k, v in ranked}
    best = max(beams.items(), key=lambda kv: _logsumexp(*kv[1]))
    return list(best[0])


def ctc_decode(
    log_probs: Tensor, lengths: Tensor, method: str = "greedy", beam_width: int = 8, blank: int = 0
) -> list[list[int]]:
    """Decode a batch ``(B, T, V)`` with ``method`` ``greedy`` or ``beam``."""
    if method == "greedy":
        return ctc_greedy_decode(log_probs, lengths, blank)
    if method == "beam":
        return [
            ctc_prefix_beam_search(log_probs[b, : int(lengths[b])], beam_width, blank) for b in range(len(lengths))
        ]
    raise ValueError(f"unknown CTC decoding method {method!r}; choose greedy or beam")
