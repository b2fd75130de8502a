"""Generate text with a trained character LM (``task=charlm`` / ``task=pgbooks``).

    python -m tsformer.generate run=outputs/pgbooks/<run> prompt="It was a dark" length=200 \\
        temperature=0.8 top_k=20 seed=0 decode=lookahead

``run`` is a run directory (its ``checkpoints/best.ckpt`` or ``last.ckpt`` and
``config.yaml``) or a checkpoint file. ``temperature=0`` is greedy. Sampling draws its
noise for every position up front from ``seed`` (Gumbel-max), so ``decode=sequential``,
``jacobi`` and ``lookahead`` give the same text; the faster ones only need fewer forward
passes (see the README, "Faster decoding"). ``decode.<key>=...`` sets a key of
``tsformer/conf/decode/<decode>.yaml``. The text (prompt and continuation) goes to stdout and, with
``output=<file>``, to that file; the pass count and time go to stderr.

Early exit (CALM; a run trained with ``module.exit_heads=true``): each new character stops
after the first layer confident enough, the threshold calibrated on a held-out text so that
greedy text differs from the full model's in at most ``tolerance`` of its characters (with
probability ``1 - delta``); the threshold and the average layers used go to stderr:

    python -m tsformer.generate run=<run> prompt="It was" decode.early_exit.tolerance=0.01 \
        decode.early_exit.calibration=heldout.txt [decode.early_exit.measure=softmax|state|classifier]
    python -m tsformer.generate run=<run> prompt="It was" decode.early_exit.threshold=0.9
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from tsformer.cli import command
from tsformer.export import (
    ExportError,
    _find_checkpoint,
    early_exit_options,
    exit_report,
    load_decode,
    parse_args,
    require_exit_heads,
)
from tsformer.nn.decoding import decode_tokens, gumbel_noise
from tsformer.nn.early_exit import (
    Calibration,
    EarlyExit,
    ExitClassifier,
    calibrate_token_exit,
    exit_classifier_data,
    held_out_prompts,
    tokens_agree,
)

DEFAULTS: dict[str, Any] = {
    "run": None,  # run directory or .ckpt of a character LM
    "prompt": None,  # the text to continue
    "length": 200,  # characters to generate
    "temperature": 0.8,  # 0: greedy (argmax)
    "top_k": None,  # sample among the k likeliest characters only (null: all)
    "seed": 0,  # sampling noise
    "decode": "sequential",  # tsformer/conf/decode/<name>.yaml: sequential | jacobi | lookahead
    "device": "cpu",  # cpu | cuda
    "output": None,  # also write the text to this file
}
CALIBRATION_PROMPT, CALIBRATION_STEPS = 64, 32  # at most: prompt and greedy characters per calibration example


class TopK(nn.Module):
    """A token model whose logits outside each position's ``k`` largest are ``-inf``, so any
    decoder samples among the ``k`` likeliest tokens only (greedy decoding is unchanged)."""

    def __init__(self, net: nn.Module, k: int):
        super().__init__()
        self.net, self.k = net, int(k)

    def forward(self, tokens: Tensor, cache=None) -> Tensor:
        logits = self.net(tokens, cache=cache)
        if self.k >= logits.shape[-1]:
            return logits
        kth = logits.topk(self.k, dim=-1).values[..., -1:]
        return logits.masked_fill(logits < kth, float("-inf"))

    def new_cache(self, *args, **kwargs):
        return self.net.new_cache(*args, **kwargs)


def load_char_lm(run: str | Path, device: str = "cpu"):
    """The network and character vocabulary of a char-LM run directory or checkpoint."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from tsformer.data.tokenizers import CharVocab

    ckpt_path, cfg_path = _find_checkpoint(Path(run))
    cfg = OmegaConf.to_container(OmegaConf.load(cfg_path), resolve=False)
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    if "char_vocab" not in ckpt:
        raise ExportError(f"{ckpt_path}: no char_vocab in this checkpoint; generate needs a character-LM run "
                          "(task=charlm or task=pgbooks)")
    vocab = CharVocab(ckpt["char_vocab"])
    net = instantiate(cfg["model"], _convert_="all", vocab_size=len(vocab))
    if not hasattr(net, "new_cache"):
        raise ExportError(f"{ckpt_path}: model {cfg['model'].get('_target_')} is not a character LM")
    net.load_state_dict({k[len("net."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("net.")})
    return net.to(device).eval(), vocab


@torch.no_grad()
def generate_ids(net: nn.Module, prompt: Tensor, length: int, temperature: float = 0.0, seed: int = 0,
                 decode: dict | None = None, top_k: int | None = None,
                 early_exit: EarlyExit | None = None) -> tuple[Tensor, dict[str, int]]:
    """Continue ``prompt (1, L)`` ids by ``length`` tokens as ``decode`` says
    (:func:`tsformer.nn.decoding.decode_tokens`), sampling with Gumbel noise drawn up front
    from ``seed``; ``early_exit``: a CALM rule (each token stops at its exit layer).

    Returns:
        ``(1, L + length)`` and counts ``passes`` (forward passes, the prompt's included)
        and ``tokens``.
    """
    max_tokens = int(getattr(getattr(net, "encoder", None), "max_tokens", 0) or 0) or None
    if early_exit is not None and early_exit.readout is None:
        early_exit.readout = net.readout
    if top_k:
        net = TopK(net, top_k)
    noise = None
    if temperature > 0:
        V = net(prompt[:, :1]).shape[-1]
        noise = gumbel_noise(1, length, V, torch.Generator().manual_seed(int(seed))).to(prompt.device)
    fits = max_tokens is None or prompt.shape[1] + length <= max_tokens
    return decode_tokens(net, prompt, length, temperature, decode, noise, None, fits, max_tokens, early_exit)


def trained_with_exit_heads(run: str | Path) -> bool:
    """Whether the run trained per-layer heads (``module.exit_heads=true``), which early exit reads."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.to_container(OmegaConf.load(_find_checkpoint(Path(run))[1]), resolve=False)
    return bool((cfg.get("module") or {}).get("exit_heads"))


def calibrate(net: nn.Module, vocab, opts: dict[str, Any], prompt_len: int, length: int,
              device: str = "cpu") -> tuple[EarlyExit, Calibration | None]:
    """The early-exit rule of ``opts`` (:func:`tsformer.export.early_exit_options`): the given
    threshold, or one calibrated by Learn-then-Test on held-out prompts cut from the text file
    ``opts["calibration"]``, the inconsistency of a prompt being the share of its greedy
    characters that differ from the full model's
    (:func:`tsformer.nn.early_exit.calibrate_token_exit`). The ``classifier`` measure first
    fits its classifier (:class:`~tsformer.nn.early_exit.ExitClassifier`) on half of the
    prompts and calibrates on the other half."""
    measure, given, temp = opts["measure"], opts["threshold"], opts.get("position_temp")
    skipped = opts.get("skipped") or "copy"
    if given is not None and measure != "classifier":
        return EarlyExit(measure, given, readout=net.readout, position_temp=temp, skipped=skipped), None
    path = Path(opts["calibration"] or "")
    if not path.is_file():
        raise SystemExit(f"decode.early_exit.calibration={opts['calibration']}: needs a held-out text file"
                         + (" (the classifier measure is trained on it)" if measure == "classifier" else ""))
    ids = vocab.encode(path.read_text(encoding="utf-8", errors="replace"))
    max_tokens = int(net.encoder.max_tokens)
    steps = max(1, min(length, CALIBRATION_STEPS, max_tokens - 1))
    plen = max(1, min(prompt_len, CALIBRATION_PROMPT, max_tokens - steps))
    n = opts["examples"] * (2 if measure == "classifier" else 1)
    try:
        prompts = held_out_prompts(ids, n, plen, steps).to(device)
    except ValueError as e:
        raise SystemExit(f"decode.early_exit.calibration={path}: {e}") from None
    classifier = None
    if measure == "classifier":
        states, labels = exit_classifier_data(net, tokens_agree, prompts[: n // 2])
        classifier = ExitClassifier(states[0].shape[-1], len(states) + 1).to(device).fit(states, labels)
        prompts = prompts[n // 2 :]
        if given is not None:
            return EarlyExit(measure, given, readout=net.readout, classifier=classifier, position_temp=temp,
                             skipped=skipped), None
    return calibrate_token_exit(net, prompts, steps, measure, opts["tolerance"], opts["delta"],
                                classifier=classifier, max_context=max_tokens, position_temp=temp, skipped=skipped)


def generate(**kwargs) -> str:
    """Run the command with keyword arguments (see :data:`DEFAULTS`); returns the text."""
    args = {**DEFAULTS, **kwargs}
    if not args["run"] or args["prompt"] is None:
        raise SystemExit('usage: python -m tsformer.generate run=<run dir or ckpt> prompt="..." length=200')
    decode = args["decode"] if isinstance(args["decode"], dict) else load_decode(str(args["decode"] or "sequential"))
    exits = early_exit_options(decode, "softmax", where="generation")
    device = args["device"]
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("device=cuda but no CUDA device is available")
    length, temperature = int(args["length"]), float(args["temperature"])
    if length < 0:
        raise SystemExit(f"length={length}: must be >= 0")
    prompt = str(args["prompt"])
    if not prompt:
        raise SystemExit("prompt is empty: give at least one character to continue")
    net, vocab = load_char_lm(args["run"], device)
    ids = torch.as_tensor(vocab.encode(prompt), dtype=torch.long, device=device)[None]
    max_tokens = net.encoder.max_tokens
    if ids.shape[1] + length > max_tokens and length < max_tokens:
        ids = ids[:, ids.shape[1] + length - max_tokens :]  # the model sees at most max_tokens
    policy, cal = None, None
    if exits is not None:
        require_exit_heads(trained_with_exit_heads(args["run"]), args["run"])
        policy, cal = calibrate(net, vocab, exits, ids.shape[1], length, device)
    t0 = time.perf_counter()
    try:
        out, counts = generate_ids(net, ids, length, temperature, int(args["seed"]), decode, args["top_k"], policy)
    except ValueError as e:  # a decoder that cannot serve this model (e.g. lookahead on RWKV) says why
        raise SystemExit(str(e)) from None
    secs = time.perf_counter() - t0
    text = prompt + vocab.decode(out[0, ids.shape[1] :].tolist())
    if args["output"]:
        Path(args["output"]).parent.mkdir(parents=True, exist_ok=True)
        Path(args["output"]).write_text(text)
    print(f"decode={decode.get('method')}: {length} characters, {counts['passes']} forward passes "
          f"({counts['passes'] / max(length, 1):.2f} per character), {secs:.2f} s", file=sys.stderr)
    if policy is not None:
        print(exit_report(exits, policy, cal, exits["calibration"], "prompts"), file=sys.stderr)
    return text


@command(DEFAULTS, __doc__)
def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv, DEFAULTS, usage=__doc__)
    try:
        text = generate(**args)
    except ValueError as e:  # a decoder that cannot serve this model says why
        raise SystemExit(str(e)) from None
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
