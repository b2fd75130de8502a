"""Confident early exit (CALM: Schuster, Fisch, Gupta, Dehghani, Bahri, Tran, Tay & Metzler
2022, "Confident Adaptive Language Modeling", NeurIPS, https://arxiv.org/abs/2207.07061),
written once on the shared decoding cache (:class:`~tsformer.nn.decoding.DecodeCache`).

A network trained with its (shared) output head after every layer (:func:`layer_weights`,
the loss weighted toward deeper layers, Sec. 5) can stop early: per generated position,
after the first layer whose confidence reaches a threshold (Sec. 3). Confidence measures
(Sec. 3.5, :data:`MEASURES`):

- ``softmax``: top-1 minus top-2 probability of the head's output (token outputs);
- ``state``: hidden-state saturation, the cosine of consecutive layers' states (any output);
- ``classifier``: a small early-exit classifier (:class:`ExitClassifier`), trained after the
  model on its frozen states to predict whether the layer agrees with the last one.

Skipped layers still give later positions keys and values: the exited state is copied up
and each skipped layer computes its keys and values from it (state propagation, Sec. 3.2;
:func:`propagate`). The threshold is calibrated on held-out data so that the outputs stay
consistent with the full model within a tolerance, with probability at least ``1 - delta``
(Learn-then-Test, Sec. 4; :func:`calibrate_threshold`).

A network takes part through ``hidden_states(...)`` (each layer's output, for training and
for the classifier's data) and ``readout(h)`` (the shared head). Decoders attach an
:class:`EarlyExit` to their cache (``cache.early_exit``): :meth:`DecodeCache.run` then
hands single-position steps to :meth:`EarlyExit.run`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

MEASURES = ("softmax", "state", "classifier")
SKIPPED = ("copy", "defer")
"""What skipped layers give later positions (:attr:`EarlyExit.skipped`)."""
NEVER = math.inf
"""The threshold that never exits (confidences are finite): the full model."""


def layer_weights(n_layers: int) -> Tensor:
    """CALM's per-layer loss weights ``w_i = i / sum_j j`` (Schuster et al. 2022, Sec. 5),
    ``i = 1..n``: deeper layers weigh more, the weights sum to 1. ``(n,)``."""
    if n_layers < 1:
        raise ValueError(f"need at least one layer, got {n_layers}")
    i = torch.arange(1, n_layers + 1, dtype=torch.float32)
    return i / i.sum()


def weighted_layer_loss(losses: Sequence[Tensor]) -> Tensor:
    """``sum_i w_i loss_i`` over the losses of the head after layers ``1..n``."""
    w = layer_weights(len(losses))
    return sum(float(wi) * li for wi, li in zip(w, losses))


def check_exit_heads(net: nn.Module, exit_heads: bool) -> None:
    """ValueError unless ``net`` gives every layer's states and a shared head
    (``hidden_states``, ``readout``) when ``module.exit_heads`` asks for per-layer heads."""
    if exit_heads and not (hasattr(net, "hidden_states") and hasattr(net, "readout")):
        raise ValueError(f"module.exit_heads=true: {type(net).__name__} has no per-layer outputs "
                         "(hidden_states and readout); use the char LM, ConvTransformerForecaster or ConformerCTC")


def softmax_confidence(logits: Tensor) -> Tensor:
    """Top-1 minus top-2 probability over the last axis: ``(..., V)`` -> ``(...)``."""
    top = logits.float().softmax(-1).topk(2, dim=-1).values
    return top[..., 0] - top[..., 1]


def state_confidence(prev: Tensor, cur: Tensor) -> Tensor:
    """Hidden-state saturation: cosine of consecutive layers' states, ``(..., d)`` -> ``(...)``."""
    return F.cosine_similarity(prev.float(), cur.float(), dim=-1)


