"""Your own recordings: manifests in the formats speech toolkits use, read into utterances.

- NeMo JSON lines (``.json``/``.jsonl``): one object per line with ``audio_filepath``,
  ``text`` and optional ``duration``, ``offset`` (seconds; with them only that part of the
  file is read, as NeMo does);
- CSV / TSV (``.csv``/``.tsv``) with a header row: configurable path and text columns,
  optional ``offset``/``duration`` columns;
- Kaldi data directories: ``wav.scp`` (``<recording-id> <path>``) and ``text``
  (``<utterance-id> <transcript>``), optional ``segments`` (``<utterance-id>
  <recording-id> <start> <end>``, seconds; ``end`` -1: to the end of the recording).
  ``wav.scp`` entries must be plain paths: a piped command (``sox ... |``) or an archive
  offset (``feats.ark:123``) is an error that says so.

Relative audio paths resolve against the manifest's folder (a Kaldi directory's own
folder). A manifest may carry a split column (``train``/``dev``/``test``); parts that no
manifest or split column gives are carved from the training rows with a seeded draw
(:class:`ManifestDataModule`). Bad rows (a missing or unreadable file, an empty transcript,
too few fields, an offset past the end) raise a :class:`~tsformer.data.errors.DataError`
naming the manifest, the line and the file, or with ``skip_bad`` are logged and counted.
Manifests are decoded with ``encoding`` (any Python codec); undecodable bytes are an error
naming the manifest and the byte offset.
"""

from __future__ import annotations

import csv
import logging
import math
import random
import unicodedata
from collections.abc import Callable
from pathlib import Path

from tsformer.data.encoding import decoding, open_text
from tsformer.data.errors import DataError
from tsformer.data.jsonl import json_objects
from tsformer.data.speech.audio import audio_info
from tsformer.data.speech.datamodule import SpeechDataModule, Utterance

log = logging.getLogger(__name__)

PARTS = ("train", "dev", "test")
_PART_ALIASES = {"train": "train", "training": "train", "dev": "dev", "val": "dev", "valid": "dev",
                 "validation": "dev", "test": "test", "testing": "test", "eval": "test"}
PATH_COLUMNS = ("audio_filepath", "path", "audio", "audio_path", "file", "filename", "wav")
TEXT_COLUMNS = ("text", "transcript", "transcription", "sentence", "normalized_text")
FORMATS = ("auto", "jsonl", "csv", "tsv", "kaldi")


def clean_transcript(text: str, punctuation: str = "strip") -> str:
    """``text`` with punctuation stripped (``strip``) or kept (``keep``); spaces collapsed.

    Stripping turns every Unicode punctuation character into a space, except an apostrophe
    between two letters (``don't`` stays), so ``"Hello, world."`` becomes ``"Hello world"``.
    """
    if punctuation == "keep":
        return " ".join(text.split())
    if punctuation != "strip":
        raise ValueError(f"data.text.punctuation must be strip or keep, got {punctuation!r}")
    out = []
    for i, c in enumerate(text):
        if unicodedata.category(c).startswith("P"):
            inside = 0 < i < len(text) - 1 and text[i - 1].isalpha() and text[i + 1].isalpha()
            out.append("'" if c in "'\u2019" and inside else " ")
        else:
            out.append(c)
    return " ".join("".join(out).split())


