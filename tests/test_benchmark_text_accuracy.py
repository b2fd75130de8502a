"""benchmarks/text_accuracy.py: results kept run by run, the table it appends, and one real
(tiny) run on the shipped Hyperpartisan sample."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.conftest import load_benchmark

REPO = Path(__file__).resolve().parent.parent


def _fake_result(acc: float) -> dict:
    return {"test/accuracy": acc, "test/f1": acc, "baseline/tfidf_lr/accuracy": 0.5, "baseline/tfidf_lr/f1": 0.5,
            "train/seconds": 1.0, "train/steps": 2, "best/val/accuracy": acc / 2}


def test_finished_runs_survive_a_crash_and_folds_are_averaged(tmp_path, monkeypatch):
    bench = load_benchmark("text_accuracy")
    calls = []

    def fake(task, model, overrides):
        calls.append(overrides)
        return _fake_result(0.5 + 0.1 * len(calls))

    monkeypatch.setattr(bench, "run_one", fake)
    out = tmp_path / "acc.json"
    argv = ["text_accuracy.py", "--suite", "hyperpartisan_cv", "--models", "longformer", "--folds", "3",
            "--no-append", "--out", str(out)]
    monkeypatch.setattr(sys, "argv", argv)
    bench.main()
    entry = json.loads(out.read_text())[0]
    res = entry["results"][0]
    assert [f["test/accuracy"] for f in res["folds"]] == pytest.approx([0.6, 0.7, 0.8])
    assert res["test/accuracy"] == pytest.approx(0.7) and res["best/val/accuracy"] == pytest.approx(0.35)
    assert [o[-1] for o in calls] == ["data.fold=0", "data.fold=1", "data.fold=2"]
    assert not out.with_suffix(".partial.json").exists()
    table = bench.report([entry])
    assert "| hyperpartisan_cv | longformer | 0.7000 ± 0.0816 |" in table and "| 0.3500 |" in table

    # A crash at the third fold: the two finished folds are on disk, no final output.
    calls.clear()

    def dies_third(task, model, overrides):
        if len(calls) == 2:
            raise ZeroDivisionError
        return fake(task, model, overrides)

    monkeypatch.setattr(bench, "run_one", dies_third)
    out2 = tmp_path / "crash.json"
    monkeypatch.setattr(sys, "argv", [*argv[:-1], str(out2)])
    with pytest.raises(ZeroDivisionError):
        bench.main()
    kept = json.loads(out2.with_suffix(".partial.json").read_text())
    assert [k["overrides"][-1] for k in kept] == ["data.fold=0", "data.fold=1"]
    assert kept[1]["test/accuracy"] == pytest.approx(0.7)
    assert not out2.exists()


@pytest.mark.slow
def test_split_suite_on_the_shipped_sample(tmp_path, monkeypatch):
    bench = load_benchmark("text_accuracy")
    out = tmp_path / "acc.json"
    monkeypatch.setattr(sys, "argv", [
        "text_accuracy.py", "--suite", "hyperpartisan_split", "--models", "transformer_truncated",
        "--hyperpartisan", str(REPO / "data" / "hyperpartisan"), "--no-append", "--out", str(out),
        "--override", "trainer.max_steps=2", "trainer.val_check_interval=1", "data.vocab_size=300"])
    before = (REPO / "benchmarks" / "RESULTS.md").read_text()
    bench.main()
    res = json.loads(out.read_text())[0]["results"][0]
    assert res["suite"] == "hyperpartisan_split" and res["train/steps"] == 2
    for k in ("test/accuracy", "test/f1", "baseline/tfidf_lr/accuracy", "best/val/accuracy"):
        assert 0 <= res[k] <= 1
    assert (REPO / "benchmarks" / "RESULTS.md").read_text() == before
