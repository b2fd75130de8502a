"""Long-document classification data: read, split, tokenize (SentencePiece), batch by length."""

from __future__ import annotations

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from tsformer.data.errors import DataError
from tsformer.data.samplers import BucketBatchSampler, RankBatches
from tsformer.data.text.documents import TextTable
from tsformer.data.text.readers import read_documents
from tsformer.data.text.splits import assign_splits, stratified_split
from tsformer.data.tokenizers import CLS_ID, SentencePieceTokenizer
from tsformer.metrics import accuracy, macro_f1


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
        train_path, test_path: separate training and test sources (any names, e.g. the
            folders ``20news-bydate-train`` and ``20news-bydate-test``) instead of ``path``;
            without ``test_path`` the test split is drawn from ``train_path``.
        encoding: text encoding of CSV, JSONL and folder documents (any Python codec).
        glob: only the files of a folder's label folders that match (``*.txt``); None: all.
        skip_bad: skip empty documents with a warning and a count instead of failing.
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
        train_path: str | None = None,
        test_path: str | None = None,
        encoding: str = "utf-8",
        glob: str | None = None,
        skip_bad: bool = False,
    ):
        super().__init__()
        if test_path and not train_path:
            raise DataError(f"{test_path}: data.test_path needs data.train_path")
        self.path, self.format = (train_path or path), format
        self.train_path, self.test_path = train_path, test_path
        self.read_options = {"encoding": encoding, "glob": glob, "skip_bad": skip_bad}
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
        table = self.read()
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

    def read(self) -> TextTable:
        """The documents of ``path``, or of ``train_path`` (split ``train``) and ``test_path``
        (split ``test``) joined."""
        args = (self.format, self.text_field, self.label_field, self.split_field)
        if not self.test_path:
            return read_documents(self.path, *args, **self.read_options)
        parts = [read_documents(p, *args, **self.read_options, split=s)
                 for p, s in ((self.train_path, "train"), (self.test_path, "test"))]
        return TextTable([t for p in parts for t in p.texts], [lb for p in parts for lb in p.labels],
                         [s for p in parts for s in p.splits], [f"{s}:{i}" for p, s in zip(parts, ("train", "test")) for i in p.ids])

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
