"""LightningModule for masked-language-model pretraining of the Longformer encoder on
unlabeled documents (``task=mlm``), whose checkpoint starts a classifier (``init_from``)."""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from torch import Tensor, nn

from tsformer.tasks.hooks import LearnedPartsHooks, StagedEvalHooks, store_tokenizer
from tsformer.tasks.optim import adamw_warmup_cosine


class MaskedLMModule(LearnedPartsHooks, StagedEvalHooks, pl.LightningModule):
    """Masked-token cross-entropy; ``<stage>/mlm_loss`` (nats per masked token) and
    ``<stage>/mlm_accuracy`` on validation and test, with a seeded mask per batch so that
    checks are comparable.

    The SentencePiece model is stored in every checkpoint (``checkpoint["sentencepiece_model"]``)
    so that a classifier started from it tokenizes the same way.

    Args:
        net: ``forward(tokens, lengths, generator) -> (nll_sum, correct, count)``
            (:class:`tsformer.nn.longformer.LongformerMaskedLM`).
        lr, weight_decay, warmup_steps: AdamW with warm-up and cosine decay.
    """

    def __init__(self, net: nn.Module, lr: float = 1e-3, weight_decay: float = 1e-2, warmup_steps: int = 100):
        super().__init__()
        self.net = net
        self.save_hyperparameters(ignore=["net"])
        self._sums: dict[str, list[float]] = {}

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        nll, correct, n = self.net(batch["tokens"], batch["lengths"])
        loss = nll / n.clamp_min(1)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["tokens"]))
        self.log("train/mlm_accuracy", correct / n.clamp_min(1), batch_size=len(batch["tokens"]))
        return self.with_aux(loss, len(batch["tokens"]))

    def _eval_step(self, stage: str, batch: dict[str, Tensor]) -> None:
        acc = self._sums.setdefault(stage, [0.0, 0.0, 0.0, 0.0])  # nll, correct, count, batches
        gen = torch.Generator(device=batch["tokens"].device).manual_seed(10_000 + int(acc[3]))
        nll, correct, n = self.net(batch["tokens"], batch["lengths"], generator=gen)
        acc[0] += float(nll)
        acc[1] += float(correct)
        acc[2] += float(n)
        acc[3] += 1

    def _eval_end(self, stage: str) -> None:
        nll, correct, n, _ = self._sums.pop(stage, [0.0, 0.0, 0.0, 0.0])
        if self.trainer.world_size > 1:  # each rank scored its own shard
            t = torch.tensor([nll, correct, n], dtype=torch.float64, device=self.device)
            nll, correct, n = self.all_gather(t).sum(0).tolist()
        if n > 0:
            self.log(f"{stage}/mlm_loss", nll / n, prog_bar=stage == "val")
            self.log(f"{stage}/mlm_accuracy", correct / n)

    def configure_optimizers(self):
        return adamw_warmup_cosine(self, self.hparams.lr, self.hparams.weight_decay, self.hparams.warmup_steps)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        store_tokenizer(self, checkpoint, classes=False)  # a pretraining corpus's labels mean nothing downstream
