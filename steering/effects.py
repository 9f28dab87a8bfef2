"""What steering does to the next-token distribution: KL, entropy, answer accuracy and answer mass.

All functions take last-position logits ``[n, vocab]``; answers are given as candidate token ids
``[n, c]`` with the index of the right one per row ``[n]``.
"""

from __future__ import annotations

import math

import torch


def kl_nats(unsteered: torch.Tensor, steered: torch.Tensor) -> torch.Tensor:
    """KL(unsteered || steered) of the next-token distributions, in nats, per row."""
    p = unsteered.float().log_softmax(-1)
    q = steered.float().log_softmax(-1)
    return (p.exp() * (p - q)).sum(-1)


def entropy_bits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the next-token distribution, in bits, per row."""
    logp = logits.float().log_softmax(-1)
    return -(logp.exp() * logp).sum(-1) / math.log(2)


def answer_accuracy(logits: torch.Tensor, candidates: torch.Tensor, correct: torch.Tensor) -> float:
    """Share of rows whose highest-logit candidate is the right one."""
    return float((logits.gather(-1, candidates).argmax(-1) == correct).float().mean())


def answer_mass(logits: torch.Tensor, candidates: torch.Tensor, correct: torch.Tensor) -> tuple[float, float]:
    """Mean probability mass (over the whole vocabulary) on the right candidate and on the wrong ones."""
    probs = logits.float().softmax(-1).gather(-1, candidates)  # [n, c]
    right = probs.gather(-1, correct[:, None])[:, 0]
    return float(right.mean()), float((probs.sum(-1) - right).mean())
