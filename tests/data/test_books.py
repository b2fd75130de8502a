"""Character LM on a folder of books: reading (BOM, CRLF, Project Gutenberg markers), the split
by whole book (PROVENANCE.txt or data.split), its errors, and the single-file mode unchanged."""

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from tsformer.data.errors import DataError
from tsformer.data.text.books import book_split, provenance_split, read_book, strip_gutenberg
from tsformer.data.text.charlm import CharLMDataModule, RandomWindows, TilingWindows
from tsformer.data.tokenizers import CharVocab
from tsformer.train import REPO_ROOT

EXCERPT = REPO_ROOT / "data" / "pgbooks_excerpt"
EXCERPT_SPLIT = {"train": ["pride_and_prejudice", "bleak_house"], "val": ["dracula"], "test": ["middlemarch"]}


def pg_file(title: str, body: str, eol: str = "\n", bom: bool = True, start: bool = True, end: bool = True) -> bytes:
    """A small file laid out as a Project Gutenberg one: header, markers, body, licence footer."""
    lines = [f"The Project Gutenberg eBook of {title}", "", "Title: " + title, "", ""]
    if start:
        lines.append(f"*** START OF THE PROJECT GUTENBERG EBOOK {title.upper()} ***")
    lines += ["", "", *body.split("\n"), "", ""]
    if end:
        lines.append(f"    *** END OF THE PROJECT GUTENBERG EBOOK {title.upper()} ***")  # indented, as in one
    lines += ["", "Section 1. General Terms of Use and Redistributing Project Gutenberg-tm electronic works", ""]
    return (("\ufeff" if bom else "") + eol.join(lines)).encode("utf-8")


BOOKS = {  # stem: (body, line ending, BOM)
    "alpha": ("  ALPHA\n\nThe first book, with some words.\n" + "Alpha speaks of seas and ships. " * 20, "\r\n", True),
    "beta": ("Beta's tale goes on and on.\n" * 15, "\n", False),
    "gamma": ("Gamma keeps its own secret: ZQXJ ~ ¤ only here.\n" * 5, "\r\n", True),
    "delta": ("Delta is a validation book, told plainly.\n" * 5, "\n", True),
}
SPLIT_BLOCK = """Proposed fixed split (by whole book)
  train      (2 books, 1 bytes, 1 chars): alpha beta
  validation (1 books, 1 bytes, 1 chars): delta
  test       (1 books, 1 bytes, 1 chars): gamma
  Rationale: test = gamma: only book with its secret; validation = delta.
  (Overlap: train: none.)

Per file
[alpha.txt]  split: train
  test: not a split line
"""


@pytest.fixture
def books(tmp_path):
    """A books folder with a PROVENANCE.txt: alpha + beta train, delta val, gamma test."""
    for stem, (body, eol, bom) in BOOKS.items():
        (tmp_path / f"{stem}.txt").write_bytes(pg_file(stem, body, eol, bom))
    (tmp_path / "PROVENANCE.txt").write_text("books for a test\n\n" + SPLIT_BLOCK)
    return tmp_path


def stream(dm: CharLMDataModule, split: str) -> str:
    return dm.vocab.decode(dm.ids[split].tolist())


# -- one book ---------------------------------------------------------------------------------------
def test_read_book_drops_bom_crlf_and_the_gutenberg_header_and_footer(tmp_path):
    body = "  INDENTED TITLE\n\nFirst line.\nLast line."
    p = tmp_path / "b.txt"
    p.write_bytes(pg_file("b", body, eol="\r\n", bom=True))
    assert read_book(p) == body, "the text between the markers, first-line indent kept"
    whole = read_book(p, strip=False)
    assert not whole.startswith("\ufeff") and "\r" not in whole and whole.startswith("The Project Gutenberg")
    assert "*** START OF" in whole and "Section 1." in whole
    older = "Header\n***START OF THIS PROJECT GUTENBERG EBOOK X***\nText.\n***END OF THIS PROJECT GUTENBERG EBOOK X***\n"
    assert strip_gutenberg(older) == "Text."
    assert strip_gutenberg("*** START OF X ***\n*** START: FULL LICENSE ***\n*** END OF X ***") == "*** START: FULL LICENSE ***"


@pytest.mark.parametrize("start, end, match", [(False, True, "no '\\*\\*\\* START OF' line"),
                                               (True, False, "no '\\*\\*\\* END OF' line after line 6")])
