"""Feature effects: which latents of spliced sparse dictionaries (and which error terms) carry a behaviour.

The node effects of Marks et al. 2024 ("Sparse Feature Circuits"), on dictionaries attached with
`Model.attach` (see `interp.splicing`). A node is one latent at every position, or a dictionary's whole error
term; its effect is the metric after patching it from the source run into the base run (denoise: clean into
corrupt), in `interp.patching.activation.sweep`'s convention:

- ``activation``: exact, one batch row per patched latent (as many rows per forward as fit the memory budget);
  ``latents`` picks which (default: every latent of every dictionary);
- ``atp``: ``metric(base) + (source - base) . d metric / d node`` at the base run, from one forward and one
  backward for every node at once, with the error held fixed at a latent (the node convention of `interp.splicing`);
- ``relp``: the same with the backward through LRP rules (`interp.rules`).

>>> effects = feature_effects(model, tokens, ["resid_post.6"], metric, ctx, methods=("atp", "activation"))  # doctest: +SKIP
>>> effects["atp"]["sae.resid_post.6.latents"]     # [n_prompts, d_sae]
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from interp.errors import InterpError
from interp.interventions import Replace
from interp.limits import memory_budget, row_bytes, rows_that_fit
from interp.metrics import MetricContext
from interp.model import Model
from interp.rules import RELP_RULES
from interp.splicing import attached_site

METHODS = ("activation", "atp", "relp")


def _names(sites: Sequence[str]) -> list[str]:
    return [f"sae.{s}.{part}" for s in sites for part in ("latents", "error")]


def check_sites(model: Model, sites: Sequence[str]) -> list[str]:
    """The base sites of attached dictionaries (``"resid_post.6"`` or ``"sae.resid_post.6"``), checked."""
    out = [attached_site(model.dictionaries, site) for site in sites]
    if not out:
        raise InterpError("no dictionary sites given: name the sites of attached dictionaries, e.g. resid_post.6")
    return out


def feature_effects(model: Model, base: torch.Tensor, sites: Sequence[str], source: torch.Tensor,
                    metric: Callable, ctx: MetricContext, methods: Sequence[str] = ("atp",),
                    latents: dict[str, Sequence[int]] | None = None, rules: str = ",".join(RELP_RULES),
                    max_memory: int | None = None, source_acts: dict[str, torch.Tensor] | None = None
                    ) -> dict[str, dict[str, torch.Tensor]]:
    """Effects per method: ``{"atp": {"sae.<site>.latents": [n, d_sae], "sae.<site>.error": [n]}, ...}``.

    ``base``/``source``: token ids of the base run and the run patched from (same shape). ``latents`` limits
    exact patching to some latents per site (the others are NaN); estimates always cover every latent.
    ``source_acts``: the source run's ``sae.<site>.latents``/``.error`` when the caller has them (else one forward).
    """
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise InterpError(f"unknown method '{','.join(unknown) or '(none)'}': use one or more of {', '.join(METHODS)}")
    sites = check_sites(model, sites)
    if base.shape != source.shape:
        raise InterpError(f"base and source prompts must tokenize to the same shape, got {tuple(base.shape)} "
                          f"and {tuple(source.shape)}")
    names = _names(sites)
    src = source_acts
    if src is None:
        with torch.no_grad():
            src = model.run(source, read=names).acts
    out: dict[str, dict[str, torch.Tensor]] = {}
    for method in (m for m in ("atp", "relp") if m in methods):
        out[method] = _estimate(model, base, sites, src, metric, ctx, rules if method == "relp" else ())
    if "activation" in methods:
        out["activation"] = _exact(model, base, sites, src, metric, ctx, latents, max_memory)
    return out


def _estimate(model: Model, base, sites, src, metric, ctx, rules) -> dict[str, torch.Tensor]:
    run = model.run(base, read=_names(sites), grad=True, rules=rules)
    value = metric(run.logits[:, -1], ctx)
    names = _names(sites)
    grads = torch.autograd.grad(value.sum(), [run.acts[n] for n in names])
    base_metric = value.detach().float()
    out = {}
    for name, grad in zip(names, grads):
        delta = src[name] - run.acts[name].detach()
        contrib = (delta * grad).float()
        contrib = contrib.sum(1) if name.endswith(".latents") else contrib.sum((1, 2))  # over positions (and d)
        out[name] = base_metric.reshape(-1, *([1] * (contrib.ndim - 1))) + contrib
    return out


def _exact(model: Model, base, sites, src, metric, ctx, latents, max_memory) -> dict[str, torch.Tensor]:
    n, n_pos = base.shape
    out = {}
    per_row = row_bytes(model, 0, 0, n_pos)
    budget = memory_budget(model, max_memory)
    with torch.no_grad():
        for site in sites:
            lat, err = f"sae.{site}.latents", f"sae.{site}.error"
            logits = model.run(base, [Replace(err, src[err])]).logits[:, -1]
            out[err] = metric(logits, ctx).float()
            d_sae = src[lat].shape[-1]
            units = list(range(d_sae)) if latents is None or site not in latents else list(latents[site])
            if any(not 0 <= u < d_sae for u in units):
                raise InterpError(f"latents of {site} must lie in 0..{d_sae - 1}")
            values = torch.full((n, d_sae), float("nan"))
            k = rows_that_fit(budget, n * per_row, f"one latent patch of {n} prompts of {n_pos} tokens")
            for start in range(0, len(units), k):
                chunk = torch.tensor(units[start:start + k])
                reps = len(chunk)
                rows = torch.arange(reps * n)
                unit_of_row = chunk.repeat_interleave(n)  # patch-major: row r is prompt r % n
                value = src[lat][rows % n, :, unit_of_row]  # [rows, pos]
                index = (rows[:, None], torch.arange(n_pos)[None, :], unit_of_row[:, None])
                logits = model.run(base.repeat(reps, 1), [Replace(lat, value, index=index)]).logits[:, -1]
                values[:, chunk] = metric(logits, ctx.rows(reps * n)).float().reshape(reps, n).T
            out[lat] = values
    return out
