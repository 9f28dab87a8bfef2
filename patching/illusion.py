"""The subspace-patching illusion check (Makelov, Lange, Geiger, Nanda 2024).

A 1-D subspace patch can move the output without the model using that direction: if v mixes a
component the downstream weights cannot read (it varies with the feature, so it sets the patch's
coefficient) with a *dormant* component they can read (constant on real inputs), patching along v
pushes the dormant component off-distribution and the output moves. The check splits v into

- ``readable``: the part downstream weights can see. For ``mlp_act.L``: the rowspace of layer
  L's down projection (what it writes to the residual stream). For a residual-stream site: the span
  of chosen downstream heads' query weights (including their norm's gain);
- ``unreadable``: the rest (the down projection's nullspace, or the complement of that span);

then patches along v, along each component alone (normalised) and the whole activation, and
reports, for each, the logit difference, FLDD and interchange accuracy (`interp.patching.subspace.scores`)
with the components' norms. The illusion signature: v works, its readable part alone does much
less, and patching the whole activation does nothing (flagged "illusion"); when the whole
activation does nothing but the readable part does a fair share, it is flagged "likely_illusion".
"""

from __future__ import annotations

from typing import Sequence

import torch

from interp.errors import InterpError
from interp.interventions import orthonormal_basis
from interp.model import Model
from interp.sites import parse_site
from interp.patching.subspace import PatchPairs, base_logit_diff, evaluate

RESIDUAL_KINDS = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out")
WORKS_FLDD = 20.0  # a patch "works" when it removes at least this % of the logit difference
WEAKER = 0.5  # "much less": under this fraction of the direction's FLDD


def readable_basis(model: Model, site: str, heads: Sequence[tuple[int, int]] = ()) -> torch.Tensor:
    """Orthonormal basis ``[d, r]`` of what downstream weights read at ``site``."""
    s = parse_site(site, model.n_layers)
    if s.kind == "mlp_act":
        return orthonormal_basis(model.W_out(s.layer).T.detach())  # rows of W_out^T span its rowspace
    if s.kind not in RESIDUAL_KINDS:
        raise InterpError(f"the illusion check reads mlp_act or residual-stream sites, not {s.kind}")
    if not heads:
        raise InterpError(f"{site} is in the residual stream: name the downstream heads that read it, e.g. --heads 20.3,22.1")
    reads = []
    for layer, head in heads:
        first = s.layer + (1 if s.kind in ("resid_post", "resid_mid", "attn_out", "mlp_out") else 0)
        if not first <= layer < model.n_layers or not 0 <= head < model.n_heads:
            raise InterpError(f"head {layer}.{head} does not read {site}: pick a layer in {first}..{model.n_layers - 1} "
                              f"and a head below {model.n_heads}")
        gain = model.ln1_gain(layer).detach().float()
        reads.append(gain[:, None] * model.W_Q(layer)[head].detach().float())  # [d_model, d_head]
    return orthonormal_basis(torch.cat(reads, dim=1).T)


def split(direction: torch.Tensor, basis: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``direction`` ([d], or k directions [k, d]) as readable (projection onto the basis) plus unreadable parts."""
    v = direction.float()
    readable = (v @ basis) @ basis.T
    return readable, v - readable


def illusion_check(model: Model, pairs: PatchPairs, direction: torch.Tensor, heads: Sequence[tuple[int, int]] = (),
                   backend: str | None = None, basis: torch.Tensor | None = None) -> dict:
    """Patch along the direction, its readable and unreadable parts and the whole activation; flag the illusion.

    ``direction`` is one vector [d] or a k-dim subspace [k, d] (its parts are then subspaces too).
    ``basis`` is `readable_basis` for the site and heads, if already computed.
    """
    v = direction.float()
    if v.norm() == 0:
        raise InterpError("the direction is zero")
    readable, unreadable = split(v, readable_basis(model, pairs.site, heads) if basis is None else basis)
    base_ld = base_logit_diff(model, pairs, backend)
    result: dict = {"site": pairs.site, "base_logit_diff": round(base_ld, 4),
                    "norms": {"readable": round(float(readable.norm() / v.norm()), 4),
                              "unreadable": round(float(unreadable.norm() / v.norm()), 4)}}
    for name, basis in (("direction", v), ("readable", readable), ("unreadable", unreadable), ("full", None)):
        if basis is not None and basis.norm() <= 1e-6 * v.norm():
            result[name] = None  # v has no such part: nothing to patch
        else:
            result[name] = evaluate(model, pairs, basis, base_ld, backend)
    result["illusion"], result["signature"], result["verdict"] = verdict(result)
    return result


def verdict(result: dict) -> tuple[bool, str, str]:
    """(flagged, signature, why in plain words) for the check's results.

    signature: "no_effect" (the direction does little), "illusion" (it works, its readable part
    alone much less and the whole activation nothing), "likely_illusion" (it works, the whole
    activation does nothing, its readable part does a fair share), "caution" (its readable part
    alone is weak but the whole activation works) or "none".
    """
    fldd = {k: (result[k]["fldd"] if result.get(k) else 0.0) for k in ("direction", "readable", "unreadable", "full")}
    d, r, f = fldd["direction"], fldd["readable"], fldd["full"]
    if d < WORKS_FLDD:
        return False, "no_effect", (f"Patching along the direction removes only {d:.1f}% of the logit difference "
                                    f"(under {WORKS_FLDD:.0f}%), so there is no effect to explain.")
    weak_readable, full_nothing = r < WEAKER * d, abs(f) < WEAKER * d
    if full_nothing and weak_readable:
        return True, "illusion", (
            f"Illusion signature: the direction removes {d:.1f}% of the logit difference, but its readable part "
            f"alone only {r:.1f}% and patching the whole activation {f:.1f}%. The effect comes from the unreadable "
            "part setting the patch's size while a dormant readable part is pushed off its usual values; this "
            "direction is probably not a feature the model uses here.")
    if full_nothing:
        return True, "likely_illusion", (
            f"Likely illusion: the direction removes {d:.1f}% of the logit difference, but patching the whole "
            f"activation only {f:.1f}%, so the effect does not come from values this site takes on real inputs. "
            f"Its readable part alone removes {r:.1f}%: the patch moves a direction downstream weights read to "
            "values it does not normally take.")
    if weak_readable:
        return False, "caution", (
            f"The direction removes {d:.1f}% but its readable part alone only {r:.1f}%, while the whole activation "
            f"does {f:.1f}%: the site carries the feature, but treat this particular direction with care.")
    return False, "none", (f"No illusion signature: the direction removes {d:.1f}%, its readable part alone {r:.1f}% "
                           f"and the whole activation {f:.1f}%; the effect goes through what downstream weights read.")
