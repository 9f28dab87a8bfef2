"""Steps: the backend-neutral plan of one run.

`plan_steps` turns "edit these sites, read those" into an ordered list of `Step`s. Each step
names the site whose location it hooks and a function ``act -> act`` to run there. Every backend
only has to call the steps' functions at the right places, in order, so reads and edits mean the
same thing everywhere:

- a plain site: apply its interventions, then record the value that flows on;
- a write to ``resid_mid.L``: record ``resid_pre.L``, then at ``attn_out.L`` add
  ``new_mid - old_mid`` to what attention writes, which replaces the residual stream itself;
- read-only sites (``norm_scale``, ``attn_pattern``, MoE ``router_logits`` / ``expert_out``) record
  what the backend gives them (derived sites: the value `Point.derive` computes from the module input).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from interp.adapters import Adapter
from interp.errors import InterpError
from interp.interventions import Intervention, apply_all
from interp.sites import Site


@dataclass(frozen=True)
class Step:
    """Run ``fn`` on the activation at ``location``; ``read_only`` steps must return it unchanged."""

    location: Site
    fn: Callable[[torch.Tensor], torch.Tensor]
    read_only: bool = False
    order: tuple[int, ...] = ()  # when the forward pass reaches it (`Adapter.order_key`)


@dataclass(frozen=True)
class RuleStep:
    """A backward-only edit of a module's output: ``fn(module_input, module_output) -> output``.

    ``module`` is a concrete HF module path (e.g. "model.layers.3.mlp.act_fn"). The returned
    tensor must equal the output in value; only the gradient flowing back through it changes.
    """

    module: str
    fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    order: tuple[int, ...]
    rule: str = ""  # the rule's name, for messages
    repeated: bool = False  # the module runs several times per forward (MoE experts)


def plan_steps(
    table: Adapter,
    edits: dict[Site, list[Intervention]],
    reads: list[Site],
    acts: dict[str, torch.Tensor],
    grad: bool,
) -> list[Step]:
    """Ordered steps that apply ``edits`` and store every site of ``reads`` into ``acts``."""
    for site, ivs in edits.items():
        if ivs and not site.writable:
            raise InterpError(f"site '{site}' is read only; interventions can edit residual, attention/MLP outputs, heads and neurons")
    read_set = set(reads)

    def keep(site: Site, value: torch.Tensor) -> torch.Tensor:
        """Record ``value`` if ``site`` is read; returns the tensor that should flow on.

        Weights are frozen, so with ``grad=True`` the first read activation that is not yet on a
        graph becomes a leaf that flows on: every later activation then depends on it, and
        gradients with respect to any read site cover all paths.
        """
        if grad and not value.requires_grad:
            value = value.detach().requires_grad_(True)
        if site in read_set:
            acts[str(site)] = value if grad else value.detach()
        return value

    mid_pre: dict[int, torch.Tensor] = {}
    steps: list[Step] = []
    for site in sorted(set(edits) | read_set, key=table.order_key):
        ivs = edits.get(site, [])
        if site.kind == "resid_mid" and ivs:
            layer = site.layer

            def capture(x: torch.Tensor, layer: int = layer) -> torch.Tensor:
                mid_pre[layer] = x
                return x

            def mid_delta(attn: torch.Tensor, site: Site = site, ivs: list = ivs) -> torch.Tensor:
                mid = mid_pre.pop(site.layer) + attn
                new = keep(site, apply_all(ivs, mid))
                return attn + (new - mid)

            steps.append(Step(Site("resid_pre", layer), capture, read_only=True))
            steps.append(Step(Site("attn_out", layer), mid_delta))
        elif not site.writable:

            def read(x: torch.Tensor, site: Site = site) -> torch.Tensor:
                if site in read_set:
                    acts[str(site)] = x if grad else x.detach()
                return x

            steps.append(Step(site, read, read_only=True))
        else:

            def edit(x: torch.Tensor, site: Site = site, ivs: list = ivs) -> torch.Tensor:
                return keep(site, apply_all(ivs, x))

            steps.append(Step(site, edit, read_only=not ivs and not grad))
    # stable sort: steps at the same place keep the order above (a site's own edits first)
    return sorted((replace(s, order=table.order_key(s.location)) for s in steps), key=lambda s: s.order)
