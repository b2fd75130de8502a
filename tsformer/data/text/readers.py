"""Labelled documents in any supported format, chosen by name or from the path:
CSV, JSONL and folder trees (:mod:`~tsformer.data.text.documents`), SemEval-2019
Hyperpartisan XML (:mod:`~tsformer.data.text.hyperpartisan`) and the IMDB archive
(:mod:`~tsformer.data.text.imdb`)."""

from __future__ import annotations

from pathlib import Path

from tsformer.data.errors import DataError
from tsformer.data.text.documents import TextTable, read_csv_docs, read_folder_docs, read_jsonl_docs
from tsformer.data.text.hyperpartisan import read_semeval
from tsformer.data.text.imdb import read_imdb


def read_documents(path: str | Path, format: str = "auto", text_field: str = "text",
                   label_field: str = "label", split_field: str | None = None, encoding: str = "utf-8",
                   glob: str | None = None, skip_bad: bool = False, split: str | None = None) -> TextTable:
    """Read labelled documents in any supported ``format``: ``auto``, ``csv``, ``jsonl``,
    ``folder``, ``semeval``, ``imdb``.

    ``encoding`` (any Python codec) applies to CSV, JSONL and folder documents; ``glob``
    narrows the files of a folder's label folders; ``skip_bad`` skips empty documents
    with a warning; ``split`` puts every document in that split (a separate train or
    test folder or file), unless ``split_field`` is set."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    if format == "auto":
        name = path.name.lower()
        if path.is_dir():
            if list(path.glob("articles-*.xml")):
                format = "semeval"
            elif (path / "aclImdb").is_dir() or list(path.glob("*.tar.gz")):
                format = "imdb"
            else:
                format = "folder"
        elif name.endswith((".tar.gz", ".tgz", ".tar")):
            format = "imdb"
        elif name.endswith(".xml"):
            format = "semeval"
        elif name.endswith((".jsonl", ".json", ".ndjson")):
            format = "jsonl"
        elif name.endswith((".csv", ".tsv")):
            format = "csv"
        else:
            raise DataError(f"{path}: cannot tell the format; set data.format (csv, jsonl, folder, semeval, imdb)")
    if format in ("csv", "jsonl"):
        read = read_csv_docs if format == "csv" else read_jsonl_docs
        table = read(path, text_field, label_field, split_field, encoding, skip_bad)
        if split and not split_field:
            table.splits = [split] * len(table.texts)
        return table
    if format == "folder":
        return read_folder_docs(path, glob, encoding, skip_bad, split)
    if format == "semeval":
        table = read_semeval(path)
    elif format == "imdb":
        if path.is_dir() and not (path / "aclImdb").is_dir():
            archives = sorted(path.glob("*.tar.gz"))
            if archives:
                path = archives[0]
        table = read_imdb(path)
    else:
        raise DataError(f"unknown data.format {format!r}; choose auto, csv, jsonl, folder, semeval or imdb")
    if split:
        table.splits = [split] * len(table.texts)
    return table
