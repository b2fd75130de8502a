"""Block parts chosen by config (``model.ffn``), shared by the networks' blocks."""

from __future__ import annotations

FFNS = ("mlp", "none")
"""``model.ffn`` values: ``mlp`` (two linear layers around an activation) or ``none`` (no
feed-forward sublayer: with ``model.attention.persistent``, the all-attention layer of
Sukhbaatar et al. 2019, whose persistent vectors take the feed-forward's place)."""


def check_ffn(ffn: str) -> None:
    """ValueError naming the choices unless ``ffn`` is one of :data:`FFNS`."""
    if ffn not in FFNS:
        raise ValueError(f"model.ffn={ffn!r}; choose one of {FFNS}")
