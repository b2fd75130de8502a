"""Transcribe audio (or Sphinx feature) files with a trained CTC checkpoint.

    python -m tsformer.transcribe ckpt=outputs/.../checkpoints/best.ckpt audio=speech.flac
    python -m tsformer.transcribe ckpt=best.ckpt audio=folder/ out=hyps.tsv decoding=beam beam_width=16

Arguments are ``key=value`` pairs: ``ckpt`` (required), ``audio`` (a file or a folder,
searched recursively), ``out`` (write ``<file>\\t<text>`` lines there instead of printing),
``decoding`` (``greedy`` | ``beam``; default: the checkpoint's), ``beam_width``, ``device``.
The checkpoint alone is enough: it holds the network's constructor arguments, the tokenizer,
the feature settings and the normalisation statistics; it is loaded weights-only.
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

import torch

from tsformer.cli import command
from tsformer.data.errors import DataError
from tsformer.data.speech.audio import AUDIO_SUFFIXES
from tsformer.data.speech.datamodule import make_feature_extractor
from tsformer.data.tokenizers import tokenizer_from_state
from tsformer.nn.ctc import ctc_decode

USAGE = "usage: python -m tsformer.transcribe ckpt=<checkpoint> audio=<file or folder> [out=<file>] " \
        "[decoding=greedy|beam] [beam_width=N] [device=cpu]"


def parse_args(argv: list[str]) -> dict[str, str]:
    args = {}
    for a in argv:
        key, eq, value = a.partition("=")
        if not eq or key not in ("ckpt", "audio", "out", "decoding", "beam_width", "device"):
            raise SystemExit(f"bad argument {a!r}\n{USAGE}")
        args[key] = value
    for key in ("ckpt", "audio"):
        if key not in args:
            raise SystemExit(f"missing {key}=...\n{USAGE}")
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


@torch.no_grad()
def transcribe(files: list[Path], net, tokenizer, asr: dict, decoding: str, beam_width: int, device: str = "cpu"):
    """Yield ``(file, text)`` per file."""
    extract = make_feature_extractor(asr["features"])
    for f in files:
        feats = extract(str(f)).to(device)
        log_probs, lens = net(feats[None], torch.tensor([feats.shape[0]], device=device))
        ids = ctc_decode(log_probs, lens, decoding, beam_width)[0]
        yield f, tokenizer.decode(ids)


@command({"ckpt": None, "audio": None, "out": None, "decoding": "the checkpoint's", "beam_width": 8, "device": "cpu"},
         __doc__)
def main(argv: list[str] | None = None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    device = args.get("device", "cpu")
    net, tokenizer, asr = load_recognizer(args["ckpt"], device)
    dec = asr.get("decoding", {})
    decoding = args.get("decoding", dec.get("method", "greedy"))
    beam_width = int(args.get("beam_width", dec.get("beam_width", 8)))
    files = find_inputs(Path(args["audio"]), asr["features"])
    lines = []
    try:
        for f, text in transcribe(files, net, tokenizer, asr, decoding, beam_width, device):
            if "out" in args:
                lines.append(f"{f}\t{text}\n")
            else:
                print(f"{f}\t{text}", flush=True)
    except DataError as e:
        raise SystemExit(str(e)) from None
    if "out" in args:
        out = Path(args["out"])
        tmp = out.with_name(f".{out.name}.tmp")
        tmp.write_text("".join(lines))
        os.replace(tmp, out)
        print(f"wrote {len(lines)} transcripts to {out}")


if __name__ == "__main__":
    main()
