"""CALM early exit (Schuster et al. 2022): calibrated thresholds, consistency on unseen data,
layers used and wall-clock speedup, for the char LM and the Conformer-CTC.

    PYTHONPATH=. python benchmarks/_calm.py --quick          # tiny models, shipped data, a few minutes
    PYTHONPATH=. python benchmarks/_calm.py                  # deeper models, longer training
    PYTHONPATH=. python benchmarks/_calm.py --calm-charlm-data ../shared/data/pgbooks

``benchmarks/decoding.py`` calls :func:`run_calm` with its own arguments (those named in
:func:`add_calm_args`; missing ones take their defaults) and puts the rows in its table.

What it does, per task:

- **char LM** (``task=pgbooks``, a deeper model than the default: ``--calm-charlm-layers``,
  trained with ``module.exit_heads=true``): greedy continuations of prompts from the
  validation book calibrate the threshold (Learn-then-Test, inconsistency = share of
  characters that differ from the full model's continuation); consistency and layers are
  then measured on prompts from the test book, and wall time on one long continuation of a
  test prompt (batch 1, as a user generates), full model against early exit. Measures:
  softmax, state and the early-exit classifier (fitted on prompts from the training books).
- **speech** (``task=librispeech``, the shipped FSDD digit sample by default, a deeper
  Conformer-CTC trained with intermediate CTC heads): per-utterance exit; calibration on the
  dev split plus the first half of the test split, measurement on the other half;
  inconsistency = the utterance's WER increase over the full encoder (clipped to [0, 1]).
  Greedy CTC decoding for both. Wall time: utterance by utterance (batch 1, as
  ``tsformer.transcribe`` runs).

``--calm-charlm-diagnose`` runs no calibration: it asks how much room the char LM leaves
for exits at all, teacher-forced on its own greedy continuations of the test prompts
(:func:`exit_diagnosis`: bpc of every layer's head, per-layer agreement with the last, the
oracle, and the best single threshold per measure and per-layer softmax thresholds at 0.1%
and 1% wrong exits per character), into ``benchmarks/results/calm_diagnosis.json`` and
``benchmarks/RESULTS.md``.

Rows: ``task, method, setting, quality, consistency, avg_layers, passes_per_token, wall_s,
speedup, device`` (plus the threshold, its p-value and calibration size), appended to
``benchmarks/results/decoding.json`` and as a table to ``benchmarks/RESULTS.md`` when run
alone.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

import torch
from hydra.utils import instantiate
from torch import Tensor

from tsformer.metrics import word_errors
from tsformer.nn.ctc import ctc_greedy_decode
from tsformer.nn.decoding import generate_tokens
from tsformer.nn.early_exit import (
    NEVER,
    EarlyExit,
    ExitClassifier,
    calibrate_threshold,
    candidate_thresholds,
    ctc_early_exit,
    early_exit_tokens,
    exit_classifier_data,
    held_out_prompts,
    softmax_confidence,
    state_confidence,
    token_mismatch,
    tokens_agree,
)
from tsformer.nn.longformer import bits_per_char
from tsformer.train import compose_config, train

ROOT = Path(__file__).resolve().parent.parent
QUIET = ["trainer.enable_progress_bar=false", "trainer.enable_model_summary=false", "print_metrics=false",
         "plots=false"]


def add_calm_args(ap: argparse.ArgumentParser) -> None:
    """The options :func:`run_calm` reads (``--quick`` and ``--device`` are shared)."""
    ap.add_argument("--calm-tolerances", type=float, nargs="+", default=[0.005, 0.01, 0.05])
    ap.add_argument("--calm-delta", type=float, default=0.1)
    ap.add_argument("--calm-parts", nargs="+", default=["charlm", "speech"], choices=["charlm", "speech"])
    ap.add_argument("--calm-charlm-data", default=None, help="task=pgbooks data.path (default: the shipped excerpt)")
    ap.add_argument("--calm-charlm-layers", type=int, default=None, help="default 6 (--quick) or 12")
    ap.add_argument("--calm-charlm-overrides", nargs="*", default=None, help="more Hydra overrides for the char-LM run")
    ap.add_argument("--calm-charlm-d-model", type=int, default=None, help="default 64 (--quick) or 256; d_ff = 4 d_model")
    ap.add_argument("--calm-charlm-prompts", type=int, nargs=2, default=None, metavar=("CAL", "TEST"),
                    help="calibration and test prompts (default 500 300 --quick, else 600 300)")
    ap.add_argument("--calm-charlm-prompt-len", type=int, default=None, help="characters per prompt (default 32 / 64)")
    ap.add_argument("--calm-charlm-gen-len", type=int, default=None, help="greedy characters per prompt (default 8 / 32)")
    ap.add_argument("--calm-charlm-context", type=int, default=None, help="default 128 (--quick) or 512")
    ap.add_argument("--calm-charlm-measures", nargs="+", default=None, choices=["softmax", "state", "classifier"],
                    help="char LM confidence measures (default: all three; the classifier is fitted on training-book "
                         "prompts, teacher-forced)")
    ap.add_argument("--calm-skipped", nargs="+", default=None, choices=["copy", "defer"],
                    help="char LM: what skipped layers give later positions, one row set each (default: copy, "
                         "CALM's state propagation; defer: run them later from the true states)")
    ap.add_argument("--calm-position-temps", type=float, nargs="+", default=None,
                    help="char LM: tau of CALM's position-adjusted threshold per row set, 0 = constant (default: 0)")
    ap.add_argument("--calm-charlm-diagnose", action="store_true",
                    help="char LM: only the teacher-forced diagnosis (bpc per layer head, agreement, oracle, best "
                         "single threshold per measure, per-layer softmax thresholds), no calibration; alone, not "
                         "through decoding.py")
    ap.add_argument("--calm-speech-root", default=None,
                    help="task=librispeech data.root (default: the shipped FSDD sample; its 126 calibration utterances "
                         "cannot certify 1%% at delta 0.1: build a bigger one with data/librispeech_sample/prepare.py)")
    ap.add_argument("--calm-speech-overrides", nargs="*", default=None,
                    help="more Hydra overrides for the speech run (e.g. data.skip_bad=true)")
    ap.add_argument("--calm-speech-layers", type=int, default=None, help="default 6 (--quick) or 8")
    ap.add_argument("--calm-steps", type=int, default=None, help="training steps (default 150 --quick, else 4000 char LM / 1500 speech)")
    ap.add_argument("--calm-workdir", default=str(ROOT / "outputs" / "bench_calm"))


def _opt(args, name: str, default):
    v = getattr(args, name, None)
    return default if v is None else v


def _trained(cfg, run_dir: Path):
    """Train (or reuse the checkpoint in ``run_dir``) and return ``(net, datamodule, metrics)``."""
    ckpt = run_dir / "checkpoints" / "best.ckpt"
    metrics = {}
    if not ckpt.exists():
        metrics = train(cfg)
    dm = instantiate(cfg.data, _convert_="all")
    dm.setup("fit")
    net = instantiate(cfg.model, _convert_="all", **dm.model_kwargs())
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    net.load_state_dict({k[4:]: v for k, v in state.items() if k.startswith("net.")})
    return net.eval(), dm, metrics


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


# -- char LM ------------------------------------------------------------------------------------


def _charlm(args, device: str) -> dict:
    """The trained char LM of the options (training it first if its run has no checkpoint),
    its calibration and test prompts, the full model's continuations of them, and the
    exit classifier when the classifier measure is asked for."""
    quick = bool(_opt(args, "quick", False))
    layers = int(_opt(args, "calm_charlm_layers", 6 if quick else 12))
    work = Path(_opt(args, "calm_workdir", ROOT / "outputs" / "bench_calm"))
    d = int(_opt(args, "calm_charlm_d_model", 64 if quick else 256))
    ctx = int(_opt(args, "calm_charlm_context", 128 if quick else 512))
    size = [f"model.d_model={d}", "model.n_heads=4", f"model.d_ff={4 * d}", f"data.context={ctx}"]
    size += ["data.train_samples=4000"] if quick else []
    steps = int(_opt(args, "calm_steps", 150 if quick else 4000))
    size += [f"trainer.max_steps={steps}", f"trainer.val_check_interval={max(1, steps // 2)}"]
    data = _opt(args, "calm_charlm_data", None)
    run = work / f"charlm_{layers}l_d{d}_c{ctx}_{steps}{'_quick' if quick else ''}"
    over = ["task=pgbooks", f"model.n_layers={layers}", "model.window=64", "model.dilation=1",
            "module.exit_heads=true", f"run_dir={run}", *size, *QUIET] + ([f"data.path={data}"] if data else [])
    over += list(_opt(args, "calm_charlm_overrides", []))
    net, dm, _ = _trained(compose_config(over), run)
    net = net.to(device)
    # Every candidate threshold decodes all calibration prompts (prompt included): 600 prompts
    # of 64 + 32 characters keep a 12-layer model's calibration in minutes on one core; LTT
    # needs log(delta) / log(1 - tolerance) of them at least (460 at 0.5%, delta 0.1).
    n_cal, n_test = _opt(args, "calm_charlm_prompts", (500, 300) if quick else (600, 300))
    plen = int(_opt(args, "calm_charlm_prompt_len", 32 if quick else 64))
    glen = int(_opt(args, "calm_charlm_gen_len", 8 if quick else 32))
    cal = held_out_prompts(dm.ids["val"], n_cal, plen, glen, 0).to(device)
    test = held_out_prompts(dm.ids["test"], n_test, plen, glen, 1).to(device)
    max_ctx = net.encoder.max_tokens

    def full(prompts):
        return generate_tokens(net, prompts, glen, 0.0, None, True, max_ctx)[:, plen:]

    measures = list(_opt(args, "calm_charlm_measures", ["softmax", "state", "classifier"]))
    classifier = None
    if "classifier" in measures or _opt(args, "calm_charlm_diagnose", False):
        # CALM trains its exit classifier on the frozen model's states over training data
        # (Sec. 3.5): prompts from the training books, so calibration and test stay unseen.
        fit = held_out_prompts(dm.ids["train"], n_cal, plen + glen, 0, 2).to(device)
        classifier = ExitClassifier(d, layers).to(device).fit(*exit_classifier_data(net, tokens_agree, fit))
    return {"net": net, "dm": dm, "layers": layers, "d": d, "ctx": ctx, "steps": steps, "plen": plen, "glen": glen,
            "cal": cal, "test": test, "full": full, "ref_test": full(test), "max_ctx": max_ctx,
            "measures": measures, "classifier": classifier}


def charlm_diagnose(args, device: str) -> dict:
    """:func:`exit_diagnosis` of the options' char LM on its test prompts and 64 windows of
    the test book (``--calm-charlm-diagnose``: no calibration runs)."""
    m = _charlm(args, device)
    book = held_out_prompts(m["dm"].ids["test"], 64, min(m["ctx"], 256), 0, 3).to(device)
    d = exit_diagnosis(m["net"], m["test"], m["ref_test"], book, m["classifier"], fit=(m["cal"], m["full"](m["cal"])))
    return {**d, "layers": m["layers"], "d_model": m["d"], "context": m["ctx"], "train_steps": m["steps"],
            "test_n": len(m["test"]), "generated": m["glen"], "prompt_len": m["plen"]}


def charlm_rows(args, device: str) -> list[dict]:
    m = _charlm(args, device)
    net, layers, d, ctx, steps = m["net"], m["layers"], m["d"], m["ctx"], m["steps"]
    plen, glen, cal, test, max_ctx = m["plen"], m["glen"], m["cal"], m["test"], m["max_ctx"]
    ref_test, classifier, measures = m["ref_test"], m["classifier"], m["measures"]
    ref_cal = m["full"](cal)
    oracle = oracle_layers(net, test, ref_test)
    # Wall time: one long continuation of one test prompt, batch 1.
    long_steps = 200 if _opt(args, "quick", False) else 1000
    one = test[:1]
    _, t_full = _timed(lambda: generate_tokens(net, one, long_steps, 0.0, None, True, max_ctx))
    _, t_full = _timed(lambda: generate_tokens(net, one, long_steps, 0.0, None, True, max_ctx))  # warm
    cands = candidate_thresholds(16)
    rows = []
    temps = [float(t) or None for t in _opt(args, "calm_position_temps", [0.0])]
    modes = list(_opt(args, "calm_skipped", ["copy"]))
    for measure, temp, skipped in [(m, t, k) for k in modes for t in temps for m in measures]:
        seen: dict[float, torch.Tensor] = {}

        def rule(t: float, measure=measure, temp=temp, skipped=skipped) -> EarlyExit:
            return EarlyExit(measure, t, readout=net.readout, classifier=classifier, position_temp=temp,
                             skipped=skipped)

        def losses(t: float, rule=rule, seen=seen):
            if t not in seen:
                out = early_exit_tokens(net, cal, glen, rule(t), 0.0, None, max_ctx)
                seen[t] = token_mismatch(out[:, plen:], ref_cal).cpu()
            return seen[t]

        for tol in _opt(args, "calm_tolerances", [0.005, 0.01, 0.05]):
            c = calibrate_threshold(cands, losses, tol, float(_opt(args, "calm_delta", 0.1)))
            policy = rule(c.threshold)
            out = early_exit_tokens(net, test, glen, policy, 0.0, None, max_ctx)
            mismatch = float(token_mismatch(out[:, plen:], ref_test).mean())
            timing = rule(c.threshold)
            _, t_exit = _timed(lambda timing=timing: early_exit_tokens(net, one, long_steps, timing, 0.0, None, max_ctx))
            p = next((pv for t, _, pv in c.tested if t == c.threshold), float("nan"))
            rows.append({
                "task": "charlm", "method": "calm",
                "setting": (f"{measure}{f' (position tau {temp:g})' if temp else ''}"
                            f"{', skipped layers deferred' if skipped == 'defer' else ''}, tolerance {tol:g}"),
                "quality": None, "consistency": 1.0 - mismatch, "tolerance_met": mismatch <= tol,
                "avg_layers": policy.avg_layers, "layers": layers, "layer_share": policy.avg_layers / layers,
                "long_avg_layers": timing.avg_layers, "passes_per_token": 1.0,
                "wall_s": t_exit, "full_wall_s": t_full, "speedup": t_full / t_exit, "device": device,
                "threshold": None if c.threshold == NEVER else c.threshold, "p_value": p,
                "calibration_n": c.n, "test_n": len(test), "generated": glen, "measure": measure,
                "tolerance": tol, "delta": c.delta, "d_model": d,
                "context": ctx, "train_steps": steps, "prompt_len": plen, "position_temp": temp, "skipped": skipped,
                "oracle_avg_layers": oracle,
            })
            print(_line(rows[-1]), flush=True)
    return rows


@torch.no_grad()
def oracle_layers(net, prompts, continuation) -> float:
    """The layers an oracle would use per generated character: the first layer whose head's
    argmax is the full model's, on the full model's own states (teacher-forced on its greedy
    ``continuation``, so no exit ever changes what follows). A bound no confidence measure
    reaches; it tells how much depth the model's intermediate heads could save at all."""
    return _oracle(_teacher_forced(net, prompts, continuation)[0])


