"""Hydra callbacks: a summary table of all runs at the end of a multirun sweep."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf


def collect_runs(sweep_dir: Path) -> list[dict[str, Any]]:
    """One row per job of a sweep: its overrides and its ``metrics.json``."""
    rows = []
    for metrics_file in sorted(sweep_dir.glob("*/metrics.json"), key=lambda p: (len(p.parent.name), p.parent.name)):
        job = metrics_file.parent
        overrides_file = job / ".hydra" / "overrides.yaml"
        overrides = OmegaConf.load(overrides_file) if overrides_file.exists() else []
        row = {"run": job.name, "overrides": " ".join(str(o) for o in overrides)}
        row.update(json.loads(metrics_file.read_text()))
        rows.append(row)
    return rows


def summary_table(rows: list[dict[str, Any]], keys: list[str] | None = None) -> str:
    """A plain-text table of the runs (``keys``: metric columns; default: all test/* metrics)."""
    if not rows:
        return "(no finished runs)"
    if keys is None:
        keys = sorted({k for r in rows for k in r if k.startswith(("test/", "baseline/"))} | {"train/seconds"})
    cols = ["run", "overrides", *keys]
    cells = [[str(r.get("run")), str(r.get("overrides"))] + [_fmt(r.get(k)) for k in keys] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def _fmt(v: Any) -> str:
    return "" if v is None else f"{v:.5g}" if isinstance(v, float) else str(v)


class MultirunSummary(Callback):
    """At the end of ``-m`` sweeps: print a table of every run's metrics and write
    ``summary.csv`` and ``summary.md`` in the sweep directory."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        rows = collect_runs(sweep_dir)
        if not rows:
            return
        table = summary_table(rows)
        print(f"\nSweep summary ({len(rows)} runs, {sweep_dir}):\n{table}")
        (sweep_dir / "summary.md").write_text(table + "\n")
        keys = sorted({k for r in rows for k in r})
        with open(sweep_dir / "summary.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            w.writerows(rows)
