"""AtP and RelP under a memory budget: prompts run through the forward and backward in batches sized from
``max_memory``, and the estimates are bit-identical (``torch.equal``) for any budget, from one prompt per pass
to all at once, for every metric (norm_logit_diff and kl use every prompt's clean/corrupt logits)."""

from __future__ import annotations

import pytest
import torch

from interp import InterpError
from interp.metrics import METRICS
from interp.patching.activation import COMPONENTS
from interp.patching.attribution import attribution_patching, atp, prompts_per_pass, relp
from ioi_runs import ioi_runs

COMPS = ["resid_pre", "resid_mid", "attn_out", "head_out", "head_out_pos", "mlp_act"]


@pytest.fixture(scope="module")
def setup(tiny_llama):
    model = tiny_llama
    kinds = sorted({kind for kind, _ in COMPONENTS.values()})
    sites = [f"{k}.{layer}" for k in kinds for layer in range(model.n_layers)]
    prompts, clean, _, ctx = ioi_runs(model, 5, 2, sites)
    n_reads = len(sites)  # an upper bound on the sites any call here reads
    return model, prompts.corrupt, clean.acts, ctx, n_reads


def _budget_for(model, base, n_reads, k):
    """The smallest budget that gives ``k`` prompts per pass."""
    lo, hi = 1, 10**12
    while lo < hi:
        mid = (lo + hi) // 2
        try:
            fits = prompts_per_pass(model, base, n_reads, mid) >= k
        except InterpError:
            fits = False
        lo, hi = (lo, mid) if fits else (mid + 1, hi)
    return lo


@pytest.mark.parametrize("rules", [(), "ln,identity,half"], ids=["atp", "relp"])
def test_estimates_are_identical_for_any_budget(setup, rules):
    model, base, source, ctx, _ = setup
    n = base.shape[0]
    read = 2 * len(COMPS) * model.n_layers  # what these components read (values and gradient sites), at most
    budgets = {k: _budget_for(model, base, read, k) for k in (1, 2, n)}
    assert prompts_per_pass(model, base, read, budgets[1]) == 1 and prompts_per_pass(model, base, read, budgets[2]) == 2
    calls = []
    run = model.run
    model.run = lambda tokens, *a, **kw: calls.append(tokens.shape[0]) or run(tokens, *a, **kw)
    try:
        reference = attribution_patching(model, COMPS, base, source, METRICS["logit_diff"], ctx, rules=rules)
        assert calls == [n], "the default budget runs every prompt in one pass"
        for k, budget in budgets.items():
            calls.clear()
            got = attribution_patching(model, COMPS, base, source, METRICS["logit_diff"], ctx, rules=rules,
                                       max_memory=budget)
            assert max(calls) == k and sum(calls) == n, (k, calls)
            for comp in COMPS:
                assert torch.equal(got[comp], reference[comp]), f"{comp}: {k} prompts per pass differ from all at once"
    finally:
        del model.run  # the class's own method again (assigning the bound method back would shadow it for good)


@pytest.mark.parametrize("metric", ["norm_logit_diff", "kl", "answer_prob"])
def test_metrics_using_every_prompt_are_identical_per_prompt(setup, metric):
    model, base, source, ctx, n_reads = setup
    one = _budget_for(model, base, n_reads, 1)
    fn = METRICS[metric]
    assert torch.equal(atp(model, "resid_pre", base, source, fn, ctx, max_memory=one),
                       atp(model, "resid_pre", base, source, fn, ctx))
    assert torch.equal(relp(model, "head_out", base, source, fn, ctx, max_memory=one),
                       relp(model, "head_out", base, source, fn, ctx))


def test_a_budget_below_one_prompt_is_refused_in_one_line(setup):
    model, base, source, ctx, _ = setup
    with pytest.raises(InterpError, match="more than the memory budget") as err:
        atp(model, "resid_pre", base, source, METRICS["logit_diff"], ctx, max_memory=10_000)
    assert "\n" not in str(err.value) and "--max-memory" in str(err.value)
    with pytest.raises(InterpError, match="must be positive"):
        atp(model, "resid_pre", base, source, METRICS["logit_diff"], ctx, max_memory=0)
