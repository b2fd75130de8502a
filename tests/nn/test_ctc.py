"""CTC greedy and prefix beam search on hand-made log-probabilities."""

import math

import torch

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
    # brute force: sum path probabilities per collapsed labelling
    import itertools

    scores: dict = {}
    for path in itertools.product(range(V), repeat=T):
        seq, prev = [], None
        for t in path:
            if t != prev and t != 0:
                seq.append(t)
            prev = t
        p = math.exp(sum(float(lp[i, t]) for i, t in enumerate(path)))
        scores[tuple(seq)] = scores.get(tuple(seq), 0.0) + p
    best = max(scores, key=scores.get)
    assert ctc_prefix_beam_search(lp, beam_width=50, prune=-1e9) == list(best)


def test_ctc_decode_batch_methods_agree_on_peaky_input():
    lp = torch.full((2, 5, 4), -10.0)
    for b, path in enumerate([[1, 0, 2, 2, 3], [3, 3, 0, 0, 1]]):
        for t, v in enumerate(path):
            lp[b, t, v] = 0.0
    lens = torch.tensor([5, 3])
    assert ctc_decode(lp, lens, "greedy") == [[1, 2, 3], [3]]
    assert ctc_decode(lp, lens, "beam", beam_width=4) == [[1, 2, 3], [3]]