def _oracle(agree: Tensor) -> float:
    """Mean first layer (1-based) whose head agrees with the last, from ``agree (n, B, g)``."""
    return float((agree.float().argmax(0) + 1).float().mean())  # the last layer always agrees


@torch.no_grad()
def _teacher_forced(net, prompts, continuation, classifier=None) -> tuple[Tensor, dict, Tensor]:
    """Per layer, on the full model's own states for ``prompts`` followed by its
    ``continuation`` ``(B, g)``: whether each head agrees with the last ``(n, B, g)``, each
    measure's confidence ``(n - 1, B, g)``, and the last head's top-1 probability ``(B, g)``."""
    tokens = torch.cat([prompts, continuation], dim=1)[:, :-1]
    plen = prompts.shape[1]
    hs = [h[:, plen - 1:] for h in net.hidden_states(tokens)]
    n = len(hs)
    logits = [net.readout(h).float() for h in hs]
    preds = torch.stack([lg.argmax(-1) for lg in logits])
    prev = [net.encoder.embed_tokens(tokens)[:, plen - 1:]] + hs[:-1]
    conf = {"softmax": torch.stack([softmax_confidence(lg) for lg in logits[:-1]]),
            "state": torch.stack([state_confidence(prev[i], hs[i]) for i in range(n - 1)])}
    if classifier is not None:
        conf["classifier"] = torch.stack([classifier(hs[i], i) for i in range(n - 1)])
    return preds == preds[-1:], conf, logits[-1].softmax(-1).max(-1).values


