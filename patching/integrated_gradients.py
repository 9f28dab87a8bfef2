"""Integrated gradients (IG) along the straight path from the base activation to the source one.

For one site at one layer (e.g. ``attn_out.7`` at every position at once), IG averages the
gradient of the metric over ``steps`` points of the path ``base + alpha (source - base)``, with the
site replaced by that point and everything downstream recomputed, then takes the same dot product
as AtP (Sundararajan et al. 2017; as used per layer by Marks et al. 2024):

    IG(cell) = (source - base) . mean_k d metric / d act |_{act = base + alpha_k (source - base)}

with midpoints ``alpha_k = (k + 1/2) / steps``. By completeness the cells of one layer sum to the
effect of patching that whole layer, and as ``steps`` grows IG is exact where one cell's patch
does not interact with the others. It is the expensive reference: one forward and one backward of
``steps x n_prompts`` rows per site and layer. The ``batched`` engine (default) runs each of them
like activation patching's: from the patched layer on, on the base run's cached residual, and only
from the first position where source and base differ (earlier cells have nothing to patch and
score exactly zero); ``hooks`` runs whole forwards through the model's backend. Values come back
as estimated metrics after patching, in `interp.patching.activation.sweep`'s layout.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from interp.backends.steps import plan_steps
from interp.errors import InterpError
from interp.interventions import Replace
from interp.metrics import MetricContext
from interp.model import Model
from interp.sites import Site
from interp.patching.activation import (COMPONENTS, ENGINES, BatchedEngine, check_component, memory_budget,
                                       row_bytes, rows_that_fit)
from interp.patching.attribution import cell_contributions, layers_for


def integrated_gradients(
    model: Model,
    components: Sequence[str],
    base: torch.Tensor,
    source_acts: dict[str, torch.Tensor],
    base_acts: dict[str, torch.Tensor],
    metric: Callable,
    ctx: MetricContext,
    layers: dict[str, list[int]] | list[int] | None = None,
    steps: int = 10,
    engine: str = "batched",
    backend: str | None = None,
    on_layer: Callable[[str, int], None] | None = None,
    grads: dict[str, torch.Tensor] | None = None,
    max_memory: int | None = None,
) -> dict[str, torch.Tensor]:
    """IG estimates ``[n_prompts, *grid]`` of the metric after patching each cell, per component.

    ``base_acts``/``source_acts`` hold the base and source runs' activations at the components'
    sites. Components sharing a site (head_out, head_out_pos) share its passes.
    ``on_layer(site_kind, layer)`` is called after each site's pass. ``grads`` (keyed by site, e.g.
    ``"attn_out.3"``) receives each finished pass's mean path gradient; passes already in it are not run
    again, so a dict saved from an interrupted call resumes it with identical estimates. ``max_memory`` (bytes;
    None: a share of the device's free memory) bounds each forward and backward: the ``steps`` points of a
    pass run in as many batches as it takes, with identical estimates for any budget.
    """
    if steps < 1:
        raise InterpError(f"integrated gradients needs at least 1 step, got {steps}")
    if engine not in ENGINES:
        raise InterpError(f"unknown engine '{engine}': use one of {', '.join(ENGINES)}")
    components = [check_component(c) for c in components]
    layers_of = layers_for(model, components, layers)
    rows: dict[str, list[torch.Tensor]] = {c: [] for c in components}
    passes = dict.fromkeys((COMPONENTS[c][0], layer) for c in components for layer in layers_of[c])  # ordered, unique
    runner = BatchedEngine(model, base, max_memory=max_memory) if engine == "batched" else None
    budget = runner.budget if runner is not None else memory_budget(model, max_memory)
    grads = {} if grads is None else grads
    for kind, layer in passes:
        site = f"{kind}.{layer}"
        if site not in grads:  # else finished before an interrupt
            grads[site] = path_gradient(model, kind, layer, base, source_acts, base_acts, metric, ctx, steps, runner,
                                        budget, backend)
        if on_layer:
            on_layer(kind, layer)
    if runner is not None:
        base_logits = runner.base_logits
    else:
        with torch.no_grad():
            base_logits = model.run(base, backend=backend).logits[:, -1]
    base_metric = metric(base_logits, ctx)
    for comp in components:
        kind = COMPONENTS[comp][0]
        for layer in layers_of[comp]:
            site = f"{kind}.{layer}"
            rows[comp].append(cell_contributions(comp, source_acts[site] - base_acts[site], grads[site]))
    estimates = {}
    for comp in components:
        estimate = torch.stack(rows[comp], dim=1)
        estimates[comp] = estimate + base_metric.reshape(-1, *([1] * (estimate.ndim - 1)))
    return estimates


def path_gradient(model: Model, kind: str, layer: int, base: torch.Tensor, source_acts: dict[str, torch.Tensor],
                  base_acts: dict[str, torch.Tensor], metric: Callable, ctx: MetricContext, steps: int,
                  runner: BatchedEngine | None, budget: int, backend: str | None = None) -> torch.Tensor:
    """One site's pass: the mean gradient of the metric over the ``steps`` points of the path (zeros at
    positions before the first one where source and base differ, which have nothing to patch).

    ``runner`` is the batched engine on ``base`` (None: whole forwards through the backend); ``budget`` bounds
    each forward and backward in bytes.
    """
    n, n_pos = base.shape
    site = f"{kind}.{layer}"
    start, delta = base_acts[site], source_acts[site] - base_acts[site]
    changed = torch.nonzero(delta.ne(0).reshape(n, delta.shape[1], -1).any(-1).any(0))
    grad = torch.zeros_like(start)
    if not len(changed):  # nothing to patch: every cell scores zero
        return grad
    a = int(changed[0]) if runner is not None and runner.reuse_prefix else 0
    alphas = (torch.arange(steps, dtype=torch.float32) + 0.5) / steps
    alpha = alphas.to(start).reshape(-1, *([1] * start.ndim))
    path = (start[:, a:] + alpha * delta[:, a:]).reshape(steps * n, *start[:, a:].shape[1:])
    first = layer if runner is not None else 0
    per_step = n * row_bytes(model, first, a, n_pos, grad=True)
    if runner is None:  # whole forwards: every position's logits
        per_step += n * (n_pos - a) * 4 * model.d_vocab
    k = min(steps, rows_that_fit(budget, per_step, f"one integrated-gradients step of {n} prompts of {n_pos} tokens"))
    parts = []
    for s0 in range(0, steps, k):  # k steps (k * n rows) per forward and backward
        chunk = path[s0 * n : (s0 + k) * n].detach().requires_grad_(True)
        reps = chunk.shape[0] // n
        if runner is not None:
            plan = plan_steps(model.adapter, {Site(kind, layer): [Replace(site, chunk)]}, [], {}, True)
            logits = runner.forward_from(layer, a, reps, plan)
        else:
            logits = model.run(base.repeat(reps, 1), [Replace(site, chunk)], grad=True, backend=backend).logits[:, -1]
        parts.append(torch.autograd.grad(metric(logits, ctx.rows(reps * n)).sum(), [chunk])[0])
    grad[:, a:] = torch.cat(parts).reshape(steps, *start[:, a:].shape).mean(0)
    return grad
