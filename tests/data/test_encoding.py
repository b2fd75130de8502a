"""data.encoding across the readers (text, forecasting CSV, speech manifests) and the folder
reader of documents (any file name, data.glob, train/test folders, empty documents)."""

from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd
import pytest
from hydra.utils import instantiate

from tsformer.data import encoding as enc_mod
from tsformer.data.encoding import codec, first_undecodable, read_text
from tsformer.data.errors import DataError
from tsformer.data.forecasting.longhorizon import read_matrix
from tsformer.data.forecasting.readers import read_series
from tsformer.data.forecasting.user_csv import read_user_csv
from tsformer.data.speech.manifest import read_manifest
from tsformer.data.text.documents import read_csv_docs, read_folder_docs, read_jsonl_docs, split_folder
from tsformer.data.text.readers import read_documents
from tsformer.train import compose_config, train

POUND = "£"  # 0xa3 in Latin-1: not valid UTF-8 on its own


def undecodable(path, offset):
    """The error expected for ``path`` read as UTF-8: file, byte offset, the fix."""
    return rf"{path}: cannot decode at byte {offset} \(a3\) as utf-8; set data.encoding="


def test_codec_and_offsets(tmp_path, monkeypatch):
    assert codec(None) == codec("utf-8") == codec("UTF8") == "utf-8-sig"  # a BOM is dropped
    assert codec("latin-1") == "latin-1"
    with pytest.raises(DataError, match=r"data.encoding='klingon': unknown text encoding"):
        codec("klingon")
    with pytest.raises(DataError, match="not a text encoding"):
        codec("zlib_codec")
    p = tmp_path / "a.txt"
    p.write_bytes(b"ab\xc3\xa9cd\xa3e")  # "abécd" then a lone 0xa3 at byte 6
    assert first_undecodable(p, "utf-8") == (6, b"\xa3")
    assert first_undecodable(p, "latin-1") is None
    monkeypatch.setattr(enc_mod, "_CHUNK", 3)  # a two-byte character across chunks, error in a later chunk
    assert first_undecodable(p, "utf-8") == (6, b"\xa3")
    with pytest.raises(DataError, match=undecodable(p, 6)):
        read_text(p)
    assert read_text(p, "latin-1").endswith("cd£e")
    (tmp_path / "bom.csv").write_bytes("\ufefftext,label\nx,y\n".encode())
    assert read_csv_docs(tmp_path / "bom.csv").texts == ["x"]  # the BOM is not part of the 'text' column


def test_text_readers_take_data_encoding(tmp_path):
    csv_path = tmp_path / "news.csv"
    csv_path.write_bytes(f"text,label\nshares up 3{POUND},business\nnew striker,sport\n".encode("latin-1"))
    with pytest.raises(DataError, match=undecodable(csv_path, 22)):
        read_csv_docs(csv_path)
    assert read_csv_docs(csv_path, encoding="latin-1").texts[0] == f"shares up 3{POUND}"
    jl = tmp_path / "news.jsonl"
    jl.write_bytes((json.dumps({"text": "x", "label": "a"}) + "\n" + '{"text": "3\xa3", "label": "b"}\n')
                   .encode("latin-1"))
    with pytest.raises(DataError, match=r"news.jsonl: cannot decode at byte 39 \(a3\)"):
        read_jsonl_docs(jl)
    assert read_jsonl_docs(jl, encoding="latin-1").texts == ["x", f"3{POUND}"]
    # cp1252 and utf-16 too: any Python codec
    (tmp_path / "w.csv").write_bytes("text,label\n\u201cquoted\u201d,a\n".encode("cp1252"))
    assert read_documents(tmp_path / "w.csv", encoding="cp1252").texts == ["\u201cquoted\u201d"]
    (tmp_path / "u.csv").write_text("text,label\nx,a\n", encoding="utf-16")
    assert read_documents(tmp_path / "u.csv", encoding="utf-16").labels == ["a"]


def make_bydate(root, encoding="latin-1"):
    """A 20news-bydate look-alike: <name>-train/<label>/<number>, no extension, Latin-1."""
    docs = {"train": {"rec.autos": ["engine and wheels", f"car for {POUND}900"], "sci.space": ["orbit", "rocket"]},
            "test": {"rec.autos": ["brakes"], "sci.space": ["launch pad"]}}
    for part, labels in docs.items():
        for label, texts in labels.items():
            d = root / f"20news-bydate-{part}" / label
            d.mkdir(parents=True)
            for i, t in enumerate(texts):
                (d / str(10000 + i)).write_bytes(t.encode(encoding))
    (root / "20news-bydate-train" / "rec.autos" / ".DS_Store").write_bytes(b"\x00\x01\xa3")  # hidden: skipped
    return root / "20news-bydate-train", root / "20news-bydate-test"


