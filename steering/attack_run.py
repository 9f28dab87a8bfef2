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
from typing import Sequence

import torch

from interp.chat import chat_prompt
from interp.errors import InterpError
from interp.model import Model
from interp.results import RunResult, describe_tensor, run_header
from interp.steering.attack import (BEHAVIOURS, attack_vectors, contrast_pairs, default_set, effective_coeff, evaluate_attack,
                             split_rows)
from interp.steering.behaviour_sets import SYSTEM_PROMPTS, detector_pool, harmless_set
from interp.steering.detector import SCORES, detection_rates, fit_detector
from interp.steering.vectors import VectorSet


def system_prompt(behaviour: str, system: str) -> str | None:
    """``auto`` (default for truthfulness, safe for refusal), a preset name, or the text itself."""
    if system == "auto":
        system = "default" if behaviour == "truthfulness" else "safe"
    return SYSTEM_PROMPTS[system] if system in SYSTEM_PROMPTS else system


def attack_run(model: Model, behaviour: str = "truthfulness", n: int = 0, test_fraction: float = 0.5,
               layers: str | Sequence[int] = "half", js_variant: str = "js", layer: int | None = None,
               multiplier: float = -0.8, reference_doubling: bool = False, system: str = "auto", pair_tokens: int = 32,
               max_new_tokens: int = 24, fpr: float = 0.05, seed: int = 0, backend: str | None = None,
               command: str = "steer attack") -> tuple[RunResult, VectorSet]:
    """Attack ``behaviour`` on held-out rows, against a random vector, and test the detector; returns the run and vectors."""
    if behaviour not in BEHAVIOURS:
        raise InterpError(f"unknown behaviour '{behaviour}': use one of {', '.join(BEHAVIOURS)}")
    t0 = time.perf_counter()
    system_text = system_prompt(behaviour, system)
    rows = default_set(behaviour)
    rows = rows.select(range(min(n, len(rows)))) if n else rows
    train, test = split_rows(rows, test_fraction, seed)
    pairs = contrast_pairs(model, behaviour, train, system_text, "greedy", pair_tokens, backend)
    vectors = attack_vectors(model, pairs, layers, js_variant, backend)
    if layer is not None:
        vectors.vector(layer)  # one clear error if it was not searched
        vectors.meta["layer"] = int(layer)
    controls = list(harmless_set()["request"])[: len(test)] if behaviour == "refusal" else None
    result = evaluate_attack(model, vectors, test, multiplier, reference_doubling, None, max_new_tokens, seed, controls,
                             backend=backend)
    t_attack = time.perf_counter() - t0

    pool = detector_pool()
    random.Random(seed).shuffle(pool)
    prompts = [chat_prompt(model, p, system_text) for p in pool]
    calibration, held_out = prompts[: len(prompts) // 2], prompts[len(prompts) // 2:]
    vector = vectors.vector(result.layer)
    detector = fit_detector(model, calibration, vector, result.layer, fpr=fpr, backend=backend)
    rates = detection_rates(model, detector, held_out, vector, result.layer, effective_coeff(multiplier, reference_doubling), backend)

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
            "detector at " + detector.site + f" (calibrated on {len(calibration)} clean prompts, FPR target {fpr}): "
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
                "attack": summary | {"detail": detail}, "detector": {"site": detector.site, **rates.to_dict()},
                "notes": notes,
                "lines": [{"title": "Contrastive layer search", "x": "attack/layer", "ys": ["attack/layer_score"],
                           "x_title": "layer", "y_title": f"{js_variant} score"}],
                "tensors": tensors,
                "timings": {"attack_s": round(t_attack, 3), "run_s": round(time.perf_counter() - t0, 3)}}
    return RunResult(manifest=manifest, scores=scores), vectors


def save_attack(result: RunResult, vectors: VectorSet, out: str | Path) -> None:
    """The run folder plus ``vectors`` (the attack vectors of every searched layer)."""
    result.save(out)
    vectors.save(Path(out) / "vectors")
