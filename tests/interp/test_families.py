"""The parity matrix: every supported decoder family, as a tiny random model, on every backend.

Rows (tests/family_models.py) cover the families and the options that change the forward:
soft-capping, sliding windows shorter than the prompt, multipliers, tied and untied embeddings,
biases, parallel residual on and off, q/k norms, head_dim != d_model / n_heads, fused q/k/v and
gate_up, MQA / GQA / Falcon's grouped layout, ALiBi, NoPE layers, MoE with and without dense
layers, and the multimodal Gemma 3 wrapper. For each row:

- logits equal the plain HF forward on torch, nnsight and lens (or lens refuses in one line);
- the residual identities of the block shape hold, per-head outputs times W_O give attn_out, MoE
  expert outputs sum to the MoE block's output and the router logits are the router's own;
- every site read, and several interventions, agree across backends;
- batched engine = hooks engine = a brute-force reference written with plain torch hooks from the
  test's own description of the family (`Ref`), for resid_pre, attn_out, mlp_out and head_out;
- AtP equals finite differences; RelP's rules leave the forward bit-identical;
- TransformerLens's own ``transformer_lens.patching`` gives our resid_pre grid where the bridge wraps the family.
"""

from __future__ import annotations

import pytest
import torch
import transformers as T
from family_models import BY_ID, ROW_IDS, ROWS, SEQ, WINDOW, build, tokens

from interp import Ablate, Add, InterpError, Replace
from interp.adapters import adapter_for
from interp.metrics import MetricContext, logit_diff
from interp.patching.activation import sweep

BACKENDS = ("torch", "nnsight", "lens")
LENS_REFUSED = {"falcon-newarch-kv2"}  # TransformerLens 4.3 splits Falcon's grouped q/k/v wrongly and cannot boot it
LENS_FUSED_GATE_UP = {"phi3"}  # the bridge computes gate and up from split weights, never calling gate_up_proj
TOL = 1e-4


def diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, f"{tuple(a.shape)} != {tuple(b.shape)}"
    return (a.double() - b.double()).abs().max().item()


def sites_of(model, layers=None) -> list[str]:
    """Every site this model has (norm_scale included), on ``layers`` (default all)."""
    a = model.adapter
    out = []
    for layer in layers if layers is not None else range(model.n_layers):
        for kind in a.points:
            if kind == "mlp_act" and layer in a.moe_layers or kind in ("router_logits", "expert_out") and layer not in a.moe_layers:
                continue
            out.append(f"{kind}.{layer}")
        out += [f"norm_scale.{layer}.{n}" for n in ("ln1", "ln2") if n in a.norms]
    return out + ["norm_scale.final"]


def backends_for(row_id: str) -> tuple[str, ...]:
    return tuple(b for b in BACKENDS if not (b == "lens" and row_id in LENS_REFUSED))


@pytest.fixture(params=ROW_IDS)
def row(request) -> str:
    return request.param


# ------------------------------------------------------------------ forward and reads


def test_logits_are_the_models_own_on_every_backend(row):
    model = build(row)
    clean, _ = tokens(model)
    with torch.no_grad():
        expected = model.hf(input_ids=clean).logits
    for backend in backends_for(row):
        assert diff(model.run(clean, backend=backend).logits, expected) <= TOL, backend
    if row in LENS_REFUSED:
        with pytest.raises(InterpError, match="bridge cannot wrap this falcon model"):
            model.run(clean, backend="lens")


