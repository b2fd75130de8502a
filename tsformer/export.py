"""Export a trained forecaster to one self-contained ``.tsf`` file.

    python -m tsformer.export run=<run dir or checkpoint> out=model.tsf

A ``.tsf`` file is a safetensors file: the network's tensors, and in its metadata header
(JSON strings) the resolved config, the data module's state (series vocabulary, static
category vocabularies, covariate scalers, frequency), the network's constructor
arguments and the package version. Loading reads tensors and JSON only, so it never
unpickles anything.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

import tsformer
from tsformer.cli import command

FORMAT = "tsformer-forecaster"
FORMAT_VERSION = 1


class ExportError(ValueError):
    """A run that cannot be exported, or a ``.tsf`` file that cannot be loaded."""


def _find_checkpoint(run: Path) -> tuple[Path, Path]:
    """``(checkpoint, config.yaml)`` for a run directory or a checkpoint file."""
    if not run.exists():
        raise ExportError(f"{run}: not found (give a run directory or a .ckpt file)")
    if run.is_dir():
        for name in ("best.ckpt", "last.ckpt"):
            if (run / "checkpoints" / name).exists():
                ckpt = run / "checkpoints" / name
                break
        else:
            raise ExportError(f"{run}: no checkpoints/best.ckpt or checkpoints/last.ckpt in this run directory")
        cfg = run / "config.yaml"
    else:
        ckpt = run
        cfg = next((p / "config.yaml" for p in (run.parent, run.parent.parent) if (p / "config.yaml").exists()),
                   run.parent.parent / "config.yaml")
    if not cfg.exists():
        raise ExportError(f"{ckpt}: no config.yaml next to the run (looked for {cfg})")
    return ckpt, cfg


def export(run: str | Path, out: str | Path) -> Path:
    """Write the ``.tsf`` file for a run directory or checkpoint; returns its path."""
    ckpt_path, cfg_path = _find_checkpoint(Path(run))
    cfg = OmegaConf.to_container(OmegaConf.load(cfg_path), resolve=True)
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    data_state = ckpt.get("CSVForecastingDataModule")
    if not data_state:
        raise ExportError(
            f"{ckpt_path}: no data vocabulary in this checkpoint; export needs a run trained with task=csv"
        )
    weights = {k[len("net."):]: v.contiguous() for k, v in ckpt["state_dict"].items() if k.startswith("net.")}
    if not weights:
        raise ExportError(f"{ckpt_path}: no network weights (state_dict keys net.*)")
    return write_tsf(weights, cfg, data_state, out, checkpoint=str(ckpt_path))


def write_tsf(weights: dict[str, torch.Tensor], cfg: dict[str, Any], data_state: dict, out: str | Path,
              checkpoint: str = "") -> Path:
    """Write a ``.tsf`` file: the forecaster's ``weights`` (its state dict), the run config
    ``cfg`` (``data``, ``model``, ``module``, ...) and the data module's ``data_state``
    (vocabulary and scalers), atomically. Returns its path."""
    from safetensors.torch import save_file

    weights = {k: v.detach().contiguous() for k, v in weights.items()}
    model_kwargs = _model_kwargs(data_state, weights)
    meta = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "tsformer_version": tsformer.__version__,
        "config": json.dumps({k: cfg[k] for k in ("data", "model", "module", "task_name", "seed") if k in cfg}),
        "data_state": json.dumps(data_state),
        "model_kwargs": json.dumps(model_kwargs),
        "checkpoint": checkpoint,
    }
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        save_file(weights, str(tmp), metadata=meta)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def _model_kwargs(state: dict, weights: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Data-dependent constructor arguments, read back from the vocabulary and weights."""
    kw: dict[str, Any] = {"num_series": len(state["series_names"])}
    if state.get("static_columns"):
        kw["static_cardinalities"] = [len(v) + 1 for v in state["static_vocab"]]
    # num_covariates = input width - 1 (value) - embeddings; read from the input layer.
    width = weights["inp.weight"].shape[1]
    emb = weights["embed.weight"].shape[1] + sum(
        w.shape[1] for k, w in weights.items() if k.startswith("static_embeds.")
    )
    kw["num_covariates"] = int(width - 1 - emb)
    return kw


