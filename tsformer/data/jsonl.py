"""JSON-lines files read object by object, every problem named by file and line."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

from tsformer.data.encoding import decoding, open_text
from tsformer.data.errors import DataError


def _raise(msg: str) -> None:
    raise DataError(msg)


def json_objects(path: str | Path, bad: Callable[[str], None] = _raise,
                 encoding: str = "utf-8") -> Iterator[tuple[str, int, dict]]:
    """``(where, line number, object)`` per non-blank line of a JSON-lines file.

    A line that is not valid JSON or not an object goes to ``bad(message)`` (default: raise
    a :class:`DataError` naming the file and line) and is skipped if ``bad`` returns. Bytes
    ``encoding`` cannot decode raise a DataError naming the file and byte offset.
    """
    with open_text(path, encoding) as f, decoding(path, encoding):
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}: line {n}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                bad(f"{where}: invalid JSON ({e.msg}, column {e.colno})")
                continue
            except (ValueError, RecursionError) as e:  # e.g. a 5000-digit number, nesting too deep
                bad(f"{where}: invalid JSON ({type(e).__name__}: {str(e)[:80]})")
                continue
            if not isinstance(obj, dict):
                bad(f"{where}: expected a JSON object, got {type(obj).__name__}")
                continue
            yield where, n, obj
