"""IMDB movie reviews (Maas et al. 2011): the ``aclImdb_labeled.tar.gz`` archive or its
extracted ``aclImdb/{train,test}/{pos,neg}`` tree, with the official split."""

from __future__ import annotations

import re
import tarfile
from pathlib import Path

from tsformer.data.errors import DataError
from tsformer.data.text.documents import TextTable, read_folder_docs

_IMDB_MEMBER = re.compile(r"(?:^|/)(train|test)/(pos|neg)/(\d+_\d+)\.txt$")
_BR = re.compile(r"<br\s*/?>", re.IGNORECASE)


def read_imdb(path: str | Path) -> TextTable:
    """IMDB reviews from ``aclImdb_labeled.tar.gz`` (or any folder containing the extracted
    ``aclImdb/{train,test}/{pos,neg}`` tree), with the official train/test split.

    ``<br />`` tags are replaced by newlines.
    """
    path = Path(path)
    texts, labels, splits, ids = [], [], [], []
    if path.is_dir():
        root = path / "aclImdb" if (path / "aclImdb").is_dir() else path
        table = read_folder_docs(root, glob="*.txt")
        if table.splits is None:
            raise DataError(f"{root}: expected train/ and test/ folders")
        table.texts = [_BR.sub("\n", t) for t in table.texts]
        return table
    try:
        with tarfile.open(path, "r:*") as tar:
            for m in tar:
                hit = _IMDB_MEMBER.search(m.name) if m.isfile() else None
                if hit is None:
                    continue
                raw = tar.extractfile(m).read()
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError:
                    raise DataError(f"{path}: member {m.name} is not UTF-8 text") from None
                texts.append(_BR.sub("\n", text))
                labels.append(hit.group(2))
                splits.append(hit.group(1))
                ids.append(f"{hit.group(1)}/{hit.group(2)}/{hit.group(3)}")
    except (tarfile.TarError, OSError, EOFError) as e:
        raise DataError(f"{path}: cannot read the archive ({e})") from None
    if not texts:
        raise DataError(f"{path}: no aclImdb/{{train,test}}/{{pos,neg}}/*.txt members")
    return TextTable(texts, labels, splits, ids)
