"""Issue 8: checkpoints, resume, non-finite guard, loggers, sweeps, DDP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from tests.conftest import make_long_csv
from tests.test_train import TINY
from tsformer.callbacks import (
    CheckpointError,
    NonFiniteGuard,
    WeightEMA,
    find_resume_checkpoint,
    load_checkpoint,
)
from tsformer.train import REPO_ROOT, compose_config, train


def _cli(args: list[str], cwd: Path, **kw) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "tsformer.train", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def _run_cli(args, cwd, timeout=300) -> str:
    p = _cli(args, cwd)
    out, _ = p.communicate(timeout=timeout)
    assert p.returncode == 0, out[-4000:]
    return out


@pytest.fixture
def series(tmp_path):
    path = tmp_path / "series.csv"
    make_long_csv(path)
    return path


# -- checkpoints ------------------------------------------------------------------
def test_corrupt_checkpoint_detected_and_resume_falls_back(tmp_path, series):
    run = tmp_path / "run"
    train(compose_config(TINY + [f"data.path={series}", f"run_dir={run}", "checkpoint.every_n_steps=2"]))
    ckpts = run / "checkpoints"
    steps = sorted(ckpts.glob("step=*.ckpt"))
    assert [p.name for p in steps] == ["step=0000004.ckpt", "step=0000006.ckpt"]  # keep=2
    # Loading never runs code from the file: weights-only load of every checkpoint works.
    assert load_checkpoint(ckpts / "last.ckpt")["global_step"] == 6
    # Truncate the newest: a clear error naming it, and resume falls back to step 4.
    data = (ckpts / "last.ckpt").read_bytes()
    (ckpts / "last.ckpt").write_bytes(data[: len(data) // 2])
    (ckpts / "step=0000006.ckpt").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match=r"last.ckpt: truncated or corrupt checkpoint"):
        load_checkpoint(ckpts / "last.ckpt")
    path, ckpt = find_resume_checkpoint(run)
    assert path.name == "step=0000004.ckpt" and ckpt["global_step"] == 4


def test_no_temporary_files_left(tmp_path, series):
    run = tmp_path / "run"
    train(compose_config(TINY + [f"data.path={series}", f"run_dir={run}"]))
    assert not [p for p in run.rglob("*.tmp")]


# -- non-finite guard -----------------------------------------------------------------
class _Toy(pl.LightningModule):
    def __init__(self, bad_steps):
        super().__init__()
        self.lin = torch.nn.Linear(2, 1)
        self.bad = set(bad_steps)

    def training_step(self, batch, i):
        loss = self.lin(batch[0]).pow(2).mean()
        return loss * float("nan") if self.global_step in self.bad or i in self.bad else loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(64, 2)), batch_size=4)


def _fit(model, guard, steps):
    trainer = pl.Trainer(max_steps=steps, callbacks=[guard], logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
    trainer.fit(model)
    return trainer


def test_nonfinite_steps_are_skipped_and_counted():
    model = _Toy(bad_steps={2, 3})
    before = {}

    class Spy(pl.Callback):
        def on_train_batch_start(self, trainer, m, batch, i):
            before[i] = m.lin.weight.detach().clone()

    guard = NonFiniteGuard(max_consecutive=3)
    trainer = pl.Trainer(max_steps=6, callbacks=[guard, Spy()], logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
    trainer.fit(model)
    assert guard.skipped == 2
    assert torch.equal(before[2], before[3]) and torch.equal(before[3], before[4])  # no update from NaN
    assert not torch.equal(before[0], before[1])
    assert torch.isfinite(model.lin.weight).all()


def test_nonfinite_guard_stops_naming_step():
    model = _Toy(bad_steps=set(range(3, 100)))
    with pytest.raises(FloatingPointError, match=r"3 consecutive non-finite steps, the last at step \d+ \(batch 5"):
        _fit(model, NonFiniteGuard(max_consecutive=3), 20)


# -- weight averaging ------------------------------------------------------------------
def test_weight_ema_follows_raw_weights_until_start_then_averages():
    decay, start, steps = 0.8, 3, 7
    raw = []

    class Spy(pl.Callback):  # before WeightEMA in the list: sees each step's raw weights first
        def on_train_batch_end(self, trainer, m, out, batch, i):
            raw.append(m.lin.weight.detach().clone())

    model = _Toy(bad_steps=set())
    trainer = pl.Trainer(max_steps=steps, callbacks=[Spy(), WeightEMA(decay, start_step=start)], logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         accelerator="cpu")
    trainer.fit(model)
    expect = raw[start - 1]  # the steps before start_step: the average is the raw weights
    for w in raw[start:]:
        expect = decay * expect + (1 - decay) * w
    assert len(raw) == steps and not torch.allclose(expect, raw[-1])
    torch.testing.assert_close(model.lin.weight.detach(), expect)  # training ends with the average


def test_weight_ema_checkpoint_tests_the_average(tmp_path):
    saved = tmp_path / "mid.ckpt"

    class SaveAt(pl.Callback):  # a best.ckpt written mid-training, while raw and average differ
        def on_train_batch_end(self, trainer, m, out, batch, i):
            if trainer.global_step == 5:
                trainer.save_checkpoint(saved)

    class Tested(_Toy):
        def test_step(self, batch, i):
            self.seen = self.lin.weight.detach().clone()

        def test_dataloader(self):
            return self.train_dataloader()

    model = Tested(bad_steps=set())
    trainer = pl.Trainer(max_steps=8, callbacks=[WeightEMA(0.5, start_step=1), SaveAt()], logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         accelerator="cpu")
    trainer.fit(model)
    trainer.test(model, ckpt_path=str(saved), verbose=False)
    ckpt = load_checkpoint(saved)
    assert not torch.equal(ckpt["state_dict"]["lin.weight"], ckpt["current_model_state"]["lin.weight"])
    torch.testing.assert_close(model.seen, ckpt["state_dict"]["lin.weight"])  # the average, not the raw weights


@pytest.mark.parametrize("decay,start,match", [(1.0, 0, "decay"), (0.0, 0, "decay"), (0.9, -1, "start_step")])
def test_weight_ema_rejects_bad_settings(decay, start, match):
    with pytest.raises(ValueError, match=f"weight_averaging.{match}"):
        WeightEMA(decay, start)


def test_weight_averaging_config_runs(tmp_path, series):
    run = tmp_path / "run"
    train(compose_config(TINY + [f"data.path={series}", f"run_dir={run}", "weight_averaging.decay=0.9",
                                 "weight_averaging.start_step=2"]))
    ckpt = load_checkpoint(run / "checkpoints" / "last.ckpt")
    assert "current_model_state" in ckpt  # the average in state_dict, the raw weights kept for resuming
    assert any(not torch.equal(ckpt["state_dict"][k], v) for k, v in ckpt["current_model_state"].items())


# -- kill and resume -------------------------------------------------------------------
@pytest.mark.slow
def test_kill_and_resume_matches_uninterrupted(tmp_path, series):
    args = TINY + [f"data.path={series}", "trainer.max_steps=120", "trainer.val_check_interval=20",
                   "checkpoint.every_n_steps=5", "logger=csv"]
    args = [a for a in args if not a.startswith(("trainer.max_steps=6", "trainer.val_check_interval=3"))]
    _run_cli(args + [f"run_dir={tmp_path / 'a'}"], tmp_path)
    ref = json.loads((tmp_path / "a" / "metrics.json").read_text())

    run_b = tmp_path / "b"
    p = _cli(args + [f"run_dir={run_b}"], tmp_path)
    deadline = time.time() + 240
    while time.time() < deadline and not list((run_b / "checkpoints").glob("step=*.ckpt")):
        time.sleep(0.01)
    p.send_signal(signal.SIGKILL)
    p.communicate()
    assert not (run_b / "metrics.json").exists(), "the run finished before it could be killed"
    killed_at = load_checkpoint(find_resume_checkpoint(run_b)[0])["global_step"]
    assert 0 < killed_at < 120
    _run_cli(args + [f"run_dir={run_b}", "resume=true"], tmp_path)
    got = json.loads((run_b / "metrics.json").read_text())
    assert got["train/steps"] == 120
    for k in ("test/rho50", "test/rho90", "test/crps", "test/mae", "best/val/loss"):
        assert got[k] == pytest.approx(ref[k], rel=1e-5, abs=1e-7), (k, killed_at)


# -- loggers and sweeps -------------------------------------------------------------------
@pytest.mark.parametrize("logger,pattern", [("csv", "logs/metrics.csv"), ("tensorboard", "tensorboard/events.out.tfevents.*"),
                                            ("wandb", "wandb/offline-run-*/run-*.wandb")])
def test_every_logger_writes_its_files(tmp_path, series, logger, pattern, monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = tmp_path / "run"
    train(compose_config(TINY + [f"data.path={series}", f"run_dir={run}", f"logger={logger}"]))
    assert list(run.glob(pattern)), sorted(str(p.relative_to(run)) for p in run.rglob("*"))
    assert (run / "metrics.json").exists() and (run / "config.yaml").exists()


@pytest.mark.slow
def test_multirun_two_runs_and_summary(tmp_path, series):
    sweep = tmp_path / "sweep"
    out = _run_cli(["-m", *TINY, f"data.path={series}", "seed=1,2", f"hydra.sweep.dir={sweep}"], tmp_path)
    assert (sweep / "0" / "metrics.json").exists() and (sweep / "1" / "metrics.json").exists()
    assert "Sweep summary (2 runs" in out
    summary = (sweep / "summary.csv").read_text()
    assert "seed=1" in summary and "seed=2" in summary and "test/rho50" in summary


def test_optuna_search_config_composes():
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    from hydra import compose, initialize_config_dir

    from tsformer.train import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["hparams_search=forecasting_optuna"], return_hydra_config=True)
    assert cfg.optimized_metric == "best/val/loss"
    assert "model.d_model" in cfg.hydra.sweeper.params


@pytest.mark.parametrize("name", ["cpu", "gpu", "ddp", "fsdp", "bf16"])
def test_hardware_configs_compose(name):
    cfg = compose_config([f"trainer={name}"])
    assert cfg.trainer._target_ == "pytorch_lightning.Trainer"


# -- distributed ------------------------------------------------------------------------
@pytest.mark.slow
def test_ddp_two_cpu_processes_match_single_process(tmp_path, series):
    """Gloo DDP with 2 processes x batch 8 equals 1 process x batch 16: same windows per step,
    gradients averaged, every test window evaluated once, one checkpoint set written."""
    base = [a for a in TINY if not a.startswith("data.batch_size")] + [f"data.path={series}", "trainer.max_steps=5"]
    _run_cli(base + ["data.batch_size=16", f"run_dir={tmp_path / 'single'}"], tmp_path)
    _run_cli(base + ["data.batch_size=8", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
                     f"run_dir={tmp_path / 'ddp'}"], tmp_path)
    single = json.loads((tmp_path / "single" / "metrics.json").read_text())
    ddp = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    for k in ("test/rho50", "test/rho90", "test/mae", "test/crps", "best/val/loss"):
        assert ddp[k] == pytest.approx(single[k], rel=1e-3), k
    assert sorted(p.name for p in (tmp_path / "ddp" / "checkpoints").glob("*.ckpt")) == sorted(
        p.name for p in (tmp_path / "single" / "checkpoints").glob("*.ckpt"))