def test_residual_identities_and_weights(row):
    model, a = build(row), build(row).adapter
    clean, _ = tokens(model)
    acts = model.run(clean, read=sites_of(model), backend="torch").acts
    for L in range(model.n_layers):
        pre, post = acts[f"resid_pre.{L}"], acts[f"resid_post.{L}"]
        attn, mlp = acts[f"attn_out.{L}"], acts[f"mlp_out.{L}"]
        if a.block == "parallel":
            assert f"resid_mid.{L}" not in acts
            assert diff(post, pre + attn + mlp) <= 1e-5
        else:
            mid = acts[f"resid_mid.{L}"]
            assert diff(mid, pre + attn) <= 1e-5 and diff(post, mid + mlp) <= 1e-5
        if "ln2" in a.norms and a.block == "sequential":  # what the MLP reads: the pre-MLP norm of resid_mid
            with torch.no_grad():
                normed = model.hf.get_submodule(a.norms["ln2"].module_path(L))(acts[f"resid_mid.{L}"])
            assert diff(acts[f"mlp_in.{L}"], normed) <= 1e-5
        elif a.block == "post_norm":  # OLMo-2: the MLP reads the residual itself
            assert torch.equal(acts[f"mlp_in.{L}"], acts[f"resid_mid.{L}"])
        if L + 1 < model.n_layers:
            assert torch.equal(post, acts[f"resid_pre.{L + 1}"])
        if a.sublayers_add_linearly():  # what the heads write, through W_O, is what attention adds
            z = acts[f"head_out.{L}"]
            assert z.shape[-2:] == (model.n_heads, model.d_head)
            written = torch.einsum("bphd,hdm->bpm", z, model.W_O(L))
            bias = a.attn_out_bias(model.hf, L)
            assert diff(written + (0 if bias is None else bias), attn) <= 1e-5
        if L in a.moe_layers:
            assert diff(acts[f"expert_out.{L}"].sum(-2), mlp) <= 1e-5
            routed = (acts[f"expert_out.{L}"].abs().sum(-1) > 0).sum(-1)
            assert (routed <= model.hf.config.num_experts_per_tok).all() and (routed > 0).all()
        elif "mlp_act" in a.points:
            w_out = model.W_out(L)
            assert w_out.shape == (model.d_mlp, model.d_model)
            assert acts[f"mlp_act.{L}"].shape[-1] == model.d_mlp


def test_moe_router_logits_are_the_routers_own():
    for row_id in ("qwen3moe", "mixtral"):
        model = build(row_id)
        clean, _ = tokens(model)
        layer = min(model.adapter.moe_layers)
        seen = []
        gate = model.hf.get_submodule(f"model.layers.{layer}.mlp.gate")
        handle = gate.register_forward_hook(lambda m, args, out, seen=seen: seen.append(out[0]))
        try:
            out = model.run(clean, read=[f"router_logits.{layer}"], backend="torch")
        finally:
            handle.remove()
        assert diff(out.acts[f"router_logits.{layer}"].reshape(seen[0].shape), seen[0]) <= 1e-6
        with pytest.raises(InterpError, match=f"layer {layer} is a mixture of experts; read router_logits"):
            model.run(clean, read=[f"mlp_act.{layer}"])
    dense = build("qwen3moe")
    assert dense.adapter.moe_layers == frozenset({1})  # decoder_sparse_step 2, layer 2 dense by mlp_only_layers
    with pytest.raises(InterpError, match="layer 0 of qwen3_moe is a dense MLP"):
        dense.run(tokens(dense)[0], read=["expert_out.0"])


def test_every_read_agrees_across_backends(row):
    model = build(row)
    clean, _ = tokens(model)
    sites = sites_of(model)
    ref = model.run(clean, read=sites, backend="torch").acts
    for backend in backends_for(row)[1:]:
        got = model.run(clean, read=sites, backend=backend).acts
        worst = max(sites, key=lambda s: diff(got[s], ref[s]))
        assert diff(got[worst], ref[worst]) <= 1e-5, f"{backend} {worst}"


def _interventions(model) -> list:
    a, n = model.adapter, model.n_layers
    torch.manual_seed(0)
    ivs = [Add("resid_pre.1", torch.randn(model.d_model), coeff=0.5, positions=[3, 7]),
           Ablate("head_out.1", index=(slice(None), slice(None), 1)),
           Replace("attn_out.0", torch.zeros(model.d_model), index=(slice(None), 6)),
           Add("mlp_out.1", torch.randn(model.d_model), coeff=0.3),
           Add("mlp_in.0", torch.randn(model.d_model), coeff=0.2, positions=[2, 8]),
           Add("q.1", torch.randn(model.d_head), coeff=0.5, positions=[4]),
           Ablate("v.0", index=(slice(None), slice(None), model.n_kv_heads - 1))]
    if "resid_mid" in a.points:
        ivs.append(Replace(f"resid_mid.{n - 1}", torch.randn(model.d_model), index=(slice(None), 9)))
    dense = [L for L in range(n) if L not in a.moe_layers]
    if dense:
        ivs.append(Replace(f"mlp_act.{dense[0]}", torch.tensor(2.0), index=(slice(None), slice(None), 5)))
    return ivs


