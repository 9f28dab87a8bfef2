"""Attribution patching (AtP): every component's patching effect from one forward and one backward.

Activation patching runs one forward per patch. AtP estimates all of them at once with the
first-order Taylor term at the base run:

    metric(patched) ~= metric(base) + (source_act - base_act) . d metric / d act |_base

for every cell of a component's grid (the dot product runs over the dimensions a patch replaces:
d_model for residual-type components, d_head for heads, positions for whole-sequence patches).
Values come back in the same layout as `patching.activation.sweep`'s, as estimated metrics after
patching, so the two compare cell for cell.
"""

from __future__ import annotations

from typing import Callable

import torch

from interp.metrics import MetricContext
from interp.model import Model
from patching.activation import COMPONENTS, check_component


def atp(model: Model, component: str, base: torch.Tensor, source_acts: dict[str, torch.Tensor],
        metric: Callable, ctx: MetricContext, layers: list[int] | None = None,
        backend: str | None = None) -> torch.Tensor:
    """AtP estimates ``[n_prompts, *grid]`` of the metric after patching each cell of ``component``.

    ``base`` is the run patched into (corrupt tokens when denoising), ``source_acts`` the other
    run's activations at the component's sites.
    """
    kind, axes = COMPONENTS[check_component(component)]
    layers = list(range(model.n_layers)) if layers is None else layers
    sites = [f"{kind}.{layer}" for layer in layers]
    out = model.run(base, read=sites, grad=True, backend=backend)
    per_prompt = metric(out.logits[:, -1], ctx)
    grads = torch.autograd.grad(per_prompt.sum(), [out.acts[s] for s in sites])  # prompts are independent
    rows = []
    for site, grad in zip(sites, grads):
        contrib = (source_acts[site] - out.acts[site].detach()) * grad
        if axes == ("layer", "pos"):
            rows.append(contrib.sum(-1))  # [n, pos]
        elif axes == ("layer", "head"):
            rows.append(contrib.sum((1, 3)))  # [n, head]
        elif axes == ("layer", "head", "pos"):
            rows.append(contrib.sum(-1).transpose(1, 2))  # [n, head, pos]
        else:
            rows.append(contrib.sum(1))  # mlp_act: [n, neuron]
    estimate = torch.stack(rows, dim=1).detach()
    return estimate + per_prompt.detach().reshape(-1, *([1] * (estimate.ndim - 1)))
