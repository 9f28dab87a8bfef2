"""Retrieval heads, relation neurons, path-patching edges and edge-circuit faithfulness sharded over Ray workers (`interp.ray_workers`).

Each command hands its remaining units to `RayWorkers.run` and keeps doing with every finished shard what its
local run does with a finished unit: `interp.circuits.units.Units` records it (and checkpoints it in ``--out``),
the progress callback advances. So Ctrl-C keeps the finished shards, and ``--resume`` with or without Ray
completes the run. The shard functions below run exactly the local code on their shard:

- retrieval detection (`ray_detect`): `interp.circuits.retrieval.detect_batch` on part of a local decode batch.
  A row of a batch decode sees exactly what a lone decode of its prompt sees (the module's batching contract,
  tested against one-prompt-at-a-time decoding), so a local batch split across workers gives the same tokens,
  texts and copy events; a batch is split only as far as it takes to give every worker work.
- retrieval masking (`ray_masking`): one shard per (setting, local batch), decoded by
  `interp.circuits.retrieval.masking_job`; each worker keeps one batch's prefill caches across its shards.
- relation neurons (`ray_neuron_units`): the test filter and the expertise pass run side by side, then the
  baseline and every relation's (and sweep k's) deactivation row (`interp.circuits.neurons.deactivation_row`);
  the local functions then find every unit done and assemble the same result.
- path-patching edges (`ray_edges`): receivers in shards, each a `interp.circuits.path_patching.receiver_edges`.
- edge-circuit faithfulness (`ray_faithfulness`): the circuits of a curve in shards, each measured by
  `interp.circuits.edge_circuit.patched_metric` (the full model and the empty circuit stay with the driver).

Every unit is computed by the same code on the same inputs as locally, so the results equal the local run's
(``torch.equal``) for any number of workers.
"""

from __future__ import annotations

from typing import Callable, Sequence

from interp.circuits.neurons import (accuracy_by_relation, correct_mask, deactivation_row, expertise_unit,
                                     relation_splits)
from interp.circuits.path_patching import receiver_edges
from interp.circuits.retrieval import detect_batch, masking_job
from interp.circuits.units import Units
from interp.model import Model
from interp.ray_workers import RayWorkers, split_even



# ------------------------------------------------------------------ retrieval heads
def detect_shard(model: Model, shared: dict, todo: list[int], cache: dict) -> list:
    """A worker's part of detection: the `Decoded` of the equal-length prompts ``todo``, decoded as one batch."""
    return detect_batch(model, shared["prompts"], todo, shared["max_new_tokens"])


def mask_shard(model: Model, shared: dict, job: tuple, cache: dict) -> list:
    """A worker's masking job ``(batch, setting, heads, prompts)``; the batch's prefill caches stay in ``cache``."""
    return masking_job(model, shared["prompts"], job, shared["max_new_tokens"], cache.setdefault("pasts", {}))


