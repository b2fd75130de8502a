"""Build the Project Gutenberg books excerpt (data/pgbooks_excerpt) from the full book folder.

    python data/pgbooks_excerpt/prepare.py [--src ../shared/data/pgbooks] [--text-bytes 20000]

Each excerpt is a byte-for-byte copy of lines ``1 .. start_line + k`` and ``end_line .. last``
of the original file: the Project Gutenberg header with its ``*** START OF`` line, the first
``--text-bytes`` of the book (up to the next blank line), then the ``*** END OF`` line and the
whole footer with the Project Gutenberg licence. BOMs and line endings stay as they are, so
a loader's BOM / CRLF / marker handling is exercised. Writes the excerpts and a PROVENANCE.txt
in the format of the source folder's (with the same "Proposed fixed split" block layout).
"""

from __future__ import annotations

import argparse
import hashlib
import re
from pathlib import Path

HERE = Path(__file__).resolve().parent
# The full set's validation and test books and two training books: a BOM-less LF file
# (pride_and_prejudice), CRLF files with a BOM (bleak_house, middlemarch) and an older
# '***START OF' marker without a space (bleak_house).
SPLIT = {"train": ["pride_and_prejudice", "bleak_house"], "validation": ["dracula"], "test": ["middlemarch"]}
START = re.compile(rb"^[ \t]*\*\*\*[ \t]*START OF", re.IGNORECASE)
END = re.compile(rb"^[ \t]*\*\*\*[ \t]*END OF", re.IGNORECASE)
KEEP = ("title:", "author:", "first published:", "Project Gutenberg eBook", "source:", "licence:")


def stats(data: bytes) -> dict[str, object]:
    """The per-file figures of the PROVENANCE format (line numbers 1-based)."""
    text = data.decode("utf-8")
    lines = data.split(b"\n")
    return {
        "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(), "chars": len(text),
        "chars_lf": len(text.replace("\r\n", "\n")), "lines": text.count("\n") + 1,
        "line_endings": "CRLF" if b"\r\n" in data else "LF", "bom": "yes" if text.startswith("\ufeff") else "no",
        "start_line": next(i + 1 for i, line in enumerate(lines) if START.match(line.lstrip(b"\xef\xbb\xbf"))),
        "end_line": next(i + 1 for i, line in enumerate(lines) if END.match(line)),
    }


def per_file_blocks(provenance: str) -> dict[str, list[str]]:
    """The ``[name.txt]`` blocks of the source PROVENANCE.txt: their indented lines."""
    out: dict[str, list[str]] = {}
    name = None
    for line in provenance.splitlines():
        m = re.match(r"\[(\S+)\.txt\]", line)
        if m:
            name = m.group(1)
            out[name] = []
        elif name and line.startswith("  "):
            out[name].append(line.strip())
        else:
            name = None
    return out


