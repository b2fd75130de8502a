"""What a run leaves to look at: pictures (PNG) and text samples in ``<run_dir>/plots/``.

Pure functions from arrays and files to files; the task modules keep what they need during
test and call them from ``write_plots(out_dir, settings)`` (:func:`write_run_plots` is the
entry point ``train()`` uses). Matplotlib is imported inside the functions and draws on its
Agg canvas through :class:`matplotlib.figure.Figure` (no pyplot, no display, no global
backend), so a headless machine makes the same files.
"""

from __future__ import annotations

import csv
import logging
import struct
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("tsformer")

DEFAULTS = {"series": 3, "max": 7}
DPI = 100
# Per-metric curves left out of the learning curves: bookkeeping, not learning.
NOT_CURVES = {"skipped_steps", "aux_loss"}


def plot_settings(value: Any, seed: int = 0) -> dict[str, int] | None:
    """The ``plots`` config as settings, or None when plots are off.

    ``plots=false`` (or null) turns them off, ``plots=true`` keeps the defaults, and a
    mapping may set ``enabled``, ``series`` and ``max`` (``plots.series=2``).

    Args:
        value: ``cfg.plots``: a bool, None or a mapping.
        seed: the run's seed (for sampled text).
    Returns:
        ``{"series": int, "max": int, "seed": int}``, or None.
    Raises:
        ValueError: a value that is not one of these, or a count below 1.
    """
    if value is None or value is False:
        return None
    if value is True:
        value = {}
    if not isinstance(value, Mapping):
        raise ValueError(f"plots={value!r}: use true, false or a mapping (plots.series=..., plots.max=...)")
    s = {**DEFAULTS, **{k: value[k] for k in value}}
    if not s.pop("enabled", True):
        return None
    unknown = set(s) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"plots: unknown key(s) {sorted(unknown)}; known: enabled, {', '.join(DEFAULTS)}")
    for k in DEFAULTS:
        if not isinstance(s[k], int) or s[k] < 1:
            raise ValueError(f"plots.{k}={s[k]!r}: a whole number >= 1")
    return {**s, "seed": int(seed)}


def write_run_plots(
    module: Any, out_dir: Path, settings: dict, metrics_csv: Path | None = None, monitor: str | None = None
) -> list[Path]:
    """Everything a run leaves to look at: learning curves from the logger's CSV and the
    task module's own pictures and samples (``module.write_plots(out_dir, settings)``).

    A picture that cannot be made is reported in the log and left out: the run's metrics
    are already written and stay.

    Args:
        module: the tested LightningModule.
        out_dir: where the files go (created).
        settings: from :func:`plot_settings`.
        metrics_csv: the CSV logger's ``metrics.csv`` (None: no learning curves).
        monitor: the metric checkpoints are chosen by (``val/wer``): its panel follows the loss.
    Returns:
        The files written.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    makers = []
    if metrics_csv is not None and Path(metrics_csv).exists():
        makers.append(("learning curves", lambda: [learning_curves(
            read_metrics_csv(metrics_csv), out_dir / "learning_curves.png", lead=(monitor or "").partition("/")[2])]))
    if hasattr(module, "write_plots"):
        makers.append((type(module).__name__, lambda: module.write_plots(out_dir, settings)))
    for what, make in makers:
        try:
            written += [p for p in make() if p is not None]
        except Exception as e:  # a picture must never cost the run its results
            log.warning("plots: %s not written (%s: %s)", what, type(e).__name__, e)
    return written


# -- learning curves -------------------------------------------------------------------
def read_metrics_csv(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The logged series of a Lightning ``CSVLogger`` file: ``{name: (steps, values)}``.

    Rows hold one step's values with empty cells for what was not logged then; columns
    other than ``step`` and ``epoch`` become series of their non-empty cells.
    """
    cols: dict[str, tuple[list[int], list[float]]] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            step = row.get("step")
            if not step:
                continue
            for k, v in row.items():
                if k in ("step", "epoch") or k is None or v in ("", None):
                    continue
                try:
                    val = float(v)
                except ValueError:
                    continue
                steps, vals = cols.setdefault(k, ([], []))
                steps.append(int(float(step)))
                vals.append(val)
    return {k: (np.asarray(s), np.asarray(v)) for k, (s, v) in cols.items()}