class ExitClassifier(nn.Module):
    """CALM's early-exit classifier (Sec. 3.5): per layer, a linear map of the layer-normed
    state to the logit of "this layer's output is consistent with the last layer's".
    Trained after the model on its frozen states (:meth:`fit`), so the model is unchanged.

    Args:
        d_model: state width.
        n_layers: layers of the network (the last one needs no classifier).
    """

    def __init__(self, d_model: int, n_layers: int):
        super().__init__()
        self.norm = nn.LayerNorm(d_model, elementwise_affine=False)
        self.linear = nn.ModuleList(nn.Linear(d_model, 1) for _ in range(max(1, n_layers - 1)))

    def forward(self, h: Tensor, layer: int) -> Tensor:
        """``h (..., d)`` after layer ``layer`` (0-based) -> ``(...)`` probability of consistency."""
        return torch.sigmoid(self.linear[layer](self.norm(h.float()))[..., 0])

    def fit(self, states: Sequence[Tensor], labels: Sequence[Tensor], steps: int = 300, lr: float = 1e-2,
            seed: int = 0) -> ExitClassifier:
        """Train on frozen states: ``states[i] (M_i, d)`` after layer ``i`` (``i < n - 1``),
        ``labels[i] (M_i,)`` 1 where that layer agreed with the last. Full-batch Adam on the
        binary cross-entropy; returns ``self`` in eval mode."""
        if len(states) != len(self.linear) or len(labels) != len(states):
            raise ValueError(f"{len(states)} state sets and {len(labels)} label sets for {len(self.linear)} layers")
        torch.manual_seed(seed)
        opt = torch.optim.Adam(self.parameters(), lr=lr)
        # Commands collect the states under no_grad / inference_mode and may call this there:
        # training needs autograd back, and plain (not inference) copies of the states.
        with torch.inference_mode(False), torch.enable_grad():
            xs = [s.detach().float().clone() for s in states]
            ys = [y.detach().float().clone() for y in labels]
            self.train()
            for _ in range(steps):
                opt.zero_grad()
                loss = sum(F.binary_cross_entropy_with_logits(self.linear[i](self.norm(x))[..., 0], y)
                           for i, (x, y) in enumerate(zip(xs, ys)))
                loss.backward()
                opt.step()
        return self.eval()


def propagate(block: nn.Module, x: Tensor, cache, **kwargs) -> None:
    """State propagation (Schuster et al. 2022, Sec. 3.2): a skipped layer's keys and values
    (and recurrent state) for positions whose exited state ``x`` is copied up to it. Blocks
    with ``fill_cache`` skip what the output alone needs (the feed-forward); others run whole
    and the output is dropped."""
    if hasattr(block, "fill_cache"):
        block.fill_cache(x, cache)
    else:
        block(x, cache=cache, **kwargs)


