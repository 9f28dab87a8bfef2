"""RelP and integrated gradients against independent computations: a linear model, completeness, other backends."""

import copy

import pytest
import torch
from transformers.models.llama.modeling_llama import LlamaRMSNorm

from interp.interventions import Replace
from interp.ioi import generate_ioi
from interp.metrics import MetricContext, logit_diff
from interp.model import Model
from interp.patching.activation import COMPONENTS, sweep
from interp.patching.attribution import attribution_patching, relp
from interp.patching.integrated_gradients import integrated_gradients

COMPS = ["resid_pre", "resid_mid", "attn_out", "mlp_out", "head_out", "head_out_pos", "mlp_act"]


def _linear(model: Model, mlp: str) -> Model:
    """A copy of tiny-llama whose logits are linear in every activation.

    Norms: eps 1e12 makes the RMS divisor a constant 1e6 in float32, undone by weights of 1e6.
    Attention: zero queries and keys give a fixed uniform causal pattern. Activation: identity.
    MLP: ``"linear"`` makes the up branch the constant 1 (so the MLP is down(gate(x)));
    ``"off"`` zeroes the down projection.
    """
    hf = copy.deepcopy(model.hf)
    with torch.no_grad():
        for module in hf.modules():
            if isinstance(module, LlamaRMSNorm):
                module.variance_epsilon = 1e12
                module.weight.fill_(1e6)
        for layer in hf.model.layers:
            layer.self_attn.q_proj.weight.zero_()
            layer.self_attn.k_proj.weight.zero_()
            layer.mlp.act_fn = torch.nn.Identity()
            if mlp == "off":
                layer.mlp.down_proj.weight.zero_()
            else:
                up = torch.nn.Linear(model.d_model, model.d_mlp, bias=True)
                up.weight.zero_()
                up.bias.fill_(1.0)
                layer.mlp.up_proj = up.requires_grad_(False)
    return Model("tiny-llama", hf, model.tokenizer, backend="torch")


def _setup(model: Model, n: int = 3):
    prompts = generate_ioi(model.tokenizer, n, seed=2).tokenize(model.tokenizer)
    sites = sorted({f"{COMPONENTS[c][0]}.{layer}" for c in COMPS for layer in range(model.n_layers)})
    with torch.no_grad():
        clean = model.run(prompts.clean, read=sites)
        corrupt = model.run(prompts.corrupt, read=sites)
    ctx = MetricContext(prompts.answer, prompts.wrong, clean.logits[:, -1], corrupt.logits[:, -1])
    return prompts, clean.acts, corrupt.acts, ctx


@pytest.mark.parametrize("mlp,rules", [("off", "ln,identity,half,ah"), ("linear", "ln,identity,ah")])
def test_on_a_linear_model_relp_equals_atp_equals_activation_patching(tiny_llama, mlp, rules):
    model = _linear(tiny_llama, mlp)
    prompts, clean, corrupt, ctx = _setup(model)
    layers = {c: ([1] if c == "mlp_act" else list(range(model.n_layers))) for c in COMPS}
    atp_est = attribution_patching(model, COMPS, prompts.corrupt, clean, logit_diff, ctx, layers)
    relp_est = attribution_patching(model, COMPS, prompts.corrupt, clean, logit_diff, ctx, layers, rules=rules)
    ig_est = integrated_gradients(model, COMPS, prompts.corrupt, clean, corrupt, logit_diff, ctx, layers, steps=2)
    moved = 0.0
    for comp in COMPS:
        truth, _ = sweep(model, comp, prompts.corrupt, clean, logit_diff, ctx, layers=layers[comp], engine="hooks")
        base = logit_diff(ctx.corrupt_logits, ctx).reshape(-1, *([1] * (truth.ndim - 1)))
        scale = (truth - base).abs().max().item()
        moved = max(moved, scale)
        for name, est in (("atp", atp_est), ("relp", relp_est), ("ig", ig_est)):
            assert torch.allclose(est[comp], truth, atol=1e-4 * scale + 1e-6), (comp, name, (est[comp] - truth).abs().max())
    assert moved > 1e-3  # patches do move the metric


