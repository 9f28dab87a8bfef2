"""The ``interp steer east`` run: collect rollouts, build the EAST vector, sweep beta against temperature.

1. Roll out ``episodes`` unsteered games (temperature 1, seed ``seed``) and build
   u = sum_t H_t (a_t - mean a) / sum_t H_t from the residual at the last prompt token
   (`interp.steering.east.east_vector`), or load u from ``vector_file``.
2. Play fresh games (seed ``seed + 1``) with beta * u added at every position, for each beta, and
   unsteered at each temperature.
3. Write the run folder: ``east/beta``, ``east/entropy`` (mean action entropy in bits per beta),
   ``east/temperature``, ``east/temperature_entropy``, per-step and per-episode grids, rewards, and ``vectors``
   (the EAST vector as a `VectorSet`).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import torch

from interp.errors import InterpError
from interp.metrics import check_finite
from interp.model import Model
from interp.outdir import Checkpoint
from interp.results import RunResult, describe_tensor, run_header
from interp.steering.east import Bandit, Rollout, east_vector
from interp.steering.east_agent import AGENTS, AgentRollout, ThinkingBandit, entropy_sweep, play, setting_key
from interp.limits import check_context, check_memory
from interp.steering.limits import kv_cache_bytes
from interp.steering.vectors import VectorSet, load_vector_set

if TYPE_CHECKING:
    from interp.ray_workers import RayWorkers

UNIT = "units (the EAST vector, then one per setting)"
MAX_THOUGHT_TOKENS = 20  # the thinking agent's default (`interp.steering.east_agent.agent_rollout`)


def _vector(model: Model, layer: int, vector_file: str | None, center: bool, rollout_options: dict, agent: str) -> tuple[VectorSet, dict]:
    if vector_file:
        return load_vector_set(model, vector_file, [layer]), {"vector_file": str(vector_file)}
    collected = play(model, agent, layer=layer, **rollout_options)
    u = east_vector(collected.acts.flatten(0, 1), collected.entropy.flatten(), center=center)
    check_finite(u, "the EAST vector")
    meta = {"agent": agent, "center": center, "collection_entropy": round(float(collected.entropy.mean()), 4),
            "collection_steps": int(collected.entropy.numel())}
    return VectorSet(model.name, "resid_post", [layer], u[None], "EAST", -1, meta), meta


def check_east_size(model: Model, agent: str, episodes: int, steps: int, k: int) -> None:
    """Refuse, before any work, games whose last prompt outgrows the model's context or whose batch outgrows memory."""
    env = ThinkingBandit() if agent == "thought" else Bandit()
    extra = MAX_THOUGHT_TOKENS + 4 if agent == "thought" else 0  # a thought, then "\nAction:"

    def prompt_tokens(rounds: int) -> int:
        env.history = [(1, 1)] * rounds  # the longest history line, repeated
        return len(model.tokenizer(env.prompt())["input_ids"])

    if steps <= 2048:
        length = prompt_tokens(steps - 1) + extra  # the last round's prompt, exactly
    else:  # too long to tokenize cheaply: each history line adds the same tokens
        length = prompt_tokens(1) + (steps - 2) * (prompt_tokens(2) - prompt_tokens(1)) + extra
    check_context(model, length, f"the prompt of round {steps} (--steps {steps})", "lower --steps")
    rows = episodes * k if agent == "thought" else 1
    check_memory(kv_cache_bytes(model, rows, length), f"--episodes {episodes} x --k {k} games of {steps} rounds at once",
                 model.device, "lower --episodes, --k or --steps")


def _rollout_tensors(key: str, rollout: Rollout) -> dict[str, torch.Tensor]:
    tensors = {f"{key}/entropy": rollout.entropy, f"{key}/actions": rollout.actions, f"{key}/rewards": rollout.rewards}
    if isinstance(rollout, AgentRollout):
        tensors[f"{key}/sampled_entropy"] = rollout.sampled_entropy
    return tensors


def _restore(key: str, tensors: dict[str, torch.Tensor], thoughts: dict) -> Rollout:
    parts = (tensors[f"{key}/entropy"], tensors[f"{key}/actions"], tensors[f"{key}/rewards"], torch.empty(0))
    if f"{key}/sampled_entropy" in tensors:  # the first episode's thoughts are all the report shows
        return AgentRollout(*parts, sampled_entropy=tensors[f"{key}/sampled_entropy"], thoughts=[thoughts.get(key, [])])
    return Rollout(*parts)


