"""Long-document readers, splits and the text DataModules.

Readers (each returns a :class:`TextTable`: texts, labels, and a split per document when
the source fixes one):

- CSV or JSONL with ``text`` and ``label`` columns/keys (names configurable) and an
  optional split column (``train``/``val``/``test``);
- a folder tree ``<root>/<label>/*.txt`` or ``<root>/<split>/<label>/*.txt``
  (the extracted ``aclImdb/{train,test}/{pos,neg}`` tree is the second form);
- SemEval-2019 Task 4 (Hyperpartisan News Detection) XML: articles and ground truth,
  joined by id, markup stripped;
- the IMDB archive ``aclImdb_labeled.tar.gz`` (Maas et al. 2011), official split.

Bad input raises :class:`~tsformer.data.readers.DataError` naming the file and row.
"""

from __future__ import annotations

import csv
import json
import math
import re
import tarfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from tsformer.data.readers import DataError
from tsformer.data.samplers import BucketBatchSampler, RankBatches, ShardedSampler
from tsformer.data.tokenizers import CLS_ID, CharVocab, SentencePieceTokenizer
from tsformer.metrics import accuracy, macro_f1

SPLITS = ("train", "val", "test")
_SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
                  "dev": "val", "test": "test", "testing": "test"}


@dataclass
class TextTable:
    """Labelled documents.

    Attributes:
        texts: the documents.
        labels: one label string per document.
        splits: ``train``/``val``/``test`` per document, or None if the source fixes none.
        ids: an identifier per document (row number, file name or article id).
    """

    texts: list[str]
    labels: list[str]
    splits: list[str] | None = None
    ids: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if len(self.texts) != len(self.labels):
            raise ValueError("texts and labels differ in length")
        if not self.ids:
            self.ids = [str(i) for i in range(len(self.texts))]


def _split_name(value: str, where: str) -> str:
    s = _SPLIT_ALIASES.get(str(value).strip().lower())
    if s is None:
        raise DataError(f"{where}: split {value!r} is not one of train, val, test")
    return s


# -- CSV / JSONL ----------------------------------------------------------------------------
def read_csv_docs(path: str | Path, text_field: str = "text", label_field: str = "label",
                  split_field: str | None = None) -> TextTable:
    """Documents from a CSV file with a header row.

    Raises:
        DataError: a missing column, or a row (named by its line number) with the wrong
            number of fields or an empty text or label.
    """
    path = Path(path)
    texts, labels, splits, ids = [], [], [], []
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        try:
            header = next(reader)
        except StopIteration:
            raise DataError(f"{path}: empty file") from None
        except csv.Error as e:
            raise DataError(f"{path}: line 1: {e}") from None
        for name in [text_field, label_field] + ([split_field] if split_field else []):
            if name not in header:
                raise DataError(f"{path}: no column {name!r} (columns: {header})")
        ti, li = header.index(text_field), header.index(label_field)
        si = header.index(split_field) if split_field else None
        row_no = 1
        while True:
            try:
                row = next(reader)
            except StopIteration:
                break
            except csv.Error as e:
                raise DataError(f"{path}: line {reader.line_num}: {e}") from None
            row_no += 1
            if not row:
                continue
            where = f"{path}: row {row_no} (line {reader.line_num})"
            if len(row) != len(header):
                raise DataError(f"{where}: {len(row)} fields, expected {len(header)}")
            text, label = row[ti], row[li].strip()
            if not text.strip():
                raise DataError(f"{where}: empty {text_field!r}")
            if not label:
                raise DataError(f"{where}: empty {label_field!r}")
            texts.append(text)
            labels.append(label)
            ids.append(str(row_no))
            if si is not None:
                splits.append(_split_name(row[si], where))
    if not texts:
        raise DataError(f"{path}: no documents")
    return TextTable(texts, labels, splits if split_field else None, ids)


def read_jsonl_docs(path: str | Path, text_field: str = "text", label_field: str = "label",
                    split_field: str | None = None) -> TextTable:
    """Documents from a JSON-lines file, one object per line.

    Raises:
        DataError: a line (named by number) that is not a JSON object or lacks a key.
    """
    path = Path(path)
    texts, labels, splits, ids = [], [], [], []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}: line {n}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{where}: invalid JSON ({e.msg})") from None
            if not isinstance(obj, dict):
                raise DataError(f"{where}: expected a JSON object, got {type(obj).__name__}")
            for key in [text_field, label_field] + ([split_field] if split_field else []):
                if key not in obj or obj[key] is None:
                    raise DataError(f"{where}: missing key {key!r}")
            text, label = obj[text_field], str(obj[label_field]).strip()
            if not isinstance(text, str) or not text.strip():
                raise DataError(f"{where}: {text_field!r} must be a non-empty string")
            if not label:
                raise DataError(f"{where}: empty {label_field!r}")
            texts.append(text)
            labels.append(label)
            ids.append(str(n))
            if split_field:
                splits.append(_split_name(obj[split_field], where))
    if not texts:
        raise DataError(f"{path}: no documents")
    return TextTable(texts, labels, splits if split_field else None, ids)


