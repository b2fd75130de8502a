"""Issue 19: the wheel is whole. Built, installed into a fresh virtual environment and run
from an empty folder, away from the checkout: the main job, an export and a forecast."""

import os
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pandas as pd
import pytest

from tsformer.train import REPO_ROOT

SMALL = ["model.d_model=16", "model.n_heads=2", "model.n_layers=1", "model.d_ff=32", "module.num_samples=8",
         "trainer.max_steps=2", "trainer.val_check_interval=2", "trainer.enable_progress_bar=false",
         "trainer.enable_model_summary=false", "plots.enabled=false", "data.batch_size=8"]


def _run(cmd: list, cwd: Path, env: dict, timeout: int = 600) -> str:
    p = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, f"{cmd}\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return p.stdout + p.stderr


@pytest.mark.slow
def test_wheel_installs_and_runs_outside_the_checkout(tmp_path):
    # From a copy of the source tree (no stale build/ folder), links kept (tsformer/sample_data);
    # without build isolation: the running environment's setuptools, no download.
    src = tmp_path / "src"
    shutil.copytree(REPO_ROOT, src, symlinks=True, ignore=shutil.ignore_patterns(
        ".git", ".venv*", "build", "dist", "*.egg-info", "outputs", "multirun", "runs", "__pycache__", ".*cache"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(tmp_path / "wheel")], check=True, capture_output=True, timeout=600)
    (whl,) = (tmp_path / "wheel").glob("tsformer-*.whl")
    names = set(zipfile.ZipFile(whl).namelist())
    for must in ("tsformer/conf/config.yaml", "tsformer/conf/task/electricity.yaml", "tsformer/conf/model/logsparse.yaml",
                 "tsformer/sample_data/electricity/df_electricity_sample.csv.gz",
                 "tsformer/sample_data/textcls/shakespeare_speakers.csv", "tsformer/sample_data/asr_sample/manifest.csv",
                 "tsformer/sample_data/asr_sample/kaldi/train/wav.scp"):
        assert must in names, must
    assert not any("librispeech_sample" in n or n.endswith("prepare.py") for n in names)
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    scripts = zipfile.ZipFile(whl).read(entry_points).decode()
    for script in ("tsformer-train", "tsformer-export", "tsformer-forecast", "tsformer-transcribe", "tsformer-generate"):
        assert script in scripts

    # A fresh environment that sees this one's packages (torch, lightning, ...) but not the
    # checkout: --system-site-packages, plus this environment's site-packages when it is itself
    # a virtual environment (their .pth files, e.g. an editable tsformer, are not read).
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], check=True)
    (pure,) = (venv / "lib").glob("python*/site-packages")
    (pure / "outer_env.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "--no-deps", "--force-reinstall",
                    "-q", str(whl)], check=True, capture_output=True, timeout=600)
    bin_ = venv / "bin"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(OMP_NUM_THREADS="1", PATH=f"{bin_}:{env.get('PATH', '/usr/bin:/bin')}")
    work = tmp_path / "empty"
    work.mkdir()
    where = _run([bin_ / "python", "-c", "import tsformer; print(tsformer.__file__)"], work, env)
    assert str(pure) in where, where

    assert "task: " in _run([bin_ / "tsformer-train", "--help"], work, env)
    # The main job (task=electricity on the shipped sample), a few steps, Hydra's run directory.
    out = _run([bin_ / "tsformer-train", *SMALL, "hydra.run.dir=main"], work, env)
    assert "Run directory" in out and (work / "main" / "metrics.json").exists()
    assert str(REPO_ROOT) not in (work / "main" / "config.yaml").read_text()

    # Export needs a task=csv run: the same shipped sample, named through the package.
    sample = "${sample:electricity/df_electricity_sample.csv.gz}"
    _run([bin_ / "tsformer-train", "task=csv", f"data.path={sample}", "data.time_col=time", "data.id_col=group",
          "data.target=kW", *SMALL, "run_dir=csvrun"], work, env)
    _run([bin_ / "tsformer-export", "run=csvrun", "out=model.tsf"], work, env)
    history = pure / "tsformer" / "sample_data" / "electricity" / "df_electricity_sample.csv.gz"
    _run([bin_ / "tsformer-forecast", "model=model.tsf", f"input={history}", "output=f.csv", "progress=false",
          "num_samples=8"], work, env)
    fc = pd.read_csv(work / "f.csv")
    assert fc["series"].nunique() == 3 and len(fc) == 3 * 24
    assert "tsformer.export" in _run([bin_ / "tsformer-export", "--help"], work, env)
