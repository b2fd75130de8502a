"""Peak memory of loading a 10-million-row long CSV with the task=csv reader.

    PYTHONPATH=. python benchmarks/csv_load.py [--rows 10000000] [--series 1000]

Writes the CSV to /tmp (not kept in the repository), loads it in a fresh subprocess and
reports that process's peak RSS (ru_maxrss) next to the size of the loaded arrays;
appends the figures to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent

CHILD = """
import json, resource, sys, time
import numpy as np
from tsformer.data.forecasting.user_csv import read_user_csv
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
tab = read_user_csv(sys.argv[1], time_col="time", target="value", id_col="series", known_covariates=["temp"])
sec = time.perf_counter() - t
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"seconds": sec, "peak_mib": peak / 1024, "import_mib": base / 1024,
                  "array_mib": (tab.values.nbytes + tab.known.nbytes) / 2**20, "shape": list(tab.values.shape)}))
"""


def make_csv(path: Path, rows: int, series: int) -> None:
    steps = rows // series
    rng = np.random.default_rng(0)
    t = np.datetime64("2015-01-01T00:00") + np.arange(steps).astype("timedelta64[h]")
    ts = np.datetime_as_string(t, unit="s")
    with open(path, "w") as f:
        f.write("series,time,value,temp\n")
        for s in range(series):
            v = 10 + np.sin(np.arange(steps) / 4) + rng.standard_normal(steps)
            temp = np.cos(np.arange(steps) / 24)
            f.writelines(f"S{s:05d},{a},{b:.4f},{c:.3f}\n" for a, b, c in zip(ts, v, temp))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--series", type=int, default=1000)
    ap.add_argument("--path", default="/tmp/tsformer_csv_load_bench.csv")
    a = ap.parse_args()
    path = Path(a.path)
    if not path.exists():
        print(f"writing {a.rows} rows to {path} ...", flush=True)
        make_csv(path, a.rows, a.series)
    size = path.stat().st_size / 2**20
    out = subprocess.run([sys.executable, "-c", CHILD, str(path)], capture_output=True, text=True,
                         env={"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    if out.returncode:
        sys.exit(out.stderr)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    line = (f"- {datetime.now():%Y-%m-%d %H:%M} {platform.node()} ({platform.processor() or platform.machine()}, "
            f"CPU shared with other engineers): csv_load {a.rows:,} rows x 4 columns ({a.series} series, "
            f"{size:.0f} MiB file): {r['seconds']:.1f} s, peak RSS {r['peak_mib']:.0f} MiB "
            f"(of which {r['import_mib']:.0f} MiB after imports), loaded arrays {r['array_mib']:.0f} MiB, "
            f"table {r['shape']}")
    print(line)
    res = ROOT / "benchmarks" / "RESULTS.md"
    with open(res, "a") as f:
        f.write(line + "\n")


if __name__ == "__main__":
    main()
