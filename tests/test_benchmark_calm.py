"""benchmarks/_calm.py's teacher-forced diagnosis: per-layer agreement, the oracle and the
best single threshold per measure, on hand-made layer outputs and on a tiny char LM."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from tests.conftest import load_benchmark
from tsformer.nn.decoding import generate_tokens
from tsformer.nn.longformer import LongformerCharLM, bits_per_char


class HandMade:
    """Three layers whose heads are the states themselves (vocabulary 3); four generated
    characters, teacher-forced after a one-character prompt:

    ==========  ============  ==========  ==========
    character   layer 1       layer 2     layer 3
    ==========  ============  ==========  ==========
    0           [10, 0, 0]    [10, 0, 0]  [10, 0, 0]   sure and right at once
    1           [0, 10, 0]    [10, 0, 0]  [10, 0, 0]   sure but wrong at layer 1
    2           [1, .9, 0]    [5, 0, 0]   [5, 0, 0]    unsure, right
    3           [0, 1, .9]    [0, 0, 5]   [0, 0, 5]    unsure, wrong at layer 1
    ==========  ============  ==========  ==========
    """

    def __init__(self):
        self.layers = [torch.tensor([[10.0, 0, 0], [0, 10, 0], [1, 0.9, 0], [0, 1, 0.9]]),
                       torch.tensor([[10.0, 0, 0], [10, 0, 0], [5, 0, 0], [0, 0, 5]]),
                       torch.tensor([[10.0, 0, 0], [10, 0, 0], [5, 0, 0], [0, 0, 5]])]
        self.encoder = SimpleNamespace(embed_tokens=lambda t: torch.ones(*t.shape, 3))

    def hidden_states(self, tokens):
        if tokens.shape == (1, 4):
            return [h[None] for h in self.layers]
        return [torch.zeros(*tokens.shape, 3) for _ in self.layers]  # the "book": uniform heads

    def readout(self, h):
        return h


def test_diagnosis_on_hand_made_heads():
    bench = load_benchmark("_calm")
    d = bench.exit_diagnosis(HandMade(), torch.zeros(1, 1, dtype=torch.long), torch.zeros(1, 4, dtype=torch.long),
                             torch.zeros(2, 9, dtype=torch.long), errors=(0.0, 0.25, 0.5))
    assert d["agree"] == [0.5, 1.0, 1.0]
    assert d["oracle"] == pytest.approx((1 + 2 + 1 + 2) / 4)
    # Softmax: no threshold exits character 0 at layer 1 without character 1 (the same
    # margin), so no wrong exit means no exit at all; one wrong exit in four (character 1)
    # lets 0 and 1 stop at layer 1 and 2, 3 at layer 2; two (3 too) lets everything stop at 1.
    assert d["frontier"]["softmax"] == {0.0: 3.0, 0.25: 1.5, 0.5: 1.0}
    # Top-1 probability of the last layer: e^10 / (e^10 + 2) twice, e^5 / (e^5 + 2) twice.
    assert d["top1_ge_0.9"] == 1.0
    assert d["bpc"] == [pytest.approx(math.log2(3))] * 3
    assert d["errors"] == [0.0, 0.25, 0.5] and set(d["frontier"]) == {"softmax", "state"}


def test_per_layer_thresholds_beat_one_threshold_on_hand_made_heads():
    bench = load_benchmark("_calm")
    prompt, cont = torch.zeros(1, 1, dtype=torch.long), torch.zeros(1, 4, dtype=torch.long)
    agree, conf, _ = bench._teacher_forced(HandMade(), prompt, cont)
    grid = bench.candidate_thresholds(32, 1e-5)
    # No wrong exit: layer 1 must stay closed (character 1), but layer 2 can stop everything.
    th = bench.per_layer_thresholds(conf["softmax"], agree, 0.0, grid)
    assert bench._exit_cost(conf["softmax"], agree, th) == (2.0, 0.0) and th[0] > 1
    # One in four: layer 1 opens for characters 0 and 1 as well.
    th = bench.per_layer_thresholds(conf["softmax"], agree, 0.25, grid)
    assert bench._exit_cost(conf["softmax"], agree, th) == (1.5, 0.25)
    d = bench.exit_diagnosis(HandMade(), prompt, cont, torch.zeros(2, 9, dtype=torch.long), errors=(0.0,),
                             fit=(prompt, cont))
    assert d["frontier"]["softmax"][0.0] == 3.0 and d["per_layer_softmax"][0.0]["layers"] == 2.0
    assert "per-layer" in bench.diagnosis_text(d, 3)


def test_diagnosis_on_a_char_lm_is_consistent():
    bench = load_benchmark("_calm")
    torch.manual_seed(0)
    net = LongformerCharLM(vocab_size=23, d_model=16, n_heads=2, n_layers=4, d_ff=32, window=6, dilation=1,
                           max_tokens=64, dropout=0.0).eval()
    prompts = torch.randint(0, 23, (5, 7))
    cont = generate_tokens(net, prompts, 5, 0.0, None, True, 64)[:, 7:]
    book = torch.randint(0, 23, (3, 17))
    d = bench.exit_diagnosis(net, prompts, cont, book, errors=(0.0, 1.0))
    assert len(d["agree"]) == 4 and d["agree"][-1] == 1.0 and 1.0 <= d["oracle"] <= 4.0
    assert bench.oracle_layers(net, prompts, cont) == d["oracle"]
    for best in d["frontier"].values():
        # Exiting only where the head agrees costs at least the oracle's layers; allowing any
        # error, the most permissive threshold stops every softmax character at layer 1.
        assert d["oracle"] - 1e-9 <= best[0.0] <= 4.0
    assert d["frontier"]["softmax"][1.0] == 1.0
    with torch.no_grad():
        full = bits_per_char(net(book)[:, :-1], book[:, 1:])
    assert d["bpc"][-1] == pytest.approx(float(full), rel=1e-5)
    text = bench.diagnosis_text(d, 4)
    assert "oracle" in text and f"{d['bpc'][-1]:.3f}" in text
