"""EAST (entropic activation steering, Rahn et al. 2024) on a two-armed bandit.

The prompt shows the game and its history; the model's next token is the action (" A" or " B",
one token each), so the action distribution and its entropy are read exactly from next-token
probabilities (renormalised over the two action tokens), or estimated by sampling. Roll out
episodes, record the residual at the last prompt token of every step with its action entropy
H_t, and build

    u = sum_t H_t a_t / sum_t H_t                 (``center=False``)
    u = sum_t H_t (a_t - mean a) / sum_t H_t      (``center=True``, the default: the covariance of
                                                   entropy and activation, not the mean activation)

Steering adds beta * u at the chosen layer; `entropy_sweep` compares that with temperature scaling,
which leaves the ordering of the two actions unchanged.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Sequence

import torch

from interp.errors import InterpError
from interp.interventions import Add
from interp.metrics import check_finite
from interp.model import Model

INTRO = ("You are playing a game with two buttons, A and B. Each press of a button gives a reward of 0 or 1. "
         "Your goal is to collect as much reward as you can over the rounds.\n")


@dataclass
class Bandit:
    """Two Bernoulli arms with success probabilities ``p``; ``history`` holds (action, reward) pairs."""

    p: tuple[float, float] = (0.3, 0.7)
    actions: tuple[str, str] = (" A", " B")
    history: list[tuple[int, int]] = field(default_factory=list)

    def prompt(self) -> str:
        lines = [INTRO]
        for t, (action, reward) in enumerate(self.history, start=1):
            lines.append(f"Round {t}: you pressed{self.actions[action]} and got reward {reward}.\n")
        lines.append(f"Round {len(self.history) + 1}: you pressed")
        return "".join(lines)

    def step(self, action: int, rng: random.Random) -> int:
        reward = int(rng.random() < self.p[action])
        self.history.append((action, reward))
        return reward


def action_tokens(model: Model, actions: Sequence[str]) -> torch.Tensor:
    """Token ids of the actions; each must be exactly one token."""
    ids = []
    for action in actions:
        tok = model.tokenizer(action, add_special_tokens=False)["input_ids"]
        if len(tok) != 1:
            raise InterpError(f"action {action!r} is {len(tok)} tokens for this tokenizer; EAST needs one-token actions")
        ids.append(tok[0])
    return torch.tensor(ids)


def action_probs(logits: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Probabilities [n, actions] of the action tokens, renormalised, at ``temperature``."""
    if not math.isfinite(temperature) or temperature <= 0:
        raise InterpError(f"temperature must be positive (and finite), got {temperature}")
    return check_finite((logits.float()[:, tokens.to(logits.device)] / temperature).softmax(-1), "the action probabilities")


def entropy(probs: torch.Tensor) -> torch.Tensor:
    """Entropy in bits of each row of ``probs``."""
    return -(probs * probs.clamp_min(1e-30).log()).sum(-1) / math.log(2)


def east_vector(acts: torch.Tensor, entropies: torch.Tensor, center: bool = True) -> torch.Tensor:
    """``sum_t H_t (a_t - mean a) / sum_t H_t`` (or without centring) from ``acts`` [T, d] and ``entropies`` [T]."""
    if acts.shape[0] != entropies.shape[0] or acts.shape[0] == 0:
        raise InterpError(f"need one entropy per activation, got {acts.shape[0]} activations and {entropies.shape[0]} entropies")
    total = entropies.sum()
    if total <= 0:
        raise InterpError("every recorded action entropy is 0: the agent never hesitated, so there is nothing to weight by")
    a = acts - acts.mean(0) if center else acts
    return (entropies[:, None] * a).sum(0) / total


@dataclass
class Rollout:
    """Per step of every episode: the action entropy (bits), the action taken, the reward, the residual."""

    entropy: torch.Tensor  # [episodes, steps]
    actions: torch.Tensor  # [episodes, steps]
    rewards: torch.Tensor  # [episodes, steps]
    acts: torch.Tensor  # [episodes, steps, d_model] at the read layer, last prompt token


def rollout(model: Model, episodes: int = 4, steps: int = 10, layer: int | None = None, vector: torch.Tensor | None = None,
            beta: float = 0.0, temperature: float = 1.0, p: tuple[float, float] = (0.3, 0.7), seed: int = 0,
            backend: str | None = None) -> Rollout:
    """Play ``episodes`` games of ``steps`` rounds, sampling actions from the exact action distribution.

    With ``vector`` and ``beta``, ``beta * vector`` is added to ``resid_post.{layer}`` at every position.
    The residual read is ``resid_post.{layer}`` at the last prompt token (middle layer by default).
    """
    layer = model.n_layers // 2 if layer is None else model.site(f"resid_post.{layer}").layer
    tokens = action_tokens(model, Bandit().actions)
    rng = random.Random(seed)
    site = f"resid_post.{layer}"
    out = {k: [] for k in ("entropy", "actions", "rewards", "acts")}
    for _ in range(episodes):
        env = Bandit(p=p)
        row = {k: [] for k in out}
        for _ in range(steps):
            edits = [Add(site, vector, coeff=beta)] if vector is not None and beta != 0 else []
            with torch.no_grad():
                run = model.run(env.prompt(), edits, read=[site], backend=backend)
            probs = action_probs(run.logits[:, -1], tokens, temperature)[0]
            action = int(rng.random() >= float(probs[0]))
            row["entropy"].append(float(entropy(probs[None])[0]))
            row["actions"].append(action)
            row["rewards"].append(env.step(action, rng))
            row["acts"].append(run.acts[site][0, -1].float().cpu())
        for k in out:
            out[k].append(row[k])
    return Rollout(torch.tensor(out["entropy"]), torch.tensor(out["actions"]), torch.tensor(out["rewards"]),
                   torch.stack([torch.stack(r) for r in out["acts"]]))
