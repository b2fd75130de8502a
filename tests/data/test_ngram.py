"""Interpolated Kneser-Ney n-gram LM: hand-computed values, normalisation, state round trip."""

import math
import random

import pytest

from tsformer.data.ngram import NgramLM


def test_bigram_matches_hand_computed_kneser_ney():
    # Sentences "1 2" and "1 3" over tokens {1, 2, 3}, end of sentence 4, discount 0.5.
    # Bigrams: (<s>,1):2 (1,2):1 (1,3):1 (2,</s>):1 (3,</s>):1; continuation counts of the
    # unigrams: 1:1 2:1 3:1 </s>:2 (5 in all, 4 types) -> P1(w) = (c - 0.5)/5 + 0.5*4/5/4.
    lm = NgramLM(2, 4, NgramLM.train([[1, 2], [1, 3]], 4, order=2).counts, discounts=[0.5, 0.5])
    p1 = {1: 0.2, 2: 0.2, 3: 0.2, 4: 0.4}
    assert lm.prob([1], 2) == pytest.approx(0.5 / 2 + 0.5 * 2 / 2 * p1[2])  # 0.35
    assert lm.prob([1], 4) == pytest.approx(0.5 * p1[4])  # 0.2
    assert lm.prob([], 1) == pytest.approx(1.5 / 2 + 0.5 * 1 / 2 * p1[1])  # after <s>: 0.8
    assert lm.prob([2], 2) == pytest.approx(0.5 * p1[2])  # seen context, unseen follower
    assert lm.sentence_logprob([1, 2]) == pytest.approx(math.log(0.8 * 0.35 * lm.prob([2], 4)))


@pytest.mark.parametrize("order", [1, 2, 3, 5])
def test_probabilities_sum_to_one_over_the_vocabulary_for_any_context(order):
    rng = random.Random(order)
    V = 7  # ids 1..6 and the end of sentence 7; id 3 never occurs in training
    sents = [[rng.choice([1, 2, 4, 5, 6]) for _ in range(rng.randint(1, 8))] for _ in range(30)]
    lm = NgramLM.train(sents, V, order=order)
    contexts = [[], [1], sents[0], sents[1][:2], [3, 3, 3, 3], [6, 5, 4, 2, 1], [2] * 9]
    for ctx in contexts:
        total = sum(lm.prob(ctx, t) for t in range(1, V + 1))
        assert total == pytest.approx(1.0, abs=1e-12), (ctx, total)
        assert all(lm.prob(ctx, t) > 0 for t in range(1, V + 1))  # smoothing: nothing impossible


def test_higher_order_prefers_training_continuations_and_round_trips():
    sents = [[1, 2, 3, 1], [1, 2, 3, 2], [2, 2, 1]] * 5
    lm = NgramLM.train(sents, 4, order=3)
    assert lm.prob([1, 2], 3) > 0.8  # "1 2" is always followed by 3
    assert lm.logprob([1, 2], 3) == pytest.approx(math.log(lm.prob([1, 2], 3)))
    back = NgramLM.from_state(lm.state())
    for ctx in ([], [1], [1, 2], [3, 3]):
        for t in range(1, 5):
            assert back.prob(ctx, t) == lm.prob(ctx, t)


def test_bad_input_says_what():
    with pytest.raises(ValueError, match="sentence 1: token ids \\[0\\]"):
        NgramLM.train([[1], [0, 1]], 3)
    with pytest.raises(ValueError, match="outside 1..3"):
        NgramLM.train([[1, 2]], 3).prob([1], 4)
    with pytest.raises(ValueError, match="order must be at least 1"):
        NgramLM.train([[1]], 3, order=0)
    with pytest.raises(ValueError, match="no sentences"):
        NgramLM.train([], 3)
