"""Attention layers: one registry by config name, one builder, one calling convention.

Every network builds its attention through :func:`build_attention` from ``model.attention``
(:class:`AttentionSpec`): ``type`` picks the layer class in :data:`ATTENTION_LAYERS`,
``pattern``/``kernel``/``positions`` and the pattern options configure it, and any other
key goes to that type's constructor. Layers share one calling convention,
``layer(x, lengths=None, global_idx=(), cache=None)`` on ``(B, L, d_model)`` (see
:mod:`tsformer.nn.attention.base`).

=============  ======================================  ============================
``type``       class                                   paper
=============  ======================================  ============================
``mhsa``       :class:`MultiHeadSelfAttention`         Vaswani et al. 2017
``conv``       :class:`ConvSelfAttention`              Li et al. 2019 (LogSparse)
``lsra``       :class:`LSRA`                           Wu et al. 2020 (Lite Transformer)
``longformer`` :class:`LongformerSelfAttention`        Beltagy et al. 2020
``mqa``        :class:`MultiQueryAttention`            Shazeer 2019
``linformer``  :class:`LinformerAttention`             Wang et al. 2020
``rwkv``       :class:`RWKVTimeMix`                    Peng et al. 2023 (RWKV-4)
``lsh``        :class:`LSHAttention`                   Kitaev et al. 2020 (Reformer)
``performer``  :class:`PerformerAttention`              Choromanski et al. 2021 (FAVOR+)
=============  ======================================  ============================
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from tsformer.nn.attention.base import AttentionLayer, AttentionSpec
from tsformer.nn.attention.conv import ConvSelfAttention
from tsformer.nn.attention.linformer import LinformerAttention
from tsformer.nn.attention.longformer import LongformerSelfAttention
from tsformer.nn.attention.lsh import LSHAttention
from tsformer.nn.attention.lsra import LSRA, DynamicConv, LightweightConv
from tsformer.nn.attention.mhsa import MultiHeadSelfAttention
from tsformer.nn.attention.mqa import MultiQueryAttention
from tsformer.nn.attention.performer import PerformerAttention
from tsformer.nn.attention.positions import POSITIONS, Positions, alibi_slopes
from tsformer.nn.attention.rwkv import RWKVTimeMix

ATTENTION_LAYERS: dict[str, type[AttentionLayer]] = {
    "mhsa": MultiHeadSelfAttention,
    "conv": ConvSelfAttention,
    "lsra": LSRA,
    "longformer": LongformerSelfAttention,
    "mqa": MultiQueryAttention,
    "linformer": LinformerAttention,
    "rwkv": RWKVTimeMix,
    "lsh": LSHAttention,
    "performer": PerformerAttention,
}
"""Attention layer types by config name (``model.attention.type``)."""


def register_attention(name: str):
    """Class decorator adding an :class:`AttentionLayer` subclass to :data:`ATTENTION_LAYERS`."""

    def add(cls: type[AttentionLayer]) -> type[AttentionLayer]:
        if name in ATTENTION_LAYERS and ATTENTION_LAYERS[name] is not cls:
            raise ValueError(f"attention type {name!r} is already registered to {ATTENTION_LAYERS[name].__name__}")
        ATTENTION_LAYERS[name] = cls
        return cls

    return add


def build_attention(
    cfg: Mapping[str, Any] | AttentionSpec | None,
    d_model: int,
    n_heads: int,
    *,
    causal: bool | None = None,
    defaults: Mapping[str, Any] | None = None,
    network: str = "this network",
    shared: dict | None = None,
    **hints: Any,
) -> AttentionLayer:
    """The attention layer ``model.attention`` asks for.

    Args:
        cfg: ``model.attention`` (a mapping or an :class:`AttentionSpec`).
        d_model, n_heads: width and heads.
        causal: True for a decoder (the pattern must be causal and the type able to serve
            one), False for an encoder that takes any pattern, None: no requirement.
        defaults: config values the network assumes where ``cfg`` is silent (its default
            type and pattern, e.g. ``{"type": "conv", "pattern": "logsparse"}``).
        network: the network's name, for error messages.
        shared: one dict per network, passed to every layer type that takes ``shared``
            (parts shared across layers, e.g. Linformer's ``sharing=layer`` projection).
        **hints: constructor arguments the network offers every type (``kernel_size``,
            ``dilated_heads``, ``out_dropout`` ...); a type takes those its constructor
            names and ignores the rest. (Keys in ``cfg`` beyond the schema are not hints:
            an unknown one is an error.)
    Returns:
        An :class:`AttentionLayer`.
    Raises:
        ValueError: unknown type, a pattern the type cannot take, a bidirectional layer or
            pattern in a decoder, or an option the type does not take; each names both sides.
    """
    base = dict(defaults or {})
    kind = (cfg.type if isinstance(cfg, AttentionSpec) else dict(cfg or {}).get("type")) or base.get("type", "mhsa")
    cls = ATTENTION_LAYERS.get(kind)
    if cls is None:
        raise ValueError(f"unknown attention type {kind!r}; choose one of {sorted(ATTENTION_LAYERS)}")
    asked = set() if isinstance(cfg, AttentionSpec) else {k for k, v in dict(cfg or {}).items() if v is not None}
    if cls.patterns is not None and "pattern" not in asked and base.get("pattern") not in cls.patterns:
        base.pop("pattern", None)  # the network's usual pattern does not fit this type: the type's own default
        if causal and "causal" in cls.patterns:
            base["pattern"] = "causal"  # ... in its causal form for a decoder
    spec = AttentionSpec.from_config(cfg, **{**cls.defaults, **base, "type": kind})
    if causal:
        if not cls.causal_capable:
            why = f": {cls.bidirectional_reason}" if cls.bidirectional_reason else ""
            raise ValueError(f"{network} is a decoder, but attention type {kind!r} ({cls.__name__}) is bidirectional{why}")
        if not spec.build_pattern().causal:
            raise ValueError(
                f"{network} is a decoder and needs a causal pattern; attention pattern {spec.pattern!r} "
                f"(type {kind!r}) lets positions see later ones"
            )
    options, spec.options = spec.options, {}
    params = inspect.signature(cls.__init__).parameters
    taken = {k: v for k, v in {**hints, "shared": shared}.items() if k in params}
    unknown = sorted(k for k in options if k not in params or params[k].kind is inspect.Parameter.VAR_KEYWORD)
    if unknown:
        raise ValueError(f"attention type {kind!r} ({cls.__name__}) does not take the option(s) {unknown}")
    return cls(d_model, n_heads, spec, **{**taken, **options})


__all__ = [
    "ATTENTION_LAYERS",
    "LSHAttention",
    "LSRA",
    "POSITIONS",
    "AttentionLayer",
    "AttentionSpec",
    "ConvSelfAttention",
    "DynamicConv",
    "LightweightConv",
    "LinformerAttention",
    "LongformerSelfAttention",
    "MultiHeadSelfAttention",
    "MultiQueryAttention",
    "PerformerAttention",
    "Positions",
    "RWKVTimeMix",
    "alibi_slopes",
    "build_attention",
    "register_attention",
]
