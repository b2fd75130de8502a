"""Lightning hooks shared by the task modules."""

from __future__ import annotations


class StagedEvalHooks:
    """Routes validation and test to ``_eval_step(stage, batch)`` and ``_eval_end(stage)``.

    Mix in before ``pl.LightningModule``; the module accumulates per stage in
    ``_eval_step`` and logs ``<stage>/<metric>`` in ``_eval_end``.
    """

    def _eval_step(self, stage: str, batch) -> None:
        raise NotImplementedError

    def _eval_end(self, stage: str) -> None:
        raise NotImplementedError

    def validation_step(self, batch, batch_idx):
        self._eval_step("val", batch)

    def on_validation_epoch_end(self):
        self._eval_end("val")

    def test_step(self, batch, batch_idx):
        self._eval_step("test", batch)

    def on_test_epoch_end(self):
        self._eval_end("test")


def store_tokenizer(module, checkpoint: dict, classes: bool = True) -> None:
    """From ``on_save_checkpoint``: put the run's SentencePiece model (bytes) and, with
    ``classes``, the class names into the checkpoint, so that it alone can tokenize and
    label new documents."""
    dm = getattr(module.trainer, "datamodule", None) if module._trainer is not None else None
    if dm is not None and getattr(dm, "tokenizer", None) is not None:
        checkpoint["sentencepiece_model"] = dm.tokenizer.to_bytes()
        if classes:
            checkpoint["classes"] = list(dm.classes)
