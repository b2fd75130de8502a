"""Long recordings: windows stitched without lost or repeated words, time stamps, TSV/JSON/SRT.

A deterministic stub network stands in for a trained one: it reads the log-mel energy and,
at each onset of sound, spells a digit word (picked from the loudest band) over the next
frames. Its output at a frame depends on nearby audio only, so a windowed transcription
must equal the whole-recording one exactly, and each utterance transcribed alone must give
the words found in its stretch of the joined recording.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import soundfile as sf
import torch
from torch import Tensor, nn

from tsformer.data.speech.audio import load_audio
from tsformer.data.speech.stream import audio_windows
from tsformer.data.tokenizers import CharTokenizer
from tsformer.nn.conformer import Conv2dSubsampling
from tsformer.train import REPO_ROOT
from tsformer.transcribe import format_result, main, transcribe_long

WORDS = ["ZERO", "ONE", "TWO", "THREE", "FOUR", "FIVE", "SIX", "SEVEN", "EIGHT", "NINE"]
SYMBOLS = sorted({c for w in WORDS for c in w} | {" "})
SR, STEP = 16000, 640  # samples per output frame (x4 subsampling of 10 ms frames)


class StubCTC(nn.Module):
    """Spells ``WORDS[loudest band % 10]`` at every onset of sound, each character over two
    frames and a blank, from the log-mel features alone."""

    def __init__(self, input_dim: int = 80, symbols: list[str] = SYMBOLS):
        super().__init__()
        self.config = {"input_dim": input_dim, "symbols": list(symbols)}
        self.ids = {c: i + 1 for i, c in enumerate(symbols)}
        self.vocab = len(symbols) + 1

    def output_lengths(self, lengths: Tensor) -> Tensor:
        return Conv2dSubsampling.output_lengths(lengths)

    def forward(self, feats: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        out_len = self.output_lengths(lengths)
        T = int(out_len.max())
        f = feats[0, : 4 * T + 7]
        if f.shape[0] < 4 * T + 7:
            f = torch.nn.functional.pad(f, (0, 0, 0, 4 * T + 7 - f.shape[0]), value=-13.8)
        energy = torch.stack([f[4 * i : 4 * i + 7].mean() for i in range(T)])
        active = (energy > -9.0).tolist()
        path = [0] * T
        for i in range(1, T):
            if active[i] and not active[i - 1]:
                w = WORDS[int(f[4 * i + 3].argmax()) % 10] + " "
                for j, c in enumerate(w):  # each character held two frames: repeats to merge at seams
                    for t in (i + 3 * j, i + 3 * j + 1):
                        if t < T:
                            path[t] = self.ids[c]
        lp = torch.full((1, T, self.vocab), -20.0)
        lp[0, torch.arange(T), torch.tensor(path)] = 0.0
        return lp.log_softmax(-1), out_len


ASR = {"features": {"type": "fbank", "sample_rate": SR, "n_mels": 80, "hop_length": 160}}
TOK = CharTokenizer(SYMBOLS)


def pieces(n: int = 6) -> list[np.ndarray]:
    """Shipped digit utterances, each with silence before and after, padded to whole output frames."""
    files = sorted((REPO_ROOT / "data" / "librispeech_sample" / "test-clean").rglob("*.flac"))[:n]
    out = []
    for f in files:
        x = load_audio(f, SR).numpy()  # the sample is stored at FSDD's own 8 kHz
        x = np.concatenate([np.zeros(int(0.6 * SR), np.float32), x, np.zeros(int(0.3 * SR), np.float32)])
        out.append(np.pad(x, (0, -len(x) % STEP)))
    return out


@pytest.fixture(scope="module")
def recording(tmp_path_factory):
    d = tmp_path_factory.mktemp("long")
    parts = pieces()
    for i, p in enumerate(parts):
        sf.write(str(d / f"piece{i}.wav"), p, SR, subtype="FLOAT")
    sf.write(str(d / "long.wav"), np.concatenate(parts), SR, subtype="FLOAT")
    return d, parts


def words(path, **kw) -> list[tuple[str, float, float]]:
    res = transcribe_long(path, StubCTC().eval(), TOK, ASR, **kw)
    return [(w.word, w.start, w.end) for w in res["words"]]


@pytest.mark.parametrize("kw", [
    {"window": 2.0, "context": 1.0, "split": "fixed"},  # seams cut through words
    {"window": 3.3, "context": 0.8, "split": "fixed"},
    {"window": 4.0, "context": 1.0, "split": "vad"},  # seams in pauses
])
def test_windows_stitch_to_the_whole_recording(recording, kw):
    d, parts = recording
    whole = words(d / "long.wav", window=1000.0)
    assert len(whole) >= len(parts)
    assert words(d / "long.wav", **kw) == whole  # nothing lost or repeated at a seam, same times


def test_long_recording_matches_one_by_one(recording):
    d, parts = recording
    joined = words(d / "long.wav", window=4.0)
    offset, expected = 0.0, []
    for i, p in enumerate(parts):
        expected += [(w, round(s + offset, 3), round(e + offset, 3)) for w, s, e in words(d / f"piece{i}.wav")]
        offset += len(p) / SR
    assert [w for w, _, _ in joined] == [w for w, _, _ in expected]
    assert np.allclose([s for _, s, _ in joined], [s for _, s, _ in expected], atol=1e-3)
    starts = [s for _, s, _ in joined]
    assert all(a[2] <= b[1] for a, b in zip(joined, joined[1:])) and starts == sorted(starts)  # monotone


def test_vad_cuts_fall_in_pauses(recording):
    d, parts = recording
    x = np.concatenate(parts)
    wins = list(audio_windows(d / "long.wav", SR, window=4.0, context=1.0, grid=0.04, split="vad", search=3.0))
    assert [w.keep_start for w in wins[1:]] == [w.keep_end for w in wins[:-1]]  # the kept parts tile
    assert wins[0].keep_start == 0 and wins[-1].keep_end == -(-len(x) // STEP)
    for w in wins[:-1]:
        cut = w.keep_end * STEP
        assert np.abs(x[cut - STEP : cut + STEP]).max() == 0.0  # inside the silence between utterances


def test_window_reader_holds_one_window(recording, monkeypatch):
    d, _ = recording
    reads = []
    real = sf.SoundFile.read

    def spy(self, frames=-1, *a, **k):
        reads.append(frames)
        return real(self, frames, *a, **k)

    monkeypatch.setattr(sf.SoundFile, "read", spy)
    it = audio_windows(d / "long.wav", SR, window=2.0, context=0.5, grid=0.04, split="vad", search=1.0)
    first = next(it)
    assert len(reads) == 1 and len(first.samples) <= (2.0 + 2 * 0.5) * SR  # lazy: one window read
    rest = list(it)
    assert len(reads) == 1 + len(rest) > 5
    assert max(reads) <= (2.0 + 2 * (0.5 + 0.04)) * SR and min(reads) > 0  # one window span (grid-rounded)


def test_other_rates_and_stereo_windows(tmp_path):
    x = np.random.default_rng(0).standard_normal(8000 * 7).astype(np.float32) * 0.1
    sf.write(str(tmp_path / "s.flac"), np.stack([x, x], 1), 8000)
    wins = list(audio_windows(tmp_path / "s.flac", SR, window=3.0, context=0.5, grid=0.04, split="fixed"))
    assert [(w.keep_start, w.keep_end) for w in wins] == [(0, 75), (75, 150), (150, 175)]
    # 0.5 s of context is 13 grid steps on either side; 8 kHz resampled to 16 kHz
    assert wins[1].start == 62 and len(wins[1].samples) == (75 + 2 * 13) * STEP


def _parse_srt(text: str) -> list[tuple[float, float, str]]:
    blocks = text.strip().split("\n\n")
    out = []
    for n, b in enumerate(blocks, 1):
        num, times, body = b.split("\n", 2)
        assert int(num) == n and body.strip()
        m = re.fullmatch(r"(\d\d):(\d\d):(\d\d),(\d{3}) --> (\d\d):(\d\d):(\d\d),(\d{3})", times)
        assert m, times
        g = [int(v) for v in m.groups()]
        out.append((g[0] * 3600 + g[1] * 60 + g[2] + g[3] / 1000, g[4] * 3600 + g[5] * 60 + g[6] + g[7] / 1000, body))
    return out


def test_output_formats_are_well_formed(recording, tmp_path, capsys):
    d, _ = recording
    ckpt = tmp_path / "stub.ckpt"
    torch.save({"state_dict": {}, "asr": {"net_class": f"{__name__}.StubCTC", "net_config": StubCTC().config,
                                          "tokenizer": TOK.state(), "features": ASR["features"]}}, ckpt)
    res = transcribe_long(d / "long.wav", StubCTC(), TOK, ASR, window=4.0)
    for fmt in ("tsv", "json", "srt"):
        out = tmp_path / f"long.{fmt}"
        main([f"ckpt={ckpt}", f"audio={d / 'long.wav'}", f"format={fmt}", f"output={out}", "window=4"])
        text = out.read_text()
        assert text == format_result(res, fmt)
        assert not list(tmp_path.glob(".*.tmp"))  # written atomically, nothing left over
    rows = [line.split("\t") for line in (tmp_path / "long.tsv").read_text().splitlines()]
    assert rows[0] == ["start", "end", "word"] and len(rows) == len(res["words"]) + 1
    times = [(float(a), float(b)) for a, b, _ in rows[1:]]
    assert all(a < b for a, b in times) and all(p[1] <= q[0] for p, q in zip(times, times[1:]))
    js = json.loads((tmp_path / "long.json").read_text())
    assert js["text"] == " ".join(w["word"] for w in js["words"]) == " ".join(s["text"] for s in js["segments"])
    srt = _parse_srt((tmp_path / "long.srt").read_text())
    assert " ".join(t for _, _, t in srt) == js["text"]
    assert all(a < b for a, b, _ in srt) and all(p[1] <= q[0] for p, q in zip(srt, srt[1:]))
    seg = format_result(res, "tsv", "segment").splitlines()
    assert seg[0] == "start\tend\tsegment" and len(seg) == len(res["segments"]) + 1
    main([f"ckpt={ckpt}", f"audio={d}", "format=srt", f"output={tmp_path / 'srt'}", "window=4"])
    assert sorted(p.name for p in (tmp_path / "srt").iterdir()) == sorted(p.stem + ".srt" for p in d.glob("*.wav"))
    # Usage errors follow the one error policy (tsformer/cli.py): one line on stderr, status 2.
    for bad, said in (("format=doc", "format=doc"), ("split=silence", "split=silence: choose one of vad, fixed")):
        with pytest.raises(SystemExit) as e:
            main([f"ckpt={ckpt}", f"audio={d}", bad])
        assert e.value.code == 2
        assert said in capsys.readouterr().err