def test_folder_reader_bydate_layout(tmp_path):
    train_dir, test_dir = make_bydate(tmp_path)
    assert split_folder("20news-bydate-train") == "train" and split_folder("my_test") == "test"
    assert split_folder("rec.autos") is None and split_folder("contest") is None
    with pytest.raises(DataError, match=undecodable(train_dir / "rec.autos" / "10001", 8)):
        read_folder_docs(train_dir)
    t = read_folder_docs(train_dir, encoding="latin-1")
    assert t.labels == ["rec.autos", "rec.autos", "sci.space", "sci.space"] and t.splits is None
    assert t.texts[1] == f"car for {POUND}900" and t.ids[0] == "rec.autos/10000"
    # the parent of both folders: split folders recognised by their suffix
    both = read_folder_docs(tmp_path, encoding="latin-1")
    assert both.splits == ["test", "test", "train", "train", "train", "train"]
    # separate folders with any names, joined by read_documents' split
    t = read_documents(test_dir, encoding="latin-1", split="test")
    assert t.splits == ["test", "test"] and t.texts == ["brakes", "launch pad"]
    # data.glob narrows the files
    (train_dir / "sci.space" / "notes.txt").write_text("a note")
    assert read_folder_docs(train_dir, glob="*.txt").texts == ["a note"]
    with pytest.raises(DataError, match=r"no files matching '\*.md'"):
        read_folder_docs(train_dir, glob="*.md")


def test_empty_documents_skipped_with_a_warning_or_an_error(tmp_path, caplog):
    for label, texts in {"a": ["one", "", "two"], "b": ["three", " \n "]}.items():
        (tmp_path / label).mkdir()
        for i, t in enumerate(texts):
            (tmp_path / label / f"{i}").write_text(t)
    with caplog.at_level(logging.WARNING):
        t = read_folder_docs(tmp_path, skip_bad=True)
    assert t.texts == ["one", "two", "three"]
    assert "skipped 2 empty document(s)" in caplog.text and str(tmp_path / "a" / "1") in caplog.text
    with pytest.raises(DataError, match=rf"{tmp_path / 'a' / '1'}: empty document \(data.skip_bad=true"):
        read_folder_docs(tmp_path, skip_bad=False)
    (tmp_path / "e.csv").write_text("text,label\nx,a\n  ,b\n")
    assert read_csv_docs(tmp_path / "e.csv", skip_bad=True).texts == ["x"]
    with pytest.raises(DataError, match=r"row 3 .*empty 'text'"):
        read_csv_docs(tmp_path / "e.csv")


def test_textcls_latin1_folders_through_train(tmp_path):
    """task=textcls on Latin-1 train/test folders: the UTF-8 default fails before anything
    is written, naming the file, the byte and data.encoding; data.encoding=latin-1 reads."""
    train_dir, test_dir = make_bydate(tmp_path / "data")
    for part in (train_dir, test_dir):  # a few more documents per class for the splits
        for label in ("rec.autos", "sci.space"):
            for i in range(6):
                (part / label / str(20000 + i)).write_bytes(f"{label} words {i} {POUND}{i}".encode("latin-1"))
    run = tmp_path / "run"
    base = ["task=textcls", f"data.train_path={train_dir}", f"data.test_path={test_dir}", "data.max_tokens=32",
            "data.vocab_size=40", "data.batch_size=4", "data.baseline=false", f"run_dir={run}",
            "trainer.max_steps=1", "trainer.val_check_interval=1", "print_metrics=false", "logger=csv",
            "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false", "model.d_model=16",
            "model.n_heads=2", "model.n_layers=1", "model.d_ff=32", "model.window=[4]", "model.dilation=[1]"]
    with pytest.raises(DataError, match=undecodable(train_dir / "rec.autos" / "10001", 8) + "<codec>"):
        train(compose_config(base))
    assert not run.exists()
    cfg = compose_config(base + ["data.encoding=latin-1"])
    dm = instantiate(cfg.data, _convert_="all")
    dm.setup("fit")
    assert dm.classes == ["rec.autos", "sci.space"]
    assert len(dm.split_idx["test"]) == 14 and all(i.startswith("test:") for i in np.asarray(dm.table.ids)[
        dm.split_idx["test"]])
    assert any(POUND in t for t in dm.split_texts("train"))