def test_interventions_agree_across_backends(row):
    model = build(row)
    clean, _ = tokens(model)
    ivs = _interventions(model)
    read = [f"resid_post.{model.n_layers - 1}", "attn_out.1"]
    ref = model.run(clean, ivs, read=read, backend="torch")
    plain = model.run(clean, backend="torch").logits
    assert diff(ref.logits, plain) > 1e-3  # the interventions do something
    for backend in backends_for(row)[1:]:
        got = model.run(clean, ivs, read=read, backend=backend)
        assert diff(got.logits, ref.logits) <= TOL, backend
        assert all(diff(got.acts[s], ref.acts[s]) <= 1e-5 for s in read), backend


def test_a_site_the_block_lacks_is_a_one_line_error():
    parallel = build("neox-parallel")
    with pytest.raises(InterpError, match="runs attention and MLP in parallel"):
        parallel.run(tokens(parallel)[0], read=["resid_mid.0"])
    olmo = build("olmo2")
    with pytest.raises(InterpError, match="have no 'ln1' norm"):
        olmo.run(tokens(olmo)[0], read=["norm_scale.0.ln1"])


# ------------------------------------------------------------------ config facts


def test_windows_and_scalars_come_from_the_config():
    assert build("mistral-window").adapter.windows == (WINDOW,) * 3
    assert build("qwen2-window").adapter.windows == (None, WINDOW, WINDOW)  # layers >= max_window_layers slide
    assert build("gemma2-caps").adapter.windows == (WINDOW, None, WINDOW)
    assert build("llama").adapter.windows == (None,) * 3
    assert build("gemma2-caps").adapter.logit_post == "soft-capped at 2"
    assert build("granite").adapter.logit_post == "divided by 4"
    assert build("gemma3-multimodal").adapter.logit_post is None  # ConditionalGeneration never caps
    assert build("granite").adapter.points["attn_out"].scale == 0.5
    assert build("falcon-newarch-kv2").adapter.n_kv_heads == 2 and build("falcon-mqa").adapter.n_kv_heads == 1