@dataclass
class EarlyExit:
    """A CALM exit rule for a decoder: stop a position after the first layer whose
    confidence reaches ``threshold``.

    Attributes:
        measure: one of :data:`MEASURES`.
        threshold: exit when confidence ``>= threshold`` (:data:`NEVER`: the full model).
        readout: the shared head, ``h (N, l, d) -> logits (N, l, V)`` (``softmax`` needs it).
        classifier: an :class:`ExitClassifier` (``classifier`` needs it).
        exit_layer: force every position to exit after this many layers (tests: "exiting
            at layer l equals l layers and the head"); overrides the measure.
        position_temp: None (the same threshold at every position) or ``tau`` of CALM's
            position-adjusted threshold (:meth:`threshold_at`), which lowers it along the
            generated sequence, since an early token that differs changes everything after it.
        skipped: what the layers a position skips give later positions to attend to.
            ``copy`` (CALM's state propagation, Sec. 3.2): keys and values computed from the
            exited state copied up, at once. ``defer``: nothing yet; the next position that
            runs a skipped layer takes the waiting positions along, in one multi-position
            pass from their true inputs (the synchronized parallel decoding of Bae et al.
            2023, "Fast and Robust Early-Exiting Framework for Autoregressive Language
            Models with Synchronized Parallel Decoding", EMNLP). Every position then sees
            exactly the full model's keys and values, so only the exited tokens themselves can
            differ from the full model's; the layers still run for every position (no compute
            saved), but fewer passes run one after another, which is what a memory-bound
            step (batch 1, a GPU) pays for.
        layers_used, positions: running totals over rows and steps (:attr:`avg_layers`).
    """

    measure: str = "softmax"
    threshold: float = NEVER
    readout: Callable[[Tensor], Any] | None = None
    classifier: ExitClassifier | None = None
    exit_layer: int | None = None
    position_temp: float | None = None
    skipped: str = "copy"
    layers_used: int = 0
    positions: int = 0
    n_layers: int = 0
    history: list[Tensor] = field(default_factory=list, repr=False)

    def __post_init__(self):
        if self.measure not in MEASURES:
            raise ValueError(f"decode.early_exit.measure={self.measure!r}; choose one of {MEASURES}")
        if self.position_temp is not None and not self.position_temp > 0:
            raise ValueError(f"decode.early_exit.position_temp={self.position_temp}: must be > 0 (or null)")
        if self.skipped not in SKIPPED:
            raise ValueError(f"decode.early_exit.skipped={self.skipped!r}; choose one of {SKIPPED}")

    def threshold_at(self, t: int, n: int) -> float:
        """The threshold for the ``t``-th of ``n`` generated positions (0-based).

        With ``position_temp`` (``tau``): ``lambda * (9/10 + exp(-tau t / n) / 10)``, from
        ``lambda`` at the first position down to about ``0.9 lambda`` at the last: the
        position-adjusted threshold of CALM's reference code (t5x ``contrib/calm/models.py``,
        ``position_adjusted_threshold``, default ``tau = 4``; the paper's "decaying threshold",
        Schuster et al. 2022, Sec. 3.3). Otherwise ``threshold`` everywhere.
        """
        if self.position_temp is None or math.isinf(self.threshold):
            return self.threshold
        return self.threshold * (0.9 + 0.1 * math.exp(-self.position_temp * t / max(n, 1)))

    @property
    def avg_layers(self) -> float:
        """Average layers run per (row, position) since the last :meth:`reset`."""
        return self.layers_used / max(self.positions, 1)

    def reset(self) -> None:
        self.layers_used = self.positions = 0
        self.history = []

    def confidence(self, layer: int, prev: Tensor, cur: Tensor) -> Tensor:
        """Confidence after block ``layer`` (0-based) per row and position: ``prev``, ``cur``
        are the block's input and output ``(N, l, d)``; returns ``(N, l)``."""
        if self.measure == "state":
            return state_confidence(prev, cur)
        if self.measure == "classifier":
            if self.classifier is None:
                raise ValueError("the classifier measure needs a trained ExitClassifier (ExitClassifier.fit)")
            return self.classifier(cur, layer)
        if self.readout is None:
            raise ValueError("the softmax measure needs the network's readout (its output head)")
        out = self.readout(cur)
        if not torch.is_tensor(out):
            raise ValueError("the softmax measure needs token outputs (logits); use state or classifier")
        return softmax_confidence(out)

    def run(self, blocks: Sequence[nn.Module], cache, x: Tensor, **kwargs) -> Tensor:
        """One decoding step with exits: ``x (N, 1, d)`` (the next position of every row)
        through ``blocks`` and their caches ``cache.layers``.

        A row that exits keeps its state; the later blocks still see it as their input, so
        their keys and values for this position come from the exited state (state
        propagation). Once every row has exited, the remaining blocks only fill their caches
        (:func:`propagate`). ``cache.hidden`` gets each block's (propagated) output.

        Returns:
            ``(N, 1, d)``: each row's state at the layer it exited after.
        """
        n, N = len(blocks), x.shape[0]
        # The position this step decides, counted from the first generated one (decided by
        # the prefill, with every layer), out of the positions the cache was made for.
        threshold = self.threshold
        if self.position_temp is not None:
            start = cache.start if cache.start is not None else cache.length
            threshold = self.threshold_at(cache.length - start + 1, cache.layers[0].max_len - start)
        if self.skipped == "defer" or any(p is not None for p in cache.pending):
            # Positions an earlier deferring rule left pending must run before this one.
            return self._run_deferred(blocks, cache, x, threshold, **kwargs)
        done = torch.zeros(N, dtype=torch.bool, device=x.device)
        used = torch.full((N,), n, dtype=torch.long, device=x.device)
        hidden = []
        for i, (block, layer) in enumerate(zip(blocks, cache.layers)):
            if bool(done.all()):
                propagate(block, x, layer, **kwargs)
                hidden.append(x)
                continue
            y = block(x, cache=layer, **kwargs)
            if bool(done.any()):
                y = torch.where(done[:, None, None], x, y)
            if i < n - 1:
                new = self._exits(i, n, done, x, y, threshold)
                used = torch.where(new, torch.full_like(used, i + 1), used)
                done = done | new
            x = y
            hidden.append(x)
        cache.hidden = hidden
        self._count(used, n)
        return x

    def _count(self, used: Tensor, n: int) -> None:
        """Add one step's layers used per row ``(N,)`` of ``n`` to the running totals."""
        self.layers_used += int(used.sum())
        self.positions += used.shape[0]
        self.n_layers = n
        self.history.append(used.cpu())

    def _exits(self, i: int, n: int, done: Tensor, prev: Tensor, cur: Tensor, threshold: float) -> Tensor:
        """Rows not yet exited that exit after block ``i``: ``(N,)`` bool."""
        if i >= n - 1:
            return torch.zeros_like(done)
        if self.exit_layer is not None:
            return ~done if i + 1 >= self.exit_layer else torch.zeros_like(done)
        return ~done & (self.confidence(i, prev, cur)[:, -1] >= threshold)

    def _run_deferred(self, blocks: Sequence[nn.Module], cache, x: Tensor, threshold: float, **kwargs) -> Tensor:
        """:meth:`run` with ``skipped="defer"``. ``cache.pending[i]`` holds block ``i``'s
        inputs ``(N, k, d)`` for the positions it has not run yet (the last ``k`` before this
        one); a block that runs takes them along with this position, in order, so its cache
        gets every position's true keys and values. The blocks run for every row until all
        rows have exited (a row that exits keeps its state as its output, but the blocks
        above still see its true state); the first block no row needs gets the outputs below
        it as its pending inputs."""
        n, N = len(blocks), x.shape[0]
        pending = list(cache.pending) if cache.pending else [None] * n
        done = torch.zeros(N, dtype=torch.bool, device=x.device)
        used = torch.full((N,), n, dtype=torch.long, device=x.device)
        out, hidden, carry = x, [], x  # carry: block i's new inputs, (N, k, d), the last is this position
        for i, block in enumerate(blocks):
            inp = carry if pending[i] is None else torch.cat([pending[i], carry], dim=1)
            pending[i] = None
            y = block(inp, cache=cache.layers[i], **kwargs)
            cur = y[:, -1:]
            out = cur if i == 0 else torch.where(done[:, None, None], out, cur)
            new = self._exits(i, n, done, inp[:, -1:], cur, threshold)
            used = torch.where(new, torch.full_like(used, i + 1), used)
            done = done | new
            hidden.append(out)
            carry = y
            if i < n - 1 and bool(done.all()):
                pending[i + 1] = y if pending[i + 1] is None else torch.cat([pending[i + 1], y], dim=1)
                hidden += [out] * (n - 1 - i)
                break
        cache.pending = pending
        cache.hidden = hidden
        self._count(used, n)
        return out


