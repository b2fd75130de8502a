"""End-to-end: a few-step train(cfg) on tiny fixtures, then transcribe from the checkpoint alone."""

import json

import pytest
import torch

from tests.data.speech_fixtures import make_an4, make_librispeech
from tsformer.train import compose_config, train
from tsformer.transcribe import main as transcribe_main

TINY = [
    "model.d_model=32",
    "model.n_heads=2",
    "model.n_layers=1",
    "model.d_ff=64",
    "model.conv_kernel=5",
    "model.subsampling_channels=8",
    "data.batch_size=4",
    "module.warmup_steps=2",
    "module.decoding.beam_width=3",
    "trainer.max_steps=4",
    "trainer.val_check_interval=2",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "print_metrics=false",
]


@pytest.mark.slow
@pytest.mark.parametrize("model", ["conformer_lsra", "conformer"])
def test_librispeech_train_and_transcribe(tmp_path, model, capsys):
    root = make_librispeech(tmp_path / "LibriSpeech")
    run = tmp_path / "run"
    cfg = compose_config(["task=librispeech", f"model={model}", f"data.root={root}", f"run_dir={run}",
                          "data.tokenizer.type=char", *TINY])
    metrics = train(cfg)
    for key in ("test/wer", "test/cer", "dev/wer", "dev/cer"):
        assert key in metrics and 0.0 <= metrics[key]
    assert json.loads((run / "metrics.json").read_text())["test/wer"] == metrics["test/wer"]
    ckpt = run / "checkpoints" / "best.ckpt"
    state = torch.load(ckpt, weights_only=True)  # plain types only
    assert state["asr"]["tokenizer"]["type"] == "char" and state["asr"]["features"]["type"] == "fbank"
    capsys.readouterr()
    folder = root / "test-clean"
    transcribe_main([f"ckpt={ckpt}", f"audio={folder}", "decoding=greedy"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 8 and all(line.split("\t")[0].endswith(".flac") for line in lines)
    out = tmp_path / "hyps.tsv"
    transcribe_main([f"ckpt={ckpt}", f"audio={next(folder.rglob('*.flac'))}", f"out={out}"])
    assert len(out.read_text().splitlines()) == 1


@pytest.mark.slow
def test_an4_train_on_precomputed_features(tmp_path):
    root = make_an4(tmp_path / "an4", n_train=8, n_test=3)
    cfg = compose_config(["task=an4", "model=conformer", f"data.root={root}", f"run_dir={tmp_path / 'run'}",
                          "data.dev_speakers=3", *TINY])
    metrics = train(cfg)
    assert "test/wer" in metrics and "test/cer" in metrics and metrics["train/steps"] == 4


def test_an4_default_root_and_missing_corpus_message(tmp_path, monkeypatch):
    from tsformer.resources import REPO_ROOT

    monkeypatch.delenv("TSFORMER_DATA", raising=False)
    cfg = compose_config(["task=an4", "model=conformer"])
    assert cfg.data.root == str(REPO_ROOT.parent / "shared" / "data" / "an4_cepstra" / "an4")  # beside the checkout
    monkeypatch.setenv("TSFORMER_DATA", str(tmp_path / "corpora"))
    assert compose_config(["task=an4"]).data.root == str(tmp_path / "corpora" / "an4_cepstra" / "an4")
    cfg = compose_config(["task=an4", f"data.root={tmp_path}/nowhere", f"run_dir={tmp_path / 'run'}"])
    with pytest.raises(ValueError, match="AN4 corpus not found.*etc/an4_train.fileids.*data.root=.*TSFORMER_DATA"):
        train(cfg)
    assert not (tmp_path / "run").exists()  # nothing written before the data is validated
