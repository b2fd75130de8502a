"""ASR decoding settings: config checks, the dev grid search of the LM fusion, the time-budget
learning-rate schedule, and a tiny AN4 run that tunes on dev and stores the LM."""

import pytest
import torch

from tests.data.speech_fixtures import make_an4
from tests.tasks.test_asr_e2e import TINY
from tsformer.tasks.asr import check_decoding, grid_search_fusion
from tsformer.tasks.optim import warmup_cosine
from tsformer.train import compose_config, train
from tsformer.transcribe import fusion_settings
from tsformer.transcribe import main as transcribe_main


def test_check_decoding_fills_defaults_and_names_bad_keys():
    dec = check_decoding({"method": "beam", "lm_order": 3, "tune": {"lm_weight": [0, 1]}})
    assert dec["beam_width"] == 8 and dec["tune"] == {"lm_weight": [0.0, 1.0]} and dec["insertion_bonus"] == 0.0
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['beam'\]"):
        check_decoding({"beam": 10})
    # The task's shipped LM settings do not stop greedy decoding or lm_order=0: fusion is off.
    greedy = check_decoding({"method": "greedy", "lm_order": 3, "lm_weight": 0.5, "tune": {"lm_weight": [0, 1]}})
    assert (greedy["lm_weight"], greedy["tune"], greedy["lm_order"]) == (0.0, None, 0)
    no_lm = check_decoding({"method": "beam", "lm_weight": 0.5})
    assert (no_lm["lm_weight"], no_lm["tune"], no_lm["lm_order"]) == (0.0, None, 0)
    with pytest.raises(ValueError, match="tune: give lists"):
        check_decoding({"method": "beam", "lm_order": 2, "tune": {"weights": [1]}})


def test_grid_search_picks_least_dev_wer_and_the_first_of_ties():
    refs = ["A B C", "D E"]
    # A decoder whose output is right only at weight 0.5 with any bonus >= 1.
    def decode(w, b):
        return refs if (w, b) in ((0.5, 1.0), (0.5, 2.0)) else ["A B", "D"]

    w, b, hyps, table = grid_search_fusion(decode, refs, [0.0, 0.5, 1.0], [0.0, 1.0, 2.0])
    assert (w, b, hyps) == (0.5, 1.0, refs)
    assert len(table) == 9 and min(e for *_, e in table) == 0.0
    assert dict(((tw, tb), e) for tw, tb, e in table)[(0.0, 0.0)] == pytest.approx(2 / 5)

    # Another process's dev shard (counts summed by ``reduce``) can move the choice: there
    # weight 0.5 makes 10 errors in 10 words at every bonus, so (0, 0) wins overall.
    def other_process(counts):
        return [[e + (10 if i in (3, 4, 5) else 0), n + 10] for i, (e, n) in enumerate(counts)]

    w, b, hyps, table = grid_search_fusion(decode, refs, [0.0, 0.5, 1.0], [0.0, 1.0, 2.0], other_process)
    assert (w, b, hyps) == (0.0, 0.0, ["A B", "D"]) and table[0][2] == pytest.approx(2 / 15)


def test_time_budget_anneals_the_rate_whichever_runs_out_first():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    clock = {"t": 0.0}
    sched = warmup_cosine(opt, 2, float("inf"), floor=0.0, elapsed=lambda: clock["t"])["scheduler"]
    rates = []
    for t in [0.0, 0.0, 0.0, 0.5, 1.0, 2.0]:
        clock["t"] = t
        opt.step()
        sched.step()
        rates.append(opt.param_groups[0]["lr"])
    # step 1: warm-up 1.0; then time 0 -> 1.0, half the budget -> 0.5, spent -> 0, past it -> 0.
    assert rates == pytest.approx([1.0, 1.0, 1.0, 0.5, 0.0, 0.0])
    # With a step budget too, the step progress wins when it is further along.
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = warmup_cosine(opt, 0, 4, floor=0.0, elapsed=lambda: 0.0)["scheduler"]
    for _ in range(2):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.5)


@pytest.mark.slow
def test_an4_recipe_tunes_fusion_on_dev_and_keeps_the_lm(tmp_path, capsys):
    root = make_an4(tmp_path / "an4", n_train=9, n_test=3)
    run = tmp_path / "run"
    cfg = compose_config(["task=an4", f"data.root={root}", f"run_dir={run}", "data.dev_speakers=3", *TINY,
                          "module.decoding.lm_order=3", "module.decoding.tune.lm_weight=[0.0,0.5]",
                          "module.decoding.tune.insertion_bonus=[0.0,1.0]"])
    assert cfg.trainer.max_time == "00:00:45:00"  # the recipe's budget (the step cap ends this one)
    m = train(cfg)
    assert m["decoding/lm_weight"] in (0.0, 0.5) and m["decoding/insertion_bonus"] in (0.0, 1.0)
    assert {"dev/wer", "test/wer", "test/cer"} <= set(m)
    state = torch.load(run / "checkpoints" / "best.ckpt", weights_only=True)
    assert state["asr"]["lm"]["order"] == 3 and state["asr"]["decoding"]["lm_order"] == 3
    # transcribe: the checkpoint's LM at the weights tuned on dev (metrics.json), or as given.
    asr = {**state["asr"], "decoding": {**state["asr"]["decoding"], "lm_weight": 9.0}}
    tuned = fusion_settings(run / "checkpoints" / "best.ckpt", asr, {})
    assert tuned["lm_weight"] == m["decoding/lm_weight"] and tuned["lm"].order == 3
    assert fusion_settings(run / "checkpoints" / "best.ckpt", asr, {"lm_weight": "0.3"})["lm_weight"] == 0.3
    capsys.readouterr()
    mfc = next((root / "feat").rglob("*.mfc"))
    transcribe_main([f"ckpt={run / 'checkpoints' / 'best.ckpt'}", f"audio={mfc}", "decoding=beam", "lm_weight=0.5"])
    assert capsys.readouterr().out.startswith(str(mfc))