def test_read_book_names_the_file_missing_a_marker(tmp_path, start, end, match):
    p = tmp_path / "nomark.txt"
    p.write_bytes(pg_file("nomark", "Some text.", start=start, end=end))
    with pytest.raises(DataError, match=f"nomark.txt: {match}.*strip_gutenberg=false"):
        read_book(p)
    assert "Some text." in read_book(p, strip=False)


def test_read_book_errors(tmp_path):
    p = tmp_path / "latin1.txt"
    p.write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin1.txt: cannot decode at byte 3 \(e9\) as utf-8; set data.encoding="):
        read_book(p, strip=False)
    assert read_book(p, strip=False, encoding="latin-1") == "caf\xe9"
    p = tmp_path / "empty.txt"
    p.write_bytes(pg_file("empty", "\n  \n"))
    with pytest.raises(DataError, match="empty.txt: no text between the Project Gutenberg markers"):
        read_book(p)


# -- the split --------------------------------------------------------------------------------------
def test_provenance_split_of_the_shipped_excerpt_and_a_written_block(books):
    assert provenance_split(EXCERPT) == EXCERPT_SPLIT
    assert provenance_split(books) == {"train": ["alpha", "beta"], "val": ["delta"], "test": ["gamma"]}
    files = book_split(books)
    assert {k: [f.name for f in v] for k, v in files.items()} == {
        "train": ["alpha.txt", "beta.txt"], "val": ["delta.txt"], "test": ["gamma.txt"]}


def test_provenance_split_errors(tmp_path):
    with pytest.raises(DataError, match="no PROVENANCE.txt to take the split by book from; give data.split"):
        provenance_split(tmp_path)
    (tmp_path / "PROVENANCE.txt").write_text("some books\n")
    with pytest.raises(DataError, match="PROVENANCE.txt: no 'Proposed fixed split' block"):
        provenance_split(tmp_path)
    (tmp_path / "PROVENANCE.txt").write_text(SPLIT_BLOCK.replace("  test       (1 books, 1 bytes, 1 chars): gamma\n", ""))
    with pytest.raises(DataError, match="PROVENANCE.txt: the 'Proposed fixed split' block has no test line"):
        provenance_split(tmp_path)
    (tmp_path / "PROVENANCE.txt").write_text(SPLIT_BLOCK.replace("  validation", "  train: beta\n  validation"))
    with pytest.raises(DataError, match="PROVENANCE.txt, line 3: a second 'train' line"):
        provenance_split(tmp_path)


@pytest.mark.parametrize("split, match", [
    ({"train": ["alpha", "gamma"], "val": ["delta"], "test": ["gamma"]},
     "data.split: book 'gamma' is in the train split and again in test"),
    ({"train": ["alpha", "alpha"], "val": ["delta"], "test": ["gamma"]}, "book 'alpha' is listed twice in train"),
    ({"train": ["alpha", "omega"], "val": ["delta"], "test": ["gamma"]},
     r"omega.txt: no such book \(listed in the train split of data.split\)"),
    ({"train": ["alpha"], "val": [], "test": ["gamma"]}, "data.split: the val split lists no book"),
    ({"train": ["alpha"], "test": ["gamma"]}, "data.split: the val split lists no book"),
    ({"train": ["alpha"], "val": ["delta"], "test": ["gamma"], "dev": ["beta"]}, r"unknown split\(s\) \['dev'\]"),
    ({"train": "alpha", "val": ["delta"], "test": ["gamma"]}, "data.split.train must be a list of book names"),
    (["alpha"], "data.split must map train / val / test"),
])
def test_book_split_errors_name_the_field_or_file(books, split, match):
    with pytest.raises(DataError, match=match):
        book_split(books, split)


def test_configured_split_overrides_provenance(books):
    split = OmegaConf.create({"train": ["alpha.txt"], "validation": ["beta"], "test": ["delta"]})  # as Hydra passes it
    files = book_split(books, split)
    assert {k: [f.stem for f in v] for k, v in files.items()} == {"train": ["alpha"], "val": ["beta"], "test": ["delta"]}
    (books / "PROVENANCE.txt").unlink()
    assert book_split(books, split)["test"][0].stem == "delta", "data.split needs no PROVENANCE.txt"
    with pytest.raises(DataError, match="no PROVENANCE.txt"):
        CharLMDataModule(str(books), context=16).setup("fit")


