"""Text readers on fixtures (good and malformed), splits, SentencePiece, batching."""

import io
import json
import tarfile

import numpy as np
import pytest

from tsformer.data.errors import DataError
from tsformer.data.samplers import BucketBatchSampler
from tsformer.data.text.charlm import CharLMDataModule, TilingWindows
from tsformer.data.text.classification import TextClassificationDataModule, collate_docs
from tsformer.data.text.documents import read_csv_docs, read_folder_docs, read_jsonl_docs
from tsformer.data.text.hyperpartisan import read_semeval
from tsformer.data.text.imdb import read_imdb
from tsformer.data.text.readers import read_documents
from tsformer.data.text.splits import assign_splits, stratified_folds, stratified_split
from tsformer.data.tokenizers import CLS_ID, CharVocab, SentencePieceTokenizer

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()


def doc(i, label):
    rng = np.random.default_rng(i)
    bias = WORDS[:6] if label == "a" else WORDS[6:]
    return " ".join(rng.choice(bias, 30)) + f" doc{i}"


# -- CSV / JSONL -------------------------------------------------------------------------------
def test_csv_reader_with_custom_columns_and_split(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text('body,y,part\n"hello, world",pos,train\nbad movie,neg,test\nok,pos,dev\n')
    t = read_csv_docs(p, "body", "y", "part")
    assert t.texts == ["hello, world", "bad movie", "ok"]
    assert t.labels == ["pos", "neg", "pos"] and t.splits == ["train", "test", "val"]


@pytest.mark.parametrize("content, match", [
    ("text,label\na,x\nb\n", r"row 3 .*1 fields, expected 2"),
    ("text,label\na,x\n ,y\n", r"row 3 .*empty 'text'"),
    ("text,label\na,x\nb,\n", r"row 3 .*empty 'label'"),
    ("txt,label\na,x\n", r"no column 'text'"),
])
def test_csv_reader_names_the_bad_row(tmp_path, content, match):
    p = tmp_path / "d.csv"
    p.write_text(content)
    with pytest.raises(DataError, match=match) as e:
        read_csv_docs(p)
    assert str(p) in str(e.value)


def test_csv_bad_split_value(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text("text,label,split\na,x,train\nb,y,holdout\n")
    with pytest.raises(DataError, match=r"row 3.*'holdout'"):
        read_csv_docs(p, split_field="split")


def test_jsonl_reader_and_errors(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text(json.dumps({"t": "one", "l": 1}) + "\n\n" + json.dumps({"t": "two", "l": 0}) + "\n")
    t = read_jsonl_docs(p, "t", "l")
    assert t.texts == ["one", "two"] and t.labels == ["1", "0"] and t.splits is None
    p.write_text(json.dumps({"t": "one", "l": 1}) + "\n{not json\n")
    with pytest.raises(DataError, match="line 2: invalid JSON"):
        read_jsonl_docs(p, "t", "l")
    p.write_text(json.dumps({"t": "one", "l": 1}) + "\n" + json.dumps({"t": "two"}) + "\n")
    with pytest.raises(DataError, match="line 2: missing key 'l'"):
        read_jsonl_docs(p, "t", "l")
    p.write_text("[1, 2]\n")
    with pytest.raises(DataError, match="line 1: expected a JSON object"):
        read_jsonl_docs(p)


# -- folders, SemEval, IMDB ----------------------------------------------------------------------
def test_folder_reader_plain_and_split(tmp_path):
    for lab in ("pos", "neg"):
        (tmp_path / "flat" / lab).mkdir(parents=True)
        (tmp_path / "flat" / lab / "1.txt").write_text(f"{lab} text")
        for sp in ("train", "test"):
            (tmp_path / "tree" / sp / lab).mkdir(parents=True)
            (tmp_path / "tree" / sp / lab / "1.txt").write_text(f"{sp} {lab}")
    t = read_folder_docs(tmp_path / "flat")
    assert sorted(zip(t.labels, t.texts)) == [("neg", "neg text"), ("pos", "pos text")] and t.splits is None
    t = read_folder_docs(tmp_path / "tree")
    assert sorted(zip(t.splits, t.labels)) == [("test", "neg"), ("test", "pos"), ("train", "neg"), ("train", "pos")]
    (tmp_path / "flat" / "pos" / "2.txt").write_text("   ")
    with pytest.raises(DataError, match=r"2\.txt: empty document"):
        read_folder_docs(tmp_path / "flat")


SEMEVAL_ARTICLES = """<?xml version="1.0" encoding="UTF-8"?><articles>
<article id="0000001" published-at="2017-09-10" title="First &amp; title">
<p>Some <a href="http://x" type="external">linked</a> text.</p> <p>Second   paragraph.</p></article>
<article id="0000002" title="Other"><p>Plain.</p></article>
</articles>
"""
SEMEVAL_TRUTH = """<?xml version="1.0" ?>
<articles>
<article hyperpartisan="true" id="0000002" labeled-by="article" url="u"/>
<article hyperpartisan="false" id="0000001" labeled-by="article" url="u"/>
</articles>
"""


def write_semeval(folder, articles=SEMEVAL_ARTICLES, truth=SEMEVAL_TRUTH):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "articles-training-byarticle-20181122.xml").write_text(articles)
    (folder / "ground-truth-training-byarticle-20181122.xml").write_text(truth)
    return folder


def test_semeval_reader_joins_by_id_and_strips_markup(tmp_path):
    t = read_semeval(write_semeval(tmp_path / "hp"))
    assert t.ids == ["0000001", "0000002"]
    assert t.labels == ["false", "true"]
    assert t.texts[0] == "First & title. Some linked text. Second paragraph."
    assert "<" not in t.texts[0] and "href" not in t.texts[0]
    assert read_documents(tmp_path / "hp").labels == t.labels  # format auto-detected


def test_semeval_errors_name_the_article(tmp_path):
    bad = SEMEVAL_TRUTH.replace('hyperpartisan="true"', 'hyperpartisan="maybe"')
    with pytest.raises(DataError, match=r"id=0000002 .*'maybe'"):
        read_semeval(write_semeval(tmp_path / "a", truth=bad))
    missing = SEMEVAL_TRUTH.replace('id="0000001"', 'id="0000009"')
    with pytest.raises(DataError, match="id=0000001 .*no label"):
        read_semeval(write_semeval(tmp_path / "b", truth=missing))
    with pytest.raises(DataError, match="malformed XML at line"):
        read_semeval(write_semeval(tmp_path / "c", articles=SEMEVAL_ARTICLES.replace("</p></article>", "</article>")))


def write_imdb_tar(path, per=3):
    with tarfile.open(path, "w:gz") as tar:
        for sp in ("train", "test"):
            for lab in ("pos", "neg"):
                for i in range(per):
                    data = f"{lab} review {i}<br /><br />more {sp}".encode()
                    ti = tarfile.TarInfo(f"aclImdb/{sp}/{lab}/{i}_{7 if lab == 'pos' else 2}.txt")
                    ti.size = len(data)
                    tar.addfile(ti, io.BytesIO(data))
        ti = tarfile.TarInfo("aclImdb/README")
        ti.size = 2
        tar.addfile(ti, io.BytesIO(b"hi"))
    return path


def test_imdb_reader_archive_and_folder(tmp_path):
    t = read_imdb(write_imdb_tar(tmp_path / "imdb.tar.gz"))
    assert len(t.texts) == 12 and t.splits.count("train") == 6 and t.labels.count("pos") == 6
    assert "<br" not in t.texts[0] and "\n" in t.texts[0]
    with tarfile.open(tmp_path / "imdb.tar.gz") as tar:
        tar.extractall(tmp_path / "x", filter="data")
    t2 = read_documents(tmp_path / "x", "imdb")
    assert sorted(t2.texts) == sorted(t.texts)
    (tmp_path / "junk.tar.gz").write_bytes(b"not an archive")
    with pytest.raises(DataError, match="junk.tar.gz: cannot read"):
        read_imdb(tmp_path / "junk.tar.gz")


def test_shipped_samples_read():
    from tsformer.train import REPO_ROOT

    assert len(read_documents(REPO_ROOT / "data/hyperpartisan").texts) == 40
    assert len(read_documents(REPO_ROOT / "data/imdb/aclImdb_sample.tar.gz").texts) == 120
    assert set(read_documents(REPO_ROOT / "data/textcls/shakespeare_speakers.csv").labels) == {
        "menenius", "gloucester", "romeo"}


# -- splits --------------------------------------------------------------------------------------
def test_stratified_split_is_stratified_disjoint_and_seeded():
    labels = ["a"] * 60 + ["b"] * 40
    tr, va, te = stratified_split(labels, (0.8, 0.1, 0.1), seed=0)
    assert len(tr) + len(va) + len(te) == 100 and not (set(tr) & set(te)) and not (set(va) & set(te))
    assert sum(labels[i] == "a" for i in te) == 6 and len(te) == 10
    assert np.array_equal(te, stratified_split(labels, (0.8, 0.1, 0.1), seed=0)[2])
    assert not np.array_equal(te, stratified_split(labels, (0.8, 0.1, 0.1), seed=1)[2])
    folds = stratified_folds(labels, 5, seed=0)
    assert sorted(np.concatenate(folds).tolist()) == list(range(100))
    assert all(sum(labels[i] == "b" for i in f) == 8 for f in folds)


def test_assign_splits_folds_and_given(tmp_path):
    from tsformer.data.text.documents import TextTable

    t = TextTable([f"d{i}" for i in range(50)], ["a", "b"] * 25)
    s = assign_splits(t, 0.1, 0.1, 0, folds=5, fold=2)
    assert len(s["test"]) == 10 and len(s["train"]) + len(s["val"]) == 40
    assert not set(s["test"]) & set(s["train"])
    with pytest.raises(ValueError, match="data.fold"):
        assign_splits(t, 0.1, 0.1, 0, folds=5, fold=5)
    t.splits = ["train"] * 40 + ["test"] * 10
    s = assign_splits(t, 0.1, 0.1, 0)
    assert set(s["test"]) == set(range(40, 50)) and len(s["val"]) == 4


# -- tokenizer and batching ---------------------------------------------------------------------
def test_sentencepiece_round_trip_and_bytes():
    texts = [doc(i, "a" if i % 2 else "b") for i in range(60)]
    tok = SentencePieceTokenizer.train(texts, vocab_size=60)
    ids = tok.encode(["alpha beta doc12", "zeta theta"])
    assert all(i > 3 for i in ids[0]), "special ids are not produced by plain encoding"
    assert tok.decode(ids[0]) == "alpha beta doc12" and tok.decode(ids[1]) == "zeta theta"
    tok2 = SentencePieceTokenizer.from_bytes(tok.to_bytes())
    assert tok2.encode(["alpha beta doc12"]) == ids[:1] and tok2.vocab_size == tok.vocab_size
    assert tok.decode(tok.encode(["unseen wörds ☃"])[0]).replace(" ⁇ ", "?") != ""


def test_collate_pads_and_bucket_sampler_covers_everything():
    items = [(np.array([CLS_ID, 5, 6]), 1), (np.array([CLS_ID]), 0)]
    b = collate_docs(items)
    assert b["tokens"].tolist() == [[2, 5, 6], [2, 0, 0]] and b["lengths"].tolist() == [3, 1]
    lengths = np.random.default_rng(0).integers(1, 100, 53)
    s = BucketBatchSampler(lengths, 8, shuffle=True)
    batches = list(s)
    assert sorted(i for bt in batches for i in bt) == list(range(53)) and len(batches) == len(s) == 7


def test_datamodule_csv_end_to_end(tmp_path):
    p = tmp_path / "d.csv"
    rows = [(doc(i, lab), lab) for i in range(40) for lab in ("a", "b")]
    p.write_text("text,label\n" + "\n".join(f'"{t}",{lab}' for t, lab in rows) + "\n")
    dm = TextClassificationDataModule(str(p), max_tokens=8, vocab_size=50, batch_size=4)
    dm.setup("fit")
    assert dm.model_kwargs()["num_classes"] == 2 and dm.classes == ["a", "b"]
    assert len(dm.datasets["test"]) == 8 and len(dm.datasets["val"]) == 8
    batch = next(iter(dm.train_dataloader()))
    assert batch["tokens"].shape[1] <= 8 and (batch["tokens"][:, 0] == CLS_ID).all()
    # The data's TF-IDF baseline, on the same test documents; off for tasks that do not classify.
    assert 0 <= dm.baselines()["baseline/tfidf_lr/accuracy"] <= 1 and "baseline/tfidf_lr/f1" in dm.baselines()
    dm.baseline = False
    assert dm.baselines() == {}


def test_datamodule_rejects_single_class(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text("text,label\n" + "\n".join(f"t{i},x" for i in range(10)) + "\n")
    with pytest.raises(DataError, match="single label"):
        TextClassificationDataModule(str(p)).setup("fit")
    two = tmp_path / "two.csv"
    two.write_text("text,label\n" + "\n".join(f"t{i},{i % 2}" for i in range(10)) + "\n")
    with pytest.raises(DataError, match=r"2 labels \['0', '1'\]; need at least 3"):
        TextClassificationDataModule(str(two), min_classes=3).setup("fit")


# -- characters ----------------------------------------------------------------------------------
def test_char_vocab_and_tiling_windows(tmp_path):
    v = CharVocab.fit("abca")
    assert len(v) == 4 and v.decode(v.encode("cab")) == "cab" and v.encode("z").tolist() == [0]
    ids = np.arange(1, 12)
    ds = TilingWindows(ids, 4)
    got = [ds[i] for i in range(len(ds))]
    targets = [t for g in got for t, w in zip(g["targets"].tolist(), g["weight"].tolist()) if w > 0]
    assert targets == list(range(2, 12)), "every character after the first is predicted once"
    p = tmp_path / "t.txt"
    p.write_text("short")
    with pytest.raises(DataError, match="too short"):
        CharLMDataModule(str(p), context=64).setup("fit")
