"""The thinking EAST agent: its action distribution against whole-sequence forwards, seeding and steering."""

import pytest
import torch

from interp.errors import InterpError
from interp.steering.east import action_probs, action_tokens, east_vector
from interp.steering.east_agent import ThinkingBandit, agent_rollout, agent_steps, entropy_sweep, play


def _prompts():
    fresh, played = ThinkingBandit(), ThinkingBandit()
    played.history = [(0, 1), (1, 0)]
    return [fresh.prompt(), played.prompt(), fresh.prompt()]


def test_prompt_shows_history_and_asks_for_a_thought():
    env = ThinkingBandit()
    env.history = [(0, 1), (1, 0)]
    prompt = env.prompt()
    assert "Round 1: Action: A, Reward: 1\nRound 2: Action: B, Reward: 0\nRound 3:\nThought:" in prompt


@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_action_distribution_equals_whole_sequence_forwards(tiny_llama, temperature):
    prompts = _prompts()
    steps = agent_steps(tiny_llama, prompts, k=3, temperature=temperature, max_thought_tokens=5)
    forced = tiny_llama.tokenizer("\nAction:", add_special_tokens=False)["input_ids"]
    actions = action_tokens(tiny_llama, (" A", " B"))
    for prompt, step in zip(prompts, steps):
        assert len(step.thoughts) == 3 and all(len(t) <= 5 for t in step.thought_tokens)
        rows = []
        for thought in step.thought_tokens:  # independent: the full text through the default (lens) backend
            ids = tiny_llama.tokenizer(prompt)["input_ids"] + thought + forced
            with torch.no_grad():
                logits = tiny_llama.run(torch.tensor([ids])).logits[:, -1]
            rows.append(action_probs(logits, actions, temperature)[0])
        assert torch.allclose(step.probs, torch.stack(rows).mean(0), atol=1e-5)
        assert float(step.probs.sum()) == pytest.approx(1.0)
    with torch.no_grad():  # the residual read is the last prompt token's, at the middle layer
        read = tiny_llama.run(prompts[1], read=["resid_post.1"]).acts["resid_post.1"][0, -1]
    assert torch.allclose(steps[1].act, read, atol=1e-5)


def test_seeded_and_zero_beta_is_unsteered(tiny_llama):
    vector = torch.randn(tiny_llama.d_model, generator=torch.Generator().manual_seed(0))
    a = agent_rollout(tiny_llama, episodes=2, steps=2, k=2, max_thought_tokens=4, seed=5)
    b = agent_rollout(tiny_llama, episodes=2, steps=2, k=2, max_thought_tokens=4, seed=5, vector=vector, beta=0.0)
    assert torch.equal(a.entropy, b.entropy) and a.thoughts == b.thoughts and torch.equal(a.actions, b.actions)
    steered = agent_rollout(tiny_llama, episodes=2, steps=2, k=2, max_thought_tokens=4, seed=5, vector=vector, beta=30.0)
    assert not torch.allclose(steered.entropy, a.entropy)
    assert a.entropy.shape == a.sampled_entropy.shape == (2, 2) and a.acts.shape == (2, 2, tiny_llama.d_model)
    assert ((a.sampled_entropy >= 0) & (a.sampled_entropy <= 1)).all()
    u = east_vector(a.acts.flatten(0, 1), a.entropy.flatten())
    assert u.shape == (tiny_llama.d_model,)


def test_entropy_sweep_and_bad_input(tiny_llama):
    vector = torch.randn(tiny_llama.d_model, generator=torch.Generator().manual_seed(0))
    for agent in ("thought", "token"):
        sweep = entropy_sweep(tiny_llama, vector, 1, [0.0, 4.0], [1.0, 3.0], agent=agent, episodes=2, steps=2, k=2,
                              max_thought_tokens=3)
        assert sweep.beta_entropy.shape == sweep.temperature_entropy.shape == (2, 2)
        assert torch.equal(sweep.beta_entropy[0], sweep.temperature_entropy[0])  # beta 0 at T=1 is T=1 unsteered
    with pytest.raises(InterpError, match="unknown agent"):
        play(tiny_llama, "react")
    with pytest.raises(InterpError, match="temperature must be positive"):
        agent_steps(tiny_llama, _prompts(), temperature=0)
