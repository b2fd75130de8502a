"""Text files in any encoding (``data.encoding``), undecodable bytes named by file and offset.

Many real corpora are not UTF-8 (news downloads in Latin-1 or cp1252, manifests written
on Windows). Every reader of text, CSV and manifest files takes an ``encoding`` (any
Python codec, default ``utf-8``) and, on bytes it cannot decode, raises a
:class:`~tsformer.data.errors.DataError` naming the file, the byte offset and the byte,
and saying to set ``data.encoding``.
"""

from __future__ import annotations

import codecs
import contextlib
import gzip
import zlib
from collections.abc import Iterator
from pathlib import Path

from tsformer.data.errors import DataError

DEFAULT = "utf-8"
_CHUNK = 1 << 16


def codec(encoding: str | None, where: str = "data.encoding") -> str:
    """The codec to read with: ``encoding`` checked against Python's codecs.

    UTF-8 reads as ``utf-8-sig`` so that a byte-order mark (Windows editors write one) is
    dropped instead of ending up in the first column's name.

    Raises:
        DataError: ``encoding`` is not a Python text codec.
    """
    name = encoding or DEFAULT
    try:
        info = codecs.lookup(name)
    except (LookupError, TypeError):
        raise DataError(f"{where}={name!r}: unknown text encoding; use a Python codec name "
                        "(utf-8, latin-1, cp1252, utf-16, ...)") from None
    if not getattr(info, "_is_text_encoding", True):
        raise DataError(f"{where}={name!r}: not a text encoding")
    return "utf-8-sig" if info.name == "utf-8" else name


def _raw(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def first_undecodable(path: str | Path, encoding: str | None) -> tuple[int, bytes] | None:
    """``(byte offset, bad bytes)`` of the first bytes of ``path`` that ``encoding`` cannot
    decode (offsets of a ``.gz`` file are in its uncompressed text), or None if all decode."""
    decoder = codecs.getincrementaldecoder(codec(encoding))()
    pos = 0
    with _raw(Path(path)) as f:
        while True:
            chunk = f.read(_CHUNK)
            try:
                decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as e:
                # e.start counts from the bytes the decoder still held back plus this chunk
                held = len(e.object) - len(chunk)
                return pos - held + e.start, bytes(e.object[e.start : e.end])
            except UnicodeError:  # e.g. "UTF-16 stream does not start with BOM": no position given
                return pos, chunk[:2]
            if not chunk:
                return None
            pos += len(chunk)


def undecodable(path: str | Path, encoding: str | None, found: tuple[int, bytes] | None = None) -> DataError:
    """The error for a file ``encoding`` cannot decode: file, byte offset, byte, and the fix.

    ``found``: the ``(offset, bytes)`` where known, else the file is scanned for them."""
    enc = encoding or DEFAULT
    if found is None:
        try:
            found = first_undecodable(path, encoding)
        except (OSError, EOFError, zlib.error):
            pass
    if found is None:
        where = ""
    else:
        offset, bad = found
        where = f" at byte {offset} ({bad[:4].hex(' ')})"
    return DataError(f"{path}: cannot decode{where} as {enc}; set data.encoding=<codec> "
                     "(e.g. data.encoding=latin-1 or cp1252)")


@contextlib.contextmanager
def decoding(path: str | Path, encoding: str | None) -> Iterator[None]:
    """Turn a :class:`UnicodeError` raised while reading ``path`` into :func:`undecodable`."""
    try:
        yield
    except UnicodeError:
        raise undecodable(path, encoding) from None


def read_text(path: str | Path, encoding: str | None = DEFAULT) -> str:
    """The whole text of ``path`` (``.gz`` accepted) decoded with ``encoding``."""
    path = Path(path)
    enc = codec(encoding)
    try:
        with _raw(path) as f:
            data = f.read()
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise DataError(f"{path}: cannot read the compressed file ({e})") from None
    try:
        return data.decode(enc)
    except UnicodeDecodeError as e:
        raise undecodable(path, encoding, (e.start, data[e.start : e.end])) from None
    except UnicodeError:
        raise undecodable(path, encoding, (0, data[:2])) from None


def open_text(path: str | Path, encoding: str | None = DEFAULT, newline: str | None = None):
    """``path`` (``.gz`` accepted) opened for reading text in ``encoding``; wrap the reading
    in :func:`decoding` to get the offset of undecodable bytes."""
    path = Path(path)
    enc = codec(encoding)
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding=enc, newline=newline)
    return open(path, encoding=enc, newline=newline)