def ray_detect(workers: RayWorkers, prompts: Sequence, batches: list[list[int]], max_new_tokens: int,
               record: Callable[[list[int], list], None]) -> None:
    """Decode the detection ``batches`` (prompt indices) on ``workers``; ``record(todo, decoded)`` per finished shard."""
    parts = max(1, -(-len(workers.actors) // max(1, len(batches))))  # enough parts that every worker has a shard
    shards = [part for batch in batches for part in split_even(batch, parts)]
    workers.run(detect_shard, {"prompts": list(prompts), "max_new_tokens": max_new_tokens}, shards,
                lambda i, outs: record(shards[i], outs))


def ray_masking(workers: RayWorkers, prompts: Sequence, jobs: list[tuple], max_new_tokens: int,
                record: Callable[[str, list[int], list], None]) -> None:
    """Decode the masking ``jobs`` on ``workers``; ``record(setting, todo, decoded)`` per finished job."""
    workers.run(mask_shard, {"prompts": list(prompts), "max_new_tokens": max_new_tokens}, jobs,
                lambda i, outs: record(jobs[i][1], jobs[i][3], outs))


# ------------------------------------------------------------------ relation neurons
def neuron_shard(model: Model, shared: dict, unit: tuple, cache: dict) -> dict:
    """One unit of ``neurons relation``: ``("filter",)``, ``("expertise",)``, ``("baseline",)`` or
    ``("row", relation index, k, seed, random control)``."""
    backend = shared["backend"]
    if unit[0] == "filter":
        return {"hits": correct_mask(model, shared["test"], backend=backend)}
    if unit[0] == "expertise":
        return expertise_unit(model, shared["identification"], shared["relations"], shared["kind"], backend)
    if unit[0] == "baseline":
        return {"acc": accuracy_by_relation(model, shared["test"], shared["relations"], backend=backend)}
    _, i, k, seed, random_control = unit
    return deactivation_row(model, shared["ap"][i], shared["kind"], shared["test"], shared["relations"], k, seed,
                            random_control, backend)


def _run_units(workers: RayWorkers, shared: dict, todo: dict[str, tuple], units: Units, progress, phases: dict) -> None:
    """Compute the units ``todo`` (name -> shard) on ``workers`` into ``units``, checkpointing each; ``phases`` maps a
    name prefix to the progress phase it advances."""
    names = list(todo)
    count = {phase: [sum(n in units for n in members), len(members)] for phase, members in phases.items()}
    for phase, (done, total) in count.items():
        if progress and total:
            progress(phase, done, total)

    def on_result(index: int, result: dict) -> None:
        units.put(names[index], result)
        for phase, members in phases.items():
            if names[index] in members:
                count[phase][0] += 1
                if progress:
                    progress(phase, *count[phase])

    workers.run(neuron_shard, shared, [todo[n] for n in names], on_result)


def ray_neuron_units(workers: RayWorkers, model: Model, relations: Sequence[str] | None, n_identification: int,
                     seed: int, keep_correct: bool, backend: str | None, k: int, sweep: str | None, ks: Sequence[int],
                     units: Units, progress=None, kind: str = "mlp_act") -> None:
    """Every unit of a ``neurons relation`` run not yet in ``units``, computed on ``workers`` (see the module doc)."""
    from interp.circuits.neurons import neuron_expertise, relation_prompt_sets

    rels, ident, test, _ = relation_splits(relations, n_identification, seed)
    names = [r.name for r in rels]
    first = {name: shard for name, shard in (("filter", ("filter",)), (f"expertise.{kind}", ("expertise",)))
             if name not in units and (keep_correct or name != "filter")}
    shared = {"backend": backend, "test": test, "identification": ident, "relations": names, "kind": kind}
    _run_units(workers, shared, first, units, progress, {"test prompts": ["filter"] if keep_correct else [],
                                                        "expertise": [f"expertise.{kind}"]})
    sets = relation_prompt_sets(model, relations, n_identification, seed, keep_correct, backend, units)  # no pass now
    expertise = neuron_expertise(model, sets, kind, backend, units)
    rows = {f"zero.{r}": ("row", i, k, seed + i, True) for i, r in enumerate(names)}
    swept = {f"sweep.{sweep}.{j}": ("row", names.index(sweep), x, seed + j, True) for j, x in enumerate(ks)} if sweep else {}
    todo = {name: shard for name, shard in {"baseline": ("baseline",), **rows, **swept}.items() if name not in units}
    _run_units(workers, shared | {"test": sets.test, "ap": expertise.ap}, todo, units, progress,
               {"zeroing": list(rows), "sweep": list(swept)})


# ------------------------------------------------------------------ path-patching edges
def edges_shard(model: Model, shared: dict, receivers: list, cache: dict) -> list[list[tuple[str, str, float]]]:
    """A worker's receivers: the edges into each, from `receiver_edges`."""
    return [receiver_edges(model, shared["heads"], shared["prompts"], r, shared["metric"], shared["backend"])
            for r in receivers]


def ray_edges(workers: RayWorkers, heads: list, prompts, receivers: list, metric, backend: str | None,
              record: Callable[[int, list], None]) -> None:
    """The edges into every one of ``receivers`` on ``workers``; ``record(receiver index, edges)`` as each arrives."""
    shards = workers.shards(list(range(len(receivers))))

    def on_result(index: int, result: list) -> None:
        for r, edges in zip(shards[index], result):
            record(r, edges)

    workers.run(edges_shard, {"heads": heads, "prompts": prompts, "metric": metric, "backend": backend},
                [[receivers[r] for r in shard] for shard in shards], on_result)


# ------------------------------------------------------------------ edge-circuit faithfulness
def faithfulness_shard(model: Model, shared: dict, indices: list[int], cache: dict):
    """A worker's edge sets: the metric with each patched (`interp.circuits.edge_circuit.patched_metric`)."""
    from interp.circuits.edge_circuit import patched_metric
    from interp.circuits.edge_graph import edge_graph

    return patched_metric(model, edge_graph(model), shared["clean"], shared["corrupt"], shared["masks"][indices],
                          shared["metric"], shared["ctx"], shared["ablation"], shared["max_memory"], shared["backend"])


def ray_faithfulness(workers: RayWorkers, clean, corrupt, masks, metric: str, ctx, ablation: str,
                     max_memory: int | None, backend: str | None, progress=None):
    """`patched_metric` of every set of ``masks`` [k, S, R] on ``workers``: ``[k, n_prompts]``."""
    import torch

    shards = workers.shards(list(range(len(masks))))
    values: dict[int, torch.Tensor] = {}

    def on_result(index: int, result) -> None:
        for i, row in zip(shards[index], result):
            values[i] = row
        if progress is not None:
            progress("faithfulness", len(values), len(masks))

    shared = {"clean": clean, "corrupt": corrupt, "masks": masks, "metric": metric, "ctx": ctx, "ablation": ablation,
              "max_memory": max_memory, "backend": backend}
    workers.run(faithfulness_shard, shared, shards, on_result)
    return torch.stack([values[i] for i in range(len(masks))])