def test_relp_differs_from_atp_on_a_real_network(tiny_llama):
    prompts, clean, _, ctx = _setup(tiny_llama)
    a = attribution_patching(tiny_llama, ["mlp_out"], prompts.corrupt, clean, logit_diff, ctx)["mlp_out"]
    r = relp(tiny_llama, "mlp_out", prompts.corrupt, clean, logit_diff, ctx)
    assert (a - r).abs().max() > 1e-3


@pytest.mark.parametrize("rules", [(), "ln,identity,half", "ln,identity,half,ah"])
def test_atp_and_relp_agree_across_backends(tiny_llama, tiny_gemma3, rules):
    for model in (tiny_llama, tiny_gemma3):
        prompts, clean, _, ctx = _setup(model)
        layers = {c: ([0] if c == "mlp_act" else list(range(model.n_layers))) for c in COMPS}
        ref = attribution_patching(model, COMPS, prompts.corrupt, clean, logit_diff, ctx, layers, rules, backend="torch")
        for backend in ("nnsight", "lens"):
            other = attribution_patching(model, COMPS, prompts.corrupt, clean, logit_diff, ctx, layers, rules, backend=backend)
            for comp in COMPS:
                assert torch.allclose(other[comp], ref[comp], atol=1e-5), (model.name, backend, comp)


def test_all_components_come_from_one_forward_and_one_backward(tiny_llama, monkeypatch):
    prompts, clean, _, ctx = _setup(tiny_llama)
    calls = []
    original = Model.run

    def counting(self, *args, **kwargs):
        calls.append(kwargs.get("grad", False))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Model, "run", counting)
    attribution_patching(tiny_llama, COMPS, prompts.corrupt, clean, logit_diff, ctx, {c: [0, 1] for c in COMPS},
                         rules="ln,identity,half")
    assert calls == [True]


def test_ig_completeness_cells_of_a_layer_sum_to_patching_the_whole_layer(tiny_llama):
    prompts, clean, corrupt, ctx = _setup(tiny_llama)
    est = integrated_gradients(tiny_llama, ["attn_out", "head_out"], prompts.corrupt, clean, corrupt, logit_diff, ctx,
                               steps=48)
    base = logit_diff(ctx.corrupt_logits, ctx)
    for comp, kind in (("attn_out", "attn_out"), ("head_out", "head_out")):
        for layer in range(tiny_llama.n_layers):
            site = f"{kind}.{layer}"
            with torch.no_grad():
                whole = tiny_llama.run(prompts.corrupt, [Replace(site, clean[site])])
            effect = logit_diff(whole.logits[:, -1], ctx) - base
            summed = (est[comp][:, layer] - base[:, None]).sum(1)
            assert torch.allclose(summed, effect, atol=2e-3 * effect.abs().max().item() + 1e-5), (comp, layer, summed, effect)


@pytest.mark.parametrize("name", ["tiny_llama", "tiny_gemma3"])
def test_ig_batched_engine_equals_whole_forwards_on_every_backend(request, name):
    model = request.getfixturevalue(name)
    prompts, clean, corrupt, ctx = _setup(model, n=2)
    comps = ["resid_pre", "resid_mid", "attn_out", "mlp_out", "head_out", "mlp_act"]
    args = (model, comps, prompts.corrupt, clean, corrupt, logit_diff, ctx)
    ref = integrated_gradients(*args, steps=3, engine="batched")
    for backend in ("torch", "nnsight", "lens"):
        other = integrated_gradients(*args, steps=3, engine="hooks", backend=backend)
        for comp in ref:
            assert torch.allclose(ref[comp], other[comp], atol=1e-5), (backend, comp, (ref[comp] - other[comp]).abs().max())