# -- folder trees --------------------------------------------------------------------------
def read_folder_docs(root: str | Path) -> TextTable:
    """Documents from ``<root>/<label>/*.txt``, or ``<root>/<split>/<label>/*.txt`` when the
    sub-folders of ``root`` are split names (``train``, ``test``, ...)."""
    root = Path(root)
    subdirs = sorted(p for p in root.iterdir() if p.is_dir())
    if not subdirs:
        raise DataError(f"{root}: no label folders (expected <root>/<label>/*.txt)")
    by_split = all(p.name.lower() in _SPLIT_ALIASES for p in subdirs)
    texts, labels, splits, ids = [], [], [], []
    groups = [(_split_name(p.name, str(p)), p) for p in subdirs] if by_split else [(None, root)]
    for split, base in groups:
        for label_dir in sorted(p for p in base.iterdir() if p.is_dir()):
            for f in sorted(label_dir.glob("*.txt")):
                try:
                    text = f.read_text(encoding="utf-8")
                except UnicodeDecodeError as e:
                    raise DataError(f"{f}: not UTF-8 text ({e})") from None
                if not text.strip():
                    raise DataError(f"{f}: empty document")
                texts.append(text)
                labels.append(label_dir.name)
                ids.append(str(f.relative_to(root)))
                splits.append(split)
    if not texts:
        raise DataError(f"{root}: no .txt documents under <label>/ folders")
    return TextTable(texts, labels, splits if by_split else None, ids)


# -- SemEval-2019 Task 4 (Hyperpartisan) ----------------------------------------------------
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


# -- IMDB (Maas et al. 2011) ---------------------------------------------------------------
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
        table = read_folder_docs(root)
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


