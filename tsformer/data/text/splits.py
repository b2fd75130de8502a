"""Train / validation / test splits of a document table: stratified, seeded, or k-fold."""

from __future__ import annotations

import numpy as np

from tsformer.data.text.documents import SPLITS, TextTable


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