class _WithExit:
    """A token model whose decoding caches carry an exit rule (for :func:`generate_tokens`)."""

    def __init__(self, net: nn.Module, policy: EarlyExit):
        self.net, self.policy = net, policy

    def __call__(self, tokens: Tensor, cache=None) -> Tensor:
        return self.net(tokens, cache=cache)

    def new_cache(self, batch: int, max_len: int, repeat: int = 1):
        cache = self.net.new_cache(batch, max_len, repeat)
        cache.early_exit = self.policy
        return cache


@torch.no_grad()
def early_exit_tokens(net: nn.Module, prompt: Tensor, steps: int, policy: EarlyExit, temperature: float = 0.0,
                      generator: torch.Generator | None = None, max_context: int | None = None,
                      noise: Tensor | None = None) -> Tensor:
    """:func:`~tsformer.nn.decoding.generate_tokens` (with the cache) where each new token
    stops at its exit layer: ``net`` is a causal token model with ``new_cache`` (the char LM);
    the prompt runs through every layer. ``policy.avg_layers`` then tells the layers used.
    ``noise``: pre-drawn Gumbel noise for sampling (as :func:`generate_tokens` takes it).

    Returns:
        ``(B, L + steps)`` token ids.
    """
    from tsformer.nn.decoding import generate_tokens

    if policy.readout is None and hasattr(net, "readout"):
        policy.readout = net.readout
    return generate_tokens(_WithExit(net, policy), prompt, steps, temperature, generator, True, max_context, noise)


