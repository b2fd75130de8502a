"""Labelled documents of your own: CSV or JSONL files and folder trees.

Each reader returns a :class:`TextTable` (texts, labels, and a split per document when the
source fixes one):

- CSV or JSONL with ``text`` and ``label`` columns/keys (names configurable) and an
  optional split column (``train``/``val``/``test``);
- a folder tree ``<root>/<label>/<file>`` or ``<root>/<split>/<label>/<file>``: every
  regular file of a label folder is a document (any name, with or without an extension,
  hidden files such as ``.DS_Store`` skipped; ``glob`` narrows the choice). Split folders
  are ``train``/``val``/``test`` or names ending in them, like the "by date" newsgroups
  download: ``20news-bydate-train/<label>/<number>``.

Files are decoded with ``encoding`` (any Python codec). Empty documents are skipped and
counted with a warning when ``skip_bad`` is set, an error naming the file or row otherwise.
Bad input raises :class:`~tsformer.data.errors.DataError` naming the file and row.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass, field
from pathlib import Path

from tsformer.data.encoding import decoding, open_text, read_text
from tsformer.data.errors import DataError
from tsformer.data.jsonl import json_objects

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
_SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
                  "dev": "val", "test": "test", "testing": "test"}


@dataclass
class TextTable:
    """Labelled documents.

    Attributes:
        texts: the documents.
        labels: one label string per document.
        splits: ``train``/``val``/``test`` per document, or None if the source fixes none.
        ids: an identifier per document (row number, file name or article id).
    """

    texts: list[str]
    labels: list[str]
    splits: list[str] | None = None
    ids: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if len(self.texts) != len(self.labels):
            raise ValueError("texts and labels differ in length")
        if not self.ids:
            self.ids = [str(i) for i in range(len(self.texts))]


def _split_name(value: str, where: str) -> str:
    s = _SPLIT_ALIASES.get(str(value).strip().lower())
    if s is None:
        raise DataError(f"{where}: split {value!r} is not one of train, val, test")
    return s


def split_folder(name: str) -> str | None:
    """The split a folder name stands for: ``train``, ``val`` or ``test`` for the aliases
    (``training``, ``dev``, ...) and names ending in them after ``-``, ``_`` or ``.``
    (``20news-bydate-train``); None for any other name."""
    low = name.strip().lower()
    for sep in ("-", "_", "."):
        low = low.rsplit(sep, 1)[-1]
    return _SPLIT_ALIASES.get(name.strip().lower()) or _SPLIT_ALIASES.get(low)


class _Empties:
    """Empty documents: an error naming the first, or with ``skip`` a count and one warning."""

    def __init__(self, source: str | Path, skip: bool):
        self.source, self.skip, self.where = source, skip, []

    def __call__(self, where: str, what: str = "empty document") -> None:
        if not self.skip:
            raise DataError(f"{where}: {what} (data.skip_bad=true skips empty documents)")
        self.where.append(where)

    def report(self) -> None:
        if self.where:
            log.warning("%s: skipped %d empty document(s), the first %s (data.skip_bad=false makes this an error)",
                        self.source, len(self.where), self.where[0])


def read_csv_docs(path: str | Path, text_field: str = "text", label_field: str = "label",
                  split_field: str | None = None, encoding: str = "utf-8", skip_bad: bool = False) -> TextTable:
    """Documents from a CSV file with a header row (a ``.tsv`` file: tab separated).

    Raises:
        DataError: undecodable bytes, a missing column, or a row (named by its line number)
            with the wrong number of fields, an empty label, or an empty text (skipped
            with ``skip_bad``).
    """
    path = Path(path)
    texts, labels, splits, ids = [], [], [], []
    empties = _Empties(path, skip_bad)
    with open_text(path, encoding, newline="") as f, decoding(path, encoding):
        reader = csv.reader(f, delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
        try:
            header = next(reader)
        except StopIteration:
            raise DataError(f"{path}: empty file") from None
        except csv.Error as e:
            raise DataError(f"{path}: line 1: {e}") from None
        for name in [text_field, label_field] + ([split_field] if split_field else []):
            if name not in header:
                raise DataError(f"{path}: no column {name!r} (columns: {header})")
        ti, li = header.index(text_field), header.index(label_field)
        si = header.index(split_field) if split_field else None
        row_no = 1
        while True:
            try:
                row = next(reader)
            except StopIteration:
                break
            except csv.Error as e:
                raise DataError(f"{path}: line {reader.line_num}: {e}") from None
            row_no += 1
            if not row:
                continue
            where = f"{path}: row {row_no} (line {reader.line_num})"
            if len(row) != len(header):
                raise DataError(f"{where}: {len(row)} fields, expected {len(header)}")
            text, label = row[ti], row[li].strip()
            if not label:
                raise DataError(f"{where}: empty {label_field!r}")
            split = _split_name(row[si], where) if si is not None else None
            if not text.strip():
                empties(where, f"empty {text_field!r}")
                continue
            texts.append(text)
            labels.append(label)
            ids.append(str(row_no))
            splits.append(split)
    empties.report()
    if not texts:
        raise DataError(f"{path}: no documents")
    return TextTable(texts, labels, splits if split_field else None, ids)


def read_jsonl_docs(path: str | Path, text_field: str = "text", label_field: str = "label",
                    split_field: str | None = None, encoding: str = "utf-8", skip_bad: bool = False) -> TextTable:
    """Documents from a JSON-lines file, one object per line.

    Raises:
        DataError: undecodable bytes, or a line (named by number) that is not a JSON
            object, lacks a key, has a text that is not a string or a label that is not a
            string or number, or an empty text (skipped with ``skip_bad``).
    """
    path = Path(path)
    texts, labels, splits, ids = [], [], [], []
    empties = _Empties(path, skip_bad)
    for where, n, obj in json_objects(path, encoding=encoding):
        for key in [text_field, label_field] + ([split_field] if split_field else []):
            if key not in obj or obj[key] is None:
                raise DataError(f"{where}: missing key {key!r}")
        text, label = obj[text_field], obj[label_field]
        if not isinstance(text, str):
            raise DataError(f"{where}: {text_field!r} must be a string, got {type(text).__name__}")
        if isinstance(label, (dict, list)):
            raise DataError(f"{where}: {label_field!r} must be a string or number, got {type(label).__name__}")
        label = str(label).strip()
        if not label:
            raise DataError(f"{where}: empty {label_field!r}")
        split = _split_name(obj[split_field], where) if split_field else None
        if not text.strip():
            empties(where, f"empty {text_field!r}")
            continue
        texts.append(text)
        labels.append(label)
        ids.append(str(n))
        splits.append(split)
    empties.report()
    if not texts:
        raise DataError(f"{path}: no documents")
    return TextTable(texts, labels, splits if split_field else None, ids)


def read_folder_docs(root: str | Path, glob: str | None = None, encoding: str = "utf-8",
                     skip_bad: bool = False, split: str | None = None) -> TextTable:
    """Documents from ``<root>/<label>/<file>``, or ``<root>/<split>/<label>/<file>`` when
    every sub-folder of ``root`` names a split (:func:`split_folder`: ``train``, ``test``,
    ``20news-bydate-train``, ...).

    Args:
        root: the folder.
        glob: only files of a label folder matching this pattern (``*.txt``); None: every
            regular file except hidden ones (a name starting with ``.``).
        encoding: the files' text encoding (any Python codec).
        skip_bad: skip empty documents with one warning and a count instead of failing.
        split: the split of every document of a flat ``root`` (a separate train or test
            folder); None: the split folders', if any.

    Raises:
        DataError: no label folder, no document, undecodable bytes (naming the file and
            offset), or an empty document without ``skip_bad``.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: not a folder")
    subdirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not subdirs:
        raise DataError(f"{root}: no label folders (expected <root>/<label>/<document files>)")
    by_split = split is None and all(split_folder(p.name) for p in subdirs)
    if by_split:
        groups = [(split_folder(p.name), p) for p in subdirs]
    else:
        groups = [(None if split is None else _split_name(split, str(root)), root)]
    texts, labels, splits, ids = [], [], [], []
    empties = _Empties(root, skip_bad)
    for part, base in groups:
        for label_dir in sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")):
            files = label_dir.glob(glob) if glob else label_dir.iterdir()
            for f in sorted(p for p in files if p.is_file() and not p.name.startswith(".")):
                text = read_text(f, encoding)
                if not text.strip():
                    empties(str(f))
                    continue
                texts.append(text)
                labels.append(label_dir.name)
                ids.append(str(f.relative_to(root)))
                splits.append(part)
    empties.report()
    if not texts:
        what = f"files matching {glob!r}" if glob else "documents"
        raise DataError(f"{root}: no {what} under <label>/ folders")
    return TextTable(texts, labels, splits if (by_split or split) else None, ids)
