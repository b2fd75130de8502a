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
                   label_field: str = "label", split_field: str | None = None) -> TextTable:
    """Read labelled documents in any supported ``format``: ``auto``, ``csv``, ``jsonl``,
    ``folder``, ``semeval``, ``imdb``."""
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
    if format == "csv":
        return read_csv_docs(path, text_field, label_field, split_field)
    if format == "jsonl":
        return read_jsonl_docs(path, text_field, label_field, split_field)
    if format == "folder":
        return read_folder_docs(path)
    if format == "semeval":
        return read_semeval(path)
    if format == "imdb":
        if path.is_dir() and not (path / "aclImdb").is_dir():
            archives = sorted(path.glob("*.tar.gz"))
            if archives:
                path = archives[0]
        return read_imdb(path)
    raise DataError(f"unknown data.format {format!r}; choose auto, csv, jsonl, folder, semeval or imdb")