def _exit_cost(conf: Tensor, agree: Tensor, thresholds: Tensor) -> tuple[float, float]:
    """Average layers and share of wrong exits (head != last) when each character stops after
    the first layer ``l`` with ``conf[l] >= thresholds[l]`` (the last layer always stops)."""
    hit = torch.cat([conf >= thresholds[:, None, None], torch.ones_like(conf[:1], dtype=torch.bool)])
    first = hit.float().argmax(0)
    return float(first.float().mean()) + 1, float((~agree.gather(0, first[None])[0]).float().mean())


def per_layer_thresholds(conf: Tensor, agree: Tensor, error: float, grid: Sequence[float]) -> Tensor:
    """Greedy per-layer thresholds ``(n - 1,)`` with at most ``error`` wrong exits on
    ``conf``/``agree``: from "never", repeatedly lower the one layer's threshold (to a value in
    ``grid``) that saves the most layers per wrong exit added, while the budget allows."""
    th = torch.full((conf.shape[0],), 2.0, device=conf.device)  # above every confidence in [0, 1] (or [-1, 1])
    used, wrong = _exit_cost(conf, agree, th)
    while True:
        best = None
        for layer in range(conf.shape[0]):
            for t in grid:
                if t >= th[layer]:
                    continue
                cand = th.clone()
                cand[layer] = t
                u, w = _exit_cost(conf, agree, cand)
                if w <= error and u < used:
                    score = (used - u) / max(w - wrong, 1e-9)
                    if best is None or score > best[0]:
                        best = (score, cand, u, w)
        if best is None:
            return th
        _, th, used, wrong = best


