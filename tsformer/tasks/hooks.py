"""Lightning hooks shared by the task modules."""

from __future__ import annotations

from torch import Tensor

from tsformer.nn.attention.parts import apply_constraints, auxiliary_loss


class LearnedPartsHooks:
    """Auxiliary losses and parameter constraints of learned attention parts (adaptive
    spans' L1 penalty, their clamp to ``[0, max]``) for any task: mix in before
    ``pl.LightningModule`` and pass the task loss through :meth:`with_aux`."""

    def with_aux(self, loss: Tensor, batch_size: int) -> Tensor:
        """``loss`` plus the network's auxiliary losses (logged as ``train/aux_loss``)."""
        aux = auxiliary_loss(self.net)
        if aux is None:
            return loss
        self.log("train/aux_loss", aux, batch_size=batch_size)
        return loss + aux

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        apply_constraints(self.net)  # after the optimizer step of this batch



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
