"""EAST with a thinking agent: the model writes a thought, then its action, as in Rahn et al.'s agents.

Each round's prompt shows the game, two worked rounds, the history (action and reward per round)
and ends with ``Thought:``. The model samples ``k`` thoughts (KV-cached, batched); a thought ends
at its first newline (or after ``max_thought_tokens``), and the text ``Action:`` is then forced, so
every sample ends at a point where the next token is the action. Its distribution there,
p(a | thought), is read exactly from the next-token probabilities of " A" and " B" (at the
sampling temperature), so the round's action distribution is estimated as

    pi(a) = mean_k p(a | thought_k)          (exact given the sampled thoughts)

and its entropy H_t = H(pi) in bits. The plug-in entropy of the k sampled actions is reported too.
The residual is read at the last prompt token (the ``:`` of ``Thought:``), as in `interp.steering.east`.

Steering adds beta * u at ``resid_post.{layer}`` on every position, prompt and thought; the
temperature baseline instead samples thoughts and actions at temperature T. Here, unlike in
`interp.steering.east`'s one-token agent, temperature acts on the action only through the thought and
the final action softmax, which is the setting where EAST reports temperature failing.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import torch

from interp.errors import InterpError
from interp.interventions import Add
from interp.metrics import check_finite
from interp.model import Model
from interp.steering.east import Bandit, Rollout, action_probs, action_tokens, entropy

if TYPE_CHECKING:
    from interp.ray_workers import RayWorkers

AGENT_INTRO = (
    "You are playing a game with two buttons, A and B. Each press of a button gives a reward of 0 or 1. "
    "Your goal is to collect as much reward as you can. Each round, write a short thought, then your action.\n\n"
    "Example:\nThought: I know nothing about either button yet, so I will try one.\nAction: A\nReward: 0\n"
    "Thought: A gave nothing this time. I will try B.\nAction: B\nReward: 1\n\nThe game:\n"
)


@dataclass
class ThinkingBandit(Bandit):
    """A `Bandit` whose prompt asks for a thought before the action."""

    def prompt(self) -> str:
        lines = [AGENT_INTRO]
        for t, (action, reward) in enumerate(self.history, start=1):
            lines.append(f"Round {t}: Action:{self.actions[action]}, Reward: {reward}\n")
        lines.append(f"Round {len(self.history) + 1}:\nThought:")
        return "".join(lines)


@dataclass
class AgentStep:
    """One round: the estimated action distribution, the k thoughts and the actions sampled after them."""

    probs: torch.Tensor  # [2] mean of p(a | thought_k)
    sampled: list[int]  # one action per thought
    thoughts: list[str]
    thought_tokens: list[list[int]]  # the sampled thought tokens, before the forced "\nAction:"
    act: torch.Tensor  # [d_model] residual at the last prompt token


def agent_steps(model: Model, prompts: list[str], k: int = 8, temperature: float = 1.0, layer: int | None = None,
                vector: torch.Tensor | None = None, beta: float = 0.0, max_thought_tokens: int = 20,
                generator: torch.Generator | None = None) -> list[AgentStep]:
    """For each prompt, sample ``k`` thoughts, force ``Action:`` after each, and read the action distribution.

    Prompts of equal token length run as one batch of ``len(prompts) * k`` rows; each prompt is
    run once and its KV cache repeated ``k`` times.
    """
    if k < 1 or max_thought_tokens < 1:
        raise InterpError(f"k and max_thought_tokens must be at least 1; got k={k}, max_thought_tokens={max_thought_tokens}")
    if not math.isfinite(temperature) or temperature <= 0:
        raise InterpError(f"temperature must be positive (and finite) for a sampled thought, got {temperature}")
    layer = model.n_layers // 2 if layer is None else model.site(f"resid_post.{layer}").layer
    gen = generator or torch.Generator().manual_seed(0)
    steps: list[AgentStep | None] = [None] * len(prompts)
    for rows, tokens in model.length_groups(prompts):
        for i, step in zip(rows, _think_and_act(model, tokens, k, temperature, layer, vector, beta, max_thought_tokens, gen)):
            steps[i] = step
    return steps


def _think_and_act(model: Model, tokens: torch.Tensor, k: int, temperature: float, layer: int, vector, beta: float,
                   max_thought_tokens: int, gen: torch.Generator) -> list[AgentStep]:
    site = f"resid_post.{layer}"
    actions = action_tokens(model, (" A", " B"))
    forced = model.tokenizer("\nAction:", add_special_tokens=False)["input_ids"]
    newline = model.tokenizer("\n", add_special_tokens=False)["input_ids"][-1]
    edits = [Add(site, vector, coeff=beta)] if vector is not None and beta != 0 else []
    out, past = model.run_cached(tokens, edits, read=[site])
    acts = out.acts[site][:, -1].float().cpu()
    past.batch_repeat_interleave(k)
    logits = out.logits[:, -1].float().repeat_interleave(k, dim=0)
    n = tokens.shape[0] * k
    queue: list[list[int] | None] = [None] * n  # None while thinking; then the forced tokens still to feed
    thought_ids: list[list[int]] = [[] for _ in range(n)]
    probs: list[torch.Tensor | None] = [None] * n
    while any(p is None for p in probs):
        check_finite(logits, "the thought's next-token logits")
        nxt = torch.multinomial((logits / temperature).softmax(-1).cpu(), 1, generator=gen)[:, 0]
        feed, reading = [], []
        for r in range(n):
            if probs[r] is not None:  # finished: feed anything, its output is ignored
                feed.append(newline)
                continue
            token = int(nxt[r])
            if queue[r] is None and ("\n" in model.tokenizer.decode([token]) or len(thought_ids[r]) >= max_thought_tokens):
                queue[r] = list(forced)  # the thought is over; "\nAction:" replaces its newline
            if queue[r] is None:
                thought_ids[r].append(token)
                feed.append(token)
                continue
            feed.append(queue[r].pop(0))
            if not queue[r]:
                reading.append(r)  # the output of this step is the action distribution
        out, past = model.run_cached(torch.tensor(feed, device=model.device)[:, None], edits, past=past)
        logits = out.logits[:, -1].float()
        for r in reading:
            probs[r] = action_probs(logits[r:r + 1], actions, temperature)[0].cpu()
    result = []
    for i in range(tokens.shape[0]):
        mine = torch.stack(probs[i * k:(i + 1) * k])
        sampled = [int(torch.multinomial(p, 1, generator=gen)) for p in mine]
        mine_ids = thought_ids[i * k:(i + 1) * k]
        result.append(AgentStep(mine.mean(0), sampled, [model.tokenizer.decode(t).strip() for t in mine_ids], mine_ids, acts[i]))
    return result


@dataclass
class AgentRollout(Rollout):
    """A `Rollout` of the thinking agent, plus the plug-in entropy of the sampled actions and the thoughts."""

    sampled_entropy: torch.Tensor = None  # [episodes, steps]
    thoughts: list = None  # [episodes][steps][k] strings


def agent_rollout(model: Model, episodes: int = 4, steps: int = 8, layer: int | None = None, vector: torch.Tensor | None = None,
                  beta: float = 0.0, temperature: float = 1.0, k: int = 8, p: tuple[float, float] = (0.3, 0.7),
                  max_thought_tokens: int = 20, seed: int = 0) -> AgentRollout:
    """Play ``episodes`` games of ``steps`` rounds with the thinking agent; the action taken is drawn from pi."""
    if episodes < 1 or steps < 1:
        raise InterpError(f"episodes and steps must be at least 1; got {episodes} and {steps}")
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    envs = [ThinkingBandit(p=p) for _ in range(episodes)]
    fields = {name: [[] for _ in range(episodes)] for name in ("entropy", "actions", "rewards", "acts", "sampled_entropy", "thoughts")}
    for _ in range(steps):  # all episodes advance together, one batch per round
        taken = agent_steps(model, [env.prompt() for env in envs], k, temperature, layer, vector, beta, max_thought_tokens, gen)
        for e, (env, step) in enumerate(zip(envs, taken)):
            action = int(rng.random() >= float(step.probs[0]))
            counts = torch.bincount(torch.tensor(step.sampled), minlength=2).float()
            fields["entropy"][e].append(float(entropy(step.probs[None])[0]))
            fields["sampled_entropy"][e].append(float(entropy((counts / counts.sum())[None])[0]))
            fields["actions"][e].append(action)
            fields["rewards"][e].append(env.step(action, rng))
            fields["acts"][e].append(step.act)
            fields["thoughts"][e].append(step.thoughts)
    return AgentRollout(torch.tensor(fields["entropy"]), torch.tensor(fields["actions"]), torch.tensor(fields["rewards"]),
                        torch.stack([torch.stack(acts) for acts in fields["acts"]]),
                        torch.tensor(fields["sampled_entropy"]), fields["thoughts"])


AGENTS = ("thought", "token")


@dataclass
class EntropySweep:
    """Rollouts for each beta (steered, temperature 1) and each temperature (unsteered), same seeds throughout.

    ``complete`` is False when the sweep was interrupted; the settings finished so far are kept.
    """

    betas: list[float]
    beta_rollouts: list[Rollout]
    temperatures: list[float]
    temperature_rollouts: list[Rollout]
    complete: bool = True

    @property
    def beta_entropy(self) -> torch.Tensor:
        """Mean action entropy per step [finished betas, steps], over episodes."""
        return torch.stack([r.entropy.mean(0) for r in self.beta_rollouts])

    @property
    def temperature_entropy(self) -> torch.Tensor:
        """Mean action entropy per step [finished temperatures, steps], over episodes."""
        return torch.stack([r.entropy.mean(0) for r in self.temperature_rollouts])


def play(model: Model, agent: str = "thought", **options) -> Rollout:
    """Roll out the thinking agent (`agent_rollout`) or the one-token agent (`interp.steering.east.rollout`)."""
    if agent not in AGENTS:
        raise InterpError(f"unknown agent {agent!r}: use 'thought' (writes a thought, then acts) or 'token' (acts at once)")
    if agent == "thought":
        return agent_rollout(model, **options)
    from interp.steering.east import rollout

    for name in ("k", "max_thought_tokens"):
        options.pop(name, None)
    return rollout(model, **options)


def setting_key(kind: str, value: float) -> str:
    """The name of one sweep setting, ``beta=2.0`` or ``temperature=1.0`` (checkpoint keys)."""
    return f"{kind}={float(value)!r}"


def sweep_settings(betas: list[float], temperatures: list[float], layer: int, vector: torch.Tensor) -> list[tuple[str, str, dict]]:
    """Each beta, then each temperature, as (``beta`` or ``temperature``, its `setting_key`, `play` options).

    Beta 0 at temperature 1 is the unsteered run at temperature 1: temperature 1 (and a repeated beta 0)
    then names beta 0's key, so that setting is played once.
    """
    out, unsteered = [], {}
    for beta in betas:
        key = unsteered[1.0] if beta == 0 and 1.0 in unsteered else setting_key("beta", beta)
        if beta == 0:
            unsteered[1.0] = key
        out.append(("beta", key, {"layer": layer, "vector": vector, "beta": beta, "temperature": 1.0}))
    for temperature in temperatures:
        key = unsteered.setdefault(temperature, setting_key("temperature", temperature))
        out.append(("temperature", key, {"layer": layer, "temperature": temperature}))
    return out


def play_setting(model: Model, agent: str, key: str, options: dict) -> Rollout:
    """`play` one sweep setting; an `InterpError` names the setting (``beta 2.0: ...``)."""
    try:
        return play(model, agent, **options)
    except InterpError as exc:
        raise InterpError(f"{key.replace('=', ' ')}: {exc}") from None


def entropy_sweep(model: Model, vector: torch.Tensor, layer: int, betas: list[float], temperatures: list[float],
                  agent: str = "thought", progress: Callable[[], None] | None = None,
                  done: dict[str, Rollout] | None = None, on_setting: Callable[[str, Rollout], None] | None = None,
                  workers: RayWorkers | None = None, **options) -> EntropySweep:
    """Steer with each beta (at temperature 1) and, unsteered, sample at each temperature.

    Ctrl-C ends the sweep early and returns the settings finished so far (``complete=False``).
    ``done`` holds rollouts of settings finished earlier (keys from `setting_key`), which are not
    played again; ``on_setting(key, rollout)`` is called after each newly played setting (to checkpoint it).
    Every setting starts from the same seed, so a resumed sweep equals an uninterrupted one.

    ``workers`` (`interp.ray_workers.RayWorkers`): the settings still to play are played on Ray workers, one
    setting per shard (a setting's rounds and episodes share one random stream, so a setting is the smallest
    independent unit); ``on_setting`` and ``progress`` follow them as they finish, and the rollouts equal the
    local ones.
    """
    for name, values in (("beta", betas), ("temperature", temperatures)):
        for value in values:
            if not math.isfinite(value):
                raise InterpError(f"every {name} must be a finite number, got {value}")
    if any(t <= 0 for t in temperatures):
        raise InterpError(f"temperatures must be positive, got {list(temperatures)}")
    check_finite(vector, "the steering vector")
    sweep = EntropySweep(list(betas), [], list(temperatures), [])
    done = dict(done or {})
    settings = sweep_settings(list(betas), list(temperatures), layer, vector)

    def advance() -> None:  # the settings in order, as far as they are finished
        for kind, key, _ in settings[len(sweep.beta_rollouts) + len(sweep.temperature_rollouts):]:
            if key not in done:
                return
            (sweep.beta_rollouts if kind == "beta" else sweep.temperature_rollouts).append(done[key])
            if progress:
                progress()

    def finish(key: str, rollout: Rollout) -> None:
        done[key] = rollout
        if on_setting:
            on_setting(key, rollout)
        advance()

    todo = {key: opts for _, key, opts in settings if key not in done}  # each key once, in order
    try:
        advance()
        if workers is not None:
            from interp.steering.ray_steering import ray_play_settings

            ray_play_settings(workers, agent, todo, options, finish)
        else:
            for key, opts in todo.items():
                finish(key, play_setting(model, agent, key, {**opts, **options}))
    except KeyboardInterrupt:
        sweep.complete = False
    sweep.betas, sweep.temperatures = sweep.betas[:len(sweep.beta_rollouts)], sweep.temperatures[:len(sweep.temperature_rollouts)]
    return sweep
