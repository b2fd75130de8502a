"""LightningModule for character language modelling over long contexts (Longformer's
causal sliding-window setting, Beltagy et al. 2020, Sec. 4), scored in bits per character."""

from __future__ import annotations

import math
from pathlib import Path

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tsformer.metrics import bits_per_character
from tsformer.nn.decoding import decode_tokens
from tsformer.nn.early_exit import check_exit_heads, weighted_layer_loss
from tsformer.tasks.hooks import LearnedPartsHooks, StagedEvalHooks
from tsformer.tasks.optim import adamw_warmup_cosine


class CharLMModule(LearnedPartsHooks, StagedEvalHooks, pl.LightningModule):
    """Next-character cross-entropy; ``val/bpc`` and ``test/bpc`` over every character of
    the split (sums of NLL over characters, not means of window means).

    The character vocabulary is stored in checkpoints (``checkpoint["char_vocab"]``, str).

    A network with a segment memory (``model.memory``, Transformer-XL) runs segment by
    segment: batch ``t`` holds segment ``t`` of ``B`` contiguous streams (``data.stream``,
    which the data marks with ``batch["segment"]``), and each row's memory carries over from
    the previous batch (per stage; reset where a stream starts).

    Args:
        net: ``forward(tokens (B, L)) -> (B, L, V)`` logits (and, with a memory,
            ``forward_segment(tokens, memory) -> (logits, memory)``).
        lr, weight_decay, warmup_steps: AdamW with warm-up and cosine decay.
        exit_heads: train with the (shared) output head after every layer, the loss
            weighted toward deeper layers (CALM, Schuster et al. 2022, Sec. 5;
            :func:`tsformer.nn.early_exit.layer_weights`), so that generation can exit
            early; evaluation scores the last layer.

    :meth:`write_plots` (called by ``train()`` after testing, :mod:`tsformer.plots`) writes
    a sampled continuation of a test prompt.
    """

    plot_settings: dict | None = None
    PLOT_PROMPT, PLOT_STEPS, PLOT_TEMPERATURE = 200, 400, 0.8

    def __init__(self, net: nn.Module, lr: float = 1e-3, weight_decay: float = 1e-2, warmup_steps: int = 50,
                 exit_heads: bool = False):
        super().__init__()
        check_exit_heads(net, exit_heads)
        if exit_heads and getattr(net, "uses_memory", False):
            raise ValueError("module.exit_heads cannot be combined with model.memory (Transformer-XL)")
        self.net = net
        self.save_hyperparameters(ignore=["net"])
        self._sums: dict[str, list[float]] = {}
        self._memory: dict[str, list[Tensor] | None] = {}

    def check_data(self, datamodule) -> None:
        """ValueError if the data cannot serve the network (a memory needs streams)."""
        if getattr(self.net, "uses_memory", False) and not getattr(datamodule, "stream", False):
            raise ValueError("model.memory (Transformer-XL) needs the data as contiguous streams: set data.stream=true")

    def on_fit_start(self) -> None:
        dm = getattr(self.trainer, "datamodule", None)
        if dm is not None:
            self.check_data(dm)

    def _logits(self, batch: dict[str, Tensor], stage: str) -> Tensor:
        if not getattr(self.net, "uses_memory", False):
            return self.net(batch["inputs"])
        mem = self._memory.get(stage)
        fresh = "segment" in batch and int(batch["segment"][0]) == 0
        if fresh or mem is None or mem[0].shape[0] != len(batch["inputs"]):
            mem = None
        logits, self._memory[stage] = self.net.forward_segment(batch["inputs"], mem)
        return logits

    def _nll(self, batch: dict[str, Tensor], stage: str = "train", logits: Tensor | None = None) -> tuple[Tensor, Tensor]:
        logits = self._logits(batch, stage) if logits is None else logits
        nll = F.cross_entropy(logits.flatten(0, 1).float(), batch["targets"].flatten(), reduction="none")
        w = batch["weight"].flatten().to(nll.dtype)
        return (nll * w).sum(), w.sum()

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        if self.hparams.get("exit_heads"):
            n = batch["weight"].sum().clamp_min(1)
            per_layer = [self._nll(batch, logits=self.net.readout(h))[0] / n
                         for h in self.net.hidden_states(batch["inputs"])]
            self.log("train/last_layer_loss", per_layer[-1], batch_size=len(batch["inputs"]))
            loss = weighted_layer_loss(per_layer)
        else:
            s, n = self._nll(batch)
            loss = s / n.clamp_min(1)  # a batch of padding alone (a stream's end) adds nothing
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["inputs"]))
        self.log("train/bpc", loss / math.log(2), batch_size=len(batch["inputs"]))
        return self.with_aux(loss, len(batch["inputs"]))

    def _eval_step(self, stage: str, batch) -> None:
        s, n = self._nll(batch, stage)
        acc = self._sums.setdefault(stage, [0.0, 0.0])
        acc[0] += float(s)
        acc[1] += float(n)

    def _eval_end(self, stage: str) -> None:
        self._memory.pop(stage, None)
        s, n = self._sums.pop(stage, [0.0, 0.0])
        if self.trainer.world_size > 1:  # each rank scored its own shard
            s, n = self.all_gather(torch.tensor([s, n], dtype=torch.float64, device=self.device)).sum(0).tolist()
        if n > 0:
            self.log(f"{stage}/bpc", bits_per_character(s, int(n)), prog_bar=stage == "val")

    def configure_optimizers(self):
        return adamw_warmup_cosine(self, self.hparams.lr, self.hparams.weight_decay, self.hparams.warmup_steps)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if dm is not None and getattr(dm, "vocab", None) is not None:
            checkpoint["char_vocab"] = dm.vocab.chars

    def write_plots(self, out_dir: Path, settings: dict) -> list[Path]:
        """``generated.txt``: the start of the test text, the model's continuation of it
        (sampled at temperature 0.8 with the run's seed) and what the text says next
        (:func:`tsformer.plots.generation_text`)."""
        from tsformer.plots import generation_text

        dm = self.trainer.datamodule
        test = dm.ids["test"]
        room = getattr(getattr(self.net, "encoder", None), "max_tokens", self.PLOT_PROMPT + self.PLOT_STEPS)
        n_prompt = max(1, min(self.PLOT_PROMPT, room // 2, len(test) - 1))
        steps = max(1, min(self.PLOT_STEPS, room - n_prompt))
        prompt = torch.from_numpy(test[:n_prompt].astype("int64"))[None].to(self.device)
        generator = torch.Generator(device=self.device).manual_seed(int(settings.get("seed", 0)))
        was_training = self.training
        self.eval()
        try:
            out = self.generate(prompt, steps, self.PLOT_TEMPERATURE, generator)[0, n_prompt:].tolist()
        finally:
            self.train(was_training)
        decode = dm.vocab.decode
        about = f"temperature {self.PLOT_TEMPERATURE}, seed {settings.get('seed', 0)}"
        return [generation_text(decode(test[:n_prompt].tolist()), decode(out),
                                decode(test[n_prompt : n_prompt + steps].tolist()),
                                Path(out_dir) / "generated.txt", about)]

    @torch.no_grad()
    def generate(self, prompt: Tensor, steps: int, temperature: float = 1.0,
                 generator: torch.Generator | None = None, cache: bool | None = None,
                 decode: dict | None = None, noise: Tensor | None = None, early_exit=None) -> Tensor:
        """Sample ``steps`` characters after ``prompt (B, L)`` ids (temperature 0: greedy),
        with the shared token decoder (:func:`tsformer.nn.decoding.decode_tokens`).

        ``cache`` (default: when prompt and continuation fit the model's ``max_tokens``)
        encodes the prompt once and each new character as one position per layer; without
        it every step re-runs the last ``max_tokens`` characters. ``decode`` (the
        ``conf/decode`` options; None: sequential), ``noise`` (pre-drawn Gumbel noise,
        :func:`~tsformer.nn.decoding.gumbel_noise`, which parallel decoding needs to sample)
        and ``early_exit`` (a CALM rule, :class:`~tsformer.nn.early_exit.EarlyExit`) as
        that function takes them; without noise, sampling draws from ``generator``.
        """
        max_tokens = self.net.encoder.max_tokens
        if cache is None:
            cache = prompt.shape[1] + steps <= max_tokens
        out, _ = decode_tokens(self.net, prompt[:, -max_tokens:], steps, temperature, decode, noise, generator, cache,
                               max_tokens, early_exit)
        return out
