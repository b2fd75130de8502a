"""Labelled documents of your own: CSV or JSONL files and folder trees.

Each reader returns a :class:`TextTable` (texts, labels, and a split per document when the
source fixes one):

- CSV or JSONL with ``text`` and ``label`` columns/keys (names configurable) and an
  optional split column (``train``/``val``/``test``);
- a folder tree ``<root>/<label>/*.txt`` or ``<root>/<split>/<label>/*.txt``.

Bad input raises :class:`~tsformer.data.errors.DataError` naming the file and row.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

from tsformer.data.errors import DataError
from tsformer.data.jsonl import json_objects

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


def read_csv_docs(path: str | Path, text_field: str = "text", label_field: str = "label",
                  split_field: str | None = None) -> TextTable:
    """Documents from a CSV file with a header row.

    Raises:
        DataError: a missing column, or a row (named by its line number) with the wrong
            number of fields or an empty text or label.
    """
    path = Path(path)
    texts, labels, splits, ids = [], [], [], []
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
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
            if not text.strip():
                raise DataError(f"{where}: empty {text_field!r}")
            if not label:
                raise DataError(f"{where}: empty {label_field!r}")
            texts.append(text)
            labels.append(label)
            ids.append(str(row_no))
            if si is not None:
                splits.append(_split_name(row[si], where))
    if not texts:
        raise DataError(f"{path}: no documents")
    return TextTable(texts, labels, splits if split_field else None, ids)


def read_jsonl_docs(path: str | Path, text_field: str = "text", label_field: str = "label",
                    split_field: str | None = None) -> TextTable:
    """Documents from a JSON-lines file, one object per line.

    Raises:
        DataError: a line (named by number) that is not a JSON object or lacks a key.
    """
    path = Path(path)
    texts, labels, splits, ids = [], [], [], []
    for where, n, obj in json_objects(path):
        for key in [text_field, label_field] + ([split_field] if split_field else []):
            if key not in obj or obj[key] is None:
                raise DataError(f"{where}: missing key {key!r}")
        text, label = obj[text_field], str(obj[label_field]).strip()
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"{where}: {text_field!r} must be a non-empty string")
        if not label:
            raise DataError(f"{where}: empty {label_field!r}")
        texts.append(text)
        labels.append(label)
        ids.append(str(n))
        if split_field:
            splits.append(_split_name(obj[split_field], where))
    if not texts:
        raise DataError(f"{path}: no documents")
    return TextTable(texts, labels, splits if split_field else None, ids)


def read_folder_docs(root: str | Path) -> TextTable:
    """Documents from ``<root>/<label>/*.txt``, or ``<root>/<split>/<label>/*.txt`` when the
    sub-folders of ``root`` are split names (``train``, ``test``, ...)."""
    root = Path(root)
    subdirs = sorted(p for p in root.iterdir() if p.is_dir())
    if not subdirs:
        raise DataError(f"{root}: no label folders (expected <root>/<label>/*.txt)")
    by_split = all(p.name.lower() in _SPLIT_ALIASES for p in subdirs)
    texts, labels, splits, ids = [], [], [], []
    groups = [(_split_name(p.name, str(p)), p) for p in subdirs] if by_split else [(None, root)]
    for split, base in groups:
        for label_dir in sorted(p for p in base.iterdir() if p.is_dir()):
            for f in sorted(label_dir.glob("*.txt")):
                try:
                    text = f.read_text(encoding="utf-8")
                except UnicodeDecodeError as e:
                    raise DataError(f"{f}: not UTF-8 text ({e})") from None
                if not text.strip():
                    raise DataError(f"{f}: empty document")
                texts.append(text)
                labels.append(label_dir.name)
                ids.append(str(f.relative_to(root)))
                splits.append(split)
    if not texts:
        raise DataError(f"{root}: no .txt documents under <label>/ folders")
    return TextTable(texts, labels, splits if by_split else None, ids)
