"""Edges between the latents of two spliced dictionaries, by attribution (Marks et al. 2024, "Sparse Feature Circuits").

The edge from an upstream node u (a latent of the dictionary at ``up``, or its error term) to a downstream latent d
(of the dictionary at ``down``) is the first-order effect of patching u on the metric *through* d:

    edge(u -> d) = sum over positions of  delta_u . d/du ( sum over positions of  g_d * d )

with ``delta_u`` the source run's value minus the base run's, and ``g_d = d metric / d d`` at the base run (the
downstream latent's node gradient, see `interp.splicing`). One forward and one backward give ``g``; one forward
from the upstream nodes to the downstream site, kept in the graph, then gives every upstream node's edge into a
chosen downstream latent with one backward each. The edge into the downstream *error term* is the same with
``g_err . error`` as the target, the error recomputed from the downstream site (``x - decode(encode(x), x)``;
for a transcoder, the MLP's output minus the decoding of its input's latents).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from interp.errors import InterpError
from interp.metrics import MetricContext
from interp.model import Model
from interp.patching.features import check_sites


def feature_edges(model: Model, base: torch.Tensor, source: torch.Tensor, up: str, down: str, metric: Callable,
                  ctx: MetricContext, down_latents: Sequence[int], down_error: bool = False) -> torch.Tensor:
    """Edge effects ``[n_prompts, len(down_latents) (+1), d_sae_up + 1]``: from each upstream latent (the last column:
    the upstream error term) into each latent of ``down_latents`` and, with ``down_error``, into the downstream
    error term (the last row), for patching ``source`` into ``base``."""
    up, down = check_sites(model, [up, down])
    if model.adapter.order_key(model.site(up)) >= model.adapter.order_key(model.site(down)):
        raise InterpError(f"edges run forward: the dictionary at {up} must come before the one at {down}")
    below = model.dictionaries[down]
    d_sae = int(below.W_enc.shape[1])
    down_latents = [int(j) for j in down_latents]
    if (not down_latents and not down_error) or any(not 0 <= j < d_sae for j in down_latents):
        raise InterpError(f"down_latents must be latents of {down}, in 0..{d_sae - 1} (or ask for the error term)")
    lat, err = f"sae.{up}.latents", f"sae.{up}.error"
    below_lat, below_err = f"sae.{down}.latents", f"sae.{down}.error"
    run = model.run(base, read=[below_lat, below_err], grad=True)  # g: the downstream node gradients
    g, g_below_err = (x.detach() for x in torch.autograd.grad(metric(run.logits[:, -1], ctx).sum(),
                                                               [run.acts[below_lat], run.acts[below_err]]))
    with torch.no_grad():
        src = model.run(source, read=[lat, err]).acts
    out_site = getattr(below, "out_site", None) or down  # a transcoder's error is at the MLP's output
    reads = [lat, err, down] + ([out_site] if out_site != down else [])
    del model.dictionaries[down]  # from the upstream nodes to the downstream site, with the downstream encoder here
    try:
        run = model.run(base, read=reads, grad=True)
    finally:
        model.dictionaries[down] = below
    delta_lat, delta_err = src[lat] - run.acts[lat].detach(), src[err] - run.acts[err].detach()
    flat = (lambda t: t.flatten(-2)) if down.startswith("head_out.") else (lambda t: t)
    x = flat(run.acts[down])
    acts = below.encode(x)  # [n, pos, d_sae_down], in the graph of the upstream nodes
    targets = [(g[..., j] * acts[..., j]).sum() for j in down_latents]
    if down_error:  # error = y - decode(encode(x), x), y the site's (a transcoder: the MLP output's) activation
        error = flat(run.acts[out_site]) - below.decode(acts, x)
        targets.append((g_below_err.reshape(error.shape) * error).sum())
    rows = []
    for i, target in enumerate(targets):
        g_lat, g_err = torch.autograd.grad(target, [run.acts[lat], run.acts[err]], retain_graph=i + 1 < len(targets),
                                           allow_unused=True)
        through_lat = (delta_lat * g_lat).sum(1) if g_lat is not None else torch.zeros_like(delta_lat[:, 0])
        through_err = (delta_err * g_err).flatten(1).sum(1) if g_err is not None else torch.zeros(delta_err.shape[0])
        rows.append(torch.cat([through_lat, through_err[:, None]], dim=1).float())
    return torch.stack(rows, dim=1)
