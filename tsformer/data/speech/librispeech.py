"""LibriSpeech reader: ``<root>/<split>/<speaker>/<chapter>/`` with
``<speaker>-<chapter>-<utt>.flac`` and ``<speaker>-<chapter>.trans.txt`` (Panayotov et al. 2015).

The first scan of a split writes a manifest (id, path, samples, sample rate, text); later
runs read it back unless a file was added, removed or changed.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import os
from pathlib import Path

from tsformer.data.encoding import decoding, open_text
from tsformer.data.errors import DataError
from tsformer.data.speech.audio import audio_info
from tsformer.data.speech.datamodule import SpeechDataModule, Utterance

log = logging.getLogger(__name__)

MANIFEST_VERSION = "1"


def _signature(files: list[Path]) -> str:
    h = hashlib.sha1(MANIFEST_VERSION.encode())
    for f in files:
        st = f.stat()
        h.update(f"{f}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _manifest_path(root: Path, split: str, cache_dir: str | None) -> Path:
    if cache_dir is None and os.access(root, os.W_OK):
        return root / f".manifest-{split}.tsv"
    base = Path(cache_dir or Path.home() / ".cache" / "tsformer" / "librispeech")
    key = hashlib.sha1(str(root.resolve()).encode()).hexdigest()[:12]
    return base / f"{key}-{split}.tsv"


def read_transcripts(path: Path, encoding: str = "utf-8") -> dict[str, str]:
    """``{utterance id: text}`` of a ``<speaker>-<chapter>.trans.txt`` file."""
    out: dict[str, str] = {}
    with open_text(path, encoding) as f, decoding(path, encoding):
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            uid, _, text = line.partition(" ")
            if not text.strip():
                raise DataError(f"{path}, line {n}: utterance {uid!r} has no text")
            if uid in out:
                raise DataError(f"{path}, line {n}: utterance {uid!r} listed twice")
            out[uid] = text.strip()
    if not out:
        raise DataError(f"{path}: no transcripts")
    return out


def scan_split(
    root: str | Path,
    split: str,
    sample_rate: int = 16000,
    resample: bool = True,
    skip_bad: bool = False,
    cache: bool = True,
    cache_dir: str | None = None,
) -> list[Utterance]:
    """All utterances of one split, validated.

    Every ``.flac`` needs a transcript line and must be readable, non-empty and (unless
    ``resample``) at ``sample_rate``; a transcript line needs its ``.flac``. Problems raise a
    DataError naming the file, or with ``skip_bad`` are logged and the utterance skipped.

    Args:
        root: the LibriSpeech root (holding ``train-clean-100/``, ``dev-clean/``, ...).
        split: the split folder name.
        cache: read / write the manifest.
    Returns:
        Utterances sorted by id.
    """
    root = Path(root)
    sdir = root / split
    if not sdir.is_dir():
        raise DataError(f"{sdir}: LibriSpeech split folder not found")
    flacs = sorted(sdir.glob("*/*/*.flac"))
    trans = sorted(sdir.glob("*/*/*.trans.txt"))
    if not flacs:
        raise DataError(f"{sdir}: no <speaker>/<chapter>/*.flac files")
    sig = _signature(flacs + trans)
    mpath = _manifest_path(root, split, cache_dir)
    if cache and mpath.exists():
        with open(mpath, encoding="utf-8", newline="") as f:
            rows = list(csv.reader(f, delimiter="\t"))
        if rows and rows[0] == ["#signature", sig, str(sample_rate), str(resample), str(skip_bad)]:
            return [
                Utterance(id=r[0], path=str(sdir / r[1]), text=r[4], num_frames=int(r[2]), sample_rate=int(r[3]))
                for r in rows[1:]
            ]

    def bad(msg: str) -> None:
        if not skip_bad:
            raise DataError(msg)
        log.warning("skipping: %s", msg)

    texts: dict[str, str] = {}
    text_file: dict[str, Path] = {}
    for t in trans:
        for uid, text in read_transcripts(t).items():
            texts[uid] = text
            text_file[uid] = t
    utts = []
    seen = set()
    for f in flacs:
        uid = f.stem
        seen.add(uid)
        if uid not in texts:
            expected = f.parent / f"{'-'.join(uid.split('-')[:2])}.trans.txt"
            bad(f"{f}: no transcript line for {uid!r} in {expected}")
            continue
        try:
            frames, sr = audio_info(f)
        except DataError as e:
            bad(str(e))
            continue
        if sr != sample_rate and not resample:
            bad(f"{f}: sample rate {sr} Hz, expected {sample_rate} Hz (set resample=true to convert)")
            continue
        utts.append(Utterance(id=uid, path=str(f), text=texts[uid], num_frames=frames, sample_rate=sr))
    for uid in sorted(set(texts) - seen):
        bad(f"{text_file[uid]}: transcript line {uid!r} has no audio file {uid}.flac")
    if not utts:
        raise DataError(f"{sdir}: no usable utterances")

    if cache:
        try:
            mpath.parent.mkdir(parents=True, exist_ok=True)
            tmp = mpath.with_name(mpath.name + ".tmp")
            with open(tmp, "w", encoding="utf-8", newline="") as fh:
                w = csv.writer(fh, delimiter="\t")
                w.writerow(["#signature", sig, str(sample_rate), str(resample), str(skip_bad)])
                for u in utts:
                    w.writerow([u.id, str(Path(u.path).relative_to(sdir)), u.num_frames, u.sample_rate, u.text])
            os.replace(tmp, mpath)
        except OSError as e:  # a read-only corpus still works, only uncached
            log.warning("could not write manifest %s: %s", mpath, e)
    return utts


class LibriSpeechDataModule(SpeechDataModule):
    """LibriSpeech-layout corpus, features computed from audio.

    Args:
        root: corpus root.
        train_splits, dev_splits, test_splits: split folder names (lists; several splits are
            concatenated, e.g. ``[train-clean-100, train-clean-360]``).
        resample: resample audio not at ``sample_rate`` (else a DataError).
        skip_bad: skip bad files with a logged warning instead of failing.
        cache_manifest, manifest_dir: manifest cache settings (``manifest_dir`` None: next
            to the corpus if writable, else ``~/.cache/tsformer/librispeech``).
        **kwargs: :class:`SpeechDataModule` settings.
    """

    def __init__(
        self,
        root: str,
        train_splits: list[str] = ("train-clean-100",),
        dev_splits: list[str] = ("dev-clean",),
        test_splits: list[str] = ("test-clean",),
        resample: bool = True,
        skip_bad: bool = False,
        cache_manifest: bool = True,
        manifest_dir: str | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.root = root
        self.splits = {"train": list(train_splits), "dev": list(dev_splits), "test": list(test_splits)}
        self.resample, self.skip_bad = resample, skip_bad
        self.cache_manifest, self.manifest_dir = cache_manifest, manifest_dir

    def read_split(self, part: str) -> list[Utterance]:
        if not Path(self.root).is_dir():
            raise DataError(f"{self.root}: LibriSpeech root not found (expected <root>/<split>/<speaker>/<chapter>/)")
        utts = []
        for split in self.splits[part]:
            utts += scan_split(
                self.root, split, self.features.get("sample_rate", 16000), self.resample, self.skip_bad,
                self.cache_manifest, self.manifest_dir,
            )
        return utts
