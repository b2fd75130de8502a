"""LightningModule for long-document classification (Longformer, Beltagy et al. 2020)."""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tsformer.metrics import accuracy, macro_f1
from tsformer.tasks.hooks import LearnedPartsHooks, StagedEvalHooks, store_tokenizer
from tsformer.tasks.optim import adamw_warmup_cosine


class TextClassificationModule(LearnedPartsHooks, StagedEvalHooks, pl.LightningModule):
    """Cross-entropy training; accuracy and macro-F1 on validation and test.

    The SentencePiece model of the run is stored in every checkpoint
    (``checkpoint["sentencepiece_model"]``, bytes) so that the checkpoint alone can
    tokenize new documents.

    Args:
        net: ``forward(tokens (B, L), lengths (B,)) -> (B, C)`` logits.
        lr, weight_decay, warmup_steps: AdamW with warm-up and cosine decay.
        label_smoothing: cross-entropy label smoothing.

    With ``plot_settings`` set (``train()`` does it before testing, :mod:`tsformer.plots`),
    testing keeps the confusion counts, and :meth:`write_plots` draws them.
    """

    plot_settings: dict | None = None

    def __init__(self, net: nn.Module, lr: float = 3e-4, weight_decay: float = 1e-2, warmup_steps: int = 50,
                 label_smoothing: float = 0.0):
        super().__init__()
        self.net = net
        self.save_hyperparameters(ignore=["net"])
        self._preds: dict[str, list[Tensor]] = {}
        self._test_confusion: Tensor | None = None

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        return self.net(batch["tokens"], batch["lengths"])

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        loss = F.cross_entropy(self(batch), batch["labels"], label_smoothing=self.hparams.label_smoothing)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["labels"]))
        return self.with_aux(loss, len(batch["labels"]))

    def _eval_step(self, stage: str, batch: dict[str, Tensor]) -> None:
        logits = self(batch)
        loss = F.cross_entropy(logits, batch["labels"])
        self.log(f"{stage}/loss", loss, batch_size=len(batch["labels"]), sync_dist=True)
        self._preds.setdefault(stage, []).append(torch.stack([logits.argmax(-1), batch["labels"]]).cpu())

    def _eval_end(self, stage: str) -> None:
        pairs = torch.cat(self._preds.pop(stage, []) or [torch.zeros(2, 0, dtype=torch.long)], dim=1)
        n = self.net.head[-1].out_features if hasattr(self.net, "head") else int(pairs.max()) + 1
        if self.trainer.world_size > 1:
            # Each rank scored its own shard: add up the confusion counts of all ranks.
            conf = self.all_gather(confusion_counts(pairs, n).to(self.device)).sum(0).cpu()
            true, pred = torch.nonzero(conf, as_tuple=True)
            reps = conf[true, pred]
            pairs = torch.stack([pred.repeat_interleave(reps), true.repeat_interleave(reps)])
        if pairs.shape[1] == 0:
            return
        if stage == "test" and self.plot_settings:
            self._test_confusion = confusion_counts(pairs, n)
        pred, true = pairs[0].numpy(), pairs[1].numpy()
        self.log(f"{stage}/accuracy", accuracy(true, pred), prog_bar=stage == "val")
        self.log(f"{stage}/f1", macro_f1(true, pred, n))

    def write_plots(self, out_dir: Path, settings: dict) -> list[Path]:
        """``confusion_matrix.png``: the test confusion matrix, counts and row-normalised
        (:func:`tsformer.plots.confusion_matrix`)."""
        from tsformer.plots import confusion_matrix

        if self._test_confusion is None:
            return []
        n = len(self._test_confusion)
        dm = getattr(self.trainer, "datamodule", None)
        classes = list(getattr(dm, "classes", None) or range(n))
        return [confusion_matrix(self._test_confusion.numpy(), classes[:n], Path(out_dir) / "confusion_matrix.png")]

    def configure_optimizers(self):
        return adamw_warmup_cosine(self, self.hparams.lr, self.hparams.weight_decay, self.hparams.warmup_steps)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        store_tokenizer(self, checkpoint)


def confusion_counts(pairs: Tensor, n: int) -> Tensor:
    """``(n, n)`` counts from ``pairs`` ``(2, N)`` rows (predicted, true): true class by row."""
    conf = torch.zeros(n, n, dtype=torch.long)
    conf.index_put_((pairs[1], pairs[0]), torch.ones(pairs.shape[1], dtype=torch.long), accumulate=True)
    return conf
