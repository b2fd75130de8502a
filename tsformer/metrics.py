"""Evaluation metrics as pure functions (NaN targets are ignored everywhere).

Forecasting metrics follow Li et al. (NeurIPS 2019) and Salinas et al. (DeepAR, 2020):
the rho-quantile loss ``R_rho = 2 * sum_i QL_rho(y_i, yhat_i) / sum_i |y_i|`` with the
pinball loss ``QL_rho(y, yhat) = (y - yhat) * (rho - 1[y < yhat])``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def pinball_sum(y: Tensor, yhat: Tensor, rho: float) -> Tensor:
    """``sum QL_rho(y, yhat)`` over entries where ``y`` is not NaN."""
    ok = ~torch.isnan(y)
    diff = torch.where(ok, y - yhat, torch.zeros_like(y))
    return (diff * (rho - (diff < 0).to(diff.dtype))).sum()


def rho_risk(y: Tensor, yhat: Tensor, rho: float) -> float:
    """Normalised quantile loss ``2 * sum QL_rho / sum |y|``.

    Args:
        y: actuals, any shape, NaN = missing.
        yhat: the rho-quantile forecast, same shape.
    """
    denom = torch.nansum(y.abs())
    return float(2 * pinball_sum(y, yhat, rho) / denom)


def crps_from_samples(y: Tensor, samples: Tensor) -> Tensor:
    """Sample CRPS per target, ``E|X - y| - E|X - X'| / 2`` (the unbiased "fair" estimate
    would divide by ``S(S-1)``; this is the plain empirical-distribution CRPS).

    Args:
        y: ``(...)`` actuals.
        samples: ``(S, ...)`` draws of the forecast distribution.
    Returns:
        ``(...)`` CRPS of each target (NaN where ``y`` is NaN).
    """
    s = torch.sort(samples, dim=0).values
    S = s.shape[0]
    term1 = (s - y.unsqueeze(0)).abs().mean(0)
    # E|X - X'| for the empirical distribution via sorted samples: 2/S^2 * sum (2i - S - 1) x_(i)
    i = torch.arange(1, S + 1, dtype=s.dtype, device=s.device).view(-1, *([1] * (s.dim() - 1)))
    term2 = (2.0 / (S * S)) * ((2 * i - S - 1) * s).sum(0)
    return term1 - 0.5 * term2


class ForecastAccumulator:
    """Sums that add up over batches (and ranks) to the forecasting metrics.

    Keeps ``sum QL_0.5``, ``sum QL_0.9``, ``sum |y|``, ``sum |y - median|``, ``sum CRPS``
    and the count of observed targets, so results do not depend on how the test set is
    split into batches or processes.
    """

    keys = ("ql50", "ql90", "abs_y", "abs_err", "crps", "count")

    def __init__(self) -> None:
        self.sums = torch.zeros(len(self.keys), dtype=torch.float64)

    def update(self, y: Tensor, q50: Tensor, q90: Tensor, samples: Tensor | None = None) -> None:
        """Add a batch. ``y``, ``q50``, ``q90``: ``(B, H)``; ``samples``: ``(S, B, H)``."""
        y, q50, q90 = y.double().cpu(), q50.double().cpu(), q90.double().cpu()
        ok = ~torch.isnan(y)
        crps = torch.zeros((), dtype=torch.float64)
        if samples is not None:
            c = crps_from_samples(y, samples.double().cpu())
            crps = torch.where(ok, c, torch.zeros_like(c)).sum()
        self.sums += torch.stack([
            pinball_sum(y, q50, 0.5),
            pinball_sum(y, q90, 0.9),
            torch.nansum(y.abs()),
            torch.where(ok, (y - q50).abs(), torch.zeros_like(y)).sum(),
            crps,
            ok.sum().double(),
        ])

    def compute(self, sums: Tensor | None = None) -> dict[str, float]:
        """Metrics from the (possibly all-reduced) sums."""
        s = dict(zip(self.keys, (self.sums if sums is None else sums).tolist()))
        n = max(s["count"], 1.0)
        denom = s["abs_y"] if s["abs_y"] > 0 else float("nan")
        return {
            "rho50": 2 * s["ql50"] / denom,
            "rho90": 2 * s["ql90"] / denom,
            "mae": s["abs_err"] / n,
            "crps": s["crps"] / n,
            "nd": s["abs_err"] / denom,
        }


def point_forecast_metrics(y: np.ndarray, yhat: np.ndarray) -> dict[str, float]:
    """R0.5, R0.9, MAE and CRPS of a point forecast (its CRPS is its absolute error)."""
    acc = ForecastAccumulator()
    yt, ft = torch.as_tensor(y), torch.as_tensor(yhat)
    acc.update(yt, ft, ft, ft.unsqueeze(0))
    return acc.compute()


# -- speech recognition: edit distances, WER and CER ---------------------------------


def edit_distance(ref: list | str, hyp: list | str) -> int:
    """Levenshtein distance (substitutions, deletions, insertions all cost 1).

    Args:
        ref, hyp: sequences of hashable tokens (words, characters).
    Returns:
        The minimum number of edits turning ``ref`` into ``hyp``.
    """
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        cur = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h))
        prev = cur
    return prev[-1]


def word_errors(ref: str, hyp: str) -> tuple[int, int]:
    """``(word edits, reference words)`` of one utterance (whitespace tokenised)."""
    r, h = ref.split(), hyp.split()
    return edit_distance(r, h), len(r)


def char_errors(ref: str, hyp: str) -> tuple[int, int]:
    """``(character edits, reference characters)``; runs of spaces count as one space."""
    r, h = " ".join(ref.split()), " ".join(hyp.split())
    return edit_distance(r, h), len(r)


def wer(refs: list[str], hyps: list[str]) -> float:
    """Corpus word error rate: total word edits over total reference words."""
    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} references but {len(hyps)} hypotheses")
    e = n = 0
    for r, h in zip(refs, hyps):
        de, dn = word_errors(r, h)
        e, n = e + de, n + dn
    return e / n if n else float("nan")


def cer(refs: list[str], hyps: list[str]) -> float:
    """Corpus character error rate: total character edits over total reference characters."""
    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} references but {len(hyps)} hypotheses")
    e = n = 0
    for r, h in zip(refs, hyps):
        de, dn = char_errors(r, h)
        e, n = e + de, n + dn
    return e / n if n else float("nan")
# -- long-document classification and character LM (Longformer tasks) ----------------------
def accuracy(y_true: np.ndarray | Tensor, y_pred: np.ndarray | Tensor) -> float:
    """Fraction of predictions equal to the labels (both ``(N,)`` class ids)."""
    t, p = np.asarray(y_true), np.asarray(y_pred)
    if t.shape != p.shape or t.size == 0:
        raise ValueError(f"accuracy needs two equal, non-empty shapes, got {t.shape} and {p.shape}")
    return float((t == p).mean())


def macro_f1(y_true: np.ndarray | Tensor, y_pred: np.ndarray | Tensor, num_classes: int | None = None) -> float:
    """Unweighted mean over classes of ``F1 = 2 TP / (2 TP + FP + FN)``.

    Classes are ``0..num_classes-1`` (default: every class seen in either array); a class
    with no true and no predicted examples scores 0 (scikit-learn's ``zero_division=0``).
    """
    t, p = np.asarray(y_true).astype(np.int64), np.asarray(y_pred).astype(np.int64)
    if t.shape != p.shape or t.size == 0:
        raise ValueError(f"macro_f1 needs two equal, non-empty shapes, got {t.shape} and {p.shape}")
    classes = range(num_classes) if num_classes is not None else sorted(set(t.tolist()) | set(p.tolist()))
    scores = []
    for c in classes:
        tp = int(((t == c) & (p == c)).sum())
        fp = int(((t != c) & (p == c)).sum())
        fn = int(((t == c) & (p != c)).sum())
        scores.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
    return float(np.mean(scores))


def bits_per_character(nll_nats_sum: float, num_chars: int) -> float:
    """Bits per character from a summed negative log-likelihood in nats: ``sum / (n ln 2)``."""
    if num_chars <= 0:
        raise ValueError("bits_per_character needs at least one character")
    return float(nll_nats_sum / num_chars / np.log(2.0))
