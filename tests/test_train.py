"""End-to-end: train(cfg) on small fixtures, the run directory and metrics.json."""

import json

import pytest
from omegaconf import OmegaConf

from tests.conftest import make_long_csv
from tsformer.train import CONF_DIR, compose_config, train

TINY = [
    "data.context_length=48",
    "data.horizon=12",
    "data.test_start=2014-08-05 00:00",
    "data.test_windows=2",
    "data.test_stride=12",
    "data.val_windows=2",
    "data.batch_size=16",
    "model.d_model=16",
    "model.n_heads=2",
    "model.n_layers=1",
    "model.d_ff=32",
    "module.num_samples=20",
    "trainer.max_steps=6",
    "trainer.val_check_interval=3",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "print_metrics=false",
]

REQUIRED = ["test/rho50", "test/rho90", "test/mae", "test/crps", "baseline/seasonal_naive/rho50",
            "baseline/seasonal_naive/rho90", "train/seconds"]


def test_config_composes_with_defaults():
    cfg = compose_config([])
    assert cfg.task_name == "electricity"
    assert cfg.model.attention.pattern == "logsparse"
    assert cfg.trainer.accelerator == "cpu"
    assert cfg.data.path.endswith("data/electricity/df_electricity_sample.csv.gz")
    cfg = compose_config(["model=transformer", "trainer.gradient_clip_algorithm=value"])
    assert cfg.model.attention.pattern == "causal" and cfg.trainer.gradient_clip_algorithm == "value"


# Per task family (the LightningModule): the network family that fits it, and constructor
# arguments like the ones the family's DataModule.model_kwargs() gives.
FAMILIES = {
    "tsformer.tasks.forecasting.ForecastingModule": (
        ("tsformer.nn.conv_transformer.ConvTransformerForecaster", "tsformer.nn.patch_forecaster.PatchForecaster"),
        {"num_series": 3, "num_covariates": 5}),
    "tsformer.tasks.asr.ASRModule": (
        ("tsformer.nn.conformer.ConformerCTC",),
        {"input_dim": 13, "vocab_size": 30, "cmvn_mean": None, "cmvn_std": None, "specaugment": None}),
    "tsformer.tasks.textcls.TextClassificationModule": (
        ("tsformer.nn.longformer.LongformerClassifier",), {"vocab_size": 100, "num_classes": 2}),
    "tsformer.tasks.charlm.CharLMModule": (("tsformer.nn.longformer.LongformerCharLM",), {"vocab_size": 40}),
    "tsformer.tasks.mlm.MaskedLMModule": (("tsformer.nn.longformer.LongformerMaskedLM",), {"vocab_size": 100}),
}


@pytest.mark.parametrize("task", sorted(p.stem for p in (CONF_DIR / "task").glob("*.yaml")))
def test_every_task_picks_a_fitting_default_model(task):
    """`python -m tsformer.train task=<task>` with no model override builds a network of the
    task's family (the forecaster's constructor once got the speech tasks' arguments)."""
    from hydra.utils import get_class, instantiate

    cfg = compose_config([f"task={task}"])
    assert cfg.module._target_ in FAMILIES, f"{task}: no family for {cfg.module._target_}; add it here"
    fitting, data_kwargs = FAMILIES[cfg.module._target_]
    net = instantiate(cfg.model, _convert_="all", **data_kwargs)
    assert isinstance(net, tuple(get_class(name) for name in fitting)), (task, cfg.model._target_)


def test_every_trainer_argument_is_overridable():
    import inspect

    import pytorch_lightning as pl

    cfg = compose_config([])
    names = set(inspect.signature(pl.Trainer.__init__).parameters) - {"self", "logger", "callbacks", "default_root_dir"}
    assert names <= set(cfg.trainer), names - set(cfg.trainer)


def test_train_end_to_end(tmp_path):
    data = tmp_path / "series.csv"
    make_long_csv(data)
    run = tmp_path / "run"
    cfg = compose_config(TINY + [f"data.path={data}", f"run_dir={run}"])
    metrics = train(cfg)
    for k in REQUIRED:
        assert k in metrics and metrics[k] == metrics[k], k  # present and not NaN
    on_disk = json.loads((run / "metrics.json").read_text())
    assert on_disk == pytest.approx(metrics)
    assert (run / "checkpoints" / "best.ckpt").exists() and (run / "checkpoints" / "last.ckpt").exists()
    saved = OmegaConf.load(run / "config.yaml")
    assert saved.data.path == str(data) and saved.trainer.max_steps == 6
    assert (run / "logs" / "metrics.csv").exists()
    assert metrics["train/steps"] == 6


def test_seed_makes_runs_repeatable(tmp_path):
    data = tmp_path / "series.csv"
    make_long_csv(data)
    out = []
    for i in range(2):
        cfg = compose_config(TINY + [f"data.path={data}", f"run_dir={tmp_path / f'r{i}'}", "seed=7"])
        out.append(train(cfg))
    for k in ("test/rho50", "test/crps", "best/val/loss"):
        assert out[0][k] == out[1][k]


def test_bad_data_writes_nothing(tmp_path):
    run = tmp_path / "run"
    cfg = compose_config(TINY + [f"data.path={tmp_path / 'missing.csv'}", f"run_dir={run}"])
    with pytest.raises(ValueError, match="missing.csv: file not found"):
        train(cfg)
    assert not run.exists()


@pytest.mark.slow
def test_it_learns_a_noisy_sine(tmp_path):
    """R0.5 must fall well below the seasonal-naive figure of the same run."""
    data = tmp_path / "sine.csv"
    make_long_csv(data, n_series=2, days=60, noise=0.15, start="2014-06-10")
    cfg = compose_config([
        "data.context_length=48", "data.horizon=24", "data.test_start=2014-08-05 00:00", "data.test_windows=4",
        "data.test_stride=24", "data.val_windows=2", "data.batch_size=32", "model.d_model=32", "model.n_layers=2",
        "module.num_samples=50", "trainer.max_steps=250", "trainer.val_check_interval=125",
        "trainer.enable_progress_bar=false", "print_metrics=false", f"data.path={data}", f"run_dir={tmp_path / 'run'}",
    ])
    m = train(cfg)
    assert m["test/rho50"] < 0.85 * m["baseline/seasonal_naive/rho50"], m


def test_time_budgeted_schedule_has_no_step_count():
    """``trainer.max_time`` with ``max_steps=-1``: Lightning's step estimate is infinite; the
    rate warms up, then stays at the base value (it used to crash converting inf to int)."""
    import math

    import torch

    from tsformer.tasks.optim import warmup_cosine

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = warmup_cosine(opt, 4, math.inf)["scheduler"]
    rates = []
    for _ in range(10):
        rates.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert rates[:4] == [0.25, 0.5, 0.75, 1.0] and rates[4:] == [1.0] * 6