@torch.no_grad()
def exit_diagnosis(net, prompts, continuation, book, classifier=None, errors=(0.001, 0.01), fit=None) -> dict:
    """How much room a model leaves CALM, teacher-forced (no exit changes what follows).

    On the full model's greedy ``continuation`` of ``prompts``: per layer, the share of
    characters whose head agrees with the last layer's; the oracle's layers (first agreeing
    layer); the share where the full model's top-1 probability is at least 0.9; and, per
    measure, the fewest layers any single threshold reaches while exiting wrongly (head !=
    full model's) on at most each share in ``errors`` of the characters: a best case for the
    calibrated rule, which must also hold on free-running text and with a guarantee. With
    ``fit`` (other prompts and their full continuation): softmax thresholds chosen per layer
    on them (:func:`per_layer_thresholds`), then measured here. On ``book`` (``(B, T)`` ids
    of held-out text): bits per character of every layer's head.
    """
    agree, conf, top = _teacher_forced(net, prompts, continuation, classifier)
    n = agree.shape[0]
    grid = candidate_thresholds(64, 1e-5)
    frontier = {}
    for name, c in conf.items():
        best = {e: float(n) for e in errors}
        for t in grid:
            used, wrong = _exit_cost(c, agree, torch.full((n - 1,), t, device=c.device))
            for e in errors:
                if wrong <= e:
                    best[e] = min(best[e], used)
        frontier[name] = best
    per_layer = {}
    if fit is not None:
        fit_agree, fit_conf, _ = _teacher_forced(net, *fit)
        for e in errors:
            th = per_layer_thresholds(fit_conf["softmax"], fit_agree, e, candidate_thresholds(32, 1e-5))
            used, wrong = _exit_cost(conf["softmax"], agree, th)
            per_layer[e] = {"layers": used, "wrong": wrong, "thresholds": [float(t) for t in th]}
    targets = book[:, 1:]
    bpc = [float(bits_per_char(net.readout(h[:, :-1]).float(), targets)) for h in net.hidden_states(book)]
    return {"agree": [float(a.float().mean()) for a in agree], "oracle": _oracle(agree),
            "top1_ge_0.9": float((top >= 0.9).float().mean()), "bpc": bpc, "frontier": frontier,
            "per_layer_softmax": per_layer, "errors": list(errors)}


