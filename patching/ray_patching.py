"""Activation patching and integrated gradients sharded over Ray workers (`interp.ray_workers`).

The driver (`interp.patching.run.activation_patching` with ``workers=``) runs the baselines itself, then hands
out the cells still to do (activation patching) or the sites still to pass (IG) in shards. Each worker runs
exactly the code a local run runs on its shard (`sweep` with every other cell marked done; `path_gradient`),
with its own batched engine built once per run (for every component and IG alike), and the driver writes each finished shard into the same
values, done masks and IG gradients a local run checkpoints. A cell's value does not depend on which other
cells share its forward, so the grid equals the local run's (``torch.equal``) for any number of workers.
"""

from __future__ import annotations

from typing import Callable

import torch

from interp.metrics import MetricContext, get_metric
from interp.model import Model
from interp.ray_workers import RayWorkers
from interp.patching.activation import BatchedEngine, grid_shape, memory_budget, patches, sweep
from interp.patching.integrated_gradients import path_gradient

def _engine(model: Model, shared: dict, cache: dict) -> BatchedEngine | None:
    if shared["engine"] != "batched":
        return None
    if "engine" not in cache:
        cache["engine"] = BatchedEngine(model, shared["base"], max_memory=shared["max_memory"])
    return cache["engine"]


def sweep_shard(model: Model, shared: dict, shard: tuple[str, list[tuple[int, ...]]], cache: dict) -> torch.Tensor:
    """A worker's part of a sweep: the values ``[n_prompts, len(cells)]`` of ``cells`` of ``component``."""
    component, cells = shard
    base = shared["base"]
    shape = grid_shape(model, component, base.shape[1], shared["layers"][component])
    done = torch.ones(shape, dtype=torch.bool)
    for cell in cells:
        done[cell] = False
    values, _ = sweep(model, component, base, shared["source_acts"], get_metric(shared["metric"]), shared["ctx"],
                      layers=shared["layers"][component], engine=shared["engine"], done=done,
                      batched=_engine(model, shared, cache))
    return torch.stack([values[(slice(None), *cell)] for cell in cells], dim=1)


def ig_shard(model: Model, shared: dict, sites: list[tuple[str, int]], cache: dict) -> dict[str, torch.Tensor]:
    """A worker's part of IG: the mean path gradient of each site in ``sites``."""
    runner = _engine(model, shared, cache)
    budget = runner.budget if runner is not None else memory_budget(model, shared["max_memory"])
    return {f"{kind}.{layer}": path_gradient(model, kind, layer, shared["base"], shared["source_acts"],
                                             shared["base_acts"], get_metric(shared["metric"]), shared["ctx"],
                                             shared["steps"], runner, budget)
            for kind, layer in sites}


def shared_state(base: torch.Tensor, source_acts: dict, metric: str, ctx: MetricContext, layers: dict, engine: str,
                 max_memory: int | None, base_acts: dict | None = None, steps: int = 0) -> dict:
    """What every shard of a run needs (put into Ray's object store once per run with `RayWorkers.put`)."""
    return {"base": base, "source_acts": source_acts, "base_acts": base_acts or {}, "metric": metric, "ctx": ctx,
            "layers": layers, "engine": engine, "max_memory": max_memory, "steps": steps}


def ray_sweep(workers: RayWorkers, model: Model, component: str, shared, n_pos: int, layers: list[int],
              done: torch.Tensor, values: torch.Tensor, on_chunk: Callable[[int], None]) -> None:
    """Fill ``values``/``done`` for every cell of ``component`` (on ``layers``, prompts of ``n_pos`` tokens) not yet
    done, shard by shard over ``workers``; ``shared``: the run's `shared_state`, as `RayWorkers.put` stored it."""
    todo = [p.cell for p in patches(model, component, n_pos, layers) if not done[p.cell]]
    shards = [(component, cells) for cells in workers.shards(todo)]

    def on_result(index: int, result: torch.Tensor) -> None:
        for j, cell in enumerate(shards[index][1]):
            values[(slice(None), *cell)] = result[:, j].float()
            done[cell] = True
        on_chunk(len(shards[index][1]))

    workers.run(sweep_shard, shared, shards, on_result)


def ray_ig_passes(workers: RayWorkers, sites: list[tuple[str, int]], shared, grads: dict[str, torch.Tensor],
                  on_layer: Callable[[str, int], None]) -> None:
    """Compute IG's mean path gradient for every site not yet in ``grads``, shard by shard over ``workers``."""
    todo = [(kind, layer) for kind, layer in sites if f"{kind}.{layer}" not in grads]
    shards = workers.shards(todo)

    def on_result(index: int, result: dict[str, torch.Tensor]) -> None:
        for kind, layer in shards[index]:
            grads[f"{kind}.{layer}"] = result[f"{kind}.{layer}"]
            on_layer(kind, layer)

    workers.run(ig_shard, shared, shards, on_result)