# -- splits ----------------------------------------------------------------------------------
def stratified_split(labels: list[str] | np.ndarray, fractions: tuple[float, ...], seed: int) -> list[np.ndarray]:
    """Indices of a stratified random split into parts of the given ``fractions``.

    Each class is shuffled with ``seed`` and cut by cumulative fractions (rounded), so
    every part gets about its share of every class. The last part takes the remainder.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    parts: list[list[int]] = [[] for _ in fractions]
    for c in sorted(set(labels.tolist())):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        cuts = np.round(np.cumsum(fractions)[:-1] / sum(fractions) * len(idx)).astype(int)
        for p, chunk in enumerate(np.split(idx, cuts)):
            parts[p].extend(chunk.tolist())
    return [np.sort(np.array(p, dtype=np.int64)) for p in parts]


def stratified_folds(labels: list[str] | np.ndarray, folds: int, seed: int) -> list[np.ndarray]:
    """``folds`` disjoint stratified index sets covering all documents."""
    return stratified_split(labels, tuple([1.0] * folds), seed)


def assign_splits(table: TextTable, val_fraction: float, test_fraction: float, seed: int,
                  folds: int | None = None, fold: int | None = None) -> dict[str, np.ndarray]:
    """Indices of the train/val/test documents.

    - ``folds``/``fold`` set: test is stratified fold ``fold`` of ``folds`` (seeded);
      validation a stratified ``val_fraction`` of the rest.
    - the table has splits: those; if it has no ``val`` documents, validation is a
      stratified ``val_fraction`` of train.
    - otherwise: a stratified ``1 - val - test : val : test`` split with ``seed``.
    """
    n = len(table.texts)
    labels = np.asarray(table.labels)
    if folds:
        if fold is None or not 0 <= fold < folds:
            raise ValueError(f"data.fold must be in 0..{folds - 1} when data.folds={folds}, got {fold}")
        test = stratified_folds(labels, folds, seed)[fold]
        rest = np.setdiff1d(np.arange(n), test)
        out = {"test": test}
    elif table.splits is not None:
        sp = np.asarray(table.splits)
        out = {s: np.flatnonzero(sp == s) for s in SPLITS}
        if len(out["val"]) or val_fraction <= 0:
            return out
        rest = out["train"]
    else:
        tr, va, te = stratified_split(labels, (1 - val_fraction - test_fraction, val_fraction, test_fraction), seed)
        return {"train": tr, "val": va, "test": te}
    if val_fraction > 0:
        tr, va = stratified_split(labels[rest], (1 - val_fraction, val_fraction), seed + 1)
        out["train"], out["val"] = rest[tr], rest[va]
    else:
        out["train"], out["val"] = rest, np.array([], dtype=np.int64)
    return out


# -- datasets and batching -------------------------------------------------------------------
class TokenizedDocs(Dataset):
    """Token ids per document (``<cls>`` first, at most ``max_tokens``) and label ids."""

    def __init__(self, ids: list[list[int]], labels: np.ndarray, max_tokens: int):
        self.docs = [np.asarray([CLS_ID] + d[: max_tokens - 1], dtype=np.int64) for d in ids]
        self.labels = np.asarray(labels, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.docs)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        return self.docs[i], int(self.labels[i])

    def lengths(self) -> np.ndarray:
        return np.array([len(d) for d in self.docs])


def collate_docs(items: list[tuple[np.ndarray, int]]) -> dict[str, torch.Tensor]:
    """Pad to the longest document: ``tokens (B, L)`` (0 = pad), ``lengths (B,)``, ``labels (B,)``."""
    L = max(len(d) for d, _ in items)
    tokens = torch.zeros(len(items), L, dtype=torch.long)
    for i, (d, _) in enumerate(items):
        tokens[i, : len(d)] = torch.from_numpy(d)
    return {
        "tokens": tokens,
        "lengths": torch.tensor([len(d) for d, _ in items], dtype=torch.long),
        "labels": torch.tensor([y for _, y in items], dtype=torch.long),
    }


class TextClassificationDataModule(pl.LightningDataModule):
    """Long-document classification data: read, split, train SentencePiece, tokenize.

    Args:
        path: a CSV/JSONL file, a folder tree, the SemEval XML folder or the IMDB archive.
        format: ``auto``, ``csv``, ``jsonl``, ``folder``, ``semeval`` or ``imdb``.
        text_field, label_field: column/key names (CSV, JSONL).
        split_field: column/key with ``train``/``val``/``test`` per row, or None to split
            with ``split_seed`` (stratified).
        val_fraction, test_fraction: split shares when the source gives none.
        split_seed: seed of the stratified split and folds.
        folds, fold: k-fold cross-validation: test on stratified fold ``fold`` of ``folds``.
        max_tokens: document length cap in tokens, ``<cls>`` included.
        vocab_size: SentencePiece vocabulary size (a soft limit on small data).
        max_train_docs: use at most this many (stratified) training documents; None: all.
        max_test_docs: score on at most this many (stratified, seeded) test documents; None: all.
        batch_size, eval_batch_size, num_workers: loader settings.
        tokenizer: a checkpoint (``.ckpt`` with ``sentencepiece_model``, e.g. from ``task=mlm``)
            or a SentencePiece ``.model`` file to tokenize with instead of training one
            (``vocab_size`` is then ignored); None: train on the training split.
        min_classes: fewest distinct labels the data must have (1 for unlabeled pretraining
            corpora read through a label column or folder).
        baseline: report the TF-IDF + logistic regression baseline (:meth:`baselines`);
            off for tasks that do not classify (``task=mlm``).
    """

    # Batches are sharded across ranks here (RankBatches), not by Lightning.
    shards_batches = True
    resume_batches = 0  # batches of the current epoch already trained (set by train() on resume)

    def __init__(
        self,
        path: str,
        format: str = "auto",
        text_field: str = "text",
        label_field: str = "label",
        split_field: str | None = None,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        split_seed: int = 0,
        folds: int | None = None,
        fold: int | None = None,
        max_tokens: int = 4096,
        vocab_size: int = 8000,
        max_train_docs: int | None = None,
        max_test_docs: int | None = None,
        batch_size: int = 8,
        eval_batch_size: int = 16,
        num_workers: int = 0,
        tokenizer: str | None = None,
        min_classes: int = 2,
        baseline: bool = True,
    ):
        super().__init__()
        self.path, self.format = path, format
        self.tokenizer_path, self.min_classes = tokenizer, int(min_classes)
        self.baseline = baseline
        self.text_field, self.label_field, self.split_field = text_field, label_field, split_field
        self.val_fraction, self.test_fraction, self.split_seed = val_fraction, test_fraction, split_seed
        self.folds, self.fold = folds, fold
        self.max_tokens, self.vocab_size, self.max_train_docs = max_tokens, vocab_size, max_train_docs
        self.max_test_docs = max_test_docs
        self.batch_size, self.eval_batch_size, self.num_workers = batch_size, eval_batch_size, num_workers
        self.table: TextTable | None = None
        self.tokenizer: SentencePieceTokenizer | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.table is not None:
            return
        table = read_documents(self.path, self.format, self.text_field, self.label_field, self.split_field)
        if self.max_tokens < 2:
            raise ValueError(f"data.max_tokens must be >= 2, got {self.max_tokens}")
        self.classes = sorted(set(table.labels))
        if len(self.classes) < self.min_classes:
            what = "a single label" if len(self.classes) == 1 else f"{len(self.classes)} labels"
            raise DataError(f"{self.path}: {what} {self.classes}; need at least {self.min_classes} classes")
        self.split_idx = assign_splits(table, self.val_fraction, self.test_fraction, self.split_seed,
                                       self.folds, self.fold)
        for split, cap in (("train", self.max_train_docs), ("test", self.max_test_docs)):
            idx = self.split_idx[split]
            if cap and len(idx) > cap:
                frac = cap / len(idx)
                keep, _ = stratified_split(np.asarray(table.labels)[idx], (frac, 1 - frac), self.split_seed + 2)
                self.split_idx[split] = idx[keep]
        for s in ("train", "test"):
            if len(self.split_idx[s]) == 0:
                raise DataError(f"{self.path}: the {s} split is empty")
        self.table = table
        self.y = np.array([self.classes.index(lb) for lb in table.labels], dtype=np.int64)
        if self.tokenizer_path is not None:
            self.tokenizer = SentencePieceTokenizer.load(self.tokenizer_path)
        else:
            self.tokenizer = SentencePieceTokenizer.train(self.split_texts("train"), self.vocab_size,
                                                          seed=self.split_seed)
        self.datasets = {
            s: TokenizedDocs(self.tokenizer.encode(self.split_texts(s)), self.y[idx], self.max_tokens)
            for s, idx in self.split_idx.items()
        }

    def split_texts(self, split: str) -> list[str]:
        return [self.table.texts[i] for i in self.split_idx[split]]

    def split_labels(self, split: str) -> np.ndarray:
        return self.y[self.split_idx[split]]

    def model_kwargs(self) -> dict:
        return {"vocab_size": self.tokenizer.vocab_size, "num_classes": len(self.classes)}

    def baselines(self) -> dict[str, float]:
        """TF-IDF (word 1-2 grams, sublinear tf) + logistic regression, trained on the same
        training split (plus validation) and scored on the same test documents, keyed
        ``baseline/tfidf_lr/*`` (``train`` adds them to the run's metrics); {} with
        ``baseline=False``."""
        if not self.baseline:
            return {}
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression

        train_texts = self.split_texts("train") + self.split_texts("val")
        y_train = np.concatenate([self.split_labels("train"), self.split_labels("val")])
        vec = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=2 if len(train_texts) > 200 else 1,
                              max_features=200_000)
        clf = LogisticRegression(C=10.0, max_iter=2000)
        clf.fit(vec.fit_transform(train_texts), y_train)
        pred = clf.predict(vec.transform(self.split_texts("test")))
        y_test = self.split_labels("test")
        n = len(self.classes)
        return {"baseline/tfidf_lr/accuracy": accuracy(y_test, pred), "baseline/tfidf_lr/f1": macro_f1(y_test, pred, n)}

    def _loader(self, split: str, train: bool):
        ds = self.datasets[split]
        sampler = BucketBatchSampler(ds.lengths(), self.batch_size if train else self.eval_batch_size,
                                     shuffle=train, seed=self.split_seed)
        batches = RankBatches(sampler, train)
        if train and self.resume_batches:  # continue mid-epoch where a resumed run stopped
            batches.skip(self.resume_batches)
            self.resume_batches = 0
        return DataLoader(ds, batch_sampler=batches, collate_fn=collate_docs,
                          num_workers=self.num_workers)

    def train_dataloader(self):
        return self._loader("train", True)

    def val_dataloader(self):
        if len(self.split_idx.get("val", [])) == 0:
            return []
        return self._loader("val", False)

    def test_dataloader(self):
        return self._loader("test", False)


# -- character language modelling ------------------------------------------------------------
class RandomWindows(Dataset):
    """Every window of ``context + 1`` characters (inputs and shifted targets); item ``i``
    starts at character ``i``. The sampler draws ``samples`` of them per epoch, so the
    windows are random yet a pure function of (seed, epoch): a resumed run sees the same."""

    def __init__(self, ids: np.ndarray, context: int, samples: int, seed: int = 0):
        self.ids, self.context, self.samples, self.seed = torch.from_numpy(ids), context, samples, seed

    def __len__(self) -> int:
        return max(1, len(self.ids) - self.context)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        s = int(i)
        w = self.ids[s : s + self.context + 1]
        return {"inputs": w[:-1], "targets": w[1:], "weight": torch.ones(self.context)}


class TilingWindows(Dataset):
    """Non-overlapping windows covering a split: every character after the first is
    predicted exactly once (``weight`` 0 on padding)."""

    def __init__(self, ids: np.ndarray, context: int):
        self.ids, self.context = torch.from_numpy(ids), context
        self.n = max(1, math.ceil((len(ids) - 1) / context))

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        s = i * self.context
        w = self.ids[s : s + self.context + 1]
        n = len(w) - 1
        pad = self.context - n
        inputs = torch.nn.functional.pad(w[:-1], (0, pad))
        targets = torch.nn.functional.pad(w[1:], (0, pad))
        weight = torch.cat([torch.ones(n), torch.zeros(pad)])
        return {"inputs": inputs, "targets": targets, "weight": weight}


class CharLMDataModule(pl.LightningDataModule):
    """Character LM data from one plain text file, cut into contiguous train/val/test parts.

    Args:
        path: a UTF-8 text file.
        context: characters per training window (the model's attention still only looks
            ``window`` back).
        val_fraction, test_fraction: the last parts of the file (val before test).
        train_samples: random training windows per epoch.
        batch_size, eval_batch_size, num_workers: loader settings.
        seed: seed of the random windows.
    """

    resume_batches = 0  # batches of the current epoch already trained (set by train() on resume)

    def __init__(self, path: str, context: int = 512, val_fraction: float = 0.05, test_fraction: float = 0.05,
                 train_samples: int = 10_000, batch_size: int = 16, eval_batch_size: int = 16,
                 num_workers: int = 0, seed: int = 0):
        super().__init__()
        self.path, self.context = path, context
        self.val_fraction, self.test_fraction = val_fraction, test_fraction
        self.train_samples, self.batch_size, self.eval_batch_size = train_samples, batch_size, eval_batch_size
        self.num_workers, self.seed = num_workers, seed
        self.vocab: CharVocab | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.vocab is not None:
            return
        path = Path(self.path)
        if not path.is_file():
            raise DataError(f"{path}: no such file")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise DataError(f"{path}: not UTF-8 text (byte {e.start})") from None
        n = len(text)
        n_test, n_val = int(n * self.test_fraction), int(n * self.val_fraction)
        n_train = n - n_val - n_test
        if n_train < self.context + 2 or n_test < 2:
            raise DataError(f"{path}: {n} characters is too short for context {self.context} and a test part")
        parts = {"train": text[:n_train], "val": text[n_train : n_train + n_val], "test": text[n_train + n_val :]}
        self.vocab = CharVocab.fit(parts["train"])
        self.ids = {k: self.vocab.encode(v) for k, v in parts.items()}

    def model_kwargs(self) -> dict:
        return {"vocab_size": len(self.vocab)}

    def train_dataloader(self):
        ds = RandomWindows(self.ids["train"], self.context, self.train_samples, self.seed)
        sampler = ShardedSampler(len(ds), shuffle=True, seed=self.seed, limit=self.train_samples)
        if self.resume_batches:  # continue mid-epoch where a resumed run stopped
            sampler.skip(self.resume_batches * self.batch_size)
            self.resume_batches = 0
        return DataLoader(ds, batch_size=self.batch_size, sampler=sampler, num_workers=self.num_workers)

    def val_dataloader(self):
        if len(self.ids["val"]) < 2:
            return []
        ds = TilingWindows(self.ids["val"], self.context)
        return DataLoader(ds, batch_size=self.eval_batch_size, sampler=ShardedSampler(len(ds), shuffle=False))

    def test_dataloader(self):
        ds = TilingWindows(self.ids["test"], self.context)
        return DataLoader(ds, batch_size=self.eval_batch_size, sampler=ShardedSampler(len(ds), shuffle=False))