def diagnosis_text(d: dict, n: int) -> str:
    """One paragraph of :func:`exit_diagnosis` for ``RESULTS.md``."""
    front = "; ".join(f"{m} " + ", ".join(f"{v:.2f} layers at {e:.1%} wrong" for e, v in zip(d["errors"], best.values()))
                      for m, best in d["frontier"].items())
    if d.get("per_layer_softmax"):
        front += ("; softmax with per-layer thresholds chosen on the calibration prompts: " + ", ".join(
            f"{r['layers']:.2f} layers at {r['wrong']:.2%} wrong (budget {e:.1%})"
            for e, r in d["per_layer_softmax"].items()))
    return (f"Teacher-forced room for exits: test bpc {d['bpc'][-1]:.3f} (layer heads "
            + " / ".join(f"{b:.2f}" for b in d["bpc"]) + f"); the full model's top-1 probability >= 0.9 on "
            f"{d['top1_ge_0.9']:.1%} of generated characters; heads agreeing with the last per layer "
            + " / ".join(f"{a:.2f}" for a in d["agree"]) + f"; oracle {d['oracle']:.2f} of {n} layers; "
            f"best single threshold: {front}.")


# -- speech -------------------------------------------------------------------------------------


def _utterances(dm, part: str, device: str) -> list[dict]:
    out = []
    for batch in dm._loader(part):
        for b in range(len(batch["ids"])):
            n = int(batch["feat_lens"][b])
            out.append({"feats": batch["feats"][b : b + 1, :n].to(device), "lens": batch["feat_lens"][b : b + 1].to(device),
                        "text": batch["texts"][b]})
    return out