def excerpt(data: bytes, text_bytes: int) -> tuple[bytes, tuple[int, int, int]]:
    """The excerpt, and the original's last kept text line, its END line and its line count."""
    lines = data.split(b"\n")
    st = stats(data)
    s, e = st["start_line"], st["end_line"]  # 1-based
    k, size = s, 0  # k: last kept line (1-based)
    while k + 1 < e and (size < text_bytes or lines[k].strip()):  # stop at a blank line past the size
        size += len(lines[k]) + 1
        k += 1
    return b"\n".join(lines[:k] + lines[e - 1 :]), (k, e, len(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--src", default=str(HERE.parent.parent.parent / "shared" / "data" / "pgbooks"))
    ap.add_argument("--out", default=str(HERE))
    ap.add_argument("--text-bytes", type=int, default=20_000, help="bytes of book text per excerpt (about)")
    args = ap.parse_args()
    src, out = Path(args.src), Path(args.out)
    blocks = per_file_blocks((src / "PROVENANCE.txt").read_text(encoding="utf-8"))

    made: dict[str, tuple[dict, dict, tuple[int, int, int]]] = {}
    for names in SPLIT.values():
        for name in names:
            data = (src / f"{name}.txt").read_bytes()
            orig = stats(data)
            for field in ("bytes", "sha256", "chars", "start_line", "end_line"):  # the source still matches
                assert f"{field}: {orig[field]} " in " ".join(blocks[name]) + " ", (name, field)
            small, cut = excerpt(data, args.text_bytes)
            (out / f"{name}.txt").write_bytes(small)
            made[name] = (orig, stats(small), cut)

    def total(names: list[str], key: str) -> int:
        return sum(made[n][1][key] for n in names)

    every = [n for names in SPLIT.values() for n in names]
    crlf = [n for n in every if made[n][1]["line_endings"] == "CRLF"]
    no_bom = [n for n in every if made[n][1]["bom"] == "no"]
    doc = [
        f"pgbooks_excerpt: short excerpts of {len(every)} of the 15 Project Gutenberg books of ../shared/data/pgbooks "
        "(public domain in the USA), for tests and smoke runs of task=pgbooks (task=charlm on a folder of books).",
        "Each file is a byte-for-byte copy of two line ranges of the original (1-based, inclusive; 'excerpt:' below): "
        "lines 1..k (the Project Gutenberg header, its '*** START OF' line and the first "
        f"~{args.text_bytes // 1000} KB of the book, cut at a blank line) and end_line..last (the '*** END OF' "
        "line and the whole Project Gutenberg footer and licence). Nothing else is changed: BOMs and line endings "
        "are as in the source.",
        f"Made by prepare.py (in this folder): python data/pgbooks_excerpt/prepare.py --text-bytes {args.text_bytes}",
        f"Total: {len(every)} files, {total(every, 'bytes'):,} bytes, {total(every, 'chars'):,} characters (raw).",
        "",
        "Notes for loaders",
        f"- Encoding: strict UTF-8. A UTF-8 BOM (U+FEFF) starts every file but {', '.join(no_bom) or 'none'}.",
        f"- Line endings: {', '.join(crlf)} use CRLF; the others LF.",
        "- The book text lies between the lines '*** START OF ...' and '*** END OF ...' (start_line / end_line "
        "below, in the excerpt); strip the header and footer as PG-19 does.",
        "",
        "Licence: Public domain in the USA (Project Gutenberg edition; the Project Gutenberg licence text is kept "
        "in each file)",
        "(The Project Gutenberg trademark/licence terms apply to redistribution under the PG name; the underlying "
        "texts are public domain in the USA. Check copyright law before use outside the USA.)",
        "",
        "Proposed fixed split (by whole book)",
    ]
    width = max(map(len, SPLIT))
    for split, names in SPLIT.items():
        doc.append(f"  {split:<{width}} ({len(names)} books, {total(names, 'bytes'):,} bytes, "
                   f"{total(names, 'chars'):,} chars): {' '.join(names)}")
    doc += [
        "  Rationale: the full set's validation and test books (dracula, middlemarch) and two of its training books, "
        "chosen so that the excerpt has a BOM-less LF file, CRLF files with a BOM and an older '***START OF' marker "
        "without a space (bleak_house).",
        "",
        "Per file",
    ]
    for split, names in SPLIT.items():
        for name in names:
            orig, st, (k, e, n) = made[name]
            doc.append(f"[{name}.txt]  split: {split}")
            doc += [f"  {line}" for line in blocks[name] if line.startswith(KEEP) and not line.startswith("licence:")]
            doc.append(f"  excerpt: lines 1-{k} and {e}-{n} of pgbooks/{name}.txt (bytes: {orig['bytes']}  "
                       f"sha256: {orig['sha256']})")
            doc.append(f"  bytes: {st['bytes']}  sha256: {st['sha256']}")
            doc.append("  " + "  ".join(f"{f}: {st[f]}" for f in ("chars", "chars_lf", "lines", "line_endings", "bom",
                                                                  "start_line", "end_line")))
            doc += [f"  {line}" for line in blocks[name] if line.startswith("licence:")]
    (out / "PROVENANCE.txt").write_text("\n".join(doc) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
