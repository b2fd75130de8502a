"""A folder of plain-text books (Project Gutenberg files, as PG-19 uses them): reading one
book, stripping the Project Gutenberg header and footer, and the split by whole book.

A folder holds ``<stem>.txt`` books and, optionally, a ``PROVENANCE.txt`` whose "Proposed
fixed split" block gives the split::

    Proposed fixed split (by whole book)
      train      (13 books, ...): war_and_peace les_miserables ...
      validation (1 books, ...): dracula
      test       (1 books, ...): middlemarch

(``validation`` is our ``val``.) A split given in the config takes precedence.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from tsformer.data.encoding import read_text
from tsformer.data.errors import DataError

SPLITS = ("train", "val", "test")
PROVENANCE = "PROVENANCE.txt"
# The marker lines around a Project Gutenberg book, e.g. "*** START OF THE PROJECT GUTENBERG
# EBOOK DRACULA ***" (older files: "***START OF THIS ..."; one is indented).
_START = re.compile(r"^[ \t]*\*\*\*[ \t]*START OF\b.*$", re.MULTILINE | re.IGNORECASE)
_END = re.compile(r"^[ \t]*\*\*\*[ \t]*END OF\b.*$", re.MULTILINE | re.IGNORECASE)
_BLANK_LINES = re.compile(r"(?:[ \t]*\n)*")
_SPLIT_LINE = re.compile(r"[ \t]+(train|validation|val|test)\b[^:\n]*:(.*)$", re.IGNORECASE)


def strip_gutenberg(text: str, name: str = "text") -> str:
    """The book between the ``*** START OF`` and ``*** END OF`` lines, blank lines around it
    dropped (what PG-19 keeps of a Project Gutenberg file).

    Args:
        text (str): the whole file, with ``\\n`` line ends.
        name (str): the file, for error messages.

    Returns:
        str: the book's text.

    Raises:
        DataError: a marker line is missing.
    """
    start = _START.search(text)
    if start is None:
        raise DataError(f"{name}: no '*** START OF' line (the end of the Project Gutenberg header); "
                        "data.strip_gutenberg=false reads files without one whole")
    end = _END.search(text, start.end())
    if end is None:
        raise DataError(f"{name}: no '*** END OF' line after line {text.count(chr(10), 0, start.start()) + 1} "
                        "(the start of the Project Gutenberg footer); data.strip_gutenberg=false reads "
                        "files without one whole")
    body = text[start.end() : end.start()]
    return body[_BLANK_LINES.match(body, 1 if body.startswith("\n") else 0).end() :].rstrip()


def read_book(path: str | Path, strip: bool = True, encoding: str = "utf-8") -> str:
    """One book: decoded with ``encoding`` (UTF-8 by default), a leading byte-order mark dropped, ``\\r\\n`` -> ``\\n``, and (with
    ``strip``) the Project Gutenberg header and footer removed.

    Args:
        path (str | Path): a ``.txt`` file.
        strip (bool): keep only the text between the ``*** START OF`` / ``*** END OF`` lines.
        encoding (str): any Python codec.

    Returns:
        str: the book's text.

    Raises:
        DataError: undecodable bytes (naming the offset), a marker missing, or no text left.
    """
    path = Path(path)
    text = read_text(path, encoding)
    text = text.removeprefix("\ufeff").replace("\r\n", "\n")
    if strip:
        text = strip_gutenberg(text, str(path))
    if not text.strip():
        raise DataError(f"{path}: no text" + (" between the Project Gutenberg markers" if strip else ""))
    return text


def provenance_split(folder: str | Path) -> dict[str, list[str]]:
    """The "Proposed fixed split" block of ``<folder>/PROVENANCE.txt``: book stems per split.

    The block is the header line and the indented lines after it, up to the first blank or
    unindented line; its ``train``, ``validation`` (or ``val``) and ``test`` lines list
    the stems after the colon.

    Args:
        folder (str | Path): the books folder.

    Returns:
        dict[str, list[str]]: ``train``, ``val`` and ``test`` stems.

    Raises:
        DataError: no PROVENANCE.txt, no block, or a split line missing or repeated.
    """
    path = Path(folder) / PROVENANCE
    if not path.is_file():
        raise DataError(f"{folder}: no {PROVENANCE} to take the split by book from; give data.split "
                        "(train / val / test lists of book names)")
    lines = path.read_text(encoding="utf-8-sig").splitlines()
    head = next((i for i, line in enumerate(lines) if "proposed fixed split" in line.lower()), None)
    if head is None:
        raise DataError(f"{path}: no 'Proposed fixed split' block; give data.split instead")
    out: dict[str, list[str]] = {}
    for i in range(head + 1, len(lines)):
        line = lines[i]
        if not line.strip() or not line[0].isspace():
            break
        m = _SPLIT_LINE.match(line)
        if m is None:
            continue
        key = "val" if m.group(1).lower().startswith("val") else m.group(1).lower()
        if key in out:
            raise DataError(f"{path}, line {i + 1}: a second {m.group(1)!r} line in the 'Proposed fixed split' block")
        out[key] = m.group(2).split()
    missing = [k for k in SPLITS if k not in out]
    if missing:
        raise DataError(f"{path}: the 'Proposed fixed split' block has no {' / '.join(missing)} line")
    return out


def book_split(folder: str | Path, split: Mapping | None = None) -> dict[str, list[Path]]:
    """The book files of each split, checked: every split non-empty, no book in two splits
    (or twice in one), every listed book present. Books of the folder in no split are unused.

    Args:
        folder (str | Path): the books folder.
        split (Mapping | None): ``train`` / ``val`` / ``test`` lists of book stems (``.txt``
            optional; ``validation`` is read as ``val``); None takes the folder's
            ``PROVENANCE.txt`` split (:func:`provenance_split`).

    Returns:
        dict[str, list[Path]]: the files of ``train``, ``val`` and ``test``, in listed order.

    Raises:
        DataError: a bad split (the message names the field or the file).
    """
    folder = Path(folder)
    if split is None:
        split, where = provenance_split(folder), str(folder / PROVENANCE)
    else:
        where = "data.split"
        if not isinstance(split, Mapping):
            raise DataError(f"{where} must map train / val / test to lists of book names, got {split!r}")
        split = {("val" if str(k) == "validation" else str(k)): v for k, v in split.items()}
        unknown = sorted(set(split) - set(SPLITS))
        if unknown:
            raise DataError(f"{where}: unknown split(s) {unknown}; use train, val and test")
    seen: dict[str, str] = {}
    out: dict[str, list[Path]] = {}
    for k in SPLITS:
        names = split.get(k)
        if names is not None and (isinstance(names, str) or not isinstance(names, Sequence)):
            raise DataError(f"{where}.{k} must be a list of book names, got {names!r}")
        if not names:
            raise DataError(f"{where}: the {k} split lists no book")
        out[k] = []
        for name in names:
            stem = str(name).removesuffix(".txt")
            if stem in seen:
                raise DataError(f"{where}: book {stem!r} is in the {seen[stem]} split and again in {k}"
                                if seen[stem] != k else f"{where}: book {stem!r} is listed twice in {k}")
            seen[stem] = k
            path = folder / f"{stem}.txt"
            if not path.is_file():
                raise DataError(f"{path}: no such book (listed in the {k} split of {where})")
            out[k].append(path)
    return out
