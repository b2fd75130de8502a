"""Issue 19: one error policy for every command (tsformer/cli.py), --help, and resume with
hydra.run.dir."""

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from tests.conftest import make_long_csv
from tests.test_train import TINY
from tsformer.callbacks import CheckpointError
from tsformer.cli import ConfigError, command, discard_run_dir, format_error, user_error, user_errors
from tsformer.data.errors import DataError
from tsformer.train import REPO_ROOT, compose_config, resolve_resume


def _start(module: str, args: list[str], cwd: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", module, *args], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_the_three_cases_of_the_issue_end_in_one_line_status_2_and_no_run_dir(tmp_path):
    """textcls on an empty CSV, electricity on a one-row CSV, transcribe with a missing
    checkpoint, an unknown model: one ``error: <file>: ...`` line, status 2, nothing written.
    The interpreters start in parallel."""
    (tmp_path / "empty.csv").write_text("")
    with gzip.open(REPO_ROOT / "data/electricity/df_electricity_sample.csv.gz", "rt") as f:
        (tmp_path / "one.csv").write_text(f.readline() + f.readline())
    cases = {
        "empty.csv": _start("tsformer.train", ["task=textcls", "data.path=empty.csv"], tmp_path),
        "one.csv": _start("tsformer.train", ["task=electricity", "data.path=one.csv"], tmp_path),
        "missing.ckpt": _start("tsformer.transcribe", ["ckpt=missing.ckpt", "audio=a.flac"], tmp_path),
        # Hydra's own composition errors too, before any run directory exists
        "config": _start("tsformer.train", ["task=electricity", "model=nope", "data.pth=x"], tmp_path),
    }
    errors = {}
    for name, p in cases.items():
        out, err = p.communicate(timeout=900)  # a busy machine: minutes
        lines = err.strip().splitlines()
        assert p.returncode == 2, (name, err[-3000:])
        assert len(lines) == 1 and lines[0].startswith(f"error: {name}: "), (name, err[-3000:])
        errors[name] = lines[0]
    assert "too few to infer the frequency" in errors["one.csv"]
    assert errors["missing.ckpt"] == "error: missing.ckpt: no such file or folder"
    assert errors["config"].startswith("error: config: In 'config': Could not find 'model/nope' (options in 'model': ")
    assert "logsparse" in errors["config"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.csv", "one.csv"]  # no outputs/


def test_one_row_csv_names_the_file_not_pandas(tmp_path):
    from tsformer.data.forecasting.readers import read_series

    path = tmp_path / "one.csv"
    path.write_text("series,time,value\na,2014-01-01 00:00,1.0\na,2014-01-01 01:00,2.0\n")
    with pytest.raises(DataError, match=r"one.csv: 2 distinct time\(s\) in column 'time', too few .* data.freq"):
        read_series(path)
    assert len(read_series(path, freq="1h").index) == 2  # with data.freq the two rows are enough


def test_what_counts_as_the_users_problem():
    from hydra.errors import InstantiationException
    from omegaconf.errors import MissingMandatoryValue

    assert user_error(DataError("x.csv: row 3: bad")) is not None
    assert user_error(FileNotFoundError(2, "No such file", "m.ckpt")) is not None
    assert user_error(CheckpointError("run: no checkpoint")) is not None
    assert user_error(ValueError("a bug")) is None and user_error(KeyError("k")) is None
    wrapped = InstantiationException("Error in call to target")
    wrapped.__cause__ = DataError("d.csv: empty")
    assert user_error(wrapped) is wrapped.__cause__
    bug = InstantiationException("Error in call to target")
    bug.__cause__ = ZeroDivisionError()
    assert user_error(bug) is None
    typo = InstantiationException("Error in call to target")
    typo.__cause__ = TypeError("__init__() got an unexpected keyword argument 'd_modle'")
    assert user_error(typo) is typo
    with pytest.raises(MissingMandatoryValue) as e:
        _ = compose_config(["task=csv"]).data.path
    assert format_error(e.value) == "error: config: Missing mandatory value: data.path"
    assert format_error(FileNotFoundError(2, "No such file", "m.ckpt")) == "error: m.ckpt: no such file or folder"
    assert format_error(DataError("a.csv: row 2:\nbad")) == "error: a.csv: row 2:; bad"


def test_user_errors_exits_2_cleans_up_and_keeps_bugs(capsys):
    cleaned = []
    with pytest.raises(SystemExit) as e, user_errors(cleanup=lambda: cleaned.append(1)):
        raise ConfigError("model.attention.window: must be positive")
    assert e.value.code == 2 and cleaned == [1]
    assert capsys.readouterr().err == "error: model.attention.window: must be positive\n"
    with pytest.raises(ZeroDivisionError), user_errors(cleanup=lambda: cleaned.append(2)):
        _ = 1 / 0
    assert cleaned == [1]


def test_discard_run_dir_removes_only_hydras_files(tmp_path):
    run = tmp_path / "outputs" / "electricity" / "logsparse" / "2026-01-01_00-00-00"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text("x: 1")
    (run / "train.log").write_text("")
    discard_run_dir(run, keep_above=tmp_path)
    assert list(tmp_path.iterdir()) == []  # the empty folders above it went too
    other = tmp_path / "outputs" / "a"
    (other / "checkpoints").mkdir(parents=True)
    (other / ".hydra").mkdir()
    discard_run_dir(other, keep_above=tmp_path)
    assert (other / "checkpoints").is_dir()  # an earlier run's work is never removed


def test_command_help_and_usage_errors(capsys):
    @command({"model": None, "horizon": 24}, "Forecast things.\n\n    tsformer-forecast model=m.tsf")
    def main(argv=None):
        if not argv:
            raise SystemExit("missing model=...\nusage: tsformer-forecast model=<file>")
        raise DataError(f"{argv[0]}: row 4: not a number")

    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Forecast things.") and "model   = null" in out and "horizon = 24" in out
    for argv, line in (([], "error: missing model=...; usage: tsformer-forecast model=<file>"),
                       (["x.csv"], "error: x.csv: row 4: not a number")):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2 and capsys.readouterr().err == line + "\n"


@pytest.mark.parametrize("module,keys", [("tsformer.export", ["run", "out"]),
                                         ("tsformer.forecast", ["model", "input", "output", "batch_size"]),
                                         ("tsformer.transcribe", ["ckpt", "audio", "beam_width"])])
def test_every_command_lists_its_keys_on_help(module, keys, capsys):
    import importlib

    assert importlib.import_module(module).main(["--help"]) == 0
    out = capsys.readouterr().out
    for k in keys:
        assert f"\n  {k} " in out, out


def test_resume_true_with_hydra_run_dir_resumes_that_dir(tmp_path):
    """hydra.run.dir=X and resume=true: X is the killed run itself, not a new run beside it."""
    run = tmp_path / "X"
    (run / "checkpoints").mkdir(parents=True)
    cfg = OmegaConf.create({"resume": True, "run_dir": None})
    resolve_resume(cfg, run)
    assert cfg.run_dir == str(run)
    # A new Hydra dir (no checkpoints) still resumes the newest earlier run beside it.
    cfg = OmegaConf.create({"resume": True, "run_dir": None})
    resolve_resume(cfg, tmp_path / "new")
    assert cfg.run_dir == str(run)


@pytest.mark.slow
def test_resume_with_hydra_run_dir_end_to_end(tmp_path):
    series = tmp_path / "series.csv"
    make_long_csv(series)
    args = [*TINY, f"data.path={series}", "hydra.run.dir=runs/X", "checkpoint.every_n_steps=2"]
    p = _start("tsformer.train", args, tmp_path)
    out, err = p.communicate(timeout=600)
    assert p.returncode == 0, err[-3000:]
    more = [a for a in args if not a.startswith("trainer.max_steps")] + ["trainer.max_steps=8", "resume=true"]
    p = _start("tsformer.train", more, tmp_path)
    out, err = p.communicate(timeout=600)
    assert p.returncode == 0, err[-3000:]
    assert "resuming from" in out + err and "runs/X/checkpoints" in out + err
    assert json.loads((tmp_path / "runs/X/metrics.json").read_text())["train/steps"] == 8
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["X"]
