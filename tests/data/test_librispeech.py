"""LibriSpeech reader on a tiny fixture in the real layout; bad-input handling."""

import logging

import numpy as np
import pytest
import soundfile as sf

from tests.data.speech_fixtures import make_librispeech
from tsformer.data.errors import DataError
from tsformer.data.speech.librispeech import LibriSpeechDataModule, scan_split


@pytest.fixture
def corpus(tmp_path):
    return make_librispeech(tmp_path / "LibriSpeech")


def test_scan_reads_layout_and_caches_manifest(corpus, tmp_path):
    utts = scan_split(corpus, "train-clean")
    assert len(utts) == 8
    u = utts[0]
    assert u.id == "11-100-0000" and u.path.endswith("train-clean/11/100/11-100-0000.flac")
    assert u.sample_rate == 16000 and u.num_frames > 0
    assert all(w in ("ZERO", "ONE", "TWO") for w in u.text.split())
    manifest = corpus / ".manifest-train-clean.tsv"
    assert manifest.exists()
    # The manifest is used while nothing changed ...
    assert [x.id for x in scan_split(corpus, "train-clean")] == [x.id for x in utts]
    # ... and rebuilt when a file changes (here: a transcript edited).
    t = corpus / "train-clean" / "11" / "100" / "11-100.trans.txt"
    t.write_text(t.read_text().replace("11-100-0000 ", "11-100-0000 TWO TWO TWO ", 1))
    again = scan_split(corpus, "train-clean")
    assert again[0].text.startswith("TWO TWO TWO")


def test_missing_transcript_line_names_file(corpus, caplog):
    t = corpus / "dev-clean" / "12" / "101" / "12-101.trans.txt"
    t.write_text("\n".join(t.read_text().splitlines()[1:]) + "\n")
    with pytest.raises(DataError, match=r"12-101-0000\.flac.*no transcript line"):
        scan_split(corpus, "dev-clean", cache=False)
    with caplog.at_level(logging.WARNING):
        utts = scan_split(corpus, "dev-clean", cache=False, skip_bad=True)
    assert len(utts) == 7 and "12-101-0000" in caplog.text


def test_unreadable_and_empty_audio_name_file(corpus):
    bad = corpus / "test-clean" / "11" / "102" / "11-102-0001.flac"
    bad.write_bytes(b"not a flac file")
    with pytest.raises(DataError, match=r"11-102-0001\.flac: unreadable"):
        scan_split(corpus, "test-clean", cache=False)
    sf.write(str(bad), np.zeros(0, dtype=np.float32), 16000)
    with pytest.raises(DataError, match=r"11-102-0001\.flac: (empty|unreadable)"):
        scan_split(corpus, "test-clean", cache=False)
    assert len(scan_split(corpus, "test-clean", cache=False, skip_bad=True)) == 7


def test_wrong_sample_rate_error_or_resample(corpus):
    f = corpus / "train-clean" / "12" / "100" / "12-100-0002.flac"
    sf.write(str(f), np.zeros(8000, dtype=np.float32) + 0.1, 8000)
    with pytest.raises(DataError, match=r"12-100-0002\.flac: sample rate 8000 Hz"):
        scan_split(corpus, "train-clean", resample=False, cache=False)
    utts = scan_split(corpus, "train-clean", resample=True, cache=False)
    assert {u.sample_rate for u in utts} == {8000, 16000}


def test_datamodule_features_tokenizer_and_batches(corpus):
    dm = LibriSpeechDataModule(
        root=str(corpus), train_splits=["train-clean"], dev_splits=["dev-clean"], test_splits=["test-clean"],
        tokenizer={"type": "char"}, batch_size=3,
    )
    dm.setup("fit")
    kw = dm.model_kwargs()
    assert kw["input_dim"] == 80 and kw["vocab_size"] == dm.tokenizer.vocab_size
    assert len(kw["cmvn_mean"]) == 80 and min(kw["cmvn_std"]) > 0
    batch = next(iter(dm.train_dataloader()))
    assert batch["feats"].shape[0] == 3 and batch["feats"].shape[2] == 80
    # 0.6 s at 10 ms hop -> 61 frames (centred STFT)
    assert batch["feat_lens"].max() == 61
    assert dm.tokenizer.decode(batch["targets"][0, : batch["target_lens"][0]].tolist()) == batch["texts"][0]
    assert dm.test_split_names() == ["dev", "test"]


def test_missing_root_is_a_clear_error(tmp_path):
    dm = LibriSpeechDataModule(root=str(tmp_path / "nope"), train_splits=["x"], dev_splits=[], test_splits=["y"])
    with pytest.raises(DataError, match="LibriSpeech root not found"):
        dm.setup("fit")
