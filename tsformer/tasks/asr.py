"""LightningModule for CTC speech recognition: CTC loss, WER/CER on dev and test."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tsformer.data.ngram import NgramLM
from tsformer.data.tokenizers import Tokenizer, tokenizer_from_state
from tsformer.metrics import char_errors, word_errors
from tsformer.nn.ctc import ctc_decode, ctc_prefix_beam_search
from tsformer.nn.early_exit import check_exit_heads, weighted_layer_loss
from tsformer.tasks.hooks import LearnedPartsHooks
from tsformer.tasks.optim import time_budget_progress, warmup_cosine

log = logging.getLogger(__name__)

DECODING_DEFAULTS = {"method": "greedy", "beam_width": 8, "lm_order": 0, "lm_weight": 0.0, "insertion_bonus": 0.0,
                     "tune": None}


def check_decoding(decoding: dict | None) -> dict:
    """``module.decoding`` with its defaults filled in; an unknown key or value is a ValueError."""
    dec = {**DECODING_DEFAULTS, **dict(decoding or {})}
    unknown = sorted(set(dec) - set(DECODING_DEFAULTS))
    if unknown:
        raise ValueError(f"module.decoding: unknown key(s) {unknown}; known: {sorted(DECODING_DEFAULTS)}")
    if dec["method"] not in ("greedy", "beam"):
        raise ValueError(f"module.decoding.method must be greedy or beam, got {dec['method']!r}")
    if int(dec["beam_width"]) < 1 or int(dec["lm_order"]) < 0:
        raise ValueError(f"module.decoding: beam_width must be >= 1 and lm_order >= 0, got {dec['beam_width']}, "
                         f"{dec['lm_order']}")
    uses_lm = dec["lm_weight"] or dec["tune"]
    if uses_lm and (dec["method"] != "beam" or not int(dec["lm_order"])):
        # A task's shipped LM settings must not stop `module.decoding.method=greedy` (or
        # `lm_order=0`) given alone: the fusion simply does not apply then.
        log.info("module.decoding: method=%s, lm_order=%s: no language-model fusion (lm_weight and tune unused)",
                 dec["method"], dec["lm_order"])
        dec.update(lm_weight=0.0, tune=None, lm_order=0 if dec["method"] != "beam" else dec["lm_order"])
    if dec["tune"] is not None:
        tune = dict(dec["tune"])
        bad = sorted(set(tune) - {"lm_weight", "insertion_bonus"})
        if bad or not tune:
            raise ValueError(f"module.decoding.tune: give lists under lm_weight and/or insertion_bonus, got {tune}")
        dec["tune"] = {k: [float(x) for x in v] for k, v in tune.items()}
    return dec


def grid_search_fusion(
    decode: Callable[[float, float], list[str]],
    refs: Sequence[str],
    lm_weights: Sequence[float],
    insertion_bonuses: Sequence[float],
    reduce: Callable[[list[list[int]]], list[list[int]]] | None = None,
) -> tuple[float, float, list[str], list[tuple[float, float, float]]]:
    """Language-model weight and insertion bonus of least WER (ties: the earlier pair of the grid).

    Meant for the dev split only: tuning on test would report an optimistic test WER.

    Args:
        decode: ``fn(lm_weight, insertion_bonus) -> hypotheses`` (same order as ``refs``).
        refs: reference transcripts.
        lm_weights, insertion_bonuses: the grid.
        reduce: sums the ``[word errors, words]`` of every grid point over processes (each
            holding a shard of dev), so that all of them choose the same pair; None: one process.
    Returns:
        ``(lm_weight, insertion_bonus, hypotheses at them, [(weight, bonus, wer) for the grid])``.
    """
    grid = [(float(w), float(b)) for w in lm_weights for b in insertion_bonuses]
    if not grid:
        raise ValueError("grid_search_fusion: empty grid")
    hyps, counts = [], []
    for w, b in grid:
        hyps.append(decode(w, b))
        counts.append([sum(word_errors(r, h)[0] for r, h in zip(refs, hyps[-1])), sum(len(r.split()) for r in refs)])
    if reduce is not None:
        counts = reduce(counts)
    table = [(w, b, e / max(n, 1)) for (w, b), (e, n) in zip(grid, counts)]
    best = min(range(len(grid)), key=lambda i: (table[i][2], i))
    return grid[best][0], grid[best][1], hyps[best], table


class ASRModule(LearnedPartsHooks, pl.LightningModule):
    """Trains a CTC network; validates with greedy decoding, tests with the configured decoder.

    The tokenizer and feature settings come from the data module and are stored in every
    checkpoint under ``"asr"`` (with the network's class and constructor arguments), so
    ``python -m tsformer.transcribe ckpt=...`` needs the checkpoint only.

    Args:
        net: ``forward(feats (B,T,F), lengths (B,)) -> (log_probs (B,T',V), lengths (B,))``.
        lr, weight_decay: AdamW settings.
        warmup_steps: linear warm-up, then cosine decay to 5% at ``max_steps``.
        decoding: the test splits' decoder: ``method`` (``greedy`` | ``beam``: CTC prefix
            beam search), ``beam_width``; with ``lm_order`` n >= 1 an n-gram language model
            over the tokens (interpolated Kneser-Ney, :class:`~tsformer.data.ngram.NgramLM`)
            is trained on the training transcripts and fused into the beam search with
            ``lm_weight`` and ``insertion_bonus`` (per token); ``tune: {lm_weight: [...],
            insertion_bonus: [...]}`` picks both by a grid search on the dev split's WER
            (never on test) before the test split is decoded (:func:`grid_search_fusion`).
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
        self.decoding = check_decoding(decoding)
        self.lm: NgramLM | None = None
        self.tokenizer: Tokenizer | None = None
        self.asr_state: dict | None = None
        self._errors: dict[str, list[int]] = {}
        self._utterances: list[dict] | None = None
        self._dev_outputs: list[tuple] | None = None  # dev outputs held back while tuning

    # -- tokenizer / checkpoint state ----------------------------------------
    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if dm is not None and hasattr(dm, "asr_state"):
            self.asr_state = dm.asr_state()
            self.tokenizer = dm.tokenizer
            order = int(self.decoding["lm_order"])
            if order and (self.lm is None or self.lm.order != order):  # training transcripts only
                self.lm = NgramLM.train([t.tolist() for t in dm.datasets["train"].targets],
                                        self.tokenizer.vocab_size, order)
                log.info("%d-gram token language model on %d training transcripts", order,
                         len(dm.datasets["train"].targets))

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self.asr_state is not None:
            checkpoint["asr"] = {
                **self.asr_state,
                "net_class": f"{type(self.net).__module__}.{type(self.net).__qualname__}",
                "net_config": getattr(self.net, "config", {}),
                "decoding": dict(self.decoding),
            }
            if self.lm is not None:
                checkpoint["asr"]["lm"] = self.lm.state()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if "asr" in checkpoint and self.tokenizer is None:
            self.asr_state = {k: checkpoint["asr"][k] for k in ("tokenizer", "features")}
            self.tokenizer = tokenizer_from_state(self.asr_state["tokenizer"])
        if "lm" in checkpoint.get("asr", {}) and self.lm is None:
            self.lm = NgramLM.from_state(checkpoint["asr"]["lm"])

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
        """Texts of a batch of log-probabilities (greedy, or the configured decoder)."""
        method = method or self.decoding["method"]
        d = self.decoding
        lm = self.lm if method == "beam" and d["lm_weight"] else None
        ids = ctc_decode(log_probs, lengths, method, int(d["beam_width"]), lm=lm,
                         lm_weight=float(d["lm_weight"]) if lm else 0.0, insertion_bonus=float(d["insertion_bonus"]))
        return [self.tokenizer.decode(s) for s in ids]

    def _score(self, split: str, batch: dict, method: str, keep: bool = False) -> Tensor:
        loss, log_probs, out_lens = self._forward_loss(batch)
        self._count(split, batch["ids"], batch["texts"], self.decode(log_probs, out_lens, method), keep)
        return loss

    def _count(self, split: str, ids: list[str], refs: list[str], hyps: list[str], keep: bool) -> None:
        acc = self._errors.setdefault(split, [0, 0, 0, 0])
        for uid, ref, hyp in zip(ids, refs, hyps):
            we, wn = word_errors(ref, hyp)
            ce, cn = char_errors(ref, hyp)
            acc[0] += we
            acc[1] += wn
            acc[2] += ce
            acc[3] += cn
            if keep:
                self._utterances.append({"split": split, "id": uid, "ref": ref, "hyp": hyp, "errors": we, "words": wn})

    def tune_fusion(self, outputs: list[tuple[Tensor, str]]) -> tuple[float, float, list[str]]:
        """Grid-search ``lm_weight`` and ``insertion_bonus`` (``decoding.tune``) on dev outputs.

        Args:
            outputs: ``((T', V) log-probabilities, reference)`` per dev utterance.
        Returns:
            The chosen weight and bonus (also set in :attr:`decoding`) and the dev hypotheses.
        """
        d, tune = self.decoding, self.decoding["tune"]
        refs = [r for _, r in outputs]

        def decode(w: float, b: float) -> list[str]:
            return [self.tokenizer.decode(ctc_prefix_beam_search(lp, int(d["beam_width"]), lm=self.lm, lm_weight=w,
                                                                 insertion_bonus=b)) for lp, _ in outputs]

        reduce = None
        if self._trainer is not None and self.trainer.world_size > 1:  # every process: the same choice
            def reduce(counts):
                return self.all_gather(torch.tensor(counts, device=self.device)).sum(0).tolist()

        w, b, hyps, table = grid_search_fusion(decode, refs, tune.get("lm_weight", [d["lm_weight"]]),
                                               tune.get("insertion_bonus", [d["insertion_bonus"]]), reduce)
        log.info("shallow fusion tuned on %d dev utterances: lm_weight %g, insertion_bonus %g (dev WER %s)",
                 len(refs), w, b, ", ".join(f"{tw:g}/{tb:g}: {100 * e:.2f}%" for tw, tb, e in table))
        d["lm_weight"], d["insertion_bonus"] = w, b
        return w, b, hyps

    def _finish_dev(self) -> None:
        """Tune on the held-back dev outputs, then count their errors at the chosen setting."""
        held, self._dev_outputs = self._dev_outputs, None
        if held is None:  # not tuning (or done); an empty shard still joins the processes' reduction
            return
        _, _, hyps = self.tune_fusion([(lp, ref) for lp, ref, _ in held])
        self._count("dev", [uid for _, _, uid in held], [ref for _, ref, _ in held], hyps,
                    self._utterances is not None)

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
        # With decoding.tune the dev split (decoded first) is held back until the grid search.
        has_dev = "dev" in self.trainer.datamodule.test_split_names()
        self._dev_outputs = [] if self.decoding["tune"] and self.lm is not None and has_dev else None

    def test_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        split = self.trainer.datamodule.test_split_names()[dataloader_idx]
        if split == "dev" and self._dev_outputs is not None:
            loss, log_probs, out_lens = self._forward_loss(batch)
            lp = log_probs.detach().float().cpu()
            self._dev_outputs += [(lp[b, : int(out_lens[b])], ref, uid)
                                  for b, (ref, uid) in enumerate(zip(batch["texts"], batch["ids"]))]
        else:
            self._finish_dev()  # the test split is decoded at the weights tuned on dev
            loss = self._score(split, batch, self.decoding["method"], keep=self._utterances is not None)
        self.log(f"{split}/loss", loss, batch_size=len(batch["ids"]), add_dataloader_idx=False, sync_dist=True)

    def on_test_epoch_end(self) -> None:
        self._finish_dev()
        for split in list(self._errors):
            self._log_errors(split)
        if self.lm is not None and self.decoding["method"] == "beam":
            self.log("decoding/lm_weight", float(self.decoding["lm_weight"]))
            self.log("decoding/insertion_bonus", float(self.decoding["insertion_bonus"]))

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
        sched = warmup_cosine(opt, self.hparams.warmup_steps, self.trainer.estimated_stepping_batches,
                              elapsed=time_budget_progress(self.trainer))
        return {"optimizer": opt, "lr_scheduler": sched}