def tokens_agree(out: Tensor, last: Tensor) -> Tensor:
    """Consistency label for token outputs: the layer's argmax is the last layer's."""
    return out.argmax(-1) == last.argmax(-1)


def gaussians_agree(out: tuple[Tensor, Tensor], last: tuple[Tensor, Tensor], tol: float = 0.1) -> Tensor:
    """Consistency label for Gaussian outputs ``(mu, sigma)``: the layer's mean within
    ``tol`` of the last layer's standard deviations, and its scale within ``tol`` (log)."""
    (mu, sigma), (mu_l, sigma_l) = out, last
    return ((mu - mu_l).abs() <= tol * sigma_l) & ((sigma / sigma_l).log().abs() <= tol)


@torch.no_grad()
def exit_classifier_data(net: nn.Module, agree: Callable[[Any, Any], Tensor], *inputs: Any,
                         mask: Tensor | None = None) -> tuple[list[Tensor], list[Tensor]]:
    """States and consistency labels for :meth:`ExitClassifier.fit` from one batch of
    held-out inputs run through every layer (``net.hidden_states(*inputs)``; teacher-forced,
    as CALM trains its classifier on the frozen model).

    Args:
        agree: ``(layer output, last output) -> (B, L)`` bool (:func:`tokens_agree`,
            :func:`gaussians_agree`).
        mask: ``(B, L)`` positions to use (None: all).
    Returns:
        Per layer but the last: states ``(M, d)`` and labels ``(M,)``.
    """
    states = net.hidden_states(*inputs)
    last = net.readout(states[-1])
    xs, ys = [], []
    for h in states[:-1]:
        keep = torch.ones(h.shape[:2], dtype=torch.bool, device=h.device) if mask is None else mask.bool()
        xs.append(h[keep])
        ys.append(agree(net.readout(h), last)[keep].float())
    return xs, ys


