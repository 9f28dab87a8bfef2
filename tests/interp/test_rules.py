"""LRP backward rules: forward values untouched, gradients equal to each rule's closed form, same on every backend."""

import copy

import pytest
import torch
from transformers.models.gemma3.modeling_gemma3 import Gemma3RMSNorm
from transformers.models.llama.modeling_llama import LlamaRMSNorm

from transformers import Gemma3TextConfig, GPT2Config, LlamaConfig

from interp.adapters import adapter_for
from interp.errors import InterpError
from interp.model import Model
from interp.rules import RELP_RULES, AHRule, HalfRule, IdentityRule, LNRule, parse_rules, stabilize

BACKENDS = ("torch", "nnsight", "lens")
RULE_SETS = ("ln", "identity", "half", "ah", "ln,identity,half", "ln,identity,half,ah")
SITES = ["resid_pre.0", "head_out.0", "attn_out.0", "resid_mid.1", "mlp_act.1", "mlp_out.1", "resid_post.1"]


def _tokens(model, seed=0):
    return torch.randint(0, model.d_vocab, (2, 9), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(params=["tiny_llama", "tiny_gemma3"])
def model(request):
    return request.getfixturevalue(request.param)


@pytest.mark.parametrize("rules", RULE_SETS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_forward_is_bit_identical_with_rules_on(model, backend, rules):
    tokens = _tokens(model)
    off = model.run(tokens, read=SITES, grad=True, backend=backend)
    on = model.run(tokens, read=SITES, grad=True, backend=backend, rules=rules)
    assert torch.equal(on.logits, off.logits)
    for site in SITES:
        assert torch.equal(on.acts[site], off.acts[site]), site


def _grads(model, backend, rules):
    out = model.run(_tokens(model, 1), read=SITES, grad=True, backend=backend, rules=rules)
    target = out.logits[:, -1, 7].sum() - out.logits[:, -1, 11].sum()
    return torch.autograd.grad(target, [out.acts[s] for s in SITES])


@pytest.mark.parametrize("rules", ["ln,identity,half", "ln,identity,half,ah"])
def test_rule_gradients_agree_across_backends(model, rules):
    ref = _grads(model, "torch", rules)
    plain = _grads(model, "torch", ())
    assert any((r - p).abs().max() > 1e-3 for r, p in zip(ref, plain)), "rules changed no gradient"
    for backend in ("nnsight", "lens"):
        for site, r, o in zip(SITES, ref, _grads(model, backend, rules)):
            assert torch.allclose(r, o, atol=1e-6, rtol=1e-5), (backend, site, (r - o).abs().max())


def _grad_through(edit, x, out, weight):
    x = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad((edit(x, out(x)) * weight).sum(), [x])
    return grad


LLAMA = adapter_for(LlamaConfig(hidden_size=8, num_attention_heads=2, num_hidden_layers=1, intermediate_size=16))
GEMMA3 = adapter_for(Gemma3TextConfig(hidden_size=8, num_attention_heads=2, num_hidden_layers=1, intermediate_size=16))
GPT2 = adapter_for(GPT2Config(n_embd=8, n_head=2, n_layer=1))


def test_ln_rule_on_layernorm_holds_mean_and_divisor_constant():
    torch.manual_seed(0)
    norm = torch.nn.LayerNorm(8, eps=1e-5)
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    x, g = torch.randn(2, 3, 8) + 0.5, torch.randn(2, 3, 8)
    got = _grad_through(LNRule().edit(norm, GPT2), x, norm, g)
    std = (x.var(-1, unbiased=False, keepdim=True) + 1e-5).sqrt()
    assert torch.allclose(got, g * norm.weight.detach() / std, atol=1e-5)  # closed form
    xr = x.clone().requires_grad_(True)  # autograd with mean and divisor detached
    frozen = (xr - xr.mean(-1, keepdim=True).detach()) / std * norm.weight.detach() + norm.bias.detach()
    (want,) = torch.autograd.grad((frozen * g).sum(), [xr])
    assert torch.allclose(got, want, atol=1e-5)
    assert not torch.allclose(got, _grad_through(lambda x, out: out, x, norm, g), atol=1e-3)  # differs from the gradient


def test_identity_rule_covers_tanh_soft_caps():
    """On Gemma 2 with caps set, the final cap c*tanh(z/c) passes gradient out/z under the identity rule."""
    from family_models import build, tokens

    model = build("gemma2-caps")
    assert model.adapter.softcaps == model.n_layers + 1
    seen = {}
    handle = model.hf.lm_head.register_forward_hook(lambda m, a, out: seen.__setitem__("z", out))
    try:
        for rules in ((), "identity"):
            for backend in ("torch", "nnsight"):
                out = model.run(tokens(model)[0], read=["resid_pre.0"], grad=True, backend=backend, rules=rules)
                (g,) = torch.autograd.grad(out.logits.sum(), [seen["z"]])
                z, y = seen["z"].detach(), out.logits.detach()
                if rules:  # away from z = 0, where y / z loses its digits in float32
                    far = z.abs() > 1e-2
                    assert torch.allclose(g[far], (y / z)[far], atol=1e-5) and (g - 1).abs().max() < 1, backend
                else:
                    cap = model.hf.config.final_logit_softcapping
                    assert torch.allclose(g, 1 - torch.tanh(z / cap) ** 2, atol=1e-5), backend
    finally:
        handle.remove()


@pytest.mark.parametrize("norm_cls,table", [(LlamaRMSNorm, LLAMA), (Gemma3RMSNorm, GEMMA3)])
def test_ln_rule_is_the_gradient_with_the_scale_frozen(norm_cls, table):
    torch.manual_seed(0)
    norm = norm_cls(8, eps=1e-6)
    with torch.no_grad():
        norm.weight.normal_()
    x, g = torch.randn(2, 3, 8), torch.randn(2, 3, 8)
    edit = LNRule().edit(norm, table)
    got = _grad_through(edit, x, norm, g)
    gain = norm.weight.detach() + table.norm_offset
    rms = (x.pow(2).mean(-1, keepdim=True) + 1e-6).sqrt()
    assert torch.allclose(got, g * gain / rms, atol=1e-6)  # closed form
    xr = x.clone().requires_grad_(True)  # autograd through the norm with its divisor detached
    frozen = xr / (xr.pow(2).mean(-1, keepdim=True) + 1e-6).sqrt().detach() * gain
    (want,) = torch.autograd.grad((frozen * g).sum(), [xr])
    assert torch.allclose(got, want, atol=1e-6)
    plain = _grad_through(lambda x, out: out, x, norm, g)
    assert not torch.allclose(plain, got, atol=1e-3)  # the rule does change the gradient
    assert torch.equal(edit(x, norm(x)), norm(x))


@pytest.mark.parametrize("act", [torch.nn.SiLU(), torch.nn.GELU(approximate="tanh")])
def test_identity_rule_passes_act_of_x_over_x(act):
    x = torch.tensor([[-3.0, -0.5, 0.0, 0.25, 2.0, 7.0]])
    g = torch.tensor([[1.0, -2.0, 3.0, 0.5, 1.5, -1.0]])
    edit = IdentityRule().edit(act, LLAMA)
    got = _grad_through(edit, x, act, g)
    assert torch.allclose(got, g * act(x) / stabilize(x))
    assert torch.allclose(got[0, [0, 1, 3, 4, 5]], (g * act(x) / x)[0, [0, 1, 3, 4, 5]])
    assert got[0, 2] == 0  # act(0) = 0: nothing passes at zero
    assert torch.equal(edit(x, act(x)), act(x))


def test_half_rule_halves_each_factor_of_the_gated_product():
    a, u, g = torch.randn(4, 5), torch.randn(4, 5), torch.randn(4, 5)
    a, u = a.requires_grad_(True), u.requires_grad_(True)
    edit = HalfRule().edit(torch.nn.Identity(), LLAMA)
    product = edit(a, a) * edit(u, u)
    assert torch.equal(product, a * u)
    ga, gu = torch.autograd.grad((product * g).sum(), [a, u])
    assert torch.allclose(ga, g * u / 2) and torch.allclose(gu, g * a / 2)


def test_half_and_identity_rules_on_the_real_mlp(tiny_llama):
    """Through a model's gated MLP: d/d gate_in = 1/2 * up * act(x)/x and d/d up = 1/2 * act, from mlp_act."""
    layer = 1
    mlp = tiny_llama.hf.model.layers[layer].mlp
    captured = {}

    def keep(name):
        def hook(module, args, out):
            captured[name] = out
        return hook

    handles = [mlp.gate_proj.register_forward_hook(keep("gate")), mlp.up_proj.register_forward_hook(keep("up"))]
    try:
        out = tiny_llama.run(_tokens(tiny_llama), read=[f"resid_pre.{layer}", f"mlp_act.{layer}"], grad=True,
                             backend="torch", rules="identity,half")
    finally:
        for h in handles:
            h.remove()
    act = out.acts[f"mlp_act.{layer}"]
    g = torch.randn_like(act)
    gate_in, up = captured["gate"], captured["up"]
    got_gate, got_up = torch.autograd.grad((act * g).sum(), [gate_in, up], retain_graph=True)
    silu = torch.nn.functional.silu(gate_in.detach())
    assert torch.allclose(got_gate, g * up.detach() * silu / stabilize(gate_in.detach()) / 2, atol=1e-6)
    assert torch.allclose(got_up, g * silu / 2, atol=1e-6)


def test_ah_rule_stops_gradient_to_queries_and_keys(tiny_llama):
    attn = tiny_llama.hf.model.layers[1].self_attn
    captured = {}
    handles = [attn.q_proj.register_forward_hook(lambda m, a, o: captured.__setitem__("q", o)),
               attn.v_proj.register_forward_hook(lambda m, a, o: captured.__setitem__("v", o))]
    try:
        grads = {}
        for rules in ((), "ah"):
            out = tiny_llama.run(_tokens(tiny_llama), read=["resid_pre.0"], grad=True, backend="torch", rules=rules)
            grads[rules] = torch.autograd.grad(out.logits[:, -1].sum(), [captured["q"], captured["v"]], allow_unused=True)
    finally:
        for h in handles:
            h.remove()
    assert grads[()][0].abs().max() > 0
    assert grads["ah"][0] is None  # the queries are off the backward graph altogether
    assert grads["ah"][1].abs().max() > 0  # values still carry gradient, through the frozen pattern


def test_ah_rule_needs_eager_attention(tiny_llama):
    hf = copy.deepcopy(tiny_llama.hf)
    hf.set_attn_implementation("sdpa")
    model = Model("tiny-llama", hf, tiny_llama.tokenizer, backend="torch")
    with pytest.raises(InterpError, match="eager attention"):
        model.run(_tokens(model), grad=True, rules="ah")


def test_a_custom_rule_plugs_in_by_layer_type(tiny_llama):
    """A user rule for one layer type (here: zero gradient through every norm) runs on every backend."""
    from interp.rules import Rule

    class BlockNorms(Rule):
        name, layer_type = "block_norms", "norm"

        def edit(self, module, table):
            return lambda x, out: out.detach()

    for backend in BACKENDS:
        out = tiny_llama.run(_tokens(tiny_llama), read=["resid_pre.0"], grad=True, backend=backend, rules=[BlockNorms()])
        assert out.acts["resid_pre.0"].requires_grad
        assert not out.logits.requires_grad, backend  # every path from the residual to the logits crosses a norm

    class Nowhere(Rule):
        name, layer_type = "nowhere", "conv"

    with pytest.raises(InterpError, match="'conv', which no architecture has"):
        tiny_llama.run(_tokens(tiny_llama), grad=True, rules=[Nowhere()])


def test_parse_rules():
    assert [r.name for r in parse_rules("ln, identity,half")] == list(RELP_RULES)
    assert isinstance(parse_rules(["ah"])[0], AHRule)
    with pytest.raises(InterpError, match="unknown rule 'lnn'"):
        parse_rules("lnn")
    with pytest.raises(InterpError, match="given twice"):
        parse_rules("ln,ln")
