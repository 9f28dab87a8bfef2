"""EAST pieces against closed forms: action entropy, the entropy-weighted vector, rollouts and steering."""

import math
import random

import pytest
import torch

from interp.errors import InterpError
from interp.steering.east import Bandit, action_probs, action_tokens, east_vector, entropy, rollout


def test_bandit_prompt_and_rewards():
    env = Bandit(p=(0.0, 1.0))
    rng = random.Random(0)
    assert env.step(0, rng) == 0 and env.step(1, rng) == 1
    prompt = env.prompt()
    assert "Round 1: you pressed A and got reward 0." in prompt and "Round 2: you pressed B and got reward 1." in prompt
    assert prompt.endswith("Round 3: you pressed")


def test_entropy_and_action_probs_closed_forms():
    assert torch.allclose(entropy(torch.tensor([[0.5, 0.5], [1.0, 0.0]])), torch.tensor([1.0, 0.0]))
    p = torch.tensor([[0.2, 0.8]])
    assert float(entropy(p)) == pytest.approx(-(0.2 * math.log2(0.2) + 0.8 * math.log2(0.8)))
    logits = torch.tensor([[0.0, 1.0, 3.0, -2.0]])
    tokens = torch.tensor([1, 2])
    probs = action_probs(logits, tokens)
    assert torch.allclose(probs, torch.tensor([[1.0, 3.0]]).softmax(-1))
    hot = action_probs(logits, tokens, temperature=1e6)  # temperature only flattens; ordering stays
    assert torch.allclose(hot, torch.full((1, 2), 0.5), atol=1e-5)
    with pytest.raises(InterpError, match="temperature must be positive"):
        action_probs(logits, tokens, temperature=0)


def test_east_vector_is_the_entropy_weighted_average():
    acts = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 2.0]])
    h = torch.tensor([1.0, 0.0, 3.0])
    assert torch.allclose(east_vector(acts, h, center=False), (1 * acts[0] + 3 * acts[2]) / 4)
    centred = acts - acts.mean(0)
    assert torch.allclose(east_vector(acts, h), (1 * centred[0] + 3 * centred[2]) / 4)
    with pytest.raises(InterpError, match="never hesitated"):
        east_vector(acts, torch.zeros(3))


def test_rollout_is_seeded_and_beta_zero_is_unsteered(tiny_llama):
    action_tokens(tiny_llama, Bandit().actions)  # one token each, or it raises
    a = rollout(tiny_llama, episodes=2, steps=3, layer=1, seed=5)
    b = rollout(tiny_llama, episodes=2, steps=3, layer=1, seed=5)
    assert torch.equal(a.actions, b.actions) and torch.equal(a.entropy, b.entropy)
    assert a.acts.shape == (2, 3, tiny_llama.d_model) and ((a.entropy >= 0) & (a.entropy <= 1)).all()
    u = east_vector(a.acts.reshape(-1, tiny_llama.d_model), a.entropy.reshape(-1))
    zero = rollout(tiny_llama, episodes=2, steps=3, layer=1, seed=5, vector=u, beta=0.0)
    assert torch.equal(zero.entropy, a.entropy)
    pushed = rollout(tiny_llama, episodes=2, steps=3, layer=1, seed=5, vector=u / u.norm(), beta=50.0)
    assert not torch.allclose(pushed.entropy, a.entropy)
