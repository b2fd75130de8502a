"""Transcribe audio (or Sphinx feature) files with a trained CTC checkpoint, of any length.

    python -m tsformer.transcribe ckpt=outputs/.../checkpoints/best.ckpt audio=speech.flac
    python -m tsformer.transcribe ckpt=best.ckpt audio=folder/ out=hyps.tsv decoding=beam beam_width=16
    python -m tsformer.transcribe ckpt=best.ckpt audio=meeting.wav format=srt output=meeting.srt

Arguments are ``key=value`` pairs: ``ckpt`` (required), ``audio`` (a file or a folder,
searched recursively), ``out``/``output`` (write there instead of printing; atomically),
``decoding`` (``greedy`` | ``beam``; default: the checkpoint's), ``beam_width``, ``device``,
``lm_weight`` and ``insertion_bonus`` (beam search with the checkpoint's n-gram language
model, when it holds one: ``module.decoding.lm_order``; default: the values tuned on dev,
read from the run's ``metrics.json`` beside ``checkpoints/``, else the checkpoint's).

Long recordings: a file longer than ``window`` seconds (default 15), and every file when
``format=tsv|json|srt`` asks for time stamps, is read window by window
(:func:`tsformer.data.speech.stream.audio_windows`: ``window``, ``context`` seconds on each
side (default 1.5), ``split=vad|fixed``) and decoded greedily frame by frame: each window
keeps the output frames of its own stretch only, so words at the seams are neither lost nor
repeated, and memory stays flat in the recording's length. ``format=tsv`` writes one word
per line (``start end word``, seconds; ``level=segment``: one pause-delimited segment per
line), ``json`` the text, words and segments, ``srt`` numbered subtitles of the segments.
With a folder of inputs, ``output`` is a folder (``<name>.<format>`` per file).

Early exit (CALM on intermediate CTC heads; a checkpoint trained with
``module.exit_heads=true``): each recording (or window) stops after the first block whose
posteriors are confident enough on average over its frames, the threshold calibrated on
held-out recordings (no transcripts needed) so that the transcripts' word error rate against
the full encoder's stays within ``tolerance``, with probability ``1 - delta``; the threshold
and the average layers used go to stderr:

    python -m tsformer.transcribe ckpt=best.ckpt audio=folder/ decode.early_exit.tolerance=0.01 \
        decode.early_exit.calibration=heldout_folder/   [or a manifest; decode.early_exit.threshold=0.9]

The checkpoint alone is enough: it holds the network's constructor arguments, the tokenizer,
the feature settings and the normalisation statistics; it is loaded weights-only.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from tsformer.cli import command
from tsformer.data.speech.audio import AUDIO_SUFFIXES
from tsformer.data.speech.datamodule import make_fbank, make_feature_extractor
from tsformer.data.speech.stream import SPLITS, audio_windows
from tsformer.data.tokenizers import BLANK, tokenizer_from_state
from tsformer.export import early_exit_options, exit_report, load_decode, require_exit_heads
from tsformer.metrics import word_errors
from tsformer.nn.ctc import ctc_decode
from tsformer.nn.early_exit import (
    Calibration,
    EarlyExit,
    ExitClassifier,
    calibrate_threshold,
    candidate_thresholds,
    ctc_early_exit,
    tokens_agree,
)

USAGE = "usage: python -m tsformer.transcribe ckpt=<checkpoint> audio=<file or folder> [output=<file or folder>] " \
        "[format=tsv|json|srt] [level=word|segment] [decoding=greedy|beam] [beam_width=N] [window=15] " \
        "[context=1.5] [split=vad|fixed] [device=cpu] [lm_weight=W] [insertion_bonus=B] " \
        "[decode.early_exit.tolerance=0.01 decode.early_exit.calibration=<audio folder or manifest>]"
OPTIONS = ("ckpt", "audio", "out", "output", "format", "level", "decoding", "beam_width", "window", "context",
           "split", "device", "decode", "lm_weight", "insertion_bonus")
FORMATS = ("tsv", "json", "srt")


def parse_args(argv: list[str]) -> dict[str, Any]:
    args: dict[str, Any] = {}
    dec = []
    for a in argv:
        key, eq, value = a.partition("=")
        if eq and key.startswith("decode."):
            dec.append(a[len("decode."):])
            continue
        if not eq or key not in OPTIONS:
            raise SystemExit(f"bad argument {a!r}\n{USAGE}")
        args["out" if key == "output" else key] = value
    args["decode"] = load_decode(args.get("decode") or "sequential", dec)
    if args["decode"].get("method") != "sequential":
        raise SystemExit(f"decode={args['decode'].get('method')}: a CTC encoder decodes every frame at once; "
                         "transcribe takes decode=sequential (with decode.early_exit.*)")
    for key in ("ckpt", "audio"):
        if key not in args:
            raise SystemExit(f"missing {key}=...\n{USAGE}")
    if args.get("format", "tsv") not in FORMATS:
        raise SystemExit(f"format={args['format']}: choose one of {', '.join(FORMATS)}")
    if args.get("level", "word") not in ("word", "segment"):
        raise SystemExit(f"level={args['level']}: choose word or segment")
    if args.get("split", "vad") not in SPLITS:
        raise SystemExit(f"split={args['split']}: choose one of {', '.join(SPLITS)}")
    for key in ("window", "context"):
        try:
            if key in args and float(args[key]) < (0 if key == "context" else 0.1):
                raise ValueError
        except ValueError:
            raise SystemExit(f"{key}={args[key]}: expected seconds (window at least 0.1)") from None
    return args


def load_recognizer(ckpt: str | Path, device: str = "cpu"):
    """``(net, tokenizer, asr_state)`` from a checkpoint written by ``tsformer.train``."""
    state = torch.load(str(ckpt), map_location=device, weights_only=True)
    asr = state.get("asr")
    if asr is None:
        raise SystemExit(f"{ckpt}: not a speech-recognition checkpoint (no 'asr' entry)")
    module_name, _, cls_name = asr["net_class"].rpartition(".")
    cls = getattr(importlib.import_module(module_name), cls_name)
    net = cls(**asr["net_config"])
    weights = {k[len("net."):]: v for k, v in state["state_dict"].items() if k.startswith("net.")}
    net.load_state_dict(weights)
    # Per-layer CTC heads (module.exit_heads=true), which early exit reads.
    asr = {**asr, "exit_heads": bool((state.get("hyper_parameters") or {}).get("exit_heads"))}
    return net.to(device).eval(), tokenizer_from_state(asr["tokenizer"]), asr


def find_inputs(path: Path, features: dict) -> list[Path]:
    suffixes = (".mfc",) if features.get("type") == "sphinx" else AUDIO_SUFFIXES
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in suffixes)
        if not files:
            raise SystemExit(f"{path}: no {'/'.join(suffixes)} files")
        return files
    if not path.exists():
        raise SystemExit(f"{path}: no such file or folder")
    return [path]


def encoder(net, early_exit: EarlyExit | None = None) -> Callable:
    """``(feats (B, T, F), lengths) -> (log_probs, lengths)``: the network, or its
    per-utterance early exit (:func:`tsformer.nn.early_exit.ctc_early_exit`) under a CALM rule."""
    if early_exit is None:
        return net
    return lambda feats, lens: ctc_early_exit(net, feats, lens, early_exit)[:2]


def fusion_settings(ckpt: str | Path, asr: dict, args: dict) -> dict:
    """``ctc_decode``'s language-model arguments: the checkpoint's n-gram LM (if any) with
    ``lm_weight`` / ``insertion_bonus`` from ``args``, else as tuned on dev (the run's
    ``metrics.json``, ``decoding/...``), else as configured."""
    if "lm" not in asr:
        return {}
    from tsformer.data.ngram import NgramLM

    dec = dict(asr.get("decoding", {}))
    metrics_path = Path(ckpt).resolve().parent.parent / "metrics.json"
    tuned = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    out = {"lm": NgramLM.from_state(asr["lm"])}
    for key in ("lm_weight", "insertion_bonus"):
        out[key] = float(args.get(key, tuned.get(f"decoding/{key}", dec.get(key, 0.0))))
    return out


@torch.no_grad()
def transcribe(files: list[Path], net, tokenizer, asr: dict, decoding: str, beam_width: int, device: str = "cpu",
               early_exit: EarlyExit | None = None, fusion: dict | None = None):
    """Yield ``(file, text)`` per file (``early_exit``: each file stops at its exit layer;
    ``fusion``: :func:`fusion_settings`, beam search only)."""
    extract = make_feature_extractor(asr["features"])
    run_net = encoder(net, early_exit)
    fusion = fusion if decoding == "beam" else None
    for f in files:
        feats = extract(str(f)).to(device)
        log_probs, lens = run_net(feats[None], torch.tensor([feats.shape[0]], device=device))
        ids = ctc_decode(log_probs, lens, decoding, beam_width, **(fusion or {}))[0]
        yield f, tokenizer.decode(ids)


# -- long recordings ----------------------------------------------------------------------------
@dataclass
class Word:
    """A recognised word and its time span in seconds."""

    word: str
    start: float
    end: float


def output_stride(net) -> int:
    """Input feature frames per output frame of ``net`` (4 for the Conformer's subsampling)."""
    if hasattr(net, "output_lengths"):
        a, b = net.output_lengths(torch.tensor([4000, 8000])).tolist()
    else:  # any CTC network: ask it
        dim = net.config["input_dim"]
        a, b = (int(net(torch.zeros(1, n, dim), torch.tensor([n]))[1][0]) for n in (400, 800))
        a, b = a * 10, b * 10
    return max(1, round(4000 / max(1, b - a)))


@torch.no_grad()
def window_tokens(path: str | Path, net, asr: dict, window: float = 15.0, context: float = 1.5, split: str = "vad",
                  device: str = "cpu", early_exit: EarlyExit | None = None) -> Iterator[tuple[int, int, float]]:
    """``(token id, output frame, seconds per frame)`` of every token greedy CTC decoding emits.

    Each window's arg-max path is kept over its own stretch only, and repeats are merged
    across the seams as within a window, so the result is one best path over the whole
    recording (:func:`tsformer.data.speech.stream.audio_windows`). ``early_exit``: each
    window stops at its exit layer.
    """
    features = asr["features"]
    if features.get("type", "fbank") != "fbank":
        raise SystemExit("long recordings and time stamps need an audio checkpoint (features.type=fbank)")
    fbank = make_fbank(features).to(device)
    sr, hop = int(features.get("sample_rate", 16000)), int(features.get("hop_length", 160))
    grid = output_stride(net) * hop / sr
    prev = BLANK
    run_net = encoder(net, early_exit)
    for w in audio_windows(path, sr, window, context, grid, split, resample=bool(features.get("resample", True))):
        feats = fbank(w.samples.to(device))
        log_probs, lens = run_net(feats[None], torch.tensor([feats.shape[0]], device=device))
        best = log_probs[0, : int(lens[0])].argmax(-1).tolist()
        for g in range(w.keep_start, min(w.keep_end, w.start + len(best))):
            tok = best[g - w.start]
            if tok != prev and tok != BLANK:
                yield tok, g, grid
            prev = tok


def tokens_to_words(tokens, token_texts: list[str]) -> list[Word]:
    """Words with time spans from ``(token id, frame, seconds per frame)``: a word runs from its
    first token's frame to the end of its last token's frame; a space in a token's text (a
    space character, or SentencePiece's word-start mark) ends the word before."""
    words: list[Word] = []
    cur, span = [], None
    for tok, g, grid in tokens:
        for c in token_texts[tok]:
            if c.isspace():
                if cur:
                    words.append(Word("".join(cur), round(span[0], 3), round(span[1], 3)))
                cur, span = [], None
                continue
            cur.append(c)
            span = (g * grid if span is None else span[0], (g + 1) * grid)
    if cur:
        words.append(Word("".join(cur), round(span[0], 3), round(span[1], 3)))
    return words


def words_to_segments(words: list[Word], pause: float = 0.5, longest: float = 6.0) -> list[Word]:
    """Words grouped into segments at pauses longer than ``pause`` seconds, or before a
    segment would pass ``longest`` seconds."""
    segs: list[Word] = []
    for w in words:
        if segs and w.start - segs[-1].end <= pause and w.end - segs[-1].start <= longest:
            segs[-1] = Word(f"{segs[-1].word} {w.word}", segs[-1].start, w.end)
        else:
            segs.append(Word(w.word, w.start, w.end))
    return segs


def transcribe_long(path: str | Path, net, tokenizer, asr: dict, window: float = 15.0, context: float = 1.5,
                    split: str = "vad", device: str = "cpu", early_exit: EarlyExit | None = None) -> dict:
    """``{"audio", "text", "words": [Word], "segments": [Word]}`` of a recording of any length."""
    words = tokens_to_words(window_tokens(path, net, asr, window, context, split, device, early_exit),
                            tokenizer.token_texts())
    return {"audio": str(path), "text": " ".join(w.word for w in words), "words": words,
            "segments": words_to_segments(words)}


def _srt_time(t: float) -> str:
    ms = int(round(t * 1000))
    return f"{ms // 3600000:02d}:{ms // 60000 % 60:02d}:{ms // 1000 % 60:02d},{ms % 1000:03d}"


def format_result(result: dict, fmt: str, level: str = "word") -> str:
    """``result`` of :func:`transcribe_long` as TSV (``start end text`` with a header), JSON or SRT."""
    if fmt == "json":
        out = {**result, "words": [asdict(w) for w in result["words"]],
               "segments": [{"start": s.start, "end": s.end, "text": s.word} for s in result["segments"]]}
        return json.dumps(out, indent=1, ensure_ascii=False) + "\n"
    if fmt == "srt":
        return "".join(f"{i}\n{_srt_time(s.start)} --> {_srt_time(s.end)}\n{s.word}\n\n"
                       for i, s in enumerate(result["segments"], 1))
    rows = result["words"] if level == "word" else result["segments"]
    return f"start\tend\t{level}\n" + "".join(f"{r.start:.3f}\t{r.end:.3f}\t{r.word}\n" for r in rows)


def write_atomic(path: Path, text: str) -> None:
    """Write via a temporary file and a rename: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _duration(path: Path) -> float:
    import soundfile as sf

    try:
        return float(sf.info(str(path)).duration)
    except Exception:
        return 0.0  # unreadable: the reader names the file


MANIFEST_SUFFIXES = (".jsonl", ".json", ".csv", ".tsv")


def calibration_files(path: Path, features: dict, examples: int) -> list[Path]:
    """Audio (or feature) files to calibrate early exit on: a file, a folder (searched
    recursively) or a manifest (``.jsonl``/``.json``/``.csv``/``.tsv``, whole files only);
    transcripts are not needed (consistency is measured against the full model), the first
    ``examples`` are used."""
    if path.is_file() and path.suffix.lower() in MANIFEST_SUFFIXES:
        from tsformer.data.speech.manifest import read_manifest

        rows, _ = read_manifest(path)
        parts = [u for u, _ in rows if getattr(u, "offset", None) is None]
        if len(parts) < len(rows):
            raise SystemExit(f"decode.early_exit.calibration={path}: rows with an offset (parts of a file) are not "
                             "supported for calibration; list whole files")
        files = [Path(u.path) for u in parts]
    else:
        files = find_inputs(path, features)
    return files[:examples]


@torch.no_grad()
def calibrate(net, tokenizer, asr: dict, opts: dict, decoding: str, beam_width: int,
              device: str = "cpu") -> tuple[EarlyExit, Calibration | None, int]:
    """The early-exit rule of ``opts`` (:func:`tsformer.export.early_exit_options`): the given
    threshold, or one calibrated by Learn-then-Test (:func:`tsformer.nn.early_exit.calibrate_threshold`)
    on held-out recordings (:func:`calibration_files`), an utterance's inconsistency being the
    word error rate of its early-exit transcript against the full encoder's (clipped to 1).
    The ``classifier`` measure first fits its classifier on half of the recordings (per frame:
    does the layer's arg-max agree with the last layer's) and calibrates on the other half.

    Returns:
        The rule, the calibration record (None for a given threshold) and the number of files.
    """
    measure, given = opts["measure"], opts["threshold"]
    if given is not None and measure != "classifier":
        return EarlyExit(measure, given, readout=net.readout), None, 0
    if not opts["calibration"]:
        raise SystemExit("decode.early_exit.measure=classifier is trained on held-out recordings: set "
                         "decode.early_exit.calibration=<audio folder or manifest>")
    n = opts["examples"] * (2 if measure == "classifier" else 1)
    files = calibration_files(Path(opts["calibration"]), asr["features"], n)
    extract = make_feature_extractor(asr["features"])
    utts = []
    for f in files:
        feats = extract(str(f)).to(device)[None]
        utts.append((feats, torch.tensor([feats.shape[1]], device=device)))
    classifier = None
    if measure == "classifier":
        half = max(1, len(utts) // 2)
        states, labels = [], []
        for feats, lens in utts[:half]:
            hs, out_lens = net.hidden_states(feats, lens)
            last = net.readout(hs[-1])
            keep = torch.arange(hs[0].shape[1], device=device)[None] < out_lens[:, None]
            states.append([h[keep] for h in hs[:-1]])
            labels.append([tokens_agree(net.readout(h), last)[keep].float() for h in hs[:-1]])
        xs = [torch.cat(p) for p in zip(*states)]
        ys = [torch.cat(p) for p in zip(*labels)]
        classifier = ExitClassifier(xs[0].shape[-1], len(xs) + 1).to(device).fit(xs, ys)
        utts = utts[half:] if len(utts) > 1 else utts
        if given is not None:
            return EarlyExit(measure, given, readout=net.readout, classifier=classifier), None, len(files)

    def text(run_net, feats, lens) -> str:
        log_probs, out_lens = run_net(feats, lens)
        return tokenizer.decode(ctc_decode(log_probs, out_lens, decoding, beam_width)[0])

    full = [text(net, *u) for u in utts]

    def losses(t: float) -> list[float]:
        run_net = encoder(net, EarlyExit(measure, t, readout=net.readout, classifier=classifier))
        out = []
        for u, ref in zip(utts, full):
            errors, words = word_errors(ref, text(run_net, *u))
            out.append(min(1.0, errors / max(words, 1)))
        return out

    cal = calibrate_threshold(candidate_thresholds(), losses, opts["tolerance"], opts["delta"])
    return EarlyExit(measure, cal.threshold, readout=net.readout, classifier=classifier), cal, len(utts)


def run(args: dict[str, str]) -> None:
    """Transcribe per the parsed arguments (:func:`parse_args`), printing or writing the results."""
    device = args.get("device", "cpu")
    net, tokenizer, asr = load_recognizer(args["ckpt"], device)
    dec = asr.get("decoding", {})
    decoding = args.get("decoding", dec.get("method", "greedy"))
    beam_width = int(args.get("beam_width", dec.get("beam_width", 8)))
    fusion = fusion_settings(args["ckpt"], asr, args)
    src = Path(args["audio"])
    files = find_inputs(src, asr["features"])
    fmt, out = args.get("format"), Path(args["out"]) if "out" in args else None
    long_kw = {"window": float(args.get("window", 15.0)), "context": float(args.get("context", 1.5)),
               "split": args.get("split", "vad"), "device": device}
    audio_in = asr["features"].get("type", "fbank") == "fbank"
    exits = early_exit_options(args["decode"], "softmax", where="transcription")
    policy = cal = None
    if exits is not None:
        require_exit_heads(asr["exit_heads"] and hasattr(net, "hidden_states"), args["ckpt"])
        policy, cal, _ = calibrate(net, tokenizer, asr, exits, decoding, beam_width, device)
    lines = []
    for f in files:
        if fmt or (audio_in and _duration(f) > long_kw["window"]):
            result = transcribe_long(f, net, tokenizer, asr, **long_kw, early_exit=policy)
        else:
            result = {"text": next(transcribe([f], net, tokenizer, asr, decoding, beam_width, device, policy,
                                              fusion))[1]}
        if fmt is None:
            lines.append(f"{f}\t{result['text']}\n")
            if out is None:
                print(lines.pop(), end="", flush=True)
            continue
        text = format_result(result, fmt, args.get("level", "word"))
        if out is None:
            print(text, end="", flush=True)
        else:
            dest = out if not src.is_dir() else out / f.relative_to(src).with_suffix(f".{fmt}")
            write_atomic(dest, text)
            print(f"wrote {dest}")
    if fmt is None and out is not None:
        write_atomic(out, "".join(lines))
        print(f"wrote {len(lines)} transcripts to {out}")
    if policy is not None:
        print(exit_report(exits, policy, cal, exits["calibration"], "recordings"), file=sys.stderr)


DEFAULTS = {"ckpt": None, "audio": None, "output": None, "format": "plain text; tsv | json | srt with time stamps",
            "level": "word", "decoding": "the checkpoint's", "beam_width": 8, "window": 15.0, "context": 1.5,
            "split": "vad", "device": "cpu", "decode": "sequential",
            "lm_weight": "tuned on dev (metrics.json) or the checkpoint's",
            "insertion_bonus": "tuned on dev (metrics.json) or the checkpoint's"}


@command(DEFAULTS, __doc__)
def main(argv: list[str] | None = None) -> None:
    run(parse_args(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    main()
