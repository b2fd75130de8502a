"""Token n-gram language model with interpolated Kneser-Ney smoothing, trained on token ids.

Kneser & Ney (1995), "Improved backing-off for M-gram language modeling"; the interpolated
form of Chen & Goodman (1998), "An empirical study of smoothing techniques for language
modeling", Sec. 3.5 (eq. 17-18, one discount per order, ``D = n1 / (n1 + 2 n2)``, their
eq. 10 after Ney et al. 1994). The highest order uses raw counts, every lower order the
continuation counts ``N1+(. h w)``; the lowest order interpolates with the uniform
distribution, so every token of the vocabulary has a probability and, for any context, the
probabilities of all tokens and the end of sentence sum to one (tested).

Used for shallow fusion in CTC prefix beam search (:mod:`tsformer.nn.ctc`): trained on the
training transcripts' token ids (characters or SentencePiece pieces), never on dev or test.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence

BOS = -1  # context padding before the first token; never predicted


class NgramLM:
    """An n-gram model over token ids ``1 .. vocab_size - 1`` plus the end of sentence.

    Id 0 (the CTC blank) is never predicted; the end of sentence is ``eos = vocab_size``.
    Build one with :meth:`train`; :meth:`state` / :meth:`from_state` round-trip it through
    plain Python types (a weights-only checkpoint).

    Args:
        order: n (1: unigram).
        vocab_size: token ids in the tokenizer, blank included.
        counts: ``{n-gram tuple: count}`` of the highest order (contexts padded with ``BOS``).
        discounts: one discount per order (lowest first); None: Ney's estimate from the counts.
    """

    def __init__(self, order: int, vocab_size: int, counts: dict[tuple[int, ...], int],
                 discounts: Sequence[float] | None = None):
        if order < 1:
            raise ValueError(f"n-gram order must be at least 1, got {order}")
        if vocab_size < 2:
            raise ValueError(f"vocab_size must count the blank and at least one token, got {vocab_size}")
        self.order, self.vocab_size, self.eos = int(order), int(vocab_size), int(vocab_size)
        self.counts = dict(counts)
        # tables[k][context of k tokens] = {token: count}; k = order - 1 raw, lower continuation.
        self.tables: list[dict[tuple[int, ...], dict[int, int]]] = [defaultdict(dict) for _ in range(self.order)]
        for gram, c in self.counts.items():
            self.tables[-1][gram[:-1]][gram[-1]] = c
        for k in range(self.order - 2, -1, -1):  # N1+(. h w): distinct left extensions of (h, w)
            for ctx, nxt in self.tables[k + 1].items():
                lower = self.tables[k][ctx[1:]]
                for w in nxt:
                    lower[w] = lower.get(w, 0) + 1
        # Per context: (total count, distinct followers), the interpolation's ingredients.
        self.totals = [{ctx: (sum(nxt.values()), len(nxt)) for ctx, nxt in t.items()} for t in self.tables]
        self.discounts = list(discounts) if discounts is not None else [self._ney_discount(t) for t in self.tables]
        if len(self.discounts) != self.order or not all(0 < d < 1 for d in self.discounts):
            raise ValueError(f"need {self.order} discounts in (0, 1), got {self.discounts}")
        self._cache: dict[tuple[tuple[int, ...], int], float] = {}

    @staticmethod
    def _ney_discount(table: dict[tuple[int, ...], dict[int, int]]) -> float:
        n1 = sum(c == 1 for nxt in table.values() for c in nxt.values())
        n2 = sum(c == 2 for nxt in table.values() for c in nxt.values())
        d = n1 / (n1 + 2 * n2) if n1 + n2 else 0.5
        return min(max(d, 0.05), 0.95)  # a corpus without singletons or doubletons still smooths

    @classmethod
    def train(cls, sentences: Iterable[Sequence[int]], vocab_size: int, order: int = 6) -> NgramLM:
        """Count the n-grams of ``sentences`` (token-id lists), each padded with ``order - 1``
        ``BOS`` before and the end of sentence after."""
        if order < 1:
            raise ValueError(f"n-gram order must be at least 1, got {order}")
        counts: dict[tuple[int, ...], int] = defaultdict(int)
        for n, sent in enumerate(sentences):
            ids = [int(t) for t in sent]
            bad = [t for t in ids if not 0 < t < vocab_size]
            if bad:
                raise ValueError(f"sentence {n}: token ids {bad[:5]} outside 1..{vocab_size - 1}")
            padded = [BOS] * (order - 1) + ids + [vocab_size]
            for i in range(order - 1, len(padded)):
                counts[tuple(padded[i - order + 1 : i + 1])] += 1
        if not counts:
            raise ValueError("no sentences to train the n-gram language model on")
        return cls(order, vocab_size, counts)

    def prob(self, context: Sequence[int], token: int) -> float:
        """``P(token | context)``: ``context`` is every token before (only the last
        ``order - 1`` count; a shorter one is padded with ``BOS``); ``token`` in
        ``1 .. vocab_size - 1`` or :attr:`eos`."""
        if not 0 < token <= self.eos:
            raise ValueError(f"token {token} outside 1..{self.eos} (the end of sentence is {self.eos})")
        k = self.order - 1
        ctx = tuple(context[-k:]) if k else ()
        ctx = (BOS,) * (k - len(ctx)) + ctx
        p = 1.0 / self.vocab_size  # uniform over the tokens and the end of sentence (blank excluded)
        for j in range(self.order):  # lowest order first: P_j uses the last j context tokens
            h = ctx[len(ctx) - j :] if j else ()
            total = self.totals[j].get(h)
            if total is None:  # unseen context: the lower order's estimate, unchanged
                continue
            n, types = total
            d = self.discounts[j]
            c = self.tables[j][h].get(token, 0)
            p = max(c - d, 0.0) / n + d * types / n * p
        return p

    def logprob(self, context: Sequence[int], token: int) -> float:
        """Natural log of :meth:`prob`, cached by the last ``order - 1`` context tokens."""
        k = self.order - 1
        key = (tuple(context[-k:]) if k else (), int(token))
        v = self._cache.get(key)
        if v is None:
            v = self._cache[key] = math.log(self.prob(key[0], key[1]))
        return v

    def sentence_logprob(self, ids: Sequence[int]) -> float:
        """Log-probability of a whole sentence, its end included."""
        ids = list(ids)
        return sum(self.logprob(ids[:i], t) for i, t in enumerate(ids + [self.eos]))

    def state(self) -> dict:
        """Plain-typed state: ``order``, ``vocab_size``, ``discounts`` and the highest-order
        counts as rows ``[t1, ..., tn, count]``."""
        return {"order": self.order, "vocab_size": self.vocab_size, "discounts": list(self.discounts),
                "counts": [[*g, c] for g, c in self.counts.items()]}

    @classmethod
    def from_state(cls, state: dict) -> NgramLM:
        counts = {tuple(int(t) for t in row[:-1]): int(row[-1]) for row in state["counts"]}
        return cls(int(state["order"]), int(state["vocab_size"]), counts, state.get("discounts"))
