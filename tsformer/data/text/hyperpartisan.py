"""SemEval-2019 Task 4 (Hyperpartisan News Detection) by-article XML: articles and ground
truth, joined by id, markup stripped."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

from tsformer.data.errors import DataError
from tsformer.data.text.documents import TextTable

_WS = re.compile(r"\s+")


def _xml_root(path: Path) -> ET.Element:
    try:
        return ET.parse(path).getroot()
    except ET.ParseError as e:
        line, col = e.position
        raise DataError(f"{path}: malformed XML at line {line}, column {col}") from None


def read_semeval(path: str | Path, articles: str | None = None, ground_truth: str | None = None) -> TextTable:
    """SemEval-2019 Task 4 by-article data: ``<article id=.. title=..>`` HTML-ish text in the
    articles file, ``<article id=.. hyperpartisan="true|false">`` in the ground-truth file.

    Args:
        path: a folder holding ``articles-*.xml`` and ``ground-truth-*.xml`` (or the
            articles file itself, with the ground truth beside it).
        articles, ground_truth: explicit file names inside the folder.
    Returns:
        Title plus text (markup stripped) per article, labels ``true``/``false``, no split.
    """
    path = Path(path)
    folder = path if path.is_dir() else path.parent

    def find(explicit: str | None, pattern: str) -> Path:
        if explicit:
            return folder / explicit
        if path.is_file() and path.match(pattern):
            return path
        hits = sorted(folder.glob(pattern))
        if not hits:
            raise DataError(f"{folder}: no {pattern} file")
        return hits[0]

    art_path, gt_path = find(articles, "articles-*.xml"), find(ground_truth, "ground-truth-*.xml")
    truth: dict[str, str] = {}
    for n, el in enumerate(_xml_root(gt_path).iter("article"), 1):
        aid, hp = el.get("id"), el.get("hyperpartisan")
        if aid is None:
            raise DataError(f"{gt_path}: article #{n} has no id")
        if hp not in ("true", "false"):
            raise DataError(f"{gt_path}: article id={aid} (#{n}): hyperpartisan={hp!r}, expected true or false")
        truth[aid] = hp
    texts, labels, ids = [], [], []
    for n, el in enumerate(_xml_root(art_path).iter("article"), 1):
        aid = el.get("id")
        if aid is None:
            raise DataError(f"{art_path}: article #{n} has no id")
        if aid not in truth:
            raise DataError(f"{art_path}: article id={aid} (#{n}) has no label in {gt_path.name}")
        body = _WS.sub(" ", " ".join(el.itertext())).strip()
        title = (el.get("title") or "").strip()
        text = f"{title}. {body}" if title else body
        if not text:
            raise DataError(f"{art_path}: article id={aid} (#{n}) is empty")
        texts.append(text)
        labels.append(truth[aid])
        ids.append(aid)
    if not texts:
        raise DataError(f"{art_path}: no <article> elements")
    return TextTable(texts, labels, None, ids)
