"""A detector that flags a steered forward pass from its activations alone (the attack's countermeasure).

It reads one residual site (by default the attacked layer's output ``resid_post.L``, which holds
the added vector; ``offset=1`` reads the next block's output instead) and scores each prompt:

- ``projection``: per token, the projection onto each known attack direction ``h . v_hat``,
  standardised by the clean tokens' mean and spread along it, ``|h . v_hat - mu| / sigma``; the
  prompt's score is the mean over tokens, maximised over directions. (With mu = 0, sigma = 1 this
  is the plain ``|h . v_hat|``; centring makes it see pushes in either direction.)
- ``norm``: per token, the norm's z-score against the clean tokens' norms,
  ``(|h| - mu) / sigma``; the prompt's score is the absolute mean over tokens.
- ``combined``: the larger of the two, each as a z-score over the clean calibration prompts.

`fit_detector` calibrates on clean prompts: token statistics, then per score the threshold that
flags a ``fpr`` share (default 5%) of the calibration prompts. `detection_rates` then reports the
true-positive rate on steered runs and the false-positive rate on held-out clean runs. The first
``skip`` tokens (default 1: the attention-sink token, whose norm is far off every other's) are
left out of every score.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from interp.errors import InterpError
from interp.interventions import Add
from interp.model import Model
from interp.steering.limits import BATCH_ROWS

SCORES = ("projection", "norm", "combined")


def _as_list(acts: torch.Tensor | Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """One ``[pos, d]`` tensor per prompt from a ``[batch, pos, d]`` / ``[pos, d]`` tensor or a list."""
    if isinstance(acts, torch.Tensor):
        if acts.ndim == 2:
            return [acts]
        if acts.ndim == 3:
            return list(acts)
        raise InterpError(f"activations must be [batch, pos, d], [pos, d] or a list of [pos, d]; got shape {tuple(acts.shape)}")
    out = list(acts)
    if not out or any(a.ndim != 2 for a in out):
        raise InterpError("activations must be a non-empty list of [pos, d] tensors, one per prompt")
    return out


@dataclass
class Detector:
    """Calibrated scores and thresholds for activations at ``site``; build it with `fit_detector`."""

    site: str
    directions: torch.Tensor  # [k, d], unit rows
    proj_mean: torch.Tensor  # [k]
    proj_std: torch.Tensor  # [k]
    norm_mean: float
    norm_std: float
    score_mean: dict[str, float]
    score_std: dict[str, float]
    thresholds: dict[str, float]
    fpr_target: float
    skip: int = 1

    def _tokens(self, act: torch.Tensor) -> torch.Tensor:
        if act.shape[-1] != self.directions.shape[-1]:
            raise InterpError(f"activations have width {act.shape[-1]}, the detector's directions {self.directions.shape[-1]}")
        if act.shape[0] <= self.skip:
            raise InterpError(f"a prompt of {act.shape[0]} tokens has none left after skipping the first {self.skip}")
        return act[self.skip:].double()

    def _raw(self, acts: torch.Tensor | Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        proj, norm = [], []
        for act in _as_list(acts):
            tokens = self._tokens(act)
            dev = ((tokens @ self.directions.T - self.proj_mean).abs() / self.proj_std).mean(0)  # [k]
            proj.append(dev.max())
            norm.append(((tokens.norm(dim=-1) - self.norm_mean) / self.norm_std).mean().abs())
        return {"projection": torch.stack(proj), "norm": torch.stack(norm)}

    def score(self, acts: torch.Tensor | Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        """Per-prompt scores ``{"projection", "norm", "combined"}``, each ``[batch]`` (higher: more suspicious)."""
        raw = self._raw(acts)
        z = [(raw[name] - self.score_mean[name]) / self.score_std[name] for name in ("projection", "norm")]
        return {**raw, "combined": torch.maximum(*z)}

    def flag(self, acts: torch.Tensor | Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        """Per-prompt booleans ``[batch]``: the score is above its calibrated threshold."""
        return {name: value > self.thresholds[name] for name, value in self.score(acts).items()}

    def to_dict(self) -> dict:
        """The calibration as plain numbers (directions left out)."""
        return {"site": self.site, "n_directions": int(self.directions.shape[0]), "fpr_target": self.fpr_target,
                "thresholds": dict(self.thresholds), "norm_mean": self.norm_mean, "norm_std": self.norm_std, "skip": self.skip}


def site_activations(model: Model, prompts: Sequence[str], site: str, edits: Sequence[Add] = (),
                     backend: str | None = None) -> list[torch.Tensor]:
    """The activation ``[pos, d]`` at ``site`` for every prompt (run in groups of equal length)."""
    if not prompts:
        raise InterpError("no prompts to read activations from")
    out: list[torch.Tensor | None] = [None] * len(prompts)
    for rows, tokens in model.length_groups(prompts, BATCH_ROWS):
        with torch.no_grad():
            acts = model.run(tokens, list(edits), read=[site], backend=backend).acts[site]
        for j, i in enumerate(rows):
            out[i] = acts[j].float().cpu()
    return out  # type: ignore[return-value]


def _quantile_threshold(scores: torch.Tensor, fpr: float) -> float:
    return float(torch.quantile(scores.double(), 1.0 - fpr))


def fit_detector(model: Model, clean_prompts: Sequence[str], directions: torch.Tensor, layer: int, fpr: float = 0.05,
                 offset: int = 0, skip: int = 1, backend: str | None = None) -> Detector:
    """Calibrate a detector on clean runs of ``clean_prompts`` at ``resid_post.<layer + offset>``.

    ``directions`` are the known attack vectors ``[k, d]`` (or one ``[d]``); thresholds flag a
    ``fpr`` share of the calibration prompts.
    """
    if not 0 < fpr < 1:
        raise InterpError(f"fpr must be between 0 and 1, got {fpr}")
    if len(clean_prompts) < 2:
        raise InterpError(f"calibration needs at least 2 clean prompts, got {len(clean_prompts)}")
    dirs = directions.reshape(1, -1) if directions.ndim == 1 else directions
    if dirs.ndim != 2 or dirs.shape[1] != model.d_model:
        raise InterpError(f"attack directions must be [k, {model.d_model}] for {model.name}; got {tuple(directions.shape)}")
    norms = dirs.double().norm(dim=-1, keepdim=True)
    if (norms == 0).any():
        raise InterpError("an attack direction is zero; give non-zero vectors")
    site = str(model.site(f"resid_post.{layer + offset}"))
    acts = site_activations(model, clean_prompts, site, backend=backend)
    if min(a.shape[0] for a in acts) <= skip:
        raise InterpError(f"every calibration prompt needs more than skip={skip} tokens")
    tokens = torch.cat([a[skip:] for a in acts]).double()
    unit = (dirs.double() / norms).cpu()
    proj = tokens @ unit.T
    token_norms = tokens.norm(dim=-1)
    det = Detector(site, unit, proj.mean(0), proj.std(0).clamp_min(1e-12), float(token_norms.mean()),
                   max(float(token_norms.std()), 1e-12), {}, {}, {}, fpr, skip)
    raw = det._raw(acts)
    det.score_mean = {name: float(v.mean()) for name, v in raw.items()}
    det.score_std = {name: max(float(v.std()), 1e-12) for name, v in raw.items()}
    det.thresholds = {name: _quantile_threshold(v, fpr) for name, v in det.score(acts).items()}
    return det


@dataclass
class DetectionRates:
    """True-positive rate on steered runs and false-positive rate on clean runs, per score."""

    tpr: dict[str, float]
    fpr: dict[str, float]
    n: int

    def to_dict(self) -> dict:
        return {"tpr": dict(self.tpr), "fpr": dict(self.fpr), "n": self.n}


def detection_rates(model: Model, detector: Detector, prompts: Sequence[str], vector: torch.Tensor, layer: int, coeff: float,
                    backend: str | None = None) -> DetectionRates:
    """Run held-out ``prompts`` clean and steered (``coeff * vector`` at ``resid_post.<layer>``, every position)."""
    steer = Add(str(model.site(f"resid_post.{layer}")), vector, coeff=coeff)
    clean = detector.flag(site_activations(model, prompts, detector.site, backend=backend))
    steered = detector.flag(site_activations(model, prompts, detector.site, [steer], backend=backend))
    return DetectionRates({k: float(v.float().mean()) for k, v in steered.items()},
                          {k: float(v.float().mean()) for k, v in clean.items()}, len(prompts))
