"""CTC greedy and prefix beam search (with and without a fused language model) on hand-made
and random log-probabilities, against brute-force enumeration."""

import itertools
import math

import pytest
import torch

from tsformer.data.ngram import NgramLM
from tsformer.nn.ctc import ctc_decode, ctc_greedy_decode, ctc_prefix_beam_search


def _lp(rows):
    return torch.tensor(rows, dtype=torch.float32).log()


def test_greedy_merges_repeats_and_drops_blanks():
    # frames argmax: 1 1 0 1 2 2 0 -> [1, 1, 2]
    eye = torch.eye(3)
    path = [1, 1, 0, 1, 2, 2, 0]
    lp = (eye[path] * 0.9 + 0.05).log()
    assert ctc_greedy_decode(lp) == [[1, 1, 2]]
    # lengths cut the batch element
    assert ctc_greedy_decode(lp[None], torch.tensor([2])) == [[1]]


def test_beam_search_sums_alignments_where_greedy_fails():
    # Two frames, vocab {blank, a}. Best path is "blank blank" (0.6*0.6=0.36) -> greedy: "".
    # But P("a") = 0.4*0.4 + 0.4*0.6 + 0.6*0.4 = 0.64 > 0.36, so the beam finds [1].
    lp = _lp([[0.6, 0.4], [0.6, 0.4]])
    assert ctc_greedy_decode(lp) == [[]]
    assert ctc_prefix_beam_search(lp, beam_width=4) == [1]


def test_beam_search_repeated_label_needs_blank():
    # "a blank a" strongly -> [1, 1]; "a a a" -> [1]
    lp = _lp([[0.01, 0.98, 0.01], [0.98, 0.01, 0.01], [0.01, 0.98, 0.01]])
    assert ctc_prefix_beam_search(lp, beam_width=4) == [1, 1]
    lp = _lp([[0.01, 0.98, 0.01]] * 3)
    assert ctc_prefix_beam_search(lp, beam_width=4) == [1]


def test_beam_matches_brute_force_on_random_small_case():
    torch.manual_seed(0)
    T, V = 4, 3
    lp = torch.log_softmax(torch.randn(T, V) * 2, -1)
    scores = _labelling_probs(lp)
    best = max(scores, key=scores.get)
    assert ctc_prefix_beam_search(lp, beam_width=50, prune=-1e9) == list(best)


def _labelling_probs(lp: torch.Tensor) -> dict:
    """Brute force: P_ctc(labelling), the path probabilities summed per collapsed labelling."""
    T, V = lp.shape
    scores: dict = {}
    for path in itertools.product(range(V), repeat=T):
        seq, prev = [], None
        for t in path:
            if t != prev and t != 0:
                seq.append(t)
            prev = t
        p = math.exp(sum(float(lp[i, t]) for i, t in enumerate(path)))
        scores[tuple(seq)] = scores.get(tuple(seq), 0.0) + p
    return scores


@pytest.mark.parametrize("seed", range(6))
def test_beam_with_lm_matches_brute_force_fused_scores(seed):
    # Every labelling of T=5 frames over {a, b} fits in the beam (at most 63), so the search
    # must return the argmax of log P_ctc + w log P_lm (end of sentence included) + bonus * len.
    g = torch.Generator().manual_seed(seed)
    lp = torch.log_softmax(torch.randn(5, 3, generator=g) * 1.5, -1)
    lm = NgramLM.train([[1, 2, 1], [2, 2], [1, 1, 2, 1], [2]], vocab_size=3, order=3)
    weight, bonus = [(0.5, 0.0), (1.0, 0.7), (2.0, -0.3)][seed % 3]
    fused = {lab: math.log(p) + weight * lm.sentence_logprob(lab) + bonus * len(lab)
             for lab, p in _labelling_probs(lp).items()}
    best = max(fused, key=fused.get)
    got = ctc_prefix_beam_search(lp, beam_width=100, prune=-1e9, lm=lm, lm_weight=weight, insertion_bonus=bonus)
    assert got == list(best), (got, best)


def test_lm_turns_an_acoustically_ambiguous_frame_its_way():
    # Frame 2 is a coin toss between b (2) and c (3); the LM has only seen "a b".
    lp = _lp([[0.02, 0.96, 0.01, 0.01], [0.02, 0.01, 0.485, 0.485]])
    lm = NgramLM.train([[1, 2]] * 5, vocab_size=4, order=2)
    got = {w: ctc_prefix_beam_search(lp, 4, lm=lm, lm_weight=w) for w in (0.0, 0.5)}
    assert got[0.5] == [1, 2] and got[0.0] in ([1, 2], [1, 3])
    lp = _lp([[0.02, 0.96, 0.01, 0.01], [0.02, 0.01, 0.47, 0.50]])  # acoustics prefer c ...
    assert ctc_prefix_beam_search(lp, 4) == [1, 3]
    assert ctc_prefix_beam_search(lp, 4, lm=lm, lm_weight=0.5) == [1, 2]  # ... the LM b


@pytest.mark.parametrize("seed", range(5))
def test_beam_width_one_without_lm_equals_greedy_on_peaky_outputs(seed):
    # Trained CTC outputs are peaky (one token takes most of each frame's mass); there one
    # surviving prefix is the best path. (On flat outputs prefix search can differ from the
    # best path, by summing alignments: see test_beam_search_sums_alignments_where_greedy_fails.)
    g = torch.Generator().manual_seed(seed)
    path = torch.randint(0, 6, (40,), generator=g)
    logits = torch.randn(40, 6, generator=g) + 6.0 * torch.nn.functional.one_hot(path, 6)
    lp = torch.log_softmax(logits, -1)
    assert ctc_prefix_beam_search(lp, beam_width=1) == ctc_greedy_decode(lp)[0]
    assert ctc_decode(lp[None], torch.tensor([40]), "beam", beam_width=1) == ctc_greedy_decode(lp)


def test_decode_rejects_what_it_cannot_do():
    lp = torch.zeros(1, 3, 3).log_softmax(-1)
    lm = NgramLM.train([[1, 2]], vocab_size=3, order=2)
    with pytest.raises(ValueError, match="needs method=beam"):
        ctc_decode(lp, torch.tensor([3]), "greedy", lm=lm, lm_weight=0.5)
    with pytest.raises(ValueError, match="beam_width must be at least 1"):
        ctc_prefix_beam_search(lp[0], beam_width=0)


def test_ctc_decode_batch_methods_agree_on_peaky_input():
    lp = torch.full((2, 5, 4), -10.0)
    for b, path in enumerate([[1, 0, 2, 2, 3], [3, 3, 0, 0, 1]]):
        for t, v in enumerate(path):
            lp[b, t, v] = 0.0
    lens = torch.tensor([5, 3])
    assert ctc_decode(lp, lens, "greedy") == [[1, 2, 3], [3]]
    assert ctc_decode(lp, lens, "beam", beam_width=4) == [[1, 2, 3], [3]]