@torch.no_grad()
def calibrate_token_exit(net: nn.Module, prompts: Tensor, steps: int, measure: str, tolerance: float,
                         delta: float, candidates: Sequence[float] | None = None,
                         classifier: ExitClassifier | None = None,
                         max_context: int | None = None,
                         position_temp: float | None = None, skipped: str = "copy") -> tuple[EarlyExit, Calibration]:
    """Calibrate a token model's exit threshold on held-out prompts (Learn-then-Test): the
    inconsistency of a prompt is the share of its ``steps`` greedy characters that differ from
    the full model's continuation (textual consistency, Schuster et al. 2022, Sec. 4).

    Args:
        net: a causal token model with ``new_cache`` and ``readout`` (the char LM).
        prompts: ``(N, P)`` held-out prompts, one calibration example each.
        position_temp: calibrate the position-adjusted threshold (:meth:`EarlyExit.threshold_at`)
            instead of a constant one.
        skipped: :attr:`EarlyExit.skipped` of the rule calibrated (and returned).
    Returns:
        The calibrated :class:`EarlyExit` (``NEVER`` when no threshold is valid) and the
        :class:`Calibration` record.
    """
    full = generate_tokens_full(net, prompts, steps, max_context)
    P = prompts.shape[1]

    def losses(t: float) -> Tensor:
        rule = EarlyExit(measure, t, readout=net.readout, classifier=classifier, position_temp=position_temp,
                         skipped=skipped)
        return token_mismatch(early_exit_tokens(net, prompts, steps, rule, 0.0, None, max_context)[:, P:], full).cpu()

    cal = calibrate_threshold(candidate_thresholds() if candidates is None else candidates, losses, tolerance, delta)
    return EarlyExit(measure, cal.threshold, readout=net.readout, classifier=classifier,
                     position_temp=position_temp, skipped=skipped), cal


def held_out_prompts(ids: Any, n: int, length: int, room: int = 0, seed: int = 0) -> Tensor:
    """``(n, length)`` prompts cut at random places of a held-out token sequence ``ids``
    (``(T,)`` array or tensor), each leaving ``room`` tokens after it: calibration examples."""
    t = torch.as_tensor(np.asarray(ids).astype("int64"))
    hi = len(t) - length - room
    if hi < 1:
        raise ValueError(f"a held-out text of {len(t)} tokens is too short for {length}-token prompts")
    starts = torch.randint(0, hi, (n,), generator=torch.Generator().manual_seed(seed))
    return torch.stack([t[s : s + length] for s in starts.tolist()])


def generate_tokens_full(net: nn.Module, prompts: Tensor, steps: int, max_context: int | None = None) -> Tensor:
    """The full model's greedy continuation ``(N, steps)`` (the reference of consistency)."""
    from tsformer.nn.decoding import generate_tokens

    return generate_tokens(net, prompts, steps, 0.0, None, True, max_context)[:, prompts.shape[1]:]


# -- calibration: Learn-then-Test ------------------------------------------------------------


def _binom_cdf(k: int, n: int, p: float) -> float:
    """``P(Binomial(n, p) <= k)``."""
    if k < 0:
        return 0.0
    if k >= n:
        return 1.0
    if p <= 0.0:
        return 1.0
    if p >= 1.0:
        return 0.0
    logs = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * math.log(p)
            + (n - i) * math.log1p(-p) for i in range(k + 1)]
    m = max(logs)
    return min(1.0, math.exp(m) * sum(math.exp(v - m) for v in logs))


def hoeffding_bentkus_pvalue(risk: float, n: int, tolerance: float) -> float:
    """p-value of the null "the expected loss exceeds ``tolerance``" given the mean ``risk``
    of ``n`` losses in ``[0, 1]`` (Bates et al. 2021, "Distribution-Free, Risk-Controlling
    Prediction Sets", Sec. 3.1; used by Learn-then-Test, Angelopoulos et al. 2021):
    ``min(exp(-n h(min(risk, a), a)), e P(Bin(n, a) <= ceil(n risk)))`` with ``h`` the
    Bernoulli relative entropy."""
    if n < 1:
        return 1.0
    a = float(tolerance)
    if not 0.0 < a < 1.0:
        raise ValueError(f"decode.early_exit.tolerance must lie in (0, 1), got {tolerance}")
    r = min(max(float(risk), 0.0), a)

    def h(x: float, y: float) -> float:
        out = (1 - x) * math.log((1 - x) / (1 - y))
        return out + (x * math.log(x / y) if x > 0 else 0.0)

    hoeffding = math.exp(-n * h(r, a))
    bentkus = math.e * _binom_cdf(math.ceil(n * float(risk)), n, a)
    return min(1.0, hoeffding, bentkus)


