"""Long-recording transcription: one long file, windowed, against the same utterances one by one.

    python benchmarks/long_audio.py --quick                 # shipped sample, ~1 minute of audio
    python benchmarks/long_audio.py                         # FSDD test split joined to 10 minutes
    python benchmarks/long_audio.py --ckpt outputs/librispeech/.../checkpoints/best.ckpt

The recording joins digit utterances (full: three FSDD test-split recordings of one speaker
per utterance, as in the shipped sample, 8 kHz, cycled until ``--minutes``; quick: the
shipped sample's ``test-clean`` utterances) with pauses of 0.4-1.2 s drawn with a fixed
seed. Its reference is the joined transcripts. Without ``--ckpt`` the default digit run
(``task=librispeech``) is trained for ``--steps`` first.

Each transcription runs in a fresh process; its memory is the most the resident set grew
while transcribing (sampled every 2 ms), next to the process's ``ru_maxrss``: the long file (:func:`tsformer.transcribe.transcribe_long`, greedy, windows of
``--window`` s), its first minute alone (memory should not grow with length), and the
utterances one by one (greedy, whole files). Prints the figures, writes
``benchmarks/results/long_audio[_quick].json`` and appends a section to
``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import multiprocessing as mp
import os
import platform
import random
import resource
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

WORDS = ["ZERO", "ONE", "TWO", "THREE", "FOUR", "FIVE", "SIX", "SEVEN", "EIGHT", "NINE"]


def fsdd_utterances(fsdd: Path, per_utt: int = 3, seed: int = 0) -> list[tuple[np.ndarray, int, str]]:
    """FSDD test-split recordings (index 0-4) joined ``per_utt`` at a time per speaker."""
    import soundfile as sf

    files = sorted((fsdd / "recordings").glob("*.wav"))
    by_spk: dict[str, list[Path]] = {}
    for f in files:
        digit, spk, idx = f.stem.split("_")
        if int(idx) < 5:
            by_spk.setdefault(spk, []).append(f)
    rng = random.Random(seed)
    out = []
    for spk in sorted(by_spk):
        fs = by_spk[spk]
        rng.shuffle(fs)
        for i in range(0, len(fs) - per_utt + 1, per_utt):
            parts = [sf.read(str(f), dtype="float32") for f in fs[i : i + per_utt]]
            text = " ".join(WORDS[int(f.stem.split("_")[0])] for f in fs[i : i + per_utt])
            out.append((np.concatenate([p[0] for p in parts]), parts[0][1], text))
    rng.shuffle(out)
    return out


def sample_utterances(n: int) -> list[tuple[np.ndarray, int, str]]:
    """The shipped sample's ``test-clean`` utterances (16 kHz FLAC), first ``n``."""
    import soundfile as sf

    root = REPO / "data" / "librispeech_sample" / "test-clean"
    texts = {}
    for t in root.rglob("*.trans.txt"):
        for line in t.read_text().splitlines():
            uid, _, text = line.partition(" ")
            texts[uid] = text
    out = []
    for f in sorted(root.rglob("*.flac"))[:n]:
        x, sr = sf.read(str(f), dtype="float32")
        out.append((x, sr, texts[f.stem]))
    return out


def build_recording(utts, minutes: float | None, out_dir: Path, seed: int = 0) -> tuple[Path, Path, list[str], float]:
    """Write the joined recording (and its first minute, and each utterance) under ``out_dir``."""
    import soundfile as sf

    rng = random.Random(seed)
    sr = utts[0][1]
    pieces, refs, total, i = [], [], 0.0, 0
    (out_dir / "utts").mkdir(parents=True, exist_ok=True)
    while True:
        x, r, text = utts[i % len(utts)]
        assert r == sr
        if minutes is not None and total + len(x) / sr > minutes * 60:
            break
        pause = np.zeros(int(rng.uniform(0.4, 1.2) * sr), np.float32)
        pieces += [pause, x]
        refs.append(text)
        sf.write(str(out_dir / "utts" / f"{i:05d}.wav"), x, sr)
        total += (len(pause) + len(x)) / sr
        i += 1
        if minutes is None and i == len(utts):
            break
    pieces.append(np.zeros(int(0.5 * sr), np.float32))
    audio = np.concatenate(pieces)
    long_path, first_min = out_dir / "long.wav", out_dir / "first_minute.wav"
    sf.write(str(long_path), audio, sr)
    sf.write(str(first_min), audio[: 60 * sr], sr)
    return long_path, first_min, refs, len(audio) / sr


