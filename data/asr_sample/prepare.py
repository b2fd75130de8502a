"""Build the tiny manifest sample (task=asr) from Free Spoken Digit Dataset recordings.

    python data/asr_sample/prepare.py [--fsdd ../shared/data/fsdd]

Copies 80 FSDD recordings unmodified (8 kHz mono 16-bit WAV: speakers george and jackson,
digits 0-9, recording index 0 -> test, 5 -> dev, 10 and 11 -> train, FSDD's split
convention) to ``audio/`` and describes them in every manifest format ``task=asr`` reads:

- ``train.jsonl``, ``dev.jsonl``, ``test.jsonl``: NeMo JSON lines (``audio_filepath``,
  ``text``, ``duration``);
- ``manifest.csv``: one CSV with ``path,text,split`` columns;
- ``kaldi/{train,dev,test}/``: Kaldi data directories (``wav.scp``, ``text``).

Paths are relative to the manifest's folder.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
from pathlib import Path

import soundfile as sf

HERE = Path(__file__).resolve().parent
WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
SPLITS = {"train": (10, 11), "dev": (5,), "test": (0,)}
SPEAKERS = ("george", "jackson")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fsdd", default=str(HERE.parent.parent.parent / "shared" / "data" / "fsdd"))
    args = ap.parse_args()
    rec = Path(args.fsdd) / "recordings"
    (HERE / "audio").mkdir(exist_ok=True)
    rows = []
    for split, indices in SPLITS.items():
        for spk in SPEAKERS:
            for idx in indices:
                for d in range(10):
                    name = f"{d}_{spk}_{idx}.wav"
                    shutil.copyfile(rec / name, HERE / "audio" / name)
                    dur = sf.info(str(HERE / "audio" / name)).duration
                    rows.append({"split": split, "path": f"audio/{name}", "text": WORDS[d], "duration": round(dur, 4),
                                 "id": f"{spk}-{idx}-{d}"})
    for split in SPLITS:
        with open(HERE / f"{split}.jsonl", "w") as f:
            for r in rows:
                if r["split"] == split:
                    f.write(json.dumps({"audio_filepath": r["path"], "text": r["text"], "duration": r["duration"]}) + "\n")
        kdir = HERE / "kaldi" / split
        kdir.mkdir(parents=True, exist_ok=True)
        mine = sorted((r for r in rows if r["split"] == split), key=lambda r: r["id"])
        (kdir / "wav.scp").write_text("".join(f"{r['id']} ../../{r['path']}\n" for r in mine))
        (kdir / "text").write_text("".join(f"{r['id']} {r['text']}\n" for r in mine))
    with open(HERE / "manifest.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "text", "split"])
        for r in rows:
            w.writerow([r["path"], r["text"], r["split"]])


if __name__ == "__main__":
    main()
