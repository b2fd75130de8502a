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
from tsformer.data.errors import DataError

FORMAT = "tsformer-forecaster"
FORMAT_VERSION = 1


class ExportError(DataError):
    """A run that cannot be exported, or a ``.tsf`` file that cannot be loaded (a
    :class:`DataError`: the message names the file)."""


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
    from hydra.errors import InstantiationException
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
    info: dict[str, Any] = {}
    for key, kind in (("config", dict), ("data_state", dict), ("model_kwargs", dict)):
        try:
            info[key] = json.loads(meta[key])
        except KeyError:
            raise ExportError(f"{path}: header key {key!r} missing; the file is damaged, export the run again") from None
        except ValueError as e:
            raise ExportError(f"{path}: header key {key!r} is not valid JSON ({e})") from None
        if not isinstance(info[key], kind):
            raise ExportError(f"{path}: header key {key!r} is a {type(info[key]).__name__}, expected an object")
    model = info["config"].get("model")
    if not isinstance(model, dict) or not str(model.get("_target_", "")).startswith("tsformer."):
        raise ExportError(f"{path}: header config.model is not a tsformer network ({str(model)[:80]})")
    foreign = [t for t in _targets(model) if not str(t).startswith("tsformer.")]
    if foreign:  # loading builds only tsformer classes, never what a file names elsewhere
        raise ExportError(f"{path}: header config.model names {foreign[0]!r}, not a tsformer class")
    info["tsformer_version"] = meta.get("tsformer_version")
    try:
        net = instantiate(model, _convert_="all", **info["model_kwargs"])
        net.load_state_dict(load_file(str(path), device="cpu"))
    except Exception as e:  # the header's config and the tensors are input: any failure means a damaged file
        if isinstance(e, InstantiationException) and e.__cause__ is not None:
            e = e.__cause__
        why = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        raise ExportError(f"{path}: cannot build the network from the file ({type(e).__name__}: {why})") from e
    return net.to(device).eval(), info


def _targets(node: Any) -> list[Any]:
    """Every ``_target_`` in a nested config."""
    if isinstance(node, dict):
        return [v for k, v in node.items() if k == "_target_"] + [t for v in node.values() for t in _targets(v)]
    if isinstance(node, list):
        return [t for v in node for t in _targets(v)]
    return []


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