def _wers(net, dm, utts, policy: EarlyExit | None) -> tuple[list[float], list[int], float, int]:
    """Per-utterance WER, layers used, wall seconds (batch 1) and total word errors."""
    wers, layers, errs, words = [], [], 0, 0
    t0 = time.perf_counter()
    with torch.no_grad():
        for u in utts:
            if policy is None:
                lp, lens = net(u["feats"], u["lens"])
                used = len(net.encoder.blocks)
            else:
                lp, lens, used_t = ctc_early_exit(net, u["feats"], u["lens"], policy)
                used = int(used_t[0])
            hyp = dm.tokenizer.decode(ctc_greedy_decode(lp, lens)[0])
            e, n = word_errors(u["text"], hyp)
            errs, words = errs + e, words + n
            wers.append(e / max(n, 1))
            layers.append(used)
    return wers, layers, time.perf_counter() - t0, errs / max(words, 1)


def speech_rows(args, device: str) -> list[dict]:
    quick = bool(_opt(args, "quick", False))
    layers = int(_opt(args, "calm_speech_layers", 6 if quick else 8))
    work = Path(_opt(args, "calm_workdir", ROOT / "outputs" / "bench_calm"))
    steps = int(_opt(args, "calm_steps", 150 if quick else 1500))
    root = _opt(args, "calm_speech_root", None)
    run = work / f"speech_{layers}l_{steps}{'_quick' if quick else ''}{'_' + Path(root).name if root else ''}"
    over = ["task=librispeech", "model=conformer", f"model.n_layers={layers}", f"trainer.max_steps={steps}",
            f"trainer.val_check_interval={max(1, steps // 2)}", "module.exit_heads=true", "module.decoding.method=greedy",
            f"run_dir={run}", *QUIET] + ([f"data.root={root}"] if root else [])
    over += list(_opt(args, "calm_speech_overrides", []))
    net, dm, _ = _trained(compose_config(over), run)
    net = net.to(device)
    test = _utterances(dm, "test", device)
    half = len(test) // 2
    cal, held = _utterances(dm, "dev", device) + test[:half], test[half:]
    full_cal, _, _, _ = _wers(net, dm, cal, None)
    full_held, _, _, _ = _wers(net, dm, held, None)
    full_held, _, t_full, wer_full = _wers(net, dm, held, None)  # warm timing
    cands = candidate_thresholds(16)
    rows = []
    for measure in ("softmax", "state"):
        seen: dict[float, list[float]] = {}

        def losses(t: float, measure=measure, seen=seen):
            if t not in seen:
                w, _, _, _ = _wers(net, dm, cal, EarlyExit(measure, t, readout=net.readout))
                seen[t] = [min(1.0, max(0.0, a - b)) for a, b in zip(w, full_cal)]
            return seen[t]

        for tol in _opt(args, "calm_tolerances", [0.005, 0.01, 0.05]):
            c = calibrate_threshold(cands, losses, tol, float(_opt(args, "calm_delta", 0.1)))
            policy = EarlyExit(measure, c.threshold, readout=net.readout)
            w, used, t_exit, wer = _wers(net, dm, held, policy)
            increase = sum(min(1.0, max(0.0, a - b)) for a, b in zip(w, full_held)) / max(len(w), 1)
            p = next((pv for t, _, pv in c.tested if t == c.threshold), float("nan"))
            rows.append({
                "task": "speech", "method": "calm", "setting": f"{measure}, tolerance {tol:g}",
                "quality": wer, "full_quality": wer_full, "consistency": 1.0 - increase,
                "tolerance_met": increase <= tol, "avg_layers": sum(used) / max(len(used), 1), "layers": layers,
                "layer_share": sum(used) / max(len(used), 1) / layers, "passes_per_token": None,
                "wall_s": t_exit, "full_wall_s": t_full, "speedup": t_full / t_exit, "device": device,
                "threshold": None if c.threshold == NEVER else c.threshold, "p_value": p,
                "calibration_n": c.n, "test_n": len(held), "measure": measure, "tolerance": tol, "delta": c.delta,
            })
            print(_line(rows[-1]), flush=True)
    return rows


