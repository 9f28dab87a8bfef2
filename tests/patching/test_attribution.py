"""AtP: the first-order Taylor term of activation patching, checked independently."""

import pytest
import torch

from interp.interventions import Replace
from interp.metrics import logit_diff
from interp.patching.activation import COMPONENTS
from interp.patching.attribution import atp
from ioi_runs import ioi_runs


@pytest.fixture(scope="module")
def setup(tiny_llama):
    model = tiny_llama
    kinds = sorted({kind for kind, _ in COMPONENTS.values()})
    sites = [f"{k}.{layer}" for k in kinds for layer in range(model.n_layers)]
    prompts, clean, corrupt, ctx = ioi_runs(model, 3, 1, sites, backend="torch")
    return model, prompts, clean.acts, corrupt.acts, ctx


def _taylor_by_finite_difference(model, base, site, index, source, base_act, ctx, eps=1e-3):
    """(metric(base + eps * delta at the cell) - metric(base - eps * delta)) / (2 eps)."""
    delta = source[index] - base_act[index]
    with torch.no_grad():
        up = model.run(base, [Replace(site, base_act[index] + eps * delta, index=index)], backend="torch")
        down = model.run(base, [Replace(site, base_act[index] - eps * delta, index=index)], backend="torch")
    return (logit_diff(up.logits[:, -1], ctx) - logit_diff(down.logits[:, -1], ctx)) / (2 * eps)


@pytest.mark.parametrize("component", ["resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "head_out",
                                       "head_out_pos", "mlp_act"])
def test_atp_equals_finite_difference_taylor_term(setup, component):
    model, prompts, clean, corrupt, ctx = setup
    est = atp(model, component, prompts.corrupt, clean, logit_diff, ctx, backend="torch")
    base_metric = logit_diff(ctx.corrupt_logits, ctx)
    kind = COMPONENTS[component][0]
    n_pos = prompts.corrupt.shape[1]
    cells = {"resid_pre": [(1, n_pos - 1), (0, 9)], "resid_mid": [(0, n_pos - 1), (1, 9)],
             "resid_post": [(0, n_pos - 1)], "attn_out": [(1, n_pos - 1)], "mlp_out": [(0, n_pos - 1)],
             "head_out": [(1, 2)], "head_out_pos": [(1, 0, n_pos - 1)], "mlp_act": [(1, 5)]}[component]
    for cell in cells:
        layer, rest = cell[0], cell[1:]
        if component in ("head_out", "mlp_act"):
            index = (slice(None), slice(None), rest[0])
        elif component == "head_out_pos":
            index = (slice(None), rest[1], rest[0])
        else:
            index = (slice(None), rest[0])
        site = f"{kind}.{layer}"
        fd = _taylor_by_finite_difference(model, prompts.corrupt, site, index, clean[site], corrupt[site], ctx)
        got = est[(slice(None), *cell)] - base_metric
        assert torch.allclose(got, fd, atol=2e-3, rtol=1e-2), (component, cell, got, fd)


def test_atp_agrees_across_backends(setup):
    model, prompts, clean, _, ctx = setup
    for component in ("resid_pre", "resid_mid", "attn_out", "head_out"):
        ref = atp(model, component, prompts.corrupt, clean, logit_diff, ctx, backend="torch")
        for backend in ("nnsight", "lens"):
            other = atp(model, component, prompts.corrupt, clean, logit_diff, ctx, backend=backend)
            assert (other - ref).abs().max() <= 1e-4, (component, backend)


def test_atp_is_exact_where_the_patch_changes_nothing(setup):
    model, prompts, clean, _, ctx = setup
    est = atp(model, "resid_pre", prompts.corrupt, clean, logit_diff, ctx, backend="torch")
    base_metric = logit_diff(ctx.corrupt_logits, ctx)
    # position 0 holds the same token in clean and corrupt prompts: nothing to patch there
    assert torch.allclose(est[:, :, 0], base_metric[:, None].expand(-1, model.n_layers))