def load_tsf(path: str | Path, device: str = "cpu") -> tuple[torch.nn.Module, dict[str, Any]]:
    """The network (eval mode) and metadata (``config``, ``data_state``, ...) of a ``.tsf`` file.

    Raises:
        ExportError: not a tsformer export, or one from an incompatible format version.
    """
    from hydra.utils import instantiate
    from safetensors import SafetensorError
    from safetensors.torch import load_file, safe_open

    path = Path(path)
    if not path.exists():
        raise ExportError(f"{path}: file not found")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise ExportError(f"{path}: not a tsformer model file ({e})") from None
    if meta.get("format") != FORMAT:
        raise ExportError(f"{path}: not a tsformer model file (no {FORMAT!r} header)")
    version = meta.get("format_version", "?")
    if version != str(FORMAT_VERSION):
        raise ExportError(
            f"{path}: written by tsformer {meta.get('tsformer_version', '?')} in format version {version}; "
            f"this tsformer {tsformer.__version__} reads format version {FORMAT_VERSION}. "
            "Re-export the run with this version, or install the version that wrote it."
        )
    info = {k: json.loads(meta[k]) for k in ("config", "data_state", "model_kwargs")}
    info["tsformer_version"] = meta.get("tsformer_version")
    net = instantiate(info["config"]["model"], _convert_="all", **info["model_kwargs"])
    net.load_state_dict(load_file(str(path), device="cpu"))
    return net.to(device).eval(), info


def decode_conf_dir() -> Path:
    """Where the ``decode`` options live: ``tsformer/conf/decode`` under the config root that
    :mod:`tsformer.train` composes from (the one place that knows it)."""
    from tsformer.train import CONF_DIR

    return Path(CONF_DIR) / "decode"


def load_decode(name: str = "sequential", overrides: dict[str, Any] | list[str] | None = None) -> dict[str, Any]:
    """The decoding options (#18): ``tsformer/conf/decode/<name>.yaml`` with dotted ``overrides``
    (``{"block": 8, "early_exit.tolerance": 0.01}`` or ``["block=8", ...]``) applied.

    Raises:
        SystemExit: an unknown decoder name, or a key the file does not have (named).
    """
    folder = decode_conf_dir()
    path = folder / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in folder.glob("*.yaml"))
        raise SystemExit(f"decode={name}: no {path}; choose one of {known}")
    base = OmegaConf.load(path)
    items = overrides.items() if isinstance(overrides, dict) else (a.split("=", 1) for a in overrides or [])
    over = OmegaConf.from_dotlist([f"{k}={v}" if not isinstance(v, (list, dict)) else f"{k}={json.dumps(v)}"
                                   for k, v in items])
    flat = {k for k in _dotted_keys(OmegaConf.to_container(base))}
    unknown = sorted(_dotted_keys(OmegaConf.to_container(over)) - flat)
    if unknown:
        raise SystemExit(f"unknown key(s) {['decode.' + k for k in unknown]} for decode={name} "
                         f"({path}); known: {sorted('decode.' + k for k in flat)}")
    return OmegaConf.to_container(OmegaConf.merge(base, over), resolve=True)


def _dotted_keys(d: Any, prefix: str = "") -> set[str]:
    """``{"a": {"b": 1}, "c": 2}`` -> ``{"a.b", "c"}`` (leaves; an empty or null mapping
    value is a leaf too)."""
    if not isinstance(d, dict) or not d:
        return {prefix[:-1]} if prefix else set()
    out: set[str] = set()
    for k, v in d.items():
        out |= _dotted_keys(v, f"{prefix}{k}.") if isinstance(v, dict) and v else {f"{prefix}{k}"}
    return out


def parse_args(argv: list[str], defaults: dict[str, Any], usage: str | None = None) -> dict[str, Any]:
    """Hydra-style ``key=value`` arguments over ``defaults``; unknown keys are an error.

    Where ``defaults`` has a ``decode`` key (a decoder name), ``decode=<name>`` picks
    ``tsformer/conf/decode/<name>.yaml`` and ``decode.<key>=<value>`` sets its keys
    (:func:`load_decode`); ``args["decode"]`` is then the options dict.
    ``--help``, ``-h`` or ``help=true`` prints the keys and their defaults and exits.
    """
    if any(a in ("--help", "-h", "help=true", "help=True") for a in argv):
        from tsformer.cli import help_text

        print(help_text(usage, defaults))
        raise SystemExit(0)
    bad = [a for a in argv if "=" not in a]
    if bad:
        raise SystemExit(f"arguments are key=value; got {bad}")
    dec = [a for a in argv if a.startswith("decode.")] if "decode" in defaults else []
    argv = [a for a in argv if a not in dec]
    cfg = OmegaConf.merge(OmegaConf.create(defaults), OmegaConf.from_dotlist(argv))
    unknown = set(cfg) - set(defaults)
    if unknown:
        raise SystemExit(f"unknown argument(s) {sorted(unknown)}; known: {sorted(defaults)}")
    args = OmegaConf.to_container(cfg, resolve=True)
    if "decode" in defaults:
        args["decode"] = load_decode(str(args["decode"] or "sequential"), [a[len("decode."):] for a in dec])
    return args


DEFAULTS: dict[str, Any] = {"run": None, "out": "model.tsf"}


@command(DEFAULTS, __doc__)
def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv, DEFAULTS)
    if not args["run"]:
        raise SystemExit("usage: python -m tsformer.export run=<run dir or checkpoint> out=model.tsf")
    try:
        out = export(args["run"], args["out"])
    except ExportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
