"""LightningModule for CTC speech recognition: CTC loss, WER/CER on dev and test."""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tsformer.data.tokenizers import Tokenizer, tokenizer_from_state
from tsformer.metrics import char_errors, word_errors
from tsformer.nn.ctc import ctc_decode
from tsformer.nn.early_exit import check_exit_heads, weighted_layer_loss
from tsformer.tasks.hooks import LearnedPartsHooks
from tsformer.tasks.optim import warmup_cosine


class ASRModule(LearnedPartsHooks, pl.LightningModule):
    """Trains a CTC network; validates with greedy decoding, tests with the configured decoder.

    The tokenizer and feature settings come from the data module and are stored in every
    checkpoint under ``"asr"`` (with the network's class and constructor arguments), so
    ``python -m tsformer.transcribe ckpt=...`` needs the checkpoint only.

    Args:
        net: ``forward(feats (B,T,F), lengths (B,)) -> (log_probs (B,T',V), lengths (B,))``.
        lr, weight_decay: AdamW settings.
        warmup_steps: linear warm-up, then cosine decay to 5% at ``max_steps``.
        decoding: ``{method: greedy | beam, beam_width: int}`` for the test splits.
        exit_heads: train with the (shared) CTC head after every block too (intermediate
            CTC), the losses weighted toward deeper blocks as CALM weighs them (Schuster et
            al. 2022, Sec. 5), so that transcription can exit early per utterance.

    With ``plot_settings`` set (``train()`` does it before testing, :mod:`tsformer.plots`),
    testing keeps each utterance's reference, hypothesis and word errors, and
    :meth:`write_plots` lists the worst and best of each test split.
    """

    plot_settings: dict | None = None

    def __init__(
        self,
        net: nn.Module,
        lr: float = 2e-3,
        weight_decay: float = 1e-3,
        warmup_steps: int = 200,
        decoding: dict | None = None,
        exit_heads: bool = False,
    ):
        super().__init__()
        check_exit_heads(net, exit_heads)
        self.net = net
        self.save_hyperparameters(ignore=["net"])
        self.decoding = dict(decoding or {"method": "greedy", "beam_width": 8})
        self.tokenizer: Tokenizer | None = None
        self.asr_state: dict | None = None
        self._errors: dict[str, list[int]] = {}
        self._utterances: list[dict] | None = None

    # -- tokenizer / checkpoint state ----------------------------------------
    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if dm is not None and hasattr(dm, "asr_state"):
            self.asr_state = dm.asr_state()
            self.tokenizer = dm.tokenizer

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self.asr_state is not None:
            checkpoint["asr"] = {
                **self.asr_state,
                "net_class": f"{type(self.net).__module__}.{type(self.net).__qualname__}",
                "net_config": getattr(self.net, "config", {}),
                "decoding": dict(self.decoding),
            }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if "asr" in checkpoint and self.tokenizer is None:
            self.asr_state = {k: checkpoint["asr"][k] for k in ("tokenizer", "features")}
            self.tokenizer = tokenizer_from_state(self.asr_state["tokenizer"])

    def check_data(self, datamodule) -> None:
        """Utterances too short for CTC to emit their transcripts (after the network's
        subsampling) fail here, naming the manifest line and file, before anything is
        written; with ``data.skip_bad=true`` they are dropped with a warning."""
        if hasattr(datamodule, "check_ctc_lengths") and hasattr(self.net, "output_lengths"):
            datamodule.check_ctc_lengths(self.net.output_lengths)

    # -- steps ---------------------------------------------------------------
    def _forward_loss(self, batch: dict) -> tuple[Tensor, Tensor, Tensor]:
        log_probs, out_lens = self.net(batch["feats"], batch["feat_lens"])
        return self._ctc(log_probs, out_lens, batch), log_probs, out_lens

    def _ctc(self, log_probs: Tensor, out_lens: Tensor, batch: dict) -> Tensor:
        return F.ctc_loss(
            log_probs.transpose(0, 1), batch["targets"], out_lens, batch["target_lens"],
            blank=0, reduction="mean", zero_infinity=True,  # too-short utterances give inf
        )

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        if self.hparams.get("exit_heads"):
            states, out_lens = self.net.hidden_states(batch["feats"], batch["feat_lens"])
            loss = weighted_layer_loss([self._ctc(self.net.readout(h), out_lens, batch) for h in states])
        else:
            loss, _, _ = self._forward_loss(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["ids"]))
        return self.with_aux(loss, len(batch["ids"]))

    def decode(self, log_probs: Tensor, lengths: Tensor, method: str | None = None) -> list[str]:
        """Texts of a batch of log-probabilities."""
        method = method or self.decoding.get("method", "greedy")
        ids = ctc_decode(log_probs, lengths, method, int(self.decoding.get("beam_width", 8)))
        return [self.tokenizer.decode(s) for s in ids]

    def _score(self, split: str, batch: dict, method: str, keep: bool = False) -> Tensor:
        loss, log_probs, out_lens = self._forward_loss(batch)
        acc = self._errors.setdefault(split, [0, 0, 0, 0])
        for uid, ref, hyp in zip(batch["ids"], batch["texts"], self.decode(log_probs, out_lens, method)):
            we, wn = word_errors(ref, hyp)
            ce, cn = char_errors(ref, hyp)
            acc[0] += we
            acc[1] += wn
            acc[2] += ce
            acc[3] += cn
            if keep:
                self._utterances.append({"split": split, "id": uid, "ref": ref, "hyp": hyp, "errors": we, "words": wn})
        return loss

    def _log_errors(self, split: str) -> None:
        e = torch.tensor(self._errors.pop(split, [0, 0, 0, 0]), dtype=torch.float64, device=self.device)
        if self.trainer.world_size > 1:
            e = self.all_gather(e).sum(0)
        self.log(f"{split}/wer", float(e[0] / e[1].clamp_min(1)), add_dataloader_idx=False)
        self.log(f"{split}/cer", float(e[2] / e[3].clamp_min(1)), add_dataloader_idx=False)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        loss = self._score("val", batch, "greedy")
        self.log("val/loss", loss, prog_bar=True, sync_dist=True, batch_size=len(batch["ids"]))

    def on_validation_epoch_end(self) -> None:
        if "val" in self._errors:
            self._log_errors("val")

    def on_test_epoch_start(self) -> None:
        self._utterances = [] if self.plot_settings else None

    def test_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        split = self.trainer.datamodule.test_split_names()[dataloader_idx]
        loss = self._score(split, batch, self.decoding.get("method", "greedy"), keep=self._utterances is not None)
        self.log(f"{split}/loss", loss, batch_size=len(batch["ids"]), add_dataloader_idx=False, sync_dist=True)

    def on_test_epoch_end(self) -> None:
        for split in list(self._errors):
            self._log_errors(split)

    def write_plots(self, out_dir: Path, settings: dict) -> list[Path]:
        """``utterances.txt``: the ``max`` worst and best test utterances of each split
        (WER, reference, hypothesis; :func:`tsformer.plots.utterance_table`)."""
        from tsformer.plots import utterance_table

        if not self._utterances:
            return []
        return [utterance_table(self._utterances, settings["max"], Path(out_dir) / "utterances.txt")]

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay,
                                betas=(0.9, 0.98))
        sched = warmup_cosine(opt, self.hparams.warmup_steps, self.trainer.estimated_stepping_batches)
        return {"optimizer": opt, "lr_scheduler": sched}