def east_run(model: Model, layer: int | None = None, agent: str = "thought", betas: list[float] = (0.0, 2.0, 4.0, 8.0),
             temperatures: list[float] = (1.0, 2.0, 4.0), episodes: int = 4, steps: int = 8, k: int = 8,
             center: bool = True, vector_file: str | None = None, seed: int = 0, out: str | Path | None = None,
             command: str = "steer east", progress: Callable[[], None] | None = None, resume: bool = False,
             workers: RayWorkers | None = None) -> RunResult:
    """Build (or load) the EAST vector at ``resid_post.{layer}`` and compare steering with temperature.

    With ``out``, the vector and every finished setting are checkpointed there as they finish; an
    interrupted sweep then raises KeyboardInterrupt (its settings kept), and ``resume=True`` completes it
    with identical results. Without ``out``, Ctrl-C returns the settings finished so far (status interrupted).
    ``workers`` (`interp.ray_workers.RayWorkers`): the settings are played on Ray workers, one per shard
    (`interp.steering.ray_steering`; the vector's rollout is sequential and stays here), with the same results.
    """
    if agent not in AGENTS:
        raise InterpError(f"unknown agent {agent!r}: use 'thought' or 'token'")
    if not betas or not temperatures:
        raise InterpError("give at least one beta and one temperature")
    if episodes < 1 or steps < 1 or k < 1:
        raise InterpError(f"episodes, steps and k must be at least 1; got {episodes}, {steps} and {k}")
    layer = model.n_layers // 2 if layer is None else model.site(f"resid_post.{layer}").layer
    check_east_size(model, agent, episodes, steps, k)
    t0 = time.perf_counter()
    options = {"episodes": episodes, "steps": steps, "k": k}
    run_id = {"command": "steer east", "model": model.name, "layer": layer, "agent": agent,
              "betas": [float(b) for b in betas], "temperatures": [float(t) for t in temperatures], **options,
              "center": center, "vector_file": str(vector_file) if vector_file else None, "seed": seed}
    checkpoint = Checkpoint(Path(out), run_id) if out is not None else None
    saved = checkpoint.load() if checkpoint is not None and resume else None
    tensors, info = saved if saved else ({}, {})
    thoughts: dict = dict(info.get("thoughts", {}))
    played = {setting_key("beta", b) for b in betas}
    played |= {setting_key("temperature", t) for t in temperatures if not (float(t) == 1.0 and 0 in betas)}
    units = 1 + len(played)  # the vector, then each setting played (beta 0 is temperature 1)
    if "vector" in tensors:
        vector_meta = dict(info["vector_meta"])
        vectors = VectorSet(model.name, "resid_post", [layer], tensors["vector"][None], "EAST", -1, vector_meta)
    else:
        vectors, vector_meta = _vector(model, layer, vector_file, center, {**options, "seed": seed}, agent)
        tensors["vector"] = vectors.vectors[0].contiguous()
        if checkpoint is not None:
            checkpoint.save(tensors, 1, units, unit=UNIT, vector_meta=vector_meta, thoughts=thoughts)
    if progress:
        progress()
    t_vector = time.perf_counter() - t0
    settings = {key.rsplit("/", 1)[0] for key in tensors if key != "vector"}
    done = {key: _restore(key, tensors, thoughts) for key in settings}

    def keep(key: str, rollout: Rollout) -> None:
        tensors.update(_rollout_tensors(key, rollout))
        if isinstance(rollout, AgentRollout):
            thoughts[key] = rollout.thoughts[0]
        if checkpoint is not None:
            checkpoint.save(tensors, 1 + len({k.rsplit("/", 1)[0] for k in tensors if k != "vector"}), units, unit=UNIT,
                            vector_meta=vector_meta, thoughts=thoughts)

    sweep = entropy_sweep(model, vectors.vector(layer), layer, list(betas), list(temperatures), agent, progress,
                          done=done, on_setting=keep, workers=workers, **options, seed=seed + 1)
    if not sweep.complete and checkpoint is not None:
        raise KeyboardInterrupt  # the finished settings are in the checkpoint; --resume completes the sweep
    if not sweep.beta_rollouts:
        raise InterpError("interrupted before the first steered setting finished; nothing to save")
    scores = {"east/beta": torch.tensor(sweep.betas), "east/entropy": sweep.beta_entropy.mean(1),
              "east/entropy_per_step": sweep.beta_entropy,
              "east/entropy_per_episode": torch.stack([r.entropy.mean(1) for r in sweep.beta_rollouts]),
              "east/reward": torch.stack([r.rewards.float().mean() for r in sweep.beta_rollouts]),
              "east/vector": vectors.vectors[0]}
    if sweep.temperature_rollouts:
        scores |= {"east/temperature": torch.tensor(sweep.temperatures), "east/temperature_entropy": sweep.temperature_entropy.mean(1),
                   "east/temperature_entropy_per_step": sweep.temperature_entropy,
                   "east/temperature_reward": torch.stack([r.rewards.float().mean() for r in sweep.temperature_rollouts])}
    if agent == "thought":
        scores["east/sampled_entropy"] = torch.stack([r.sampled_entropy.mean() for r in sweep.beta_rollouts])
    axes = {"east/beta": ["beta"], "east/entropy": ["beta"], "east/entropy_per_step": ["beta", "step"],
            "east/entropy_per_episode": ["beta", "episode"], "east/reward": ["beta"],
            "east/vector": ["d"], "east/temperature": ["temperature"], "east/temperature_entropy": ["temperature"],
            "east/temperature_entropy_per_step": ["temperature", "step"], "east/temperature_reward": ["temperature"],
            "east/sampled_entropy": ["beta"]}
    labels = {"beta": [f"{b:g}" for b in sweep.betas], "temperature": [f"{t:g}" for t in sweep.temperatures]}
    tensors = {name: describe_tensor(name, value, axes[name], {a: labels[a] for a in axes[name] if a in labels})
               for name, value in scores.items()}
    tensors["east/vector"]["plot"] = False
    lines = [{"title": "Action entropy against beta (EAST, temperature 1)", "x": "east/beta",
              "ys": ["east/entropy", "east/sampled_entropy"], "x_title": "beta", "y_title": "action entropy (bits)"}]
    if sweep.temperature_rollouts:
        lines.append({"title": "Action entropy against temperature (unsteered)", "x": "east/temperature",
                      "ys": ["east/temperature_entropy"], "x_title": "temperature", "y_title": "action entropy (bits)"})
    summary = [f"beta {b:g}: entropy {float(e):.3f} bits" for b, e in zip(sweep.betas, scores["east/entropy"])]
    summary += [f"temperature {t:g}: entropy {float(e):.3f} bits" for t, e in zip(sweep.temperatures, scores.get("east/temperature_entropy", []))]
    notes = [{"title": "EAST against temperature", "text": "\n".join(summary)}]
    if agent == "thought":
        last = sweep.beta_rollouts[-1]
        notes.append({"title": f"Thoughts at beta {sweep.betas[-1]:g} (episode 1, rounds 1-3, first sample each)",
                      "text": "\n".join(last.thoughts[0][t][0] for t in range(min(3, len(last.thoughts[0]))))})
    manifest = {
        **run_header(model, command, seed), "status": "complete" if sweep.complete else "interrupted",
        "metric": "action entropy (bits)", "site": f"resid_post.{layer}", "method": "EAST",
        "parameters": {"agent": agent, "layer": layer, "betas": list(betas), "temperatures": list(temperatures),
                       "episodes": episodes, "steps": steps, "k": k, "center": center},
        "vector": vector_meta, "notes": notes, "lines": lines, "tensors": tensors,
        "timings": {"vector_s": round(t_vector, 3), "run_s": round(time.perf_counter() - t0, 3)},
    }
    if workers is not None:
        manifest["ray"] = workers.info()
    for name in ("east/entropy", "east/reward", "east/temperature_entropy", "east/sampled_entropy"):
        if name in scores:
            check_finite(scores[name], name)
    result = RunResult(manifest=manifest, scores=scores)
    if out is not None:
        result.save(out)
        vectors.save(Path(out) / "vectors")
        if checkpoint is not None:
            checkpoint.clear()
    return result
