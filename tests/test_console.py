"""What a run prints: the progress bar counts steps against a step budget, and the model
summary shows no FLOP figure it could not compute."""

import pytest
import pytorch_lightning as pl
from pytorch_lightning.demos.boring_classes import BoringModel

from tsformer.callbacks import (
    RunModelSummary,
    StepRichProgressBar,
    StepTQDMProgressBar,
    progress_bar,
    step_budget,
)
from tsformer.train import compose_config, console_callbacks


def _trainer(callbacks, **kw) -> pl.Trainer:
    kw = {"max_steps": 5, "limit_train_batches": 2, "limit_val_batches": 0, **kw}
    return pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                      enable_model_summary=False, callbacks=callbacks, **kw)


class _Seen:
    """Records what the training bar shows after every batch."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.seen: list[tuple[str, float, float]] = []

    def on_train_batch_end(self, trainer, *args):
        super().on_train_batch_end(trainer, *args)
        self.seen.append(self.shown())


class SeenTQDM(_Seen, StepTQDMProgressBar):
    def shown(self):
        bar = self.train_progress_bar
        return bar.desc.rstrip(": "), bar.n, bar.total


class SeenRich(_Seen, StepRichProgressBar):
    def shown(self):
        task = self.progress.tasks[self.train_progress_bar_id]
        return task.description.strip(), task.completed, task.total


@pytest.mark.parametrize("bar_class", [SeenTQDM, SeenRich])
def test_progress_bar_counts_steps_out_of_the_step_budget(bar_class):
    """5 steps over 3 epochs of 2 batches: the bar reads 1/5 .. 5/5 under "Steps", never
    an epoch count of -2."""
    if bar_class is SeenRich:
        pytest.importorskip("rich")
    bar = bar_class()
    trainer = _trainer([bar])
    assert step_budget(trainer) == 5
    trainer.fit(BoringModel())
    assert [(d, n, t) for d, n, t in bar.seen] == [("Steps", i, 5) for i in range(1, 6)]


@pytest.mark.parametrize("bar_class", [SeenTQDM, SeenRich])
def test_progress_bar_of_an_epoch_budget_is_lightnings(bar_class):
    if bar_class is SeenRich:
        pytest.importorskip("rich")
    bar = bar_class()
    trainer = _trainer([bar], max_steps=-1, max_epochs=2)
    assert step_budget(trainer) is None
    trainer.fit(BoringModel())
    assert [(d.split("/")[0], n, t) for d, n, t in bar.seen] == [("Epoch 0", 1, 2), ("Epoch 0", 2, 2),
                                                                 ("Epoch 1", 1, 2), ("Epoch 1", 2, 2)]


def test_model_summary_prints_no_flops_it_cannot_count(capsys):
    """The task modules have no example input: Lightning printed "Total FLOPs: 0"."""
    _trainer([RunModelSummary()], max_steps=1, enable_progress_bar=False).fit(BoringModel())
    out = capsys.readouterr().out
    assert "Total params" in out and "Trainable params" in out
    assert "FLOP" not in out.upper().replace("FLOPS", "FLOP")


def test_model_summary_keeps_a_flop_count_it_made(capsys):
    model = BoringModel()
    model.example_input_array = model.layer.weight.new_zeros(4, 32)
    _trainer([RunModelSummary()], max_steps=1, enable_progress_bar=False).fit(model)
    out = capsys.readouterr().out
    total = next(line for line in out.splitlines() if line.endswith("Total FLOPs"))
    assert total.split()[0] not in ("0", "")


def test_train_adds_them_where_the_trainer_config_leaves_them_on():
    names = lambda overrides: sorted(type(c).__name__ for c in console_callbacks(compose_config(overrides).trainer))
    assert names([]) == sorted([type(progress_bar()).__name__, "RunModelSummary"])
    assert names(["trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"]) == []
    assert names(["trainer.barebones=true"]) == []