@pytest.mark.slow
def test_textcls_latin1_trains(tmp_path):
    train_dir, test_dir = make_bydate(tmp_path / "data")
    for part in (train_dir, test_dir):
        for label in ("rec.autos", "sci.space"):
            for i in range(6):
                (part / label / str(20000 + i)).write_bytes(f"{label} words {i} {POUND}{i}".encode("latin-1"))
    cfg = compose_config(["task=textcls", f"data.train_path={train_dir}", f"data.test_path={test_dir}",
                          "data.encoding=latin-1", "data.max_tokens=32", "data.vocab_size=40", "data.batch_size=4",
                          f"run_dir={tmp_path / 'run'}", "trainer.max_steps=2", "trainer.val_check_interval=1",
                          "print_metrics=false", "logger=csv", "trainer.enable_progress_bar=false",
                          "trainer.enable_model_summary=false", "model.d_model=16", "model.n_heads=2",
                          "model.n_layers=1", "model.d_ff=32", "model.window=[4]", "model.dilation=[1]"])
    metrics = train(cfg)
    assert 0 <= metrics["test/accuracy"] <= 1 and metrics["baseline/tfidf_lr/accuracy"] > 0.9  # 13 of 14


def test_forecasting_readers_take_data_encoding(tmp_path):
    times = pd.date_range("2024-01-01", periods=6, freq="h").astype(str)
    long_rows = "series,time,value\n" + "".join(f"caf\xe9 {POUND},{t},{i}\n" for i, t in enumerate(times))
    p = tmp_path / "long.csv"
    p.write_bytes(long_rows.encode("latin-1"))
    with pytest.raises(DataError, match=r"long.csv: cannot decode at byte 21 \(e9\) as utf-8; set data.encoding"):
        read_series(p)
    assert read_series(p, encoding="latin-1").names == [f"caf\xe9 {POUND}"]
    with pytest.raises(DataError, match=r"long.csv: cannot decode at byte 21"):
        read_user_csv(p, time_col="time", target="value", id_col="series")
    t = read_user_csv(p, time_col="time", target="value", id_col="series", encoding="latin-1")
    assert t.names == [f"caf\xe9 {POUND}"] and t.values[:, 0].tolist() == list(range(6))
    wide = tmp_path / "wide.csv"
    wide.write_bytes(("date,price \xa3\n" + "".join(f"{t},{i}\n" for i, t in enumerate(times))).encode("latin-1"))
    with pytest.raises(DataError, match=r"wide.csv: cannot decode at byte 11"):
        read_user_csv(wide, time_col="date")
    assert read_user_csv(wide, time_col="date", encoding="latin-1").names == [f"price {POUND}"]
    assert read_matrix(wide, encoding="latin-1")[1] == [f"price {POUND}"]
    with pytest.raises(DataError, match=r"wide.csv: cannot decode at byte 11"):
        read_matrix(wide)


def test_csv_task_config_reaches_the_reader(tmp_path):
    times = pd.date_range("2024-01-01", periods=40, freq="h").astype(str)
    p = tmp_path / "w.csv"
    p.write_bytes(("date,k\xa3\n" + "".join(f"{t},{i % 5}\n" for i, t in enumerate(times))).encode("latin-1"))
    base = ["task=csv", f"data.path={p}", "data.context_length=4", "data.horizon=2", f"run_dir={tmp_path / 'run'}"]
    with pytest.raises(DataError, match=r"w.csv: cannot decode at byte 6"):
        instantiate(compose_config(base).data, _convert_="all").setup("fit")
    dm = instantiate(compose_config(base + ["data.encoding=latin-1"]).data, _convert_="all")
    dm.setup("fit")
    assert dm.table.names == [f"k{POUND}"]
    assert compose_config(["task=electricity", "data.encoding=cp1252"]).data.encoding == "cp1252"


def test_speech_manifests_take_data_encoding(tmp_path):
    (tmp_path / "m.csv").write_bytes(f"path,text\na.wav,caf\xe9 {POUND}\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"m.csv: cannot decode at byte 19 \(e9\)"):
        read_manifest(tmp_path / "m.csv")
    rows, _ = read_manifest(tmp_path / "m.csv", encoding="latin-1", punctuation="keep")
    assert rows[0][0].text == f"caf\xe9 {POUND}"
    (tmp_path / "m.jsonl").write_bytes(b'{"audio_filepath": "a.wav", "text": "\xa3"}\n')
    with pytest.raises(DataError, match=r"m.jsonl: cannot decode at byte 37"):
        read_manifest(tmp_path / "m.jsonl")
    assert read_manifest(tmp_path / "m.jsonl", encoding="latin-1", punctuation="keep")[0][0][0].text == POUND
    k = tmp_path / "kaldi"
    k.mkdir()
    (k / "wav.scp").write_text("r1 a.wav\n")
    (k / "text").write_bytes("r1 caf\xe9\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"kaldi/text: cannot decode at byte 6"):
        read_manifest(k)
    assert read_manifest(k, encoding="latin-1")[0][0][0].text == "caf\xe9"
    cfg = compose_config(["task=asr", f"data.manifest={tmp_path / 'm.jsonl'}", "data.encoding=latin-1"])
    dm = instantiate(cfg.data, _convert_="all")
    assert dm.encoding == "latin-1"
    with pytest.raises(DataError, match="a.wav: audio file not found"):  # decoded; then the audio is checked
        dm.read_split("train")