# -- the data module on a folder --------------------------------------------------------------------
def test_folder_splits_by_book_and_the_test_book_is_never_in_training(books):
    dm = CharLMDataModule(str(books), context=16)
    dm.setup("fit")
    assert dm.books == {"train": ["alpha", "beta"], "val": ["delta"], "test": ["gamma"]}
    text = {k: read_book(books / f"{k}.txt") for k in BOOKS}
    assert stream(dm, "train") == text["alpha"] + "\n\n" + text["beta"], "books joined by the separator"
    train = stream(dm, "train")
    seen = lambda t: "".join(c if c in train else "\ufffd" for c in t)  # decode() shows id 0 as U+FFFD
    assert stream(dm, "val") == seen(text["delta"]) and stream(dm, "test") == seen(text["gamma"])
    assert "Gamma" not in train and "Delta" not in train and "PROJECT GUTENBERG" not in train.upper()
    assert dm.vocab.chars == "".join(sorted(set(train))), "vocabulary of the training books only"
    secret = [c for c in "ZQXJ~¤" if c not in train]
    assert secret and all(c not in dm.vocab.index for c in secret)
    assert int((dm.ids["test"] == 0).sum()) == sum(c not in train for c in text["gamma"]) > 30, "unseen -> id 0"
    assert dm.ids["train"].dtype == np.uint8
    windows = RandomWindows(dm.ids["train"], 16, 4)
    assert windows[3]["inputs"].dtype == torch.int64 and TilingWindows(dm.ids["test"], 16)[0]["targets"].dtype == torch.int64

    dm2 = CharLMDataModule(str(books), context=16, separator="\n<|book|>\n")
    dm2.setup("fit")
    assert stream(dm2, "train") == text["alpha"] + "\n<|book|>\n" + text["beta"]


def test_folder_errors(books):
    with pytest.raises(DataError, match="the training books \\['alpha', 'beta'\\] have \\d+ characters, too few"):
        CharLMDataModule(str(books), context=4096).setup("fit")
    (books / "beta.txt").write_bytes(pg_file("beta", "No end marker.", end=False))
    with pytest.raises(DataError, match="beta.txt: no '\\*\\*\\* END OF' line"):
        CharLMDataModule(str(books), context=16).setup("fit")
    dm = CharLMDataModule(str(books), context=16, strip_gutenberg=False)
    dm.setup("fit")
    assert "*** START OF THE PROJECT GUTENBERG EBOOK ALPHA ***" in stream(dm, "train")
    with pytest.raises(DataError, match="nowhere: no such file or folder"):
        CharLMDataModule(str(books / "nowhere"), context=16).setup("fit")


def test_shipped_excerpt(tmp_path):
    dm = CharLMDataModule(str(EXCERPT), context=64)
    dm.setup("fit")
    assert dm.books == EXCERPT_SPLIT
    for k, n in (("train", 30_000), ("val", 15_000), ("test", 15_000)):
        assert len(dm.ids[k]) > n, k
    test, train = stream(dm, "test"), stream(dm, "train")
    assert test.startswith("cover\n\n\n\n\nMiddlemarch") and test.rstrip().endswith("how to walk.”")
    assert all(test[i : i + 60] not in train for i in range(0, len(test) - 60, 997)), "test text not in training"
    for part in (train, test, stream(dm, "val")):
        assert "\r" not in part and "\ufeff" not in part and "START OF" not in part and "Gutenberg-tm" not in part


# -- one file: as before ---------------------------------------------------------------------------
def test_single_file_mode_is_unchanged(tmp_path):
    text = "".join(chr(c) for c in np.random.default_rng(0).integers(32, 400, 3000)) + "\U0001f600 tail"
    p = tmp_path / "t.txt"
    p.write_text(text, encoding="utf-8")
    dm = CharLMDataModule(str(p), context=64, val_fraction=0.1, test_fraction=0.2)
    dm.setup("fit")
    n = len(text)
    n_test, n_val = int(n * 0.2), int(n * 0.1)
    parts = {"train": text[: n - n_val - n_test], "val": text[n - n_val - n_test : n - n_test], "test": text[n - n_test :]}
    assert dm.vocab.chars == "".join(sorted(set(parts["train"])))
    assert dm.books is None and dm.ids["train"].dtype == np.int16
    for k, part in parts.items():  # the pre-vectorised encoder, character by character
        assert dm.ids[k].tolist() == [dm.vocab.index.get(c, 0) for c in part], k
    v = CharVocab.fit("ab\U0001f600")
    assert v.encode("a\U0001f600c\U0001f601", np.int64).tolist() == [1, 3, 0, 0] and v.encode("").tolist() == []
