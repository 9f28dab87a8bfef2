"""The coefficient sweep (``steer eval``) and EAST's settings (``steer east``) sharded over Ray workers.

Both use `interp.ray_workers.RayWorkers`: actors that load the model once and take shards of the work, with
the results streamed back to the driver, which writes them into the state a local run checkpoints.

- Coefficient sweep (`interp.steering.sweep.coefficient_sweep` with ``workers=``): the unit a local run
  checkpoints is a group of equal-length prompts, batched by the driver's memory budget
  (`interp.steering.limits.budget_groups`). The driver makes those very batches and sends them, tokens
  included, to the workers, which run `SweepPlan.group` on each: the same forwards on the same rows as the
  local run, so the numbers are equal (``torch.equal``) for any number of workers, without relying on a
  prompt's numbers being independent of its batch-mates (in float arithmetic they need not be).
- EAST (`interp.steering.east_agent.entropy_sweep` with ``workers=``): the units are the vector, then one
  rollout per setting (each beta, each temperature). The vector's rollout is sequential by nature (each
  round's prompt holds the previous rounds' actions, and every episode draws from one random stream), so the
  driver collects it as a local run does; the settings each start from the same seed and do not depend on
  one another, so each is a shard, played by `interp.steering.east_agent.play_setting` on a worker.

A shard whose worker dies is played again on another; Ctrl-C keeps the finished shards in the checkpoint, and
``--resume``, with or without Ray, completes the run.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from interp.steering.east import Rollout
from interp.steering.east_agent import play_setting
from interp.steering.sweep import SweepPlan

from interp.model import Model
from interp.ray_workers import RayWorkers


def sweep_shard(model: Model, plan: SweepPlan, groups: list[tuple[list[int], torch.Tensor]],
                cache: dict) -> list[tuple[list[int], dict[str, torch.Tensor]]]:
    """A worker's part of a coefficient sweep: the metrics of each group of equal-length prompts in ``groups``."""
    return [(rows, plan.group(model, rows, tokens)) for rows, tokens in groups]


def ray_sweep_groups(workers: RayWorkers, plan: SweepPlan, groups: list[tuple[list[int], torch.Tensor]],
                     on_shard: Callable[[list[tuple[list[int], dict[str, torch.Tensor]]]], None]) -> None:
    """Measure ``groups`` (rows, tokens) on ``workers``; ``on_shard`` gets each shard's (rows, metrics) as it finishes."""
    shards = workers.shards(groups)
    workers.run(sweep_shard, plan, shards, lambda index, result: on_shard(result))


def setting_shard(model: Model, shared: dict, setting: tuple[str, dict], cache: dict) -> Rollout:
    """A worker's part of EAST's sweep: the rollout of one setting."""
    key, options = setting
    return play_setting(model, shared["agent"], key, {**options, **shared["options"]})


def ray_play_settings(workers: RayWorkers, agent: str, settings: dict[str, dict], options: dict,
                      on_setting: Callable[[str, Rollout], None]) -> None:
    """Play each setting (key -> `play` options) on ``workers``; ``on_setting(key, rollout)`` as each finishes."""
    shards = list(settings.items())
    workers.run(setting_shard, {"agent": agent, "options": options}, shards,
                lambda index, rollout: on_setting(shards[index][0], rollout))
