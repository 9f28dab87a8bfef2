"""Attribution patching (AtP) and relevance patching (RelP): every patch's effect from one backward.

Activation patching runs one forward per patch. AtP estimates all of them at once with the
first-order Taylor term at the base run (Nanda 2023; Syed et al. 2023):

    metric(patched) ~= metric(base) + (source_act - base_act) . d metric / d act |_base

RelP (Rezaei Jafari et al. 2025) is the same sum with the gradient replaced by LRP propagation
coefficients: the backward pass runs with the rules of `interp.rules` (default ln, identity, half),
which leave the forward values bit-identical.

The dot product runs over what one patch replaces: d_model for residual-type components, d_head
for heads, positions for whole-sequence patches. One forward and one backward on the base run
serve every component and layer at once. Values come back in `interp.patching.activation.sweep`'s
layout, as estimated metrics after patching, so they compare with it cell for cell.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from interp.limits import element_size, memory_budget, row_bytes, rows_that_fit
from interp.metrics import MetricContext
from interp.model import Model
from interp.rules import RELP_RULES, Rule
from interp.patching.activation import COMPONENTS, check_component

# Reading resid_mid gives the input of the norm that follows it, so a gradient taken there would
# miss the residual path; attn_out carries the same gradient (resid_mid = resid_pre + attn_out).
_GRAD_KIND = {"resid_mid": "attn_out"}


def cell_contributions(component: str, delta: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """``delta * grad`` summed over what one patch of ``component`` covers: [n, *cells of a layer]."""
    contrib = delta * grad
    axes = COMPONENTS[component][1]
    if axes == ("layer", "pos"):
        return contrib.sum(-1)  # [n, pos]
    if axes == ("layer", "head"):
        return contrib.sum((1, 3))  # [n, head]
    if axes == ("layer", "head", "pos"):
        return contrib.sum(-1).transpose(1, 2)  # [n, head, pos]
    return contrib.sum(1)  # mlp_act: [n, neuron]


def layers_for(model: Model, components: Sequence[str], layers: dict[str, list[int]] | list[int] | None) -> dict[str, list[int]]:
    """Layers per component: a dict, one list for all, or every layer."""
    if isinstance(layers, dict):
        return {c: list(layers[c]) for c in components}
    return {c: list(range(model.n_layers)) if layers is None else list(layers) for c in components}


def attribution_patching(
    model: Model,
    components: Sequence[str],
    base: torch.Tensor,
    source_acts: dict[str, torch.Tensor],
    metric: Callable,
    ctx: MetricContext,
    layers: dict[str, list[int]] | list[int] | None = None,
    rules: str | Sequence[str | Rule] = (),
    backend: str | None = None,
    max_memory: int | None = None,
) -> dict[str, torch.Tensor]:
    """Estimates ``[n_prompts, *grid]`` of the metric after patching each cell, per component.

    ``base`` is the run patched into (corrupt tokens when denoising), ``source_acts`` the other
    run's activations at the components' sites. No ``rules``: AtP; ``rules=RELP_RULES``: RelP.
    ``max_memory`` (bytes; None: a share of the device's free memory) bounds each forward and backward:
    prompts run in as many batches as it takes (`prompts_per_pass`). The metric is per prompt and the
    backward starts from its sum, so each prompt's gradient is its own: the estimates are identical for
    any budget.
    """
    components = [check_component(c) for c in components]
    layers_of = layers_for(model, components, layers)
    kinds = {c: COMPONENTS[c][0] for c in components}
    value_site = {(c, layer): f"{kinds[c]}.{layer}" for c in components for layer in layers_of[c]}
    grad_site = {(c, layer): f"{_GRAD_KIND.get(kinds[c], kinds[c])}.{layer}" for c, layer in value_site}
    grad_sites = sorted(set(grad_site.values()))
    read = sorted(set(value_site.values()) | set(grad_sites))
    n = base.shape[0]
    k = prompts_per_pass(model, base, len(read), max_memory)
    parts: dict[str, list[torch.Tensor]] = {c: [] for c in components}
    for lo in range(0, n, k):
        hi = min(n, lo + k)
        out = model.run(base[lo:hi], read=read, grad=True, backend=backend, rules=rules)
        per_prompt = batch_metric(metric, out.logits[:, -1], ctx, lo, n)
        grads = dict(zip(grad_sites, torch.autograd.grad(per_prompt.sum(), [out.acts[s] for s in grad_sites])))
        base_metric = per_prompt.detach()
        for comp in components:
            rows = []
            for layer in layers_of[comp]:
                site = value_site[(comp, layer)]
                delta = source_acts[site][lo:hi] - out.acts[site].detach()
                rows.append(cell_contributions(comp, delta, grads[grad_site[(comp, layer)]]))
            estimate = torch.stack(rows, dim=1).detach()
            parts[comp].append(estimate + base_metric.reshape(-1, *([1] * (estimate.ndim - 1))))
        del out, grads
    return {comp: torch.cat(chunks) for comp, chunks in parts.items()}


def prompts_per_pass(model: Model, base: torch.Tensor, n_reads: int, max_memory: int | None = None) -> int:
    """How many prompts one AtP/RelP forward and backward may carry within ``max_memory`` (see `attribution_patching`).

    A prompt costs a whole forward kept for the backward (`interp.limits.row_bytes` with ``grad``), every
    position's logits, and the ``n_reads`` sites read with their gradients; a batch of fewer than all
    prompts also pads its last-position logits to all of them for the metric. A budget that cannot hold
    one prompt is a one-line `InterpError`.
    """
    n, n_pos = base.shape
    item = element_size(model)
    width = max(model.d_model, model.d_mlp, model.n_heads * model.d_head)
    per_prompt = (row_bytes(model, 0, 0, n_pos, grad=True) + n_pos * model.d_vocab * item
                  + 2 * n_reads * n_pos * width * item)
    budget = memory_budget(model, max_memory)
    if n * per_prompt <= budget:
        return n
    padded = 3 * n * model.d_vocab * 4  # the metric's full-size logits (and its float softmax) per batch
    rows_that_fit(budget, padded + per_prompt, f"attribution patching of one prompt of {n_pos} tokens ({n_reads} sites read)")
    return min(n, (budget - padded) // per_prompt)


def batch_metric(metric: Callable, logits: torch.Tensor, ctx: MetricContext, lo: int, n: int) -> torch.Tensor:
    """``metric`` of prompts ``lo..`` from their last-position ``logits``, with ``ctx`` for all ``n`` prompts.

    Metrics are per prompt but may use every prompt's clean/corrupt logits (norm_logit_diff's means), so
    the batch's logits are padded to all ``n`` rows and the metric's rows for the batch kept.
    """
    rows = logits.shape[0]
    if rows == n:
        return metric(logits, ctx)
    pad = logits.detach().new_zeros(1, logits.shape[-1])
    full = torch.cat([pad.expand(lo, -1), logits, pad.expand(n - lo - rows, -1)])
    return metric(full, ctx)[lo:lo + rows]


def atp(model: Model, component: str, base: torch.Tensor, source_acts: dict[str, torch.Tensor],
        metric: Callable, ctx: MetricContext, layers: list[int] | None = None,
        backend: str | None = None, max_memory: int | None = None) -> torch.Tensor:
    """AtP estimates ``[n_prompts, *grid]`` for one component (see `attribution_patching`)."""
    return attribution_patching(model, [component], base, source_acts, metric, ctx, layers, backend=backend,
                                max_memory=max_memory)[component]


def relp(model: Model, component: str, base: torch.Tensor, source_acts: dict[str, torch.Tensor],
         metric: Callable, ctx: MetricContext, layers: list[int] | None = None,
         rules: str | Sequence[str | Rule] = RELP_RULES, backend: str | None = None,
         max_memory: int | None = None) -> torch.Tensor:
    """RelP estimates ``[n_prompts, *grid]`` for one component (see `attribution_patching`)."""
    return attribution_patching(model, [component], base, source_acts, metric, ctx, layers, rules, backend,
                                max_memory)[component]
