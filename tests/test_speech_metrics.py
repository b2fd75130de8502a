"""WER / CER against hand-computed values."""

import pytest

from tsformer.metrics import cer, char_errors, edit_distance, wer, word_errors


def test_edit_distance_hand_values():
    assert edit_distance("kitten", "sitting") == 3
    assert edit_distance([], ["a"]) == 1
    assert edit_distance(["a", "b"], []) == 2
    assert edit_distance("abc", "abc") == 0


def test_word_errors_substitution_deletion_insertion():
    # ref 4 words; hyp: substitute TWO->TOO, delete FOUR, insert FIVE at the end -> 3 edits
    assert word_errors("ONE TWO THREE FOUR", "ONE TOO THREE FIVE SIX") == (3, 4)
    assert word_errors("A B", "A B") == (0, 2)


def test_corpus_wer_and_cer_are_pooled():
    refs = ["SEVEN THREE ZERO", "ONE"]
    hyps = ["SEVEN THREE", "ONE TWO"]
    # 1 deletion + 1 insertion over 4 reference words
    assert wer(refs, hyps) == pytest.approx(2 / 4)
    # chars: "SEVEN THREE ZERO" (16) -> "SEVEN THREE": 5 deletions; "ONE" (3) -> "ONE TWO": 4 insertions
    assert char_errors(refs[0], hyps[0]) == (5, 16)
    assert cer(refs, hyps) == pytest.approx(9 / 19)


def test_wer_length_mismatch_is_an_error():
    with pytest.raises(ValueError):
        wer(["A"], [])
