"""The real Gemma-3-270M (4-bit GGUF, dequantized): backend parity and patching engines agree.

The tiny random Gemma 3 covers every site; this checks the architecture table on the real model,
whose sliding window (512) holds the prompts, so the batched engine reuses prefixes there too.
"""

import pytest
import torch

import interp
from interp.ioi import generate_ioi
from interp.metrics import MetricContext, logit_diff
from interp.patching.activation import BatchedEngine, sweep

pytestmark = pytest.mark.real_model


@pytest.fixture(scope="module")
def gemma():
    return interp.load("gemma-3-270m", backend="torch")


@pytest.fixture(scope="module")
def prompts(gemma):
    return generate_ioi(gemma.tokenizer, 2, seed=0).tokenize(gemma.tokenizer)


def test_backends_match_hf_and_each_other(gemma, prompts):
    sites = ["resid_pre.0", "attn_out.5", "head_out.9", "mlp_act.11", "mlp_out.17", "norm_scale.final"]
    with torch.no_grad():
        hf_logits = gemma.hf(prompts.clean).logits
        runs = {b: gemma.run(prompts.clean, read=sites, backend=b) for b in ("torch", "nnsight", "lens")}
    for backend, out in runs.items():
        assert (out.logits - hf_logits).abs().max() <= 1e-4, backend
        for site in sites:
            assert (out.acts[site] - runs["torch"].acts[site]).abs().max() <= 1e-4, (backend, site)


def test_solves_ioi_and_batched_engine_equals_hooks(gemma, prompts):
    with torch.no_grad():
        clean = gemma.run(prompts.clean, read=[f"resid_pre.{layer}" for layer in range(gemma.n_layers)]
                          + [f"head_out.{layer}" for layer in range(gemma.n_layers)])
        corrupt = gemma.run(prompts.corrupt)
    ctx = MetricContext(prompts.answer, prompts.wrong, clean.logits[:, -1], corrupt.logits[:, -1])
    assert (logit_diff(ctx.clean_logits, ctx) > 0).all() and (logit_diff(ctx.corrupt_logits, ctx) < 0).all()
    engine = BatchedEngine(gemma, prompts.corrupt)
    assert engine.reuse_prefix  # the prompts fit the 512-token sliding window
    for component, layers in (("resid_pre", [0, 9, 17]), ("head_out", [9, 17])):
        fast, _ = sweep(gemma, component, prompts.corrupt, clean.acts, logit_diff, ctx, layers=layers, batched=engine)
        slow, _ = sweep(gemma, component, prompts.corrupt, clean.acts, logit_diff, ctx, layers=layers, engine="hooks")
        assert (fast - slow).abs().max() <= 1e-4, component


def test_relp_rules_keep_the_forward_and_agree_across_backends(gemma, prompts):
    """LRP rules on the real Gemma 3 (sandwich norms, q/k norms, GELU-tanh gate): same forward, same gradients."""
    from interp.patching.attribution import attribution_patching

    sites = [f"{k}.{layer}" for k in ("resid_pre", "attn_out", "mlp_out") for layer in range(gemma.n_layers)]
    with torch.no_grad():
        plain = gemma.run(prompts.corrupt, backend="torch").logits
        clean = gemma.run(prompts.clean, read=sites, backend="torch")
    ruled = gemma.run(prompts.corrupt, backend="torch", grad=True, rules="ln,identity,half,ah").logits
    assert torch.equal(ruled.detach(), plain)
    ctx = MetricContext(prompts.answer, prompts.wrong, clean.logits[:, -1], plain[:, -1])
    comps, layers = ["resid_pre", "attn_out", "mlp_out"], [0, 8, 17]
    ref = attribution_patching(gemma, comps, prompts.corrupt, clean.acts, logit_diff, ctx, layers, "ln,identity,half", "torch")
    atp = attribution_patching(gemma, comps, prompts.corrupt, clean.acts, logit_diff, ctx, layers, (), "torch")
    assert any((ref[c] - atp[c]).abs().max() > 1e-3 for c in comps)
    for backend in ("nnsight", "lens"):
        other = attribution_patching(gemma, comps, prompts.corrupt, clean.acts, logit_diff, ctx, layers, "ln,identity,half", backend)
        for comp in comps:
            assert torch.allclose(other[comp], ref[comp], atol=1e-4), (backend, comp)