def test_w_q_matches_the_models_own_queries():
    """W_Q cut out of separate, fused, per-head, grouped and Conv1D projections gives the q the model computes."""
    for row_id in ("llama", "phi3", "gpt2", "neox-parallel", "falcon-newarch-kv2", "falcon-mqa", "qwen3-headdim"):
        model = build(row_id)
        clean, _ = tokens(model)
        x = model.run(clean, read=["resid_pre.1"], backend="torch").acts["resid_pre.1"]
        hf_layer = model.adapter.layer_list(model.hf)[1]
        ln = next(m for name, m in hf_layer.named_children() if name in ("input_layernorm", "ln_1", "ln_attn"))
        xn = ln(x)
        q = torch.einsum("bpm,hmd->bphd", xn, model.W_Q(1))
        proj = next(m for name, m in hf_layer.named_modules() if name.split(".")[-1] in
                    ("q_proj", "c_attn", "qkv_proj", "query_key_value"))
        full = proj(xn) - proj(torch.zeros_like(xn))  # without any bias: W_Q is the linear part
        h, kv = model.n_heads, model.n_kv_heads
        if row_id == "neox-parallel":  # [q_h, k_h, v_h] per head
            want = full.unflatten(-1, (h, 3, -1))[..., 0, :]
        elif row_id == "falcon-newarch-kv2":  # [q.. (h / kv), k, v] per kv head
            want = full.unflatten(-1, (kv, h // kv + 2, -1))[..., : h // kv, :].flatten(-3, -2)
        else:  # queries first: separate q_proj, [Q|K|V], GPT-2's thirds, Falcon's [Q_all, k, v]
            want = full[..., : h * model.d_head].unflatten(-1, (h, -1))
        assert diff(q, want) <= 1e-5, row_id


# ------------------------------------------------------------------ q/k/v per head

# The test's own reading of where each fused projection keeps q, k and v (written from the HF modeling files,
# not from interp.adapters): [Q|K|V] in one block, [q_h, k_h, v_h] per head, or [q.. (h / kv), k, v] per kv head.
QKV_FUSED = {"phi3": "contiguous", "gpt2": "contiguous", "falcon-mqa": "contiguous", "neox-parallel": "per_head",
             "neox-sequential": "per_head", "falcon-mha-sequential": "per_head", "falcon-alibi": "per_head",
             "falcon-newarch-kv2": "grouped"}
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "c_attn", "qkv_proj", "query_key_value")
QKV_KINDS = ("llama", "phi3", "gpt2", "neox-parallel", "falcon-newarch-kv2", "falcon-mqa")  # one row per layout


def _projections(model, L: int) -> dict[str, torch.nn.Module]:
    layer = model.adapter.layer_list(model.hf)[L]
    return {name.split(".")[-1]: m for name, m in layer.named_modules() if name.split(".")[-1] in PROJECTIONS}


def _columns(model, row_id: str, which: str, head: int) -> tuple[str, torch.Tensor]:
    """(projection name, the output columns holding head ``head`` of ``which``), by the test's own layout table."""
    h, kv, d = model.n_heads, model.n_kv_heads, model.d_head
    fused, index = QKV_FUSED.get(row_id), "qkv".index(which)
    if fused is None:
        return f"{which}_proj", head * d + torch.arange(d)
    if fused == "contiguous":
        start = (0, h * d, (h + kv) * d)[index] + head * d
    elif fused == "per_head":
        start = (3 * head + index) * d
    else:  # grouped: query head j sits in kv group j // (h / kv)
        g = h // kv
        start = ((head // g) * (g + 2) + head % g) * d if which == "q" else (head * (g + 2) + g + index - 1) * d
    return next(n for n in _projections(model, 0) if n not in ("q_proj", "k_proj", "v_proj")), start + torch.arange(d)


def _own_qkv(model, row_id: str, L: int, tokens_: torch.Tensor):
    """The projections' input and q/k/v per head, from plain torch hooks on the HF projections of layer L."""
    seen = {}
    handles = [m.register_forward_hook(lambda m, args, out, n=n: seen.__setitem__(n, (args[0], out)))
               for n, m in _projections(model, L).items()]
    try:
        with torch.no_grad():
            model.hf(input_ids=tokens_)
    finally:
        for handle in handles:
            handle.remove()
    own = {}
    for which, count in (("q", model.n_heads), ("k", model.n_kv_heads), ("v", model.n_kv_heads)):
        cut = [_columns(model, row_id, which, j) for j in range(count)]
        own[which] = torch.stack([seen[name][1][..., cols] for name, cols in cut], dim=-2)
    return next(iter(seen.values()))[0], own


def test_qkv_sites_are_the_projections_outputs_per_head(row):
    """q/k/v = the HF projection's output cut per head (the test's own cut) = its input @ W + b, on every backend."""
    model, L = build(row), 1
    clean, _ = tokens(model)
    sites = [f"{c}.{L}" for c in "qkv"]
    x, own = _own_qkv(model, row, L, clean)
    ref = model.run(clean, read=sites + [f"resid_pre.{L}"], backend="torch").acts
    if "ln1" in model.adapter.norms:  # what the projections read is ln1(resid_pre)
        with torch.no_grad():
            ln1 = model.hf.get_submodule(model.adapter.norms["ln1"].module_path(L))
            assert diff(ln1(ref[f"resid_pre.{L}"]), x) <= 1e-5
    weights = {c: (w, model.b_QKV(L, c)) for c, w in (("q", model.W_Q(L)), ("k", model.W_K(L)), ("v", model.W_V(L)))}
    for c, count in (("q", model.n_heads), ("k", model.n_kv_heads), ("v", model.n_kv_heads)):
        site = ref[f"{c}.{L}"]
        assert site.shape == (*clean.shape, count, model.d_head), c
        assert diff(site, own[c]) <= 1e-5, c
        w, b = weights[c]
        assert w.shape == (count, model.d_model, model.d_head), c
        computed = torch.einsum("bpm,hmd->bphd", x, w) + (0 if b is None else b)
        assert diff(site, computed) <= 1e-5, c
    assert (model.b_QKV(L, "q") is None) == (row not in ("llama-bias", "qwen2-window", "gpt2", "neox-parallel", "neox-sequential"))
    for backend in backends_for(row)[1:]:
        got = model.run(clean, read=sites, backend=backend).acts
        assert all(diff(got[s], ref[s]) <= 1e-5 for s in sites), backend


def test_a_replace_on_k_is_a_plain_hook_on_the_projection(row):
    """Replacing KV head 1 of k (and query head 2 of q) = writing the same values into the projection's columns."""
    model, L = build(row), 1
    clean, _ = tokens(model)
    kv_head = min(1, model.n_kv_heads - 1)
    torch.manual_seed(0)
    new_k, new_q = torch.randn(model.d_head), torch.randn(model.d_head)
    edits = [("k", kv_head, new_k), ("q", 2, new_q)]
    handles = []
    for which, head, value in edits:
        name, cols = _columns(model, row, which, head)

        def hook(m, args, out, cols=cols, value=value):
            out = out.clone()
            out[..., cols] = value
            return out

        handles.append(_projections(model, L)[name].register_forward_hook(hook))
    try:
        with torch.no_grad():
            expected = model.hf(input_ids=clean).logits
    finally:
        for handle in handles:
            handle.remove()
    assert diff(expected, model.hf(input_ids=clean).logits) > 1e-3  # the edit matters
    ivs = [Replace(f"{which}.{L}", value, index=(slice(None), slice(None), head)) for which, head, value in edits]
    for backend in backends_for(row):
        assert diff(model.run(clean, ivs, backend=backend).logits, expected) <= TOL, backend


@pytest.mark.parametrize("row_id", QKV_KINDS)
def test_qkv_gradients_are_the_projections_own(row_id):
    """d metric / d (q, k, v) read with grad=True = the gradient at the HF projection's output, cut per head."""
    model, L = build(row_id), 1
    clean, _ = tokens(model)
    held = {}

    def hold(m, args, out, name):
        held[name] = out.detach().requires_grad_(True)
        return held[name]

    handles = [m.register_forward_hook(lambda m, a, o, n=n: hold(m, a, o, n)) for n, m in _projections(model, L).items()]
    try:
        logits = model.hf(input_ids=clean).logits
    finally:
        for handle in handles:
            handle.remove()
    names = list(held)
    grads = dict(zip(names, torch.autograd.grad(logits[:, -1, 11].sum(), [held[n] for n in names])))
    sites = [f"{c}.{L}" for c in "qkv"]
    for backend in backends_for(row_id):
        out = model.run(clean, read=sites, grad=True, backend=backend)
        got = torch.autograd.grad(out.logits[:, -1, 11].sum(), [out.acts[s] for s in sites])
        for c, g in zip("qkv", got):
            count = model.n_heads if c == "q" else model.n_kv_heads
            want = torch.stack([grads[name][..., cols] for name, cols in
                                (_columns(model, row_id, c, j) for j in range(count))], dim=-2)
            assert g.abs().max() > 0 and diff(g, want) <= 1e-5 * max(1.0, want.abs().max().item()), (backend, c)


def test_qkv_reads_with_rules_follow_the_forward_order():
    """Qwen3 and OLMo-2 run q_norm between q_proj and k_proj: nnsight, which serves modules in forward order, agrees."""
    for row_id in ("qwen3-headdim", "olmo2", "stablelm"):
        model = build(row_id)
        clean, _ = tokens(model)
        sites = ["q.1", "k.1", "v.1"]
        grads = {}
        for backend in ("torch", "nnsight"):
            out = model.run(clean, read=sites, grad=True, backend=backend, rules="ln,identity,half")
            grads[backend] = torch.autograd.grad(out.logits[:, -1, 11].sum(), [out.acts[s] for s in sites])
        assert all(diff(a, b) <= 1e-6 for a, b in zip(*grads.values())), row_id


def test_qkv_site_errors_are_one_line():
    model = build("llama")
    clean, _ = tokens(model)
    for name, message in (("q.99", "site 'q.99' is out of range: this model has layers 0..2"),
                          ("k", "bad site 'k': use <kind>.<layer>, e.g. k.0"),
                          ("v.1.2", "bad site 'v.1.2'"), ("qk.1", "unknown site 'qk.1'")):
        with pytest.raises(InterpError) as err:
            model.run(clean, read=[name])
        assert message in str(err.value) and "\n" not in str(err.value), name
    with pytest.raises(InterpError, match="unknown projection 'o': use q, k or v"):
        model.b_QKV(0, "o")
    assert all(model.site_width(f"{c}.0") is None for c in "qkv")  # no dictionary splices per-head q/k/v


# ------------------------------------------------------------------ patching


def _brute_force(model, row_id, component, base, source, metric_of):
    """Patch every (layer, cell) with plain torch hooks placed from the test's own `Ref` description."""
    ref = BY_ID[row_id].ref
    hf = model.hf
    layers = hf.get_submodule(ref.layers)
    n_layers, d_head = len(layers), model.d_head

    def site_module(L):
        return {"resid_pre": layers[L], "attn_out": layers[L].get_submodule(ref.attn_out),
                "mlp_out": layers[L].get_submodule(ref.mlp_out), "head_out": layers[L].get_submodule(ref.o_proj)}[component]

    def first(out):
        return out[0] if isinstance(out, tuple) else out

    # the source's values, read with the same hooks
    values = {}
    handles = []
    for L in range(n_layers):
        module = site_module(L)
        if component in ("resid_pre", "head_out"):
            handles.append(module.register_forward_pre_hook(lambda m, args, L=L: values.__setitem__(L, args[0].clone())))
        else:
            handles.append(module.register_forward_hook(lambda m, args, out, L=L: values.__setitem__(L, first(out).clone() * ref.scale)))
    try:
        with torch.no_grad():
            hf(input_ids=source)
    finally:
        for h in handles:
            h.remove()
    cells = range(model.n_heads) if component == "head_out" else range(SEQ)
    out = torch.zeros(base.shape[0], n_layers, len(cells))
    for L in range(n_layers):
        module = site_module(L)
        for c in cells:
            if component == "head_out":
                def pre(m, args, c=c, L=L):
                    x = args[0].clone()
                    x[..., c * d_head:(c + 1) * d_head] = values[L][..., c * d_head:(c + 1) * d_head]
                    return (x,) + args[1:]
                handle = module.register_forward_pre_hook(pre)
            elif component == "resid_pre":
                def pre(m, args, c=c, L=L):
                    x = args[0].clone()
                    x[:, c] = values[L][:, c]
                    return (x,) + args[1:]
                handle = module.register_forward_pre_hook(pre)
            else:
                def post(m, args, o, c=c, L=L):
                    x = first(o).clone()
                    x[:, c] = values[L][:, c] / ref.scale
                    return (x,) + o[1:] if isinstance(o, tuple) else x
                handle = module.register_forward_hook(post)
            try:
                with torch.no_grad():
                    out[:, L, c] = metric_of(hf(input_ids=base).logits[:, -1])
            finally:
                handle.remove()
    return out


@pytest.mark.parametrize("component", ["resid_pre", "attn_out", "mlp_out", "head_out"])
def test_batched_equals_hooks_equals_brute_force(row, component):
    model = build(row)
    clean, corrupt = tokens(model)
    answer, wrong = torch.tensor([11, 12, 13]), torch.tensor([21, 22, 23])
    with torch.no_grad():
        clean_run = model.run(clean, read=[f"{component}.{L}" for L in range(model.n_layers)], backend="torch")
        corrupt_logits = model.hf(input_ids=corrupt).logits[:, -1]
    ctx = MetricContext(answer, wrong, clean_run.logits[:, -1], corrupt_logits)
    batched, _ = sweep(model, component, corrupt, clean_run.acts, logit_diff, ctx, engine="batched", max_rows=4)
    hooks, _ = sweep(model, component, corrupt, clean_run.acts, logit_diff, ctx, engine="hooks")
    brute = _brute_force(model, row, component, corrupt, clean, lambda logits: logit_diff(logits, ctx))
    assert diff(batched, hooks) <= TOL
    assert diff(hooks, brute) <= TOL
    assert (brute - logit_diff(corrupt_logits, ctx)[:, None, None]).abs().max() > 1e-3  # some patch matters


def test_atp_equals_finite_differences(row):
    """AtP's (source - base) . grad equals d metric / d eps of the patch base + eps (source - base)."""
    from interp.patching.attribution import attribution_patching

    model = build(row)
    clean, corrupt = tokens(model)
    L = 1
    sites = [f"resid_pre.{L}", f"attn_out.{L}", f"mlp_out.{L}", f"head_out.{L}"]
    clean_acts = model.run(clean, read=sites, backend="torch").acts
    base = model.run(corrupt, read=sites, backend="torch")
    ctx = MetricContext(torch.tensor([11, 12, 13]), torch.tensor([21, 22, 23]), base.logits[:, -1], base.logits[:, -1])
    eps = 1e-2
    for backend in backends_for(row):
        est = attribution_patching(model, ["resid_pre", "attn_out", "mlp_out", "head_out"], corrupt, clean_acts,
                                   logit_diff, ctx, layers=[L], backend=backend)
        base_metric = logit_diff(base.logits[:, -1], ctx)
        for comp, site, cell in (("resid_pre", sites[0], (slice(None), 8)), ("attn_out", sites[1], (slice(None), 8)),
                                 ("mlp_out", sites[2], (slice(None), 8)), ("head_out", sites[3], (slice(None), slice(None), 2))):
            delta = clean_acts[site][cell] - base.acts[site][cell]
            nudged = model.run(corrupt, [Replace(site, base.acts[site][cell] + eps * delta, index=cell)], backend="torch")
            fd = (logit_diff(nudged.logits[:, -1], ctx) - base_metric) / eps
            got = est[comp][:, 0, 8] if comp != "head_out" else est[comp][:, 0, 2]
            scale = max(1.0, fd.abs().max().item())
            assert diff(got - base_metric, fd) <= 2e-2 * scale, (backend, comp)


def test_relp_rules_leave_the_forward_bit_identical(row):
    model = build(row)
    clean, _ = tokens(model)
    moe = bool(model.adapter.moe_layers)
    rules = "ln,identity" if moe else "ln,identity,half"
    coefficients = {}
    for backend in backends_for(row):
        if backend == "lens" and row in LENS_FUSED_GATE_UP:  # the bridge splits gate_up itself: refused, not wrong
            with pytest.raises(InterpError, match="rule 'half' could not edit model.layers.0.mlp.gate_up_proj"):
                model.run(clean, grad=True, backend=backend, rules=rules)
            continue
        plain = model.run(clean, read=["resid_pre.1"], grad=True, backend=backend)
        ruled = model.run(clean, read=["resid_pre.1"], grad=True, backend=backend, rules=rules)
        assert torch.equal(plain.logits, ruled.logits), backend
        g_plain, = torch.autograd.grad(plain.logits[:, -1, 11].sum(), plain.acts["resid_pre.1"])
        g_ruled, = torch.autograd.grad(ruled.logits[:, -1, 11].sum(), ruled.acts["resid_pre.1"])
        assert diff(g_plain, g_ruled) > 1e-6, backend  # the rules did change the backward
        coefficients[backend] = g_ruled
    for backend, g in coefficients.items():  # and changed it the same way on every backend
        assert diff(g, coefficients["torch"]) <= 1e-5 * max(1.0, g.abs().max().item()), backend
    if moe:
        with pytest.raises(InterpError, match="rule 'half' cannot be applied: the experts"):
            model.run(clean, grad=True, rules="half")


def test_transformer_lens_patching_gives_our_numbers(row):
    if row in LENS_REFUSED:
        return
    import transformer_lens.patching as tlp

    model = build(row)
    clean, corrupt = tokens(model)
    answer, wrong = torch.tensor([11, 12, 13]), torch.tensor([21, 22, 23])
    bridge = model.backend("lens").bridge
    with torch.no_grad():
        _, clean_cache = bridge.run_with_cache(clean)
        corrupt_logits = model.hf(input_ids=corrupt).logits[:, -1]
    ctx = MetricContext(answer, wrong, model.hf(input_ids=clean).logits[:, -1], corrupt_logits)

    def metric(logits):
        return logit_diff(logits[:, -1], ctx).mean()

    theirs = tlp.get_act_patch_resid_pre(bridge, corrupt, clean_cache, metric)
    clean_acts = model.run(clean, read=[f"resid_pre.{L}" for L in range(model.n_layers)], backend="lens").acts
    ours, _ = sweep(model, "resid_pre", corrupt, clean_acts, logit_diff, ctx, engine="batched")
    assert diff(ours.mean(0), theirs) <= 1e-3


# ------------------------------------------------------------------ refusal


def test_an_unsupported_architecture_is_refused_from_its_config():
    with pytest.raises(InterpError, match="architecture 'bloom' is not supported: interp supports .*llama"):
        adapter_for(T.BloomConfig())
    assert adapter_for(T.Gemma3Config()).layers == "model.language_model.layers"


def test_every_family_has_a_row():
    from interp.adapters import supported_families

    families = {build(r.id).adapter.family for r in ROWS}
    assert families == set(supported_families())