def _child(job: dict, queue) -> None:
    """Run one transcription job in this (fresh) process; report its text, time and peak memory."""
    import torch

    from tsformer.transcribe import load_recognizer, transcribe, transcribe_long

    torch.set_num_threads(1)
    net, tok, asr = load_recognizer(job["ckpt"])
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    sampler = RSSSampler()
    t0 = time.perf_counter()
    if job["kind"] == "long":
        texts = [transcribe_long(job["audio"], net, tok, asr, window=job["window"])["text"]]
    elif job["kind"] == "one_by_one":
        files = sorted(Path(job["audio"]).glob("*.wav"))
        texts = [t for _, t in transcribe(files, net, tok, asr, "greedy", 1)]
    else:  # the model loaded, nothing transcribed: the baseline
        texts = []
    seconds = time.perf_counter() - t0
    growth = sampler.stop()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    queue.put({"texts": texts, "seconds": seconds, "peak_rss_mb": peak / 1024, "rss_after_load_mb": base / 1024,
               "rss_growth_mb": growth})


class RSSSampler:
    """The most the resident set grows above its size at start, sampled every 2 ms in a thread
    (``ru_maxrss`` alone is set by importing torch, not by the transcription)."""

    def __init__(self):
        import threading

        self.page = os.sysconf("SC_PAGE_SIZE")
        self.start = self.peak = self._rss()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self.page

    def _run(self) -> None:
        while not self.done.wait(0.002):
            self.peak = max(self.peak, self._rss())

    def stop(self) -> float:
        self.done.set()
        self.thread.join()
        self.peak = max(self.peak, self._rss())
        return (self.peak - self.start) / 2**20


def run_child(job: dict) -> dict:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_child, args=(job, q))
    p.start()
    res = q.get()
    p.join()
    return res


