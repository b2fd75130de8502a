"""What the benchmark scripts share when they publish: the JSON history under
``benchmarks/results/`` and the section appended to ``benchmarks/RESULTS.md``."""

from __future__ import annotations

import json
from pathlib import Path

from tsformer.train import write_json_atomic

ROOT = Path(__file__).resolve().parent.parent


def append_json(path: str | Path, entry: dict) -> None:
    """Add ``entry`` to the list stored in ``path`` (created if missing), atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    old = json.loads(path.read_text()) if path.exists() else []
    write_json_atomic(path, old + [entry])


def publish(text: str, append: bool = True) -> None:
    """Print a markdown section and, unless ``append`` is False, add it to RESULTS.md."""
    print(text)
    if append:
        with open(ROOT / "benchmarks/RESULTS.md", "a") as f:
            f.write(text)