@dataclass
class Calibration:
    """What :func:`calibrate_threshold` found.

    Attributes:
        threshold: the most permissive valid threshold (:data:`NEVER` if none is valid).
        tested: ``(threshold, empirical risk, p-value)`` per candidate tested, in order.
        tolerance, delta, n: the settings and the calibration examples.
    """

    threshold: float
    tested: list[tuple[float, float, float]]
    tolerance: float
    delta: float
    n: int

    @property
    def valid(self) -> bool:
        return self.threshold != NEVER


def calibrate_threshold(candidates: Sequence[float], losses: Callable[[float], Any] | Sequence[Any],
                        tolerance: float, delta: float) -> Calibration:
    """Learn-then-Test calibration of the exit threshold (Schuster et al. 2022, Sec. 4;
    Angelopoulos, Bates, Candes, Jordan & Lei 2021, "Learn then Test").

    Each candidate ``t`` is a hypothesis test of ``H_t: E[loss(t)] > tolerance`` with the
    Hoeffding-Bentkus p-value. Fixed-sequence testing from the most conservative candidate
    on rejects while ``p <= delta`` and stops at the first that fails, which controls the
    family-wise error at ``delta``: with probability at least ``1 - delta`` every accepted
    threshold keeps the expected loss within ``tolerance``. The last one accepted, the most
    permissive, is returned.

    Args:
        candidates: thresholds from the most conservative (exits least) to the least.
        losses: per candidate, the per-example losses in ``[0, 1]`` (inconsistency with the
            full model on held-out examples); a function of the threshold (called lazily, so
            testing stops paying at the first failure) or a sequence aligned with ``candidates``.
        tolerance: the allowed expected loss (``decode.early_exit.tolerance``).
        delta: the allowed risk of the guarantee failing (``decode.early_exit.delta``).
    Returns:
        :class:`Calibration`.
    """
    if not 0.0 < float(delta) < 1.0:
        raise ValueError(f"decode.early_exit.delta must lie in (0, 1), got {delta}")
    get = losses if callable(losses) else (lambda t, _c=list(candidates), _l=list(losses): _l[_c.index(t)])
    best, tested, n = NEVER, [], 0
    for t in candidates:
        vals = np.asarray(get(t), dtype=np.float64).reshape(-1)
        if vals.size and (vals.min() < 0 or vals.max() > 1):
            raise ValueError(f"calibration losses must lie in [0, 1] (threshold {t}: {vals.min()}..{vals.max()})")
        n = vals.size
        risk = float(vals.mean()) if n else 1.0
        p = hoeffding_bentkus_pvalue(risk, n, tolerance)
        tested.append((float(t), risk, p))
        if p > delta:
            break
        best = float(t)
    return Calibration(best, tested, float(tolerance), float(delta), n)


def candidate_thresholds(count: int = 25, smallest_gap: float = 1e-4) -> list[float]:
    """Thresholds for measures in ``[0, 1]`` (softmax margin, classifier probability, the
    state cosine), most conservative first: ``1 - g`` for ``g`` from ``smallest_gap`` to 1
    on a geometric grid (the interesting values crowd near 1)."""
    return [float(1.0 - g) for g in np.geomspace(smallest_gap, 1.0, count)]


# -- inconsistency with the full model ----------------------------------------------------------


def token_mismatch(a: Tensor, b: Tensor) -> Tensor:
    """Per-sequence share of positions where two ``(B, L)`` token sequences differ (textual
    consistency for the char LM): ``(B,)`` in ``[0, 1]``."""
    return (a != b).float().mean(-1)