def manifest_format(path: Path, fmt: str = "auto") -> str:
    """``jsonl``, ``csv``, ``tsv`` or ``kaldi`` for ``path`` (by suffix or folder when ``auto``)."""
    if fmt not in FORMATS:
        raise ValueError(f"data.format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if not path.exists():
        raise DataError(f"{path}: manifest not found")
    if fmt != "auto":
        return fmt
    if path.is_dir():
        return "kaldi"
    suffix = path.suffix.lower()
    found = {".json": "jsonl", ".jsonl": "jsonl", ".csv": "csv", ".tsv": "tsv"}.get(suffix)
    if found is None:
        raise DataError(f"{path}: cannot tell the manifest format from {suffix or 'no suffix'!r}; use .jsonl, .csv, "
                        f".tsv, a Kaldi data directory, or set data.format=jsonl|csv|tsv|kaldi")
    return found


class _Reader:
    """Rows of one manifest as ``(utterance, split or None)``; bad rows go to ``bad(msg)``."""

    def __init__(self, path: Path, bad: Callable[[str], None], path_column: str | None, text_column: str | None,
                 split_column: str | None, punctuation: str, encoding: str = "utf-8"):
        self.path, self.bad, self.encoding = path, bad, encoding
        self.path_column, self.text_column, self.split_column = path_column, text_column, split_column
        self.punctuation = punctuation
        self.has_split = False

    def audio_path(self, value: str) -> str:
        p = Path(value.strip())
        try:
            p = p.expanduser()
        except RuntimeError:  # ~user of an unknown user: left as written, reported missing later
            pass
        return str(p if p.is_absolute() else (self.path if self.path.is_dir() else self.path.parent) / p)

    def utterance(self, uid: str, where: str, audio: str, text, offset=None, duration=None) -> Utterance | None:
        if not isinstance(text, str):
            self.bad(f"{where}: transcript must be a string, got {type(text).__name__}")
            return None
        try:
            off = float(offset) if offset not in (None, "") else 0.0
            dur = float(duration) if duration not in (None, "") else None
            if not math.isfinite(off) or not math.isfinite(dur if dur is not None else 0.0):
                raise ValueError("not finite")
        except (TypeError, ValueError, OverflowError):
            self.bad(f"{where}: offset/duration must be numbers of seconds, got {offset!r}/{duration!r}")
            return None
        if off < 0 or (dur is not None and dur <= 0):
            self.bad(f"{where}: offset {off:g} s / duration {dur} s out of range")
            return None
        return Utterance(id=uid, path=self.audio_path(audio), text=clean_transcript(text, self.punctuation),
                         offset=off, duration=dur, where=where)

    def split_of(self, value, where: str):
        s = _PART_ALIASES.get(str(value).strip().lower())
        if s is None:
            self.bad(f"{where}: split {value!r} is not one of train, dev (val), test")
        return s

    def pick(self, names: list[str], wanted: str | None, defaults: tuple[str, ...], what: str) -> str:
        if wanted is not None:
            if wanted not in names:
                raise DataError(f"{self.path}: no {what} column {wanted!r} (columns: {names})")
            return wanted
        for d in defaults:
            if d in names:
                return d
        raise DataError(f"{self.path}: no {what} column; looked for {', '.join(defaults)} (columns: {names}); "
                        f"set data.{what}_column=<name>")

    # -- formats -------------------------------------------------------------
    def jsonl(self) -> list[tuple[Utterance, str | None]]:
        rows = []
        pkey, tkey = self.path_column or "audio_filepath", self.text_column or "text"
        for where, n, obj in json_objects(self.path, self.bad, self.encoding):
            missing = [k for k in (pkey, tkey) if obj.get(k) is None]
            if missing:
                self.bad(f"{where}: missing key {missing[0]!r} (keys: {sorted(obj)})")
                continue
            split = None
            if self.split_column and self.split_column in obj:
                self.has_split = True
                split = self.split_of(obj[self.split_column], where)
                if split is None:
                    continue
            u = self.utterance(f"{self.path.name}:{n}", where, str(obj[pkey]), obj[tkey], obj.get("offset"),
                               obj.get("duration"))
            if u is not None:
                rows.append((u, split))
        return rows

    def table(self, delimiter: str) -> list[tuple[Utterance, str | None]]:
        rows = []
        with open_text(self.path, self.encoding, newline="") as f, decoding(self.path, self.encoding):
            reader = csv.reader(f, delimiter=delimiter)
            try:
                header = [h.strip() for h in next(reader)]
            except StopIteration:
                raise DataError(f"{self.path}: empty manifest") from None
            except csv.Error as e:
                raise DataError(f"{self.path}: line 1: {e}") from None
            pcol = header.index(self.pick(header, self.path_column, PATH_COLUMNS, "path"))
            tcol = header.index(self.pick(header, self.text_column, TEXT_COLUMNS, "text"))
            scol = header.index(self.split_column) if self.split_column in header else None
            self.has_split = scol is not None
            optional = {k: header.index(k) for k in ("offset", "duration") if k in header}
            while True:
                try:
                    row = next(reader)
                except StopIteration:
                    break
                except csv.Error as e:
                    self.bad(f"{self.path}: line {reader.line_num}: {e}")
                    continue
                if not row or not any(c.strip() for c in row):
                    continue
                where = f"{self.path}: line {reader.line_num}"
                if len(row) < len(header):
                    self.bad(f"{where}: {len(row)} fields, expected {len(header)} ({', '.join(header)})")
                    continue
                split = None
                if scol is not None:
                    split = self.split_of(row[scol], where)
                    if split is None:
                        continue
                extra = {k: row[i] for k, i in optional.items()}
                u = self.utterance(f"{self.path.name}:{reader.line_num}", where, row[pcol], row[tcol], **extra)
                if u is not None:
                    rows.append((u, split))
        return rows

    def kaldi(self) -> list[tuple[Utterance, str | None]]:
        d = self.path
        for name in ("wav.scp", "text"):
            if not (d / name).is_file():
                raise DataError(f"{d}: not a Kaldi data directory (no {name})")
        wavs: dict[str, tuple[str, str]] = {}
        for n, fields in self._kaldi_lines(d / "wav.scp"):
            where = f"{d / 'wav.scp'}: line {n}"
            if len(fields) < 2:
                self.bad(f"{where}: expected '<recording-id> <path>', got {' '.join(fields)!r}")
                continue
            value = " ".join(fields[1:])
            if value.endswith("|"):
                self.bad(f"{where}: {value!r} is a piped command; only plain audio paths are read (run the "
                         f"command once and list the file it writes)")
                continue
            if ".ark:" in value or value.endswith(".ark"):
                self.bad(f"{where}: {value!r} is a Kaldi archive entry; list audio files instead")
                continue
            if fields[0] in wavs:
                self.bad(f"{where}: recording {fields[0]!r} listed twice (first at {wavs[fields[0]][1]})")
                continue
            wavs[fields[0]] = (value, where)
        texts: dict[str, tuple[str, str]] = {}
        for n, fields in self._kaldi_lines(d / "text"):
            where = f"{d / 'text'}: line {n}"
            if fields[0] in texts:
                self.bad(f"{where}: utterance {fields[0]!r} listed twice (first at {texts[fields[0]][1]})")
                continue
            texts[fields[0]] = (" ".join(fields[1:]), where)
        # utterance -> (recording, start, end, where of the line that names the audio)
        segs: dict[str, tuple[str, float, float | None, str]] = {}
        if (d / "segments").is_file():
            for n, fields in self._kaldi_lines(d / "segments"):
                where = f"{d / 'segments'}: line {n}"
                if len(fields) != 4:
                    self.bad(f"{where}: expected '<utterance-id> <recording-id> <start> <end>', "
                             f"got {len(fields)} fields")
                    continue
                try:
                    start, end = float(fields[2]), float(fields[3])
                except ValueError:
                    self.bad(f"{where}: start/end must be seconds, got {fields[2]!r} {fields[3]!r}")
                    continue
                if start < 0 or (end >= 0 and end <= start):
                    self.bad(f"{where}: segment {start:g}..{end:g} s is empty or negative")
                    continue
                if fields[0] in segs:
                    self.bad(f"{where}: utterance {fields[0]!r} listed twice (first at {segs[fields[0]][3]})")
                    continue
                segs[fields[0]] = (fields[1], start, None if end < 0 else end, where)
        else:
            segs = {rec: (rec, 0.0, None, where) for rec, (_, where) in wavs.items()}
        rows = []
        for uid, (rec, start, end, where) in segs.items():
            if uid not in texts:
                self.bad(f"{where}: utterance {uid!r} has no line in {d / 'text'}")
                continue
            if rec not in wavs:
                self.bad(f"{where}: recording {rec!r} has no line in {d / 'wav.scp'}")
                continue
            text, twhere = texts[uid]
            if not clean_transcript(text, self.punctuation):
                self.bad(f"{twhere}: utterance {uid!r} ({wavs[rec][0]}): empty transcript")
                continue
            u = self.utterance(uid, where, wavs[rec][0], text, start or None, None if end is None else end - start)
            if u is not None:
                rows.append((u, None))
        for uid, (_, twhere) in texts.items():
            if uid not in segs:
                self.bad(f"{twhere}: utterance {uid!r} has no audio (not in "
                         f"{'segments' if (d / 'segments').is_file() else 'wav.scp'})")
        return rows

    def _kaldi_lines(self, path: Path):
        with open_text(path, self.encoding) as f, decoding(path, self.encoding):
            for n, line in enumerate(f, 1):
                fields = line.split()
                if fields:
                    yield n, fields


def read_manifest(path: str | Path, fmt: str = "auto", path_column: str | None = None,
                  text_column: str | None = None, split_column: str | None = "split", punctuation: str = "strip",
                  bad: Callable[[str], None] | None = None,
                  encoding: str = "utf-8") -> tuple[list[tuple[Utterance, str | None]], bool]:
    """Rows of a manifest, not yet checked against the audio (:func:`check_audio`).

    Args:
        path: a ``.jsonl``/``.json``, ``.csv`` or ``.tsv`` file, or a Kaldi data directory.
        fmt: ``auto`` (by suffix; a folder is Kaldi) or ``jsonl``/``csv``/``tsv``/``kaldi``.
        path_column, text_column: the audio path and transcript column/key (None: the first of
            :data:`PATH_COLUMNS` / :data:`TEXT_COLUMNS` present; JSON: ``audio_filepath``, ``text``).
        split_column: the column/key naming each row's split, used where present.
        punctuation: ``strip`` or ``keep`` (:func:`clean_transcript`).
        bad: called with the message of each bad row (default: raise DataError).
        encoding: the manifest's text encoding (any Python codec; Kaldi: every file).
    Returns:
        ``[(utterance, split or None)]`` and whether the manifest has the split column.
    """
    path = Path(path).expanduser()
    kind = manifest_format(path, fmt)

    def fail(msg: str) -> None:
        raise DataError(msg)

    n_bad = 0

    def counted(msg: str) -> None:
        nonlocal n_bad
        n_bad += 1
        (bad or fail)(msg)

    reader = _Reader(path, counted, path_column, text_column, split_column, punctuation, encoding)
    if kind == "kaldi":
        if not path.is_dir():
            raise DataError(f"{path}: a Kaldi data directory must be a folder (with wav.scp and text)")
        rows = reader.kaldi()
    elif kind == "jsonl":
        rows = reader.jsonl()
    else:
        rows = reader.table("," if kind == "csv" else "\t")
    if not rows and not n_bad:
        raise DataError(f"{path}: no utterances in the manifest")
    return rows, reader.has_split


def check_audio(u: Utterance, bad: Callable[[str], None]) -> bool:
    """Fill ``u.num_frames``/``u.sample_rate`` from the file; False (after ``bad(msg)``) for a
    missing, unreadable or empty file, an empty transcript or an offset past the end."""
    where = u.where or u.id
    if not u.text.strip():
        bad(f"{where}: {u.path}: empty transcript")
        return False
    if not Path(u.path).is_file():
        bad(f"{where}: {u.path}: audio file not found")
        return False
    try:
        frames, sr = audio_info(u.path)
    except DataError as e:
        bad(f"{where}: {e}")
        return False
    start = int(round(u.offset * sr))
    end = frames if u.duration is None else start + int(round(u.duration * sr))
    if start >= frames or end > frames + int(0.05 * sr):  # 50 ms slack for rounded durations
        bad(f"{where}: {u.path}: offset {u.offset:g} s + duration {u.duration} s is past the end of the "
            f"recording ({frames / sr:.3f} s)")
        return False
    u.num_frames, u.sample_rate = min(end, frames) - start, sr
    return True


class ManifestDataModule(SpeechDataModule):
    """Speech recognition on your own recordings, listed in manifests (``task=asr``).

    Give either one ``manifest`` (its ``split_column`` assigns rows to parts where present)
    or ``train_manifest`` with optional ``dev_manifest``/``test_manifest``. A part no
    manifest gives is carved from the training rows: ``dev_fraction``/``test_fraction`` of
    them, drawn with ``split_seed``. Nothing given: the shipped sample (``sample``).

    Args:
        manifest, train_manifest, dev_manifest, test_manifest: manifest files or Kaldi
            directories (:func:`read_manifest`).
        sample: the manifest used when none is given.
        format, path_column, text_column, split_column: see :func:`read_manifest`.
        dev_fraction, test_fraction, split_seed: the seeded carve-out.
        text: ``{case: upper | lower | keep, punctuation: strip | keep}``.
        skip_bad: skip bad rows with a warning each and a count, instead of failing.
        resample: resample other sample rates to ``features.sample_rate``.
        encoding: the manifests' text encoding (any Python codec).
        **kwargs: :class:`SpeechDataModule` settings.
    """

    def __init__(
        self,
        manifest: str | None = None,
        train_manifest: str | None = None,
        dev_manifest: str | None = None,
        test_manifest: str | None = None,
        sample: str | None = None,
        format: str = "auto",
        path_column: str | None = None,
        text_column: str | None = None,
        split_column: str | None = "split",
        dev_fraction: float = 0.1,
        test_fraction: float = 0.1,
        split_seed: int = 0,
        text: dict | None = None,
        skip_bad: bool = False,
        resample: bool = True,
        encoding: str = "utf-8",
        **kwargs,
    ):
        text = {"case": "upper", "punctuation": "strip", **dict(text or {})}
        tokenizer = dict(kwargs.pop("tokenizer", None) or {"type": "char"})
        tokenizer.setdefault("case", text["case"])
        features = dict(kwargs.pop("features", None) or {"type": "fbank"})
        features.setdefault("resample", resample)
        super().__init__(tokenizer=tokenizer, features=features, **kwargs)
        split_manifests = {"train": train_manifest, "dev": dev_manifest, "test": test_manifest}
        if manifest and any(split_manifests.values()):
            raise ValueError("give data.manifest (one manifest, optionally with a split column) or "
                             "data.train_manifest/dev_manifest/test_manifest, not both")
        if not manifest and not train_manifest:
            if dev_manifest or test_manifest:
                raise ValueError("data.dev_manifest/test_manifest need data.train_manifest")
            if not sample:
                raise ValueError("no data: set data.manifest=<file or Kaldi dir> or data.train_manifest=...")
            log.info("no manifest given: using the shipped sample %s", sample)
            manifest = sample
        for frac, key in ((dev_fraction, "dev_fraction"), (test_fraction, "test_fraction")):
            if not 0.0 <= frac < 1.0:
                raise ValueError(f"data.{key} must be in [0, 1), got {frac}")
        self.manifest, self.split_manifests = manifest, split_manifests
        self.format, self.path_column, self.text_column = format, path_column, text_column
        self.split_column = split_column
        self.fractions = {"dev": dev_fraction, "test": test_fraction}
        self.split_seed, self.skip_bad, self.text = split_seed, skip_bad, text
        self.encoding = encoding
        self.skipped = 0
        self._parts: dict[str, list[Utterance]] | None = None

    def _bad(self, msg: str) -> None:
        if not self.skip_bad:
            raise DataError(msg + " (data.skip_bad=true skips bad rows)")
        log.warning("skipping: %s", msg)
        self.skipped += 1

    def _read(self, path: str) -> tuple[list[tuple[Utterance, str | None]], bool]:
        rows, has_split = read_manifest(path, self.format, self.path_column, self.text_column, self.split_column,
                                        self.text["punctuation"], self._bad, self.encoding)
        return [(u, s) for u, s in rows if check_audio(u, self._bad)], has_split

    def _read_parts(self) -> dict[str, list[Utterance]]:
        parts: dict[str, list[Utterance]] = {p: [] for p in PARTS}
        given = set()
        if self.manifest:
            rows, has_split = self._read(self.manifest)
            for u, s in rows:
                parts[s or "train"].append(u)
            given = {s for _, s in rows if s} if has_split else {"train"}
            if has_split:
                log.info("%s: parts from its %r column", self.manifest, self.split_column)
        else:
            for part, path in self.split_manifests.items():
                if path:
                    parts[part] = [u for u, _ in self._read(path)[0]]
                    given.add(part)
        if self.skipped:
            log.warning("skipped %d bad manifest row(s) (data.skip_bad=true)", self.skipped)
        self._carve(parts, given)
        return parts

    def _carve(self, parts: dict[str, list[Utterance]], given: set[str]) -> None:
        """Draw the parts no manifest gives from the training rows (seeded)."""
        want = {p: f for p, f in self.fractions.items() if p not in given and f > 0}
        if not want:
            return
        train = parts["train"]
        order = list(range(len(train)))
        random.Random(self.split_seed).shuffle(order)
        counts = {p: max(1, round(f * len(train))) for p, f in want.items()}
        if sum(counts.values()) >= len(train):
            raise DataError(f"{self.manifest or self.split_manifests['train']}: {len(train)} training rows are too "
                            f"few to hold out {counts} for {', '.join(counts)}")
        start = 0
        for p, n in counts.items():
            parts[p] = [train[i] for i in sorted(order[start : start + n])]
            start += n
        parts["train"] = [train[i] for i in sorted(order[start:])]
        log.info("held out %s from the training rows (seed %d)", counts, self.split_seed)

    def read_split(self, part: str) -> list[Utterance]:
        if self._parts is None:
            self._parts = self._read_parts()
        return self._parts[part]