def _line(r: dict) -> str:
    th = "never exits" if r["threshold"] is None else f"threshold {r['threshold']:.4f}"
    q = "" if r.get("quality") is None else f", WER {r['quality']:.4f} (full {r['full_quality']:.4f})"
    return (f"{r['task']} {r['setting']}: {th} (n={r['calibration_n']}), consistency {r['consistency']:.4f}"
            f"{q}, layers {r['avg_layers']:.2f}/{r['layers']}, speedup {r['speedup']:.2f}x")


def _device(args) -> str:
    """``--device``, or the CPU when CUDA is asked for and absent."""
    device = str(_opt(args, "device", "cpu"))
    return "cpu" if device == "cuda" and not torch.cuda.is_available() else device


def _append_json(path: Path, records: list[dict]) -> None:
    """Append ``records`` to the JSON list in ``path`` (created with its folder if missing)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    old = json.loads(path.read_text()) if path.exists() else []
    path.write_text(json.dumps(old + records, indent=1, default=str) + "\n")


def run_calm(args) -> list[dict]:
    """All CALM rows for ``benchmarks/decoding.py`` (see the module docstring)."""
    device = _device(args)
    rows = []
    parts = _opt(args, "calm_parts", ["charlm", "speech"])
    if "charlm" in parts:
        rows += charlm_rows(args, device)
    if "speech" in parts:
        rows += speech_rows(args, device)
    return rows


def table(rows: list[dict]) -> str:
    head = ("| task | measure | tolerance | threshold | n cal | consistency (test) | met | quality | "
            "layers used | share | wall s | speedup |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n")
    body = ""
    for r in rows:
        th = "never" if r["threshold"] is None else f"{r['threshold']:.4f}"
        q = "" if r.get("quality") is None else f"WER {r['quality']:.4f} (full {r['full_quality']:.4f})"
        meas = r["measure"] + (f", position tau {r['position_temp']:g}" if r.get("position_temp") else "")
        meas += ", deferred" if r.get("skipped") == "defer" else ""
        body += (f"| {r['task']} | {meas} | {r['tolerance']:g} | {th} | {r['calibration_n']} | "
                 f"{r['consistency']:.4f} | {'yes' if r['tolerance_met'] else 'no'} | {q} | "
                 f"{r['avg_layers']:.2f} / {r['layers']} | {r['layer_share']:.0%} | {r['wall_s']:.2f} | "
                 f"{r['speedup']:.2f}x |\n")
    return head + body


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "decoding.json"))
    add_calm_args(ap)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    if a.calm_charlm_diagnose:
        return diagnose_main(a)
    t0 = time.perf_counter()
    rows = run_calm(a)
    took = time.perf_counter() - t0
    stamp = {"date": f"{datetime.now():%Y-%m-%d %H:%M}", "machine": platform.node(), "threads": a.threads,
             "load_avg": os.getloadavg()[0], "quick": a.quick}
    _append_json(Path(a.out), [{**stamp, **r} for r in rows])
    with open(ROOT / "benchmarks" / "RESULTS.md", "a") as f:
        # Described from the rows (what was run), not from the defaults again.
        what = []
        lm = next((r for r in rows if r["task"] == "charlm"), None)
        if lm:
            what.append(f"char LM: task=pgbooks, {lm['layers']} layers, d_model {lm['d_model']}, context "
                        f"{lm['context']}, {lm['train_steps']} steps, prompts of {lm['prompt_len']} characters "
                        "(calibration from the validation book, test from the test book) continued greedily by "
                        f"{lm['generated']}, consistency = share of characters equal to the full model's; an oracle "
                        "exiting at the first layer whose head agrees with the full model (on the full model's "
                        f"states) would use {lm['oracle_avg_layers']:.2f} of {lm['layers']} layers")
        sp = next((r for r in rows if r["task"] == "speech"), None)
        if sp:
            what.append(f"speech: task=librispeech (data.root {_opt(a, 'calm_speech_root', None) or 'the shipped FSDD sample'}"
                        f"{' '.join([''] + list(_opt(a, 'calm_speech_overrides', [])))}), Conformer-CTC "
                        f"{sp['layers']} layers, greedy CTC, consistency = 1 - mean per-utterance WER increase")
        f.write(f"\n### CALM early exit ({'--quick, ' if a.quick else ''}{stamp['date']}, {stamp['machine']}, "
                f"{a.threads} threads, load {stamp['load_avg']:.1f}, {took:.0f} s)\n\n"
                f"`PYTHONPATH=. python {' '.join(sys.argv)}`; delta {a.calm_delta}; " + "; ".join(what) +
                ". Speedup: batch-1 wall time, full model / early exit.\n\n" + table(rows))
    print(table(rows))


def diagnose_main(a) -> None:
    """``--calm-charlm-diagnose``: print :func:`exit_diagnosis`, append it to
    ``benchmarks/results/calm_diagnosis.json`` and ``benchmarks/RESULTS.md``."""
    device = _device(a)
    t0 = time.perf_counter()
    d = charlm_diagnose(a, device)
    took = time.perf_counter() - t0
    stamp = {"date": f"{datetime.now():%Y-%m-%d %H:%M}", "machine": platform.node(), "threads": a.threads,
             "device": device}
    text = diagnosis_text(d, d["layers"])
    print(text)
    _append_json(ROOT / "benchmarks" / "results" / "calm_diagnosis.json", [{**stamp, **d}])
    with open(ROOT / "benchmarks" / "RESULTS.md", "a") as f:
        f.write(f"\n### CALM char LM, teacher-forced diagnosis ({stamp['date']}, {stamp['machine']}, {a.threads} "
                f"threads, {took:.0f} s)\n\n`PYTHONPATH=. python {' '.join(sys.argv)}`: {d['layers']} layers, d_model "
                f"{d['d_model']}, context {d['context']}, {d['train_steps']} steps; {d['test_n']} test-book prompts of "
                f"{d['prompt_len']} characters and the full model's greedy {d['generated']} after each; bpc on 64 "
                f"windows of the test book. {text}\n")


if __name__ == "__main__":
    main()