def train_model(steps: int, out: Path) -> Path:
    from tsformer.train import compose_config, train

    cfg = compose_config(["task=librispeech", f"trainer.max_steps={steps}", f"run_dir={out}",
                          f"trainer.val_check_interval={max(1, min(100, steps))}", "trainer.enable_progress_bar=false",
                          "print_metrics=false", "plots.enabled=false"])
    m = train(cfg)
    print(f"trained task=librispeech for {m['train/steps']} steps in {m['train/seconds']:.0f} s: "
          f"test WER {100 * m['test/wer']:.1f}%", flush=True)
    return out / "checkpoints" / "best.ckpt"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="the shipped sample (~1 minute), a briefly trained model")
    ap.add_argument("--ckpt", default=None, help="a speech checkpoint (default: train task=librispeech first)")
    ap.add_argument("--steps", type=int, default=None, help="training steps without --ckpt (800; quick 200)")
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--window", type=float, default=15.0)
    ap.add_argument("--fsdd", default=str(REPO.parent / "shared" / "data" / "fsdd"))
    ap.add_argument("--out", default=str(REPO / "outputs" / "bench_long_audio"))
    args = ap.parse_args()
    from tsformer.metrics import word_errors

    out = Path(args.out)
    steps = args.steps or (200 if args.quick else 800)
    ckpt = Path(args.ckpt) if args.ckpt else train_model(steps, out / "model")
    if args.quick:
        utts, minutes, source = sample_utterances(20), None, "shipped sample test-clean (20 utterances)"
    else:
        utts, minutes, source = fsdd_utterances(Path(args.fsdd)), args.minutes, "FSDD test split (index 0-4)"
    long_path, first_min, refs, duration = build_recording(utts, minutes, out / "audio")
    print(f"recording: {duration:.0f} s, {len(refs)} utterances, {sum(len(r.split()) for r in refs)} words", flush=True)

    jobs = {"baseline": {"kind": "baseline"},
            "long": {"kind": "long", "audio": str(long_path)},
            "first_minute": {"kind": "long", "audio": str(first_min)},
            "one_by_one": {"kind": "one_by_one", "audio": str(out / "audio" / "utts")}}
    res = {k: run_child({"ckpt": str(ckpt), "window": args.window, **j}) for k, j in jobs.items()}
    ref_all = " ".join(refs)

    def wer(ref: str, hyp: str) -> float:
        e, n = word_errors(ref, hyp)
        return e / max(n, 1)

    long_wer = wer(ref_all, res["long"]["texts"][0])
    obo_errors = [word_errors(r, h) for r, h in zip(refs, res["one_by_one"]["texts"])]
    obo_wer = sum(e for e, _ in obo_errors) / max(1, sum(n for _, n in obo_errors))
    obo_joined_wer = wer(ref_all, " ".join(res["one_by_one"]["texts"]))
    agree = wer(" ".join(res["one_by_one"]["texts"]), res["long"]["texts"][0])

    def mem(k: str) -> dict:
        return {"seconds": round(res[k]["seconds"], 2), "peak_rss_mb": round(res[k]["peak_rss_mb"], 1),
                "rss_growth_mb": round(res[k]["rss_growth_mb"], 1)}
    record = {
        "date": f"{dt.datetime.now():%Y-%m-%d %H:%M}", "machine": platform.node() or platform.machine(),
        "load": os.getloadavg()[0], "quick": args.quick, "source": source, "ckpt": str(ckpt),
        "trained_steps": None if args.ckpt else steps, "recording_seconds": round(duration, 1),
        "utterances": len(refs), "words": len(ref_all.split()), "window_seconds": args.window,
        "long": {**mem("long"), "wer": round(long_wer, 4)},
        "first_minute": mem("first_minute"),
        "one_by_one": {**mem("one_by_one"), "wer": round(obo_wer, 4), "wer_joined": round(obo_joined_wer, 4)},
        "baseline_rss_mb": round(res["baseline"]["peak_rss_mb"], 1),
        "long_vs_one_by_one_word_disagreement": round(agree, 4),
    }
    print(json.dumps(record, indent=1))
    name = "long_audio_quick.json" if args.quick else "long_audio.json"
    (REPO / "benchmarks" / "results").mkdir(exist_ok=True)
    (REPO / "benchmarks" / "results" / name).write_text(json.dumps(record, indent=1) + "\n")
    cmd = "python benchmarks/long_audio.py" + (" --quick" if args.quick else "") + \
        (f" --ckpt {args.ckpt}" if args.ckpt else f" (model: task=librispeech, {steps} steps)")
    section = (
        f"\n### long-recording transcription{' (--quick)' if args.quick else ''} ({record['date']}, "
        f"{record['machine']}, 1 thread, load {record['load']:.1f})\n\n"
        f"`{cmd}`: {duration:.0f} s recording of {len(refs)} utterances ({record['words']} words) joined from "
        f"the {source} with 0.4-1.2 s pauses; greedy CTC; long file in {args.window:g} s windows (VAD cuts, "
        f"1.5 s context). Peak RSS of a fresh process that loaded the model: {record['baseline_rss_mb']:.0f} MB.\n\n"
        "| run | WER | seconds | RSS growth MB | peak RSS MB |\n|---|---|---|---|---|\n"
        + "".join(f"| {label} | {w} | {record[k]['seconds']:.1f} | {record[k]['rss_growth_mb']:.1f} | "
                  f"{record[k]['peak_rss_mb']:.0f} |\n"
                  for label, k, w in (("long file, windowed", "long", f"{100 * long_wer:.2f}%"),
                                      ("its first minute alone", "first_minute", "-"),
                                      ("utterances one by one", "one_by_one", f"{100 * obo_wer:.2f}%")))
        + "\nRSS growth: the most the resident set grew during the transcription, over its size with the "
        "model loaded.\n"
        f"Words where the long transcription differs from the one-by-one transcripts joined: "
        f"{100 * agree:.2f}%.\n"
        + ("A model with a word error rate this high is still undertrained: here the figures test the "
           "pipeline, not the stitching's accuracy.\n" if min(long_wer, obo_wer) > 0.5 else "")
    )
    print(section)
    with open(REPO / "benchmarks" / "RESULTS.md", "a") as f:
        f.write(section)


if __name__ == "__main__":
    main()
