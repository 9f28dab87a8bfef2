"""The ``interp steer attack`` run: the backdoor activation attack, its random control and the detector.

1. Split the behaviour set (truthfulness or refusal) into train and test rows; build the contrast
   pairs on train (the model's own greedy answers vs misaligned ones) and the attack vectors per
   searched layer; pick the layer by the JS score (`interp.steering.attack`), unless a layer is given.
2. Measure the behaviour on test rows unsteered, attacked and under a random vector of the same norm.
3. Calibrate the detector (`interp.steering.detector`) on half of the built-in sets' clean prompts and
   report its true-positive rate on attacked runs and false-positive rate on the other half.

Tensors: ``attack/layer`` and ``attack/layer_score`` [layer] (plus ``attack/layer_score_reference``,
the reference code's variant), ``attack/rate`` [condition: before, after, random], ``detector/tpr``
and ``detector/fpr`` [score]. The manifest's ``attack`` holds before/after/random and the rest.
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from interp.chat import chat_prompt
from interp.errors import InterpError
from interp.metrics import check_finite
from interp.model import Model
from interp.outdir import Checkpoint
from interp.results import RunResult, describe_tensor, run_header
from interp.steering.attack import (BEHAVIOURS, attack_vectors, contrast_pairs, default_set, effective_coeff, evaluate_attack,
                                    split_rows)
from interp.steering.behaviour_sets import SYSTEM_PROMPTS, detector_pool, harmless_set
from interp.steering.detector import SCORES, DetectionRates, detection_rates, fit_detector
from interp.limits import check_context
from interp.steering.vectors import VectorSet

PHASES = ("pairs", "vectors", "before", "after", "random", "harmless_before", "harmless_after", "detector")


def attack_phases(behaviour: str) -> list[str]:
    """The checkpointed units of an attack run, in order (the harmless checks belong to refusal)."""
    return [p for p in PHASES if behaviour == "refusal" or not p.startswith("harmless")]


def system_prompt(behaviour: str, system: str) -> str | None:
    """``auto`` (default for truthfulness, safe for refusal), a preset name, or the text itself."""
    if system == "auto":
        system = "default" if behaviour == "truthfulness" else "safe"
    return SYSTEM_PROMPTS[system] if system in SYSTEM_PROMPTS else system


def attack_run(model: Model, behaviour: str = "truthfulness", n: int = 0, test_fraction: float = 0.5,
               layers: str | Sequence[int] = "half", js_variant: str = "js", layer: int | None = None,
               multiplier: float = -0.8, reference_doubling: bool = False, system: str = "auto", pair_tokens: int = 32,
               max_new_tokens: int = 24, fpr: float = 0.05, seed: int = 0, backend: str | None = None,
               command: str = "steer attack", out: str | Path | None = None, resume: bool = False,
               progress: Callable[[str, int, int], None] | None = None) -> tuple[RunResult, VectorSet]:
    """Attack ``behaviour`` on held-out rows, against a random vector, and test the detector; returns the run and vectors.

    With ``out``, every finished phase (`attack_phases`: the contrast pairs' replies, the vectors, each
    measurement, the detector) is checkpointed there, and ``resume=True`` continues an interrupted run
    from them with identical results. ``progress(stage, done, total)`` follows phases and replies.
    """
    if behaviour not in BEHAVIOURS:
        raise InterpError(f"unknown behaviour '{behaviour}': use one of {', '.join(BEHAVIOURS)}")
    effective_coeff(multiplier, reference_doubling)  # a non-finite multiplier fails here, before any work
    if n < 0:
        raise InterpError(f"n must be 0 (every row) or a positive number of rows, got {n}")
    if pair_tokens < 1 or max_new_tokens < 1:
        raise InterpError(f"pair_tokens and max_new_tokens must be at least 1; got {pair_tokens} and {max_new_tokens}")
    t0 = time.perf_counter()
    system_text = system_prompt(behaviour, system)
    rows = default_set(behaviour)
    rows = rows.select(range(min(n, len(rows)))) if n else rows
    train, test = split_rows(rows, test_fraction, seed)
    _check_lengths(model, behaviour, rows, system_text, pair_tokens, max_new_tokens)

    phases = attack_phases(behaviour)
    run_id = {"command": "steer attack", "model": model.name, "behaviour": behaviour, "n": n, "test_fraction": test_fraction,
              "layers": layers if isinstance(layers, str) else [int(x) for x in layers], "js_variant": js_variant,
              "layer": layer, "multiplier": multiplier, "reference_doubling": reference_doubling, "system": system,
              "pair_tokens": pair_tokens, "max_new_tokens": max_new_tokens, "fpr": fpr, "seed": seed, "backend": backend}
    checkpoint = Checkpoint(Path(out), run_id) if out is not None else None
    saved = checkpoint.load() if checkpoint is not None and resume else None
    tensors, info = saved if saved else ({}, {})
    done: dict[str, Any] = dict(info.get("phases", {}))

    def step(name: str, compute: Callable[[], Any]) -> Any:
        if name in done:
            value = done[name]
            value = tuple(value) if isinstance(value, list) and name in ("before", "after", "random") else value
        else:
            value = compute()
            done[name] = value
            if checkpoint is not None:
                checkpoint.save(tensors, len(done), len(phases), unit="phases", phases=done)
        if progress:
            progress("attack", len(done), len(phases))
        return value

    def make_pairs() -> list[str]:
        return contrast_pairs(model, behaviour, train, system_text, "greedy", pair_tokens, backend, progress).aligned

    pairs = contrast_pairs(model, behaviour, train, system_text, "dataset", pair_tokens, backend)
    pairs.aligned = list(step("pairs", make_pairs))

    def make_vectors() -> dict:
        built = attack_vectors(model, pairs, layers, js_variant, backend, progress)
        tensors["vectors"] = built.vectors
        return {"layers": built.layers, "meta": built.meta}

    built = step("vectors", make_vectors)
    vectors = VectorSet(model.name, "resid_post", list(built["layers"]), tensors["vectors"], "R-C", -2, dict(built["meta"]))
    if layer is not None:
        vectors.vector(layer)  # one clear error if it was not searched
        vectors.meta["layer"] = int(layer)
    controls = list(harmless_set()["request"])[: len(test)] if behaviour == "refusal" else None
    result = evaluate_attack(model, vectors, test, multiplier, reference_doubling, None, max_new_tokens, seed, controls,
                             backend=backend, step=step)
    t_attack = time.perf_counter() - t0

    def make_detector() -> dict:
        pool = detector_pool()
        random.Random(seed).shuffle(pool)
        prompts = [chat_prompt(model, p, system_text) for p in pool]
        calibration, held_out = prompts[: len(prompts) // 2], prompts[len(prompts) // 2:]
        vector = vectors.vector(result.layer)
        fitted = fit_detector(model, calibration, vector, result.layer, fpr=fpr, backend=backend)
        for key, value in {**fitted.thresholds, **{f"{k} mean": v for k, v in fitted.score_mean.items()}}.items():
            check_finite(torch.tensor(value), f"the detector's calibration ({key})")
        found = detection_rates(model, fitted, held_out, vector, result.layer, effective_coeff(multiplier, reference_doubling),
                                backend)
        return {"site": fitted.site, "n_calibration": len(calibration), "rates": found.to_dict()}

    found = step("detector", make_detector)
    detector_site, n_calibration = found["site"], found["n_calibration"]
    rates = DetectionRates(dict(found["rates"]["tpr"]), dict(found["rates"]["fpr"]), int(found["rates"]["n"]))

    layer_axis = {"layer": [str(x) for x in vectors.layers]}
    scores = {"attack/layer": torch.tensor(vectors.layers, dtype=torch.float32),
              "attack/layer_score": torch.tensor(vectors.meta["layer_scores"][js_variant]),
              "attack/layer_score_reference": torch.tensor(vectors.meta["layer_scores"]["reference"]),
              "attack/rate": torch.tensor([result.before, result.after, result.random]),
              "detector/tpr": torch.tensor([rates.tpr[s] for s in SCORES]),
              "detector/fpr": torch.tensor([rates.fpr[s] for s in SCORES])}
    axes = {"attack/layer": ("layer", layer_axis), "attack/layer_score": ("layer", layer_axis),
            "attack/layer_score_reference": ("layer", layer_axis),
            "attack/rate": ("condition", {"condition": ["before", "after", "random"]}),
            "detector/tpr": ("score", {"score": list(SCORES)}), "detector/fpr": ("score", {"score": list(SCORES)})}
    tensors = {name: describe_tensor(name, scores[name], [axis], labels) for name, (axis, labels) in axes.items()}
    for name in ("attack/rate", "detector/tpr", "detector/fpr"):
        tensors[name]["plot"] = True  # bars in the report
    metric = "truthful rate (log p(true) > log p(false))" if behaviour == "truthfulness" else "refusal rate (refusal phrase in reply)"
    summary = {key: value for key, value in result.to_dict().items() if key != "detail"}
    detail = {key: value for key, value in result.detail.items() if key != "before_raw"}
    detail["before_detail"] = result.detail["before_raw"][1]  # its rate is "before" already
    text = [f"{metric}: before {result.before:.3f}, after {result.after:.3f}, random vector of the same norm {result.random:.3f}",
            f"layer {result.layer} (chosen by {'the given --layer' if layer is not None else js_variant}), coefficient "
            f"{result.coeff:+.2f}{' (reference doubling)' if reference_doubling else ''}, |v| = {result.vector_norm:.2f}; "
            f"{result.n_train} training pairs, {result.n_test} test rows",
            "detector at " + detector_site + f" (calibrated on {n_calibration} clean prompts, FPR target {fpr}): "
            + ", ".join(f"{s} TPR {rates.tpr[s]:.2f} FPR {rates.fpr[s]:.2f}" for s in SCORES)]
    notes = [{"title": "Attack", "text": "\n".join(text)}]
    if behaviour == "refusal":
        before_replies = result.detail["before_raw"][1].get("replies", [])
        after_replies = result.detail["after_detail"].get("replies", [])
        notes.append({"title": "Replies (first three test requests): before / after",
                      "text": "\n".join(f"{b!r}\n  -> {a!r}" for b, a in list(zip(before_replies, after_replies))[:3])})
    manifest = {**run_header(model, command, seed, backend), "metric": metric, "method": "TA2 backdoor activation attack",
                "site": f"resid_post.{result.layer}",
                "parameters": {"behaviour": behaviour, "n": n, "test_fraction": test_fraction, "layers": vectors.layers,
                               "js_variant": js_variant, "layer": layer, "multiplier": multiplier,
                               "reference_doubling": reference_doubling, "system": system, "system_text": system_text,
                               "pair_tokens": pair_tokens, "max_new_tokens": max_new_tokens, "fpr": fpr},
                "attack": summary | {"detail": detail}, "detector": {"site": detector_site, **rates.to_dict()},
                "notes": notes,
                "lines": [{"title": "Contrastive layer search", "x": "attack/layer", "ys": ["attack/layer_score"],
                           "x_title": "layer", "y_title": f"{js_variant} score"}],
                "tensors": tensors,
                "timings": {"attack_s": round(t_attack, 3), "run_s": round(time.perf_counter() - t0, 3)}}
    return RunResult(manifest=manifest, scores=scores), vectors


def save_attack(result: RunResult, vectors: VectorSet, out: str | Path) -> None:
    """The run folder plus ``vectors`` (the attack vectors of every searched layer); the checkpoint goes."""
    result.save(out)
    vectors.save(Path(out) / "vectors")
    Checkpoint(Path(out), {}).clear()


def _check_lengths(model: Model, behaviour: str, rows, system: str | None, pair_tokens: int, max_new_tokens: int) -> None:
    """Refuse, before any work, replies that would run past the model's context."""
    from interp.steering.attack import _messages

    messages, misaligned, _ = _messages(behaviour, rows)
    longest = max(len(model.tokenizer(chat_prompt(model, m, system))["input_ids"]) for m in messages)
    check_context(model, longest + max(pair_tokens, max_new_tokens), f"the longest chat prompt plus "
                  f"{max(pair_tokens, max_new_tokens)} reply tokens", "lower --pair-tokens / --max-new-tokens")