def curve_panels(
    curves: Mapping[str, tuple[np.ndarray, np.ndarray]], lead: str = "", most: int = 4
) -> list[tuple[str, list[str]]]:
    """Training and validation series grouped by metric: ``[(metric, [series names])]``.

    ``train/loss`` and ``val/loss`` share the ``loss`` panel, ``train/bpc`` and ``val/bpc``
    the ``bpc`` one (which stands for the loss where there is one); the loss comes first,
    then ``lead`` (the monitored metric), then the others in the order logged. Test figures
    (one point) and bookkeeping series are left out.
    """
    panels: dict[str, list[str]] = {}
    for name in curves:
        stage, _, metric = name.partition("/")
        if stage in ("train", "val") and metric and metric not in NOT_CURVES:
            panels.setdefault(metric, []).append(name)
    if "bpc" in panels:  # the loss in bits per character: the nats of the same figure add nothing
        panels.pop("loss", None)
    order = sorted(panels, key=lambda m: (m != "loss", m != lead))  # stable: the rest keep their order
    return [(m, panels[m]) for m in order[:most]]


def learning_curves(curves: Mapping[str, tuple[np.ndarray, np.ndarray]], path: Path, lead: str = "") -> Path | None:
    """Training and validation curves over optimizer steps, one panel per metric.

    Args:
        curves: ``{name: (steps, values)}`` (:func:`read_metrics_csv`).
        path: the PNG to write.
        lead: the metric drawn right after the loss (:func:`curve_panels`).
    Returns:
        ``path``, or None when there is nothing to draw.
    """
    panels = curve_panels(curves, lead)
    if not panels:
        return None
    from matplotlib.ticker import MaxNLocator

    fig = _figure(4.2 * len(panels) if len(panels) > 1 else 6.0, 3.4, ncols=len(panels), sharex=True)
    for ax, (metric, names) in zip(fig.axes, panels):
        for name in sorted(names, key=lambda n: not n.startswith("train")):
            steps, vals = curves[name]
            if name.startswith("train"):
                ax.plot(steps, vals, color="C0", lw=1, alpha=0.8, label="train")
            else:
                ax.plot(steps, vals, "o-", color="C1", ms=4, lw=1.5, label="validation")
        ax.set_title(metric)
        ax.set_xlabel("step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, path)


# -- forecasting -----------------------------------------------------------------------
def forecast_fans(panels: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """Median and 10-90% fan of each forecast window against the observed values, one
    panel per series.

    Args:
        panels: per series ``{"title": str, "times": (T,), "observed": (T,),
            "windows": [{"times": (H,), "q10": (H,), "q50": (H,), "q90": (H,)}]}``;
            times may be datetimes or step numbers, NaN observations are gaps.
        path: the PNG to write.
    Returns:
        ``path``.
    """
    fig = _figure(10.0, 2.6 * len(panels) + 0.4, nrows=len(panels))
    for i, (ax, p) in enumerate(zip(fig.axes, panels)):
        ax.plot(p["times"], p["observed"], color="black", lw=1, label="observed")
        for j, w in enumerate(p["windows"]):
            first = j == 0
            ax.fill_between(w["times"], w["q10"], w["q90"], color="C0", alpha=0.25, lw=0,
                            label="10-90%" if first else None)
            ax.plot(w["times"], w["q50"], color="C0", lw=1.5, label="median" if first else None)
            ax.axvline(w["times"][0], color="grey", lw=0.6, ls=":")
        ax.set_title(p["title"], fontsize=10, loc="left")
        ax.grid(alpha=0.3)
        if np.issubdtype(np.asarray(p["times"]).dtype, np.datetime64):
            from matplotlib.dates import AutoDateLocator, ConciseDateFormatter

            locator = AutoDateLocator()
            ax.xaxis.set_major_locator(locator)
            ax.xaxis.set_major_formatter(ConciseDateFormatter(locator))
        if i == 0:
            ax.legend(fontsize=8, loc="upper left", ncols=3)
    return _save(fig, path)


# -- classification --------------------------------------------------------------------
def confusion_matrix(counts: np.ndarray, labels: Sequence[str], path: Path, title: str = "test") -> Path:
    """The confusion matrix as counts and row-normalised (recall per true class), side by side.

    Args:
        counts: ``(C, C)`` documents, rows the true class, columns the predicted one.
        labels: the ``C`` class names.
        path: the PNG to write.
        title: what was scored (the figure's title).
    Returns:
        ``path``.
    """
    counts = np.asarray(counts, dtype=np.int64)
    n = len(labels)
    rows = counts.sum(1, keepdims=True)
    norm = counts / np.maximum(rows, 1)
    side = min(9.0, max(3.2, 0.45 * n + 1.6))
    fig = _figure(2 * side + 0.6, side + 0.5, ncols=2)
    font = 9 if n <= 10 else 7 if n <= 20 else 0
    names = [str(c) if len(str(c)) <= 14 else str(c)[:13] + "…" for c in labels]
    slant = n > 3 or max(map(len, names), default=0) > 6
    for ax, mat, what in zip(fig.axes, (counts, norm), ("counts", "row-normalised")):
        top = 1 if mat is norm else max(1, int(mat.max()))
        im = ax.imshow(mat, cmap="Blues", vmin=0, vmax=top)
        ax.set_title(f"{title}: {what}", fontsize=10)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_xticks(range(n), names, rotation=45 if slant else 0, ha="right" if slant else "center",
                      fontsize=font or 6)
        ax.set_yticks(range(n), names, fontsize=font or 6)
        if font:  # the figures in the cells, up to 20 classes
            for (r, c), v in np.ndenumerate(mat):
                ax.text(c, r, f"{v:d}" if mat is counts else f"{v:.2f}", ha="center", va="center", fontsize=font,
                        color="white" if v > 0.6 * top else "black")
        bar = fig.colorbar(im, ax=ax, shrink=0.8)
        if mat is counts:
            from matplotlib.ticker import MaxNLocator

            bar.ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    return _save(fig, path)


# -- speech ----------------------------------------------------------------------------
def utterance_table(rows: Sequence[Mapping[str, Any]], most: int, path: Path) -> Path:
    """The worst and best utterances of each split as text: WER, id, reference, hypothesis.

    Args:
        rows: ``{"split", "id", "ref", "hyp", "errors", "words"}`` per utterance (word errors
            and reference words).
        most: utterances listed at each end of a split (all of them when the split has no
            more than twice this many).
        path: the text file to write.
    Returns:
        ``path``.
    """
    by_split: dict[str, list[Mapping[str, Any]]] = {}
    for r in rows:
        by_split.setdefault(r["split"], []).append(r)
    wer = lambda r: r["errors"] / max(r["words"], 1)
    out = []
    for split, rs in by_split.items():
        errors, words = sum(r["errors"] for r in rs), sum(r["words"] for r in rs)
        out.append(f"== {split}: {len(rs)} utterances, WER {errors / max(words, 1):.3f} "
                   f"({errors} word errors in {words} reference words)")
        ranked = sorted(rs, key=lambda r: (-wer(r), -r["words"], str(r["id"])))
        if len(ranked) <= 2 * most:
            parts = [("all, worst first", ranked)]
        else:
            best = sorted(rs, key=lambda r: (wer(r), -r["words"], str(r["id"])))
            parts = [(f"worst {most}", ranked[:most]), (f"best {most}", best[:most])]
        for title, chosen in parts:
            out.append(f"\n-- {title}")
            for r in chosen:
                out.append(f"WER {wer(r):.3f}  {r['id']}")
                out.append(f"  REF: {r['ref']}")
                out.append(f"  HYP: {r['hyp']}")
        out.append("")
    path = Path(path)
    path.write_text("\n".join(out).rstrip() + "\n", encoding="utf-8")
    return path


# -- language models -------------------------------------------------------------------
def generation_text(prompt: str, continuation: str, reference: str, path: Path, about: str = "") -> Path:
    """A prompt, the model's continuation and what the text really says next, as text.

    Args:
        prompt: the prompt (from the test text).
        continuation: what the model generated after it.
        reference: the test text that follows the prompt.
        path: the text file to write.
        about: one line on how the continuation was sampled.
    Returns:
        ``path``.
    """
    rule = "-" * 72
    parts = [f"Prompt ({len(prompt)} characters of the test text):", rule, prompt, rule, "",
             f"Generated continuation ({len(continuation)} characters{', ' + about if about else ''}):", rule,
             continuation, rule, "", f"What the test text says next ({len(reference)} characters):", rule,
             reference, rule]
    path = Path(path)
    path.write_text("\n".join(parts) + "\n", encoding="utf-8")
    return path


# -- files -----------------------------------------------------------------------------
def png_size(path: Path) -> tuple[int, int]:
    """Width and height of a PNG from its IHDR chunk.

    Raises:
        ValueError: not a PNG (signature or first chunk wrong).
    """
    head = Path(path).read_bytes()[:24]
    if len(head) < 24 or head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        raise ValueError(f"{path}: not a PNG file")
    return struct.unpack(">II", head[16:24])


def _figure(width: float, height: float, nrows: int = 1, ncols: int = 1, sharex: bool = False):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    fig.subplots(nrows, ncols, squeeze=False, sharex=sharex)
    return fig


def _save(fig, path: Path) -> Path:
    path = Path(path)
    fig.savefig(path, dpi=DPI, format="png", bbox_inches="tight", pad_inches=0.1, metadata={"Software": None})
    return path

