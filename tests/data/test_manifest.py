"""task=asr manifests: NeMo JSON lines, CSV/TSV, Kaldi directories, on the shipped FSDD sample."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from tsformer.data.errors import DataError
from tsformer.data.speech import audio as audio_mod
from tsformer.data.speech.audio import load_audio
from tsformer.data.speech.manifest import ManifestDataModule, clean_transcript, read_manifest
from tsformer.data.tokenizers import build_tokenizer, tokenizer_from_state
from tsformer.train import REPO_ROOT, compose_config, train

SAMPLE = REPO_ROOT / "data" / "asr_sample"
FAST = {"preload": False, "features": {"type": "fbank"}}


def parts_of(dm: ManifestDataModule) -> dict[str, list[tuple[str, str]]]:
    return {p: sorted((str(Path(u.path).resolve()), u.text) for u in dm.read_split(p)) for p in ("train", "dev", "test")}


def test_shipped_sample_reads_the_same_in_every_format():
    jsonl = ManifestDataModule(train_manifest=str(SAMPLE / "train.jsonl"), dev_manifest=str(SAMPLE / "dev.jsonl"),
                               test_manifest=str(SAMPLE / "test.jsonl"), **FAST)
    csv_ = ManifestDataModule(manifest=str(SAMPLE / "manifest.csv"), **FAST)
    kaldi = ManifestDataModule(**{f"{p}_manifest": str(SAMPLE / "kaldi" / p) for p in ("train", "dev", "test")},
                               **FAST)
    ref = parts_of(jsonl)
    assert {p: len(v) for p, v in ref.items()} == {"train": 40, "dev": 20, "test": 20}
    assert parts_of(csv_) == ref and parts_of(kaldi) == ref
    u = jsonl.read_split("train")[0]
    assert u.sample_rate == 8000 and u.num_frames > 0 and u.where.endswith("train.jsonl: line 1")


def test_tsv_columns_offsets_and_seeded_split(tmp_path):
    wavs = sorted((SAMPLE / "audio").glob("*_george_1[01].wav"))
    lines = ["file\twords\tstart"] + [f"{w}\tDigit {w.stem[0]}.\t0" for w in wavs]
    (tmp_path / "m.tsv").write_text("\n".join(lines) + "\n")
    kw = dict(manifest=str(tmp_path / "m.tsv"), path_column="file", text_column="words", **FAST)
    a, b = ManifestDataModule(**kw), ManifestDataModule(split_seed=1, **kw)
    pa = parts_of(a)
    assert {p: len(v) for p, v in pa.items()} == {"train": 16, "dev": 2, "test": 2}
    assert pa == parts_of(ManifestDataModule(**kw))  # the same seed draws the same split
    assert pa["test"] != parts_of(b)["test"]
    assert all(t.startswith("Digit ") and "." not in t for _, t in pa["train"])  # punctuation stripped
    with pytest.raises(DataError, match=r"no text column 'nope'.*columns: \['file', 'words', 'start'\]"):
        ManifestDataModule(manifest=str(tmp_path / "m.tsv"), text_column="nope", **FAST).read_split("train")


def test_text_normalisation_and_tokenizer_case():
    assert clean_transcript("Hello, world! Don't   stop-now.") == "Hello world Don't stop now"
    assert clean_transcript("Hello, world!", "keep") == "Hello, world!"
    tok = build_tokenizer(["Hello world"], "char", case="lower")
    assert tok.decode(tok.encode("HELLO")) == "hello"
    assert tokenizer_from_state(tok.state()).case == "lower"
    assert tokenizer_from_state({"type": "char", "symbols": ["A"]}).case == "upper"  # older checkpoints
    keep = build_tokenizer(["Hello World"], "char", case="keep")
    assert keep.decode(keep.encode("Hello World")) == "Hello World"
    with pytest.raises(ValueError, match="case"):
        build_tokenizer(["x"], "char", case="title")


def test_formats_rates_and_stereo(tmp_path, caplog):
    src = SAMPLE / "audio" / "7_george_10.wav"
    wave, sr = sf.read(str(src), dtype="float32")
    sf.write(str(tmp_path / "a.flac"), wave, sr)
    sf.write(str(tmp_path / "b.ogg"), wave, sr)
    sf.write(str(tmp_path / "c.wav"), np.stack([wave, wave], 1), sr)  # stereo
    ref = load_audio(src, 16000)
    assert torch.allclose(load_audio(tmp_path / "a.flac", 16000), ref)  # FLAC is lossless
    assert load_audio(tmp_path / "b.ogg", 16000).shape == ref.shape  # Vorbis is lossy: length only
    audio_mod._said_stereo = False
    with caplog.at_level(logging.INFO, logger="tsformer.data.speech.audio"):
        assert torch.allclose(load_audio(tmp_path / "c.wav", 16000), ref, atol=1e-6)
        load_audio(tmp_path / "c.wav", 16000)
    assert sum("mixed down to mono" in r.message for r in caplog.records) == 1  # said once
    assert load_audio(src, 16000).shape[0] == 2 * len(wave)  # 8 kHz resampled to 16 kHz


def test_kaldi_segments_read_their_part(tmp_path):
    names = ["1_george_10.wav", "2_george_10.wav", "3_george_10.wav"]
    parts = [sf.read(str(SAMPLE / "audio" / n), dtype="float32")[0] for n in names]
    sf.write(str(tmp_path / "long.wav"), np.concatenate(parts), 8000, subtype="FLOAT")
    d = tmp_path / "data"
    d.mkdir()
    (d / "wav.scp").write_text("rec1 ../long.wav\n")
    starts = np.cumsum([0] + [len(p) for p in parts]) / 8000
    (d / "segments").write_text("".join(f"u{i} rec1 {starts[i]:.6f} {starts[i + 1]:.6f}\n" for i in range(3)))
    (d / "text").write_text("u0 one\nu1 two\nu2 three\n")
    rows, _ = read_manifest(d)
    assert [u.text for u, _ in rows] == ["one", "two", "three"]
    u = rows[1][0]
    got = load_audio(u.path, 8000, offset=u.offset, duration=u.duration)
    assert torch.allclose(got, torch.from_numpy(parts[1]))
    (d / "segments").write_text("u0 rec1 0 -1\nu1 rec1 0.5\n")
    with pytest.raises(DataError, match=r"segments: line 2: expected '<utterance-id> <recording-id> <start> <end>'"):
        read_manifest(d)


def _copy_sample_csv(tmp_path: Path, extra: str) -> Path:
    shutil.copytree(SAMPLE / "audio", tmp_path / "audio")
    text = (SAMPLE / "manifest.csv").read_text() + extra
    (tmp_path / "m.csv").write_text(text)
    return tmp_path / "m.csv"


@pytest.mark.parametrize("extra, message", [
    ("audio/nowhere.wav,one,train\n", r"m.csv: line 82: .*nowhere.wav: audio file not found"),
    ("audio/1_george_10.wav,,train\n", r"m.csv: line 82: .*1_george_10.wav: empty transcript"),
    ("audio/1_george_10.wav,!?,train\n", r"m.csv: line 82: .*1_george_10.wav: empty transcript"),
    ("audio/1_george_10.wav,one\n", r"m.csv: line 82: 2 fields, expected 3 \(path, text, split\)"),
    ("audio/broken.wav,one,train\n", r"m.csv: line 82: .*broken.wav: unreadable audio file"),
])
def test_bad_rows_name_manifest_line_and_file(tmp_path, extra, message):
    m = _copy_sample_csv(tmp_path, extra)
    (tmp_path / "audio" / "broken.wav").write_bytes(b"RIFF not really")
    with pytest.raises(DataError, match=message):
        ManifestDataModule(manifest=str(m), **FAST).read_split("train")
    dm = ManifestDataModule(manifest=str(m), skip_bad=True, **FAST)
    assert len(dm.read_split("train")) == 40 and dm.skipped == 1


def test_kaldi_piped_commands_and_missing_text_are_errors(tmp_path):
    d = tmp_path / "k"
    d.mkdir()
    (d / "wav.scp").write_text("a sox in.wav -t wav - |\n")
    (d / "text").write_text("a one\n")
    with pytest.raises(DataError, match=r"wav.scp: line 1: .*piped command"):
        read_manifest(d)
    (d / "wav.scp").write_text(f"a {SAMPLE / 'audio' / '1_george_10.wav'}\nb {SAMPLE / 'audio' / '2_george_10.wav'}\n")
    with pytest.raises(DataError, match=r"wav.scp: line 2: utterance 'b' has no line in .*text"):
        read_manifest(d)
    (d / "text").write_text("a one\nb ...\n")
    with pytest.raises(DataError, match=r"text: line 2: utterance 'b' .*2_george_10.wav\): empty transcript"):
        read_manifest(d)
    with pytest.raises(DataError, match="not a Kaldi data directory"):
        read_manifest(tmp_path)


def test_jsonl_bad_lines(tmp_path):
    m = tmp_path / "m.jsonl"
    m.write_text('{"audio_filepath": "x.wav"}\n')
    with pytest.raises(DataError, match=r"m.jsonl: line 1: missing key 'text'"):
        read_manifest(m)
    m.write_text('{"audio_filepath": "x.wav", "text": "a"}\nnot json\n')
    with pytest.raises(DataError, match=r"m.jsonl: line 2: invalid JSON"):
        read_manifest(m)
    (tmp_path / "m.xyz").write_text("")
    with pytest.raises(DataError, match="cannot tell the manifest format"):
        read_manifest(tmp_path / "m.xyz")


def test_too_short_for_ctc_fails_before_anything_is_written(tmp_path):
    rows = [json.dumps({"audio_filepath": str(SAMPLE / "audio" / f"{d}_george_10.wav"), "text": w})
            for d, w in enumerate(["zero", "one", "two", "three", "four", "five"])]
    rows.append(json.dumps({"audio_filepath": str(SAMPLE / "audio" / "2_george_10.wav"),
                            "text": "two two two two two two two"}))  # 0.32 s: 7 output frames
    (tmp_path / "m.jsonl").write_text("\n".join(rows) + "\n")
    run = tmp_path / "run"
    base = ["task=asr", f"data.manifest={tmp_path / 'm.jsonl'}", f"run_dir={run}", "data.dev_fraction=0",
            "data.test_fraction=0.2", "trainer.max_steps=0", "print_metrics=false", "plots.enabled=false",
            "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"]
    with pytest.raises(DataError, match=r"m.jsonl: line 7: .*2_george_10.wav: too short for its transcript: 7 output "
                                        r"frames .*CTC needs 27"):
        train(compose_config(base))
    assert not run.exists()


def test_task_asr_trains_on_the_shipped_sample_and_transcribes(tmp_path, capsys):
    from tsformer.transcribe import main as transcribe_main

    run = tmp_path / "run"
    cfg = compose_config([
        "task=asr", f"run_dir={run}", "model.d_model=32", "model.n_heads=2", "model.n_layers=1", "model.d_ff=64",
        "model.conv_kernel=5", "model.subsampling_channels=8", "trainer.max_steps=3", "trainer.val_check_interval=3",
        "module.decoding.beam_width=2", "print_metrics=false", "plots.enabled=false",
        "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
    ])
    metrics = train(cfg)
    assert {"test/wer", "dev/wer"} <= set(metrics) and metrics["train/steps"] == 3
    capsys.readouterr()
    transcribe_main([f"ckpt={run / 'checkpoints' / 'best.ckpt'}", f"audio={SAMPLE / 'audio' / '7_george_0.wav'}"])
    assert capsys.readouterr().out.startswith(str(SAMPLE / "audio" / "7_george_0.wav"))