def early_exit_options(decode: dict[str, Any], default_measure: str, measures: tuple[str, ...] | None = None,
                       where: str = "") -> dict[str, Any] | None:
    """The ``decode.early_exit`` settings (#18) checked, or None when early exit is off
    (neither ``tolerance`` nor ``threshold`` set).

    Args:
        decode: the options from :func:`load_decode`.
        default_measure: the measure when ``decode.early_exit.measure`` is null.
        measures: the measures this command serves (default: all of CALM's).
        where: what the user decodes (for messages), e.g. ``"forecasts"``.
    Returns:
        ``measure``, ``tolerance``, ``delta``, ``threshold`` (float or None), ``calibration``
        (path or None), ``examples``, ``position_temp`` (float or None) and ``skipped``
        (``copy`` | ``defer``); the last two for generation only.
    Raises:
        SystemExit: a bad value or a missing companion key, naming the key.
    """
    from tsformer.nn.early_exit import MEASURES, SKIPPED

    ee = dict(decode.get("early_exit") or {})
    if ee.get("tolerance") is None and ee.get("threshold") is None:
        if ee.get("measure") is not None or ee.get("calibration") is not None:
            raise SystemExit("decode.early_exit needs decode.early_exit.tolerance=<e.g. 0.01> (calibrated on "
                             "decode.early_exit.calibration=<held-out data>) or decode.early_exit.threshold=<value>")
        return None
    measure = ee.get("measure") or default_measure
    allowed = measures or MEASURES
    if measure not in allowed:
        raise SystemExit(f"decode.early_exit.measure={measure}: {where or 'this command'} can use {', '.join(allowed)}")
    if decode.get("method", "sequential") != "sequential":
        raise SystemExit(f"decode.early_exit with decode={decode.get('method')}: early exit decides per position, "
                         "one position per forward pass; use decode=sequential")
    out = {"measure": measure, "tolerance": None, "delta": 0.1, "threshold": None, "calibration": None,
           "examples": 100, "position_temp": None, "skipped": str(ee.get("skipped") or "copy")}
    if out["skipped"] not in SKIPPED:
        raise SystemExit(f"decode.early_exit.skipped={out['skipped']}: choose one of {', '.join(SKIPPED)}")
    if out["skipped"] != "copy" and where != "generation":
        raise SystemExit(f"decode.early_exit.skipped={out['skipped']}: deferring skipped layers is for text "
                         f"generation (tsformer.generate), not {where or 'this command'}")
    try:
        if ee.get("position_temp") is not None:
            out["position_temp"] = float(ee["position_temp"])
        if ee.get("threshold") is not None:
            out["threshold"] = float(ee["threshold"])
        else:
            out["tolerance"] = float(ee["tolerance"])
            out["delta"] = float(ee.get("delta") if ee.get("delta") is not None else 0.1)
        out["examples"] = int(ee.get("examples") or 100)
    except (TypeError, ValueError) as e:
        raise SystemExit(f"decode.early_exit: expected numbers ({e})") from None
    if out["threshold"] is None:
        if not 0.0 < out["tolerance"] < 1.0:
            raise SystemExit(f"decode.early_exit.tolerance={out['tolerance']}: must lie in (0, 1), e.g. 0.01")
        if not 0.0 < out["delta"] < 1.0:
            raise SystemExit(f"decode.early_exit.delta={out['delta']}: must lie in (0, 1), e.g. 0.1")
        if not ee.get("calibration"):
            raise SystemExit(f"decode.early_exit.tolerance={out['tolerance']:g} is calibrated on held-out data: set "
                             "decode.early_exit.calibration=<path> (or give decode.early_exit.threshold=<value>)")
    if ee.get("calibration"):  # also where a given threshold's classifier is fitted on it
        out["calibration"] = str(ee["calibration"])
        if not Path(out["calibration"]).exists():
            raise SystemExit(f"decode.early_exit.calibration={out['calibration']}: no such file or folder")
    if out["examples"] < 1:
        raise SystemExit(f"decode.early_exit.examples={out['examples']}: must be >= 1")
    if out["position_temp"] is not None:
        if where != "generation":
            raise SystemExit(f"decode.early_exit.position_temp: the position-adjusted threshold is for text "
                             f"generation (tsformer.generate), not {where or 'this command'}")
        if not out["position_temp"] > 0:
            raise SystemExit(f"decode.early_exit.position_temp={out['position_temp']:g}: must be > 0 (CALM uses 4)")
    return out


def require_exit_heads(trained: bool, what: str | Path) -> None:
    """ExportError unless the model was trained with per-layer heads (``module.exit_heads``),
    which early exit reads."""
    if not trained:
        raise ExportError(f"{what}: trained without per-layer exit heads; early exit (decode.early_exit.*) needs a "
                          "model trained with module.exit_heads=true")


def exit_report(opts: dict[str, Any], policy, cal=None, source: str = "", unit: str = "examples") -> str:
    """The line commands print about early exit: the threshold (calibrated or given) and the
    average layers the decoding used (``policy.avg_layers`` of ``policy.n_layers``)."""
    from tsformer.nn.early_exit import NEVER

    th = "never exits" if policy.threshold == NEVER else f"threshold {policy.threshold:.6g}"
    if cal is None:
        how = "given"
    else:
        p = next((pv for t, _, pv in cal.tested if t == cal.threshold), None)
        how = (f"calibrated on {cal.n} {unit} of {source} for tolerance {cal.tolerance:g}, delta {cal.delta:g}"
               + (f" (p-value {p:.3g})" if p is not None else ": no threshold met the tolerance, the full model decodes"))
    deferred = "; skipped layers deferred" if opts.get("skipped") == "defer" else ""
    return (f"early exit ({opts['measure']}): {th}, {how}; {policy.avg_layers:.2f} of {policy.n_layers} layers "
            f"on average{deferred}")


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
