"""CTC decoding (Graves et al. 2006): greedy best path and prefix beam search, the latter
with shallow fusion of a token language model (:mod:`tsformer.data.ngram` builds one)."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from typing import Protocol

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


class TokenLM(Protocol):
    """What shallow fusion needs of a language model over the CTC token ids
    (:class:`tsformer.data.ngram.NgramLM` is one)."""

    eos: int

    def logprob(self, context: Sequence[int], token: int) -> float: ...


def ctc_prefix_beam_search(
    log_probs: Tensor,
    beam_width: int = 8,
    blank: int = 0,
    prune: float = -12.0,
    lm: TokenLM | None = None,
    lm_weight: float = 0.0,
    insertion_bonus: float = 0.0,
) -> list[int]:
    """CTC prefix beam search over one utterance (Hannun et al. 2014, "First-pass large
    vocabulary continuous speech recognition using bi-directional recurrent DNNs", Sec. 3,
    Algorithm 1), with optional shallow fusion of a token language model.

    Each prefix keeps the log-probability of its CTC paths ending in blank and in non-blank,
    so that different alignments of the same labelling are summed. Prefixes are ranked by

        log P_ctc(prefix) + lm_weight * log P_lm(prefix) + insertion_bonus * len(prefix)

    (Hannun et al.'s ``alpha`` and ``beta``, with the bonus per token), and at the end the
    language model's end-of-sentence probability is added. The language-model term depends
    on the prefix only, so it is kept apart from the CTC masses and added when ranking: the
    alignments of one prefix still merge exactly. With ``lm=None`` (or weight and bonus 0)
    this is plain prefix beam search.

    Args:
        log_probs: ``(T, V)`` log-probabilities.
        beam_width: prefixes kept after each frame.
        blank: the blank id.
        prune: tokens with a frame log-probability below this are not extended; of the
            rest, only the frame's ``beam_width`` likeliest (a pre-beam, like ESPnet's
            ``pre_beam``), which bounds the work per frame on flat, untrained outputs.
        lm: a language model over the token ids (``logprob(context, token)``, ``eos``).
        lm_weight: the language model's weight (0: not used).
        insertion_bonus: added per emitted token (counters the LM's bias to short outputs).
    Returns:
        The best labelling as token ids.
    """
    if beam_width < 1:
        raise ValueError(f"beam_width must be at least 1, got {beam_width}")
    use_lm = lm is not None and lm_weight != 0.0
    rows = log_probs.detach().float().cpu().tolist()  # plain floats: no tensor indexing per token
    lm_score: dict[tuple[int, ...], float] = {(): 0.0}  # prefix -> lm_weight * log P_lm(prefix)

    def fused(prefix: tuple[int, ...]) -> float:
        s = lm_score.get(prefix)
        if s is None:
            s = lm_score[prefix] = fused(prefix[:-1]) + lm_weight * lm.logprob(prefix[:-1], prefix[-1])
        return s

    def rank(item) -> float:
        prefix, (pb, pnb) = item
        score = _logsumexp(pb, pnb) + insertion_bonus * len(prefix)
        return score + fused(prefix) if use_lm else score

    beams: dict[tuple[int, ...], tuple[float, float]] = {(): (0.0, NEG_INF)}  # prefix -> (blank, non-blank)
    for row in rows:
        cand = [v for v, x in enumerate(row) if x >= prune]
        if len(cand) > beam_width:  # pre-beam: only the frame's beam_width likeliest tokens extend prefixes
            cand = sorted(cand, key=row.__getitem__, reverse=True)[:beam_width]
        if not cand:
            cand = [max(range(len(row)), key=row.__getitem__)]
        nxt: dict[tuple[int, ...], list[float]] = defaultdict(lambda: [NEG_INF, NEG_INF])
        for prefix, (pb, pnb) in beams.items():
            total = _logsumexp(pb, pnb)
            for v in cand:
                p = row[v]
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
        ranked = sorted(nxt.items(), key=rank, reverse=True)[:beam_width]
        beams = {k: (v[0], v[1]) for k, v in ranked}
    if use_lm:  # the end of the sentence, as the language model sees it
        final = {k: rank((k, v)) + lm_weight * lm.logprob(k, lm.eos) for k, v in beams.items()}
    else:
        final = {k: rank((k, v)) for k, v in beams.items()}
    return list(max(final, key=final.get))


def ctc_decode(
    log_probs: Tensor,
    lengths: Tensor,
    method: str = "greedy",
    beam_width: int = 8,
    blank: int = 0,
    lm: TokenLM | None = None,
    lm_weight: float = 0.0,
    insertion_bonus: float = 0.0,
) -> list[list[int]]:
    """Decode a batch ``(B, T, V)`` with ``method`` ``greedy`` or ``beam`` (prefix beam
    search, with the language model fused when ``lm`` and ``lm_weight`` are given)."""
    if method == "greedy":
        if lm is not None and lm_weight:
            raise ValueError("a language model needs method=beam (greedy decoding cannot use one)")
        return ctc_greedy_decode(log_probs, lengths, blank)
    if method == "beam":
        return [
            ctc_prefix_beam_search(log_probs[b, : int(lengths[b])], beam_width, blank, lm=lm, lm_weight=lm_weight,
                                   insertion_bonus=insertion_bonus)
            for b in range(len(lengths))
        ]
    raise ValueError(f"unknown CTC decoding method {method!r}; choose greedy or beam")