def quantile_loss_change(exit_samples: Tensor, full_samples: Tensor, target: Tensor,
                         quantiles: Sequence[float] = (0.1, 0.5, 0.9)) -> Tensor:
    """Forecast inconsistency: per window, the relative change of the mean quantile loss
    (over ``quantiles`` and the horizon) of the early-exit forecast against the full
    model's, ``|QL_exit - QL_full| / QL_full`` clipped to ``[0, 1]``.

    Args:
        exit_samples, full_samples: ``(B, S, H)`` sample paths.
        target: ``(B, H)`` observed values.
    Returns:
        ``(B,)``.
    """
    qs = torch.tensor(list(quantiles), dtype=torch.float32, device=target.device)

    def ql(samples: Tensor) -> Tensor:
        q = torch.quantile(samples.float(), qs, dim=1)  # (Q, B, H)
        err = target.float()[None] - q
        return (torch.maximum(qs[:, None, None] * err, (qs[:, None, None] - 1) * err)).mean((0, 2))

    full = ql(full_samples)
    return ((ql(exit_samples) - full).abs() / full.clamp_min(1e-12)).clamp(0, 1)


# -- speech: exit per utterance ---------------------------------------------------------------


@torch.no_grad()
def ctc_early_exit(net: nn.Module, feats: Tensor, lengths: Tensor, policy: EarlyExit) -> tuple[Tensor, Tensor, Tensor]:
    """Per-utterance early exit of a CTC encoder (:class:`~tsformer.nn.conformer.ConformerCTC`):
    after each block, the intermediate CTC posteriors (the shared head) or states give a
    confidence per frame, averaged over the utterance's valid frames; an utterance that
    reaches the threshold leaves the batch with that layer's posteriors. No cache: later
    frames need nothing from skipped layers (the encoder is not autoregressive). The
    ``softmax`` measure needs ``policy.readout = net.readout``.

    Returns:
        ``(B, T', V)`` log-probabilities (each utterance from its exit layer), ``(B,)``
        output lengths and ``(B,)`` layers used.
    """
    from tsformer.nn.conformer import valid_mask

    x, out_len = net.embed(feats, lengths)
    blocks = net.encoder.blocks
    n, B = len(blocks), x.shape[0]
    out = x.new_zeros(B, x.shape[1], net.head.out_features)
    used = torch.full((B,), n, dtype=torch.long, device=x.device)
    rows = torch.arange(B, device=x.device)
    for i, block in enumerate(blocks):
        lens = out_len[rows]
        mask = valid_mask(lens, x.shape[1])
        y = block(x, lens, mask)
        if i == n - 1:
            out[rows] = net.readout(y)
            break
        if policy.exit_layer is not None:
            stop = torch.full((len(rows),), i + 1 >= policy.exit_layer, device=x.device)
        else:
            conf = policy.confidence(i, x, y)
            m = mask.to(conf.dtype)
            stop = (conf * m).sum(1) / m.sum(1).clamp_min(1) >= policy.threshold
        if bool(stop.any()):
            out[rows[stop]] = net.readout(y[stop])
            used[rows[stop]] = i + 1
        rows, x = rows[~stop], y[~stop]
        if not len(rows):
            break
    policy.layers_used += int(used.sum())
    policy.positions += B
    policy.n_layers = n
    return out, out_len, used


__all__ = ["MEASURES", "NEVER", "SKIPPED", "Calibration", "EarlyExit", "ExitClassifier", "calibrate_threshold",
           "calibrate_token_exit", "candidate_thresholds", "check_exit_heads", "ctc_early_exit", "early_exit_tokens", "exit_classifier_data", "gaussians_agree", "held_out_prompts", "hoeffding_bentkus_pvalue", "layer_weights", "propagate",
           "quantile_loss_change", "softmax_confidence", "state_confidence", "token_mismatch", "tokens_agree",
           "weighted_layer_loss"]
