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
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from tsformer.cli import command
from tsformer.export import ExportError, _find_checkpoint, load_decode, parse_args
from tsformer.nn.decoding import generate_tokens, gumbel_noise, jacobi_tokens, lookahead_tokens

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
                 decode: dict | None = None, top_k: int | None = None) -> tuple[Tensor, dict[str, int]]:
    """Continue ``prompt (1, L)`` ids by ``length`` tokens as ``decode`` says.

    Returns:
        ``(1, L + length)`` and counts ``passes`` (forward passes, the prompt's included)
        and ``tokens``.
    """
    decode = dict(decode or {"method": "sequential"})
    method = decode.get("method", "sequential")
    max_tokens = int(getattr(getattr(net, "encoder", None), "max_tokens", 0) or 0) or None
    if top_k:
        net = TopK(net, top_k)
    noise = None
    if temperature > 0:
        V = net(prompt[:, :1]).shape[-1]
        noise = gumbel_noise(1, length, V, torch.Generator().manual_seed(int(seed))).to(prompt.device)
    fits = max_tokens is None or prompt.shape[1] + length <= max_tokens
    if method == "sequential":
        out = generate_tokens(net, prompt, length, temperature, cache=fits, max_context=max_tokens, noise=noise)
        return out, {"passes": length, "tokens": length}
    if not fits:
        raise ValueError(f"decode={method}: prompt ({prompt.shape[1]}) + length {length} exceed the model's "
                         f"max_tokens={max_tokens}; shorten them or use decode=sequential (sliding window)")
    if method == "jacobi":
        out, counts = jacobi_tokens(net, prompt, length, block=int(decode.get("block") or 16), max_context=max_tokens,
                                    temperature=temperature, noise=noise)
    elif method == "lookahead":
        out, counts = lookahead_tokens(net, prompt, length, window=int(decode.get("window", 8)),
                                       ngram=int(decode.get("ngram", 4)), pool=int(decode.get("pool", 8)),
                                       max_context=max_tokens, temperature=temperature, noise=noise,
                                       pool_text=bool(decode.get("pool_text", True)))
    else:
        raise ValueError(f"decode.method={method!r}: generate decodes sequential, jacobi or lookahead")
    return out, {"passes": counts["passes"] + 1, "tokens": length}


def generate(**kwargs) -> str:
    """Run the command with keyword arguments (see :data:`DEFAULTS`); returns the text."""
    args = {**DEFAULTS, **kwargs}
    if not args["run"] or args["prompt"] is None:
        raise SystemExit('usage: python -m tsformer.generate run=<run dir or ckpt> prompt="..." length=200')
    decode = args["decode"] if isinstance(args["decode"], dict) else load_decode(str(args["decode"] or "sequential"))
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
    t0 = time.perf_counter()
    out, counts = generate_ids(net, ids, length, temperature, int(args["seed"]), decode, args["top_k"])
    secs = time.perf_counter() - t0
    text = prompt + vocab.decode(out[0, ids.shape[1] :].tolist())
    if args["output"]:
        Path(args["output"]).parent.mkdir(parents=True, exist_ok=True)
        Path(args["output"]).write_text(text)
    print(f"decode={decode.get('method')}: {length} characters, {counts['passes']} forward passes "
          f"({counts['passes'] / max(length, 1):.2f} per character), {secs:.2f} s", file=sys.stderr)
    return text


@command(DEFAULTS, __doc__)
def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv, DEFAULTS, usage=__doc__)
    try:
        text = generate(**args)
    except ValueError as e:  # a decoder that cannot serve this model (e.g. lookahead on RWKV) says why
        raise SystemExit(str(e)) from None
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
