"""`Layout`: a family's declarative description, and `build`, which turns it plus an HF config into an `Adapter`.

A family declares only what the config cannot tell: module names, the block shape, the norm kind,
how q/k/v are stored, the MLP kind and which scalars the forward applies. `build` derives the rest
(dimensions, per-layer windows, MoE layers, multiplier values) and lays out every site's `Point`
on one order scale, so steps sort into the order a forward pass reaches them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F

from interp.adapters.adapter import Adapter, NormSpec, norm_eps
from interp.adapters.points import Part, Point, RulePoint
from interp.errors import InterpError

QKV_LAYOUTS = ("separate", "fused", "per_head", "conv1d", "grouped", "multi_query")


@dataclass(frozen=True)
class Layout:
    """Where a family keeps things (paths relative to the layer, except the first four) and how they compute."""

    layers: str = "model.layers"
    embed: str = "model.embed_tokens"
    final_norm: str = "model.norm"
    unembed: str = "lm_head"
    block: str = "sequential"
    norm: NormSpec = NormSpec("rms")
    attn: str = "self_attn"
    q: str = "q_proj"  # the query projection, or the fused q/k/v projection (see qkv)
    k: str = "k_proj"  # the key and value projections (separate layout only)
    v: str = "v_proj"
    qkv: str = "separate"  # separate | fused [Q|K|V] | per_head [q,k,v]*h | conv1d (GPT-2) | grouped | multi_query
    o: str = "o_proj"
    q_norm: str | None = None  # relative to attn
    k_norm: str | None = None
    qk_norm_per_head_modules: bool = False  # StableLM: a LayerNorm per head under q_norm.norms.{h}
    qk_norm_each: bool = False  # q_norm runs right after q_proj, before k_proj (Qwen3, OLMo-2); else after v_proj
    mlp: str = "mlp"
    act: str = "act_fn"  # relative to mlp
    up: str | None = "up_proj"  # None: plain MLP; the act's input is then the first linear's output
    gate_up_fused: bool = False  # Phi-3: one gate_up_proj, gate first
    down: str = "down_proj"
    ln1: str | None = "input_layernorm"
    ln2: str | None = "post_attention_layernorm"  # pre-MLP norm
    ln2_first: bool = False  # the pre-MLP norm runs before attention (Falcon's two parallel norms)
    attn_post_norm: str | None = None  # sandwich / post-norm: what normalises the attention output
    mlp_post_norm: str | None = None
    moe: str | None = None  # "qwen3_moe" or "mixtral": routing rule of the MoE blocks
    conv1d: bool = False  # weights stored [in, out] (GPT-2's Conv1D)
    residual_multiplier: float = 1.0
    layer_output_tuple: bool = False
    windows_all_layers: bool = False  # config.sliding_window applies to every layer (Mistral, Mixtral)
    notes: tuple[str, ...] = field(default_factory=tuple)


# ---------------------------------------------------------------- config facts


def _first(cfg, *names, default=None):
    for name in names:
        value = getattr(cfg, name, None)
        if value is not None:
            return value
    return default


def dims(cfg, layout: Layout) -> dict[str, int]:
    """n_layers, n_heads, n_kv_heads, d_model, d_head, d_mlp, d_vocab and n_ctx from a (text) config."""
    d_model = _first(cfg, "hidden_size", "n_embd")
    n_heads = _first(cfg, "num_attention_heads", "n_head")
    if layout.qkv == "multi_query":
        n_kv = 1
    elif layout.qkv == "grouped":
        n_kv = _first(cfg, "num_kv_heads", default=n_heads)
    else:
        n_kv = _first(cfg, "num_key_value_heads", default=n_heads)
    d_head = _first(cfg, "head_dim", default=d_model // n_heads)
    if layout.moe == "mixtral":
        d_mlp = cfg.intermediate_size
    else:
        d_mlp = _first(cfg, "intermediate_size", "n_inner", "ffn_hidden_size", default=4 * d_model)
    return dict(n_layers=_first(cfg, "num_hidden_layers", "n_layer"), n_heads=n_heads, n_kv_heads=n_kv,
                d_model=d_model, d_head=d_head, d_mlp=d_mlp, d_vocab=cfg.vocab_size,
                n_ctx=_first(cfg, "max_position_embeddings", "n_positions", "n_ctx"))


def windows(cfg, layout: Layout, n_layers: int) -> tuple[int | None, ...]:
    """The sliding window of each layer (None: full attention), as the HF masks apply them."""
    window = getattr(cfg, "sliding_window", None)
    types = getattr(cfg, "layer_types", None)
    if window is None:
        return (None,) * n_layers
    if types:
        return tuple(window if t == "sliding_attention" else None for t in types)
    return (window,) * n_layers if layout.windows_all_layers else (None,) * n_layers


def moe_layers(cfg, layout: Layout, n_layers: int) -> frozenset[int]:
    if layout.moe == "mixtral":
        return frozenset(range(n_layers))
    if layout.moe == "qwen3_moe":
        step, dense = cfg.decoder_sparse_step, set(cfg.mlp_only_layers or ())
        return frozenset(i for i in range(n_layers) if i not in dense and cfg.num_experts > 0 and (i + 1) % step == 0)
    return frozenset()


# ---------------------------------------------------------------- weights


def _weight(hf: torch.nn.Module, path: str) -> torch.Tensor:
    return hf.get_submodule(path).weight


def qkv_parts(layout: Layout, n: dict[str, int]) -> dict[str, tuple[str, Part]]:
    """For q, k and v: the projection holding them (relative to the attention module) and their `Part` of its output."""
    h, kv = n["n_heads"], n["n_kv_heads"]
    if layout.qkv == "separate":
        return {c: (getattr(layout, c), Part(1, count, 0, count)) for c, count in (("q", h), ("k", kv), ("v", kv))}
    if layout.qkv in ("fused", "multi_query"):  # [Q | K | V]
        groups, bounds = 1, (0, h, h + kv, h + 2 * kv)
    elif layout.qkv == "per_head":  # [q_h, k_h, v_h] for each head h
        groups, bounds = h, (0, 1, 2, 3)
    elif layout.qkv == "grouped":  # [q.. (h / kv), k, v] for each kv head
        groups, bounds = kv, (0, h // kv, h // kv + 1, h // kv + 2)
    else:
        raise InterpError(f"unknown q/k/v layout {layout.qkv!r}")
    return {c: (layout.q, Part(groups, bounds[-1], bounds[i], bounds[i + 1])) for i, c in enumerate("qkv")}


def weight_fns(layout: Layout, n: dict[str, int]) -> dict[str, Callable]:
    """The `Adapter`'s weight accessors for this layout: W_Q/W_K/W_V, q/k/v biases, W_O, W_out, the attention output bias."""
    h, d, m = n["n_heads"], n["d_head"], layout.residual_multiplier
    layer = layout.layers + ".{L}."
    attn = layer + layout.attn + "."
    parts = qkv_parts(layout, n)

    def w_proj(which: str) -> Callable:
        module, part = parts[which]

        def w(hf, L):  # [heads, d_model, d_head]
            w = _weight(hf, (attn + module).format(L=L))
            w = w if layout.conv1d else w.T  # -> [d_model, out] (Conv1D stores [in, out])
            return part.take(w).transpose(0, 1)

        return w

    def qkv_bias(hf, L, which):  # [heads, d_head] or None
        module, part = parts[which]
        bias = hf.get_submodule((attn + module).format(L=L)).bias
        return None if bias is None else part.take(bias)

    def w_o(hf, L):
        w = _weight(hf, (attn + layout.o).format(L=L))
        w = w if layout.conv1d else w.T  # -> [n_heads * d_head, d_model]
        w = w.reshape(h, d, -1)
        return w * m if m != 1.0 else w

    def w_out(hf, L):
        w = _weight(hf, (layer + layout.mlp + "." + layout.down).format(L=L))
        w = w if layout.conv1d else w.T
        return w * m if m != 1.0 else w

    def o_bias(hf, L):
        bias = hf.get_submodule((attn + layout.o).format(L=L)).bias
        return None if bias is None else (bias * m if m != 1.0 else bias)

    return dict(w_q=w_proj("q"), w_k=w_proj("k"), w_v=w_proj("v"), qkv_bias=qkv_bias, w_o=w_o, w_out=w_out,
                attn_out_bias=o_bias)


# ---------------------------------------------------------------- MoE (derived read-only sites)


def _route(layout: Layout, cfg, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(weights, expert indices) [tokens, top_k], exactly as the family's router computes them."""
    probs = torch.softmax(logits.float(), dim=-1)
    top, index = torch.topk(probs, cfg.num_experts_per_tok, dim=-1)
    if layout.moe == "mixtral" or cfg.norm_topk_prob:
        top = top / top.sum(-1, keepdim=True)
    if layout.moe == "qwen3_moe":
        top = top.to(logits.dtype)
    return top, index


def moe_derivers(layout: Layout, cfg) -> tuple[Callable, Callable]:
    """Functions (MoE block, its input [b, p, d]) -> router logits [b, p, E] / expert outputs [b, p, E, d]."""
    from transformers.activations import ACT2FN

    act = ACT2FN[cfg.hidden_act]  # a fresh module: no hooks of ours or of a backend on it

    def router_logits(block: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, block.gate.weight)

    def expert_out(block: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])
        weights, index = _route(layout, cfg, F.linear(flat, block.gate.weight))
        experts = block.experts
        n_exp = experts.gate_up_proj.shape[0]
        out = flat.new_zeros(flat.shape[0], n_exp, flat.shape[-1])
        for e in range(n_exp):
            rows, slot = torch.where(index == e)
            if len(rows) == 0:
                continue
            gate, up = F.linear(flat[rows], experts.gate_up_proj[e]).chunk(2, dim=-1)
            y = F.linear(act(gate) * up, experts.down_proj[e])
            out[rows, e] = (y * weights[rows, slot, None]).to(out.dtype)
        return out.view(*x.shape[:-1], n_exp, x.shape[-1])

    return router_logits, expert_out


# ---------------------------------------------------------------- points


def _norm_divisor(norm: NormSpec) -> Callable:
    def divisor(module: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        return norm.divisor(x, norm_eps(module))

    return divisor


def logit_post(config, applies: bool = True) -> str | None:
    """What the CausalLM forward applies to lm_head's output, in words (None: nothing)."""
    cap = getattr(config, "final_logit_softcapping", None)
    scale = getattr(config, "logits_scaling", None)
    if not applies:
        return None
    if cap:
        return f"soft-capped at {cap:g}"
    if scale not in (None, 1, 1.0):
        return f"divided by {scale:g}"
    return None


def build(family: str, layout: Layout, config, caps_logits: bool = True) -> Adapter:
    """The `Adapter` of a model of ``family`` with HF ``config`` (its text config for multimodal models)."""
    n = dims(config, layout)
    layer = layout.layers + ".{L}"
    attn, mlp = f"{layer}.{layout.attn}", f"{layer}.{layout.mlp}"
    m, heads = layout.residual_multiplier, n["n_heads"]
    lens = "blocks.{L}."
    P = Point
    points = {
        "resid_pre": P(layer, "input", lens + "hook_resid_pre", order=0),
        "head_out": P(f"{attn}.{layout.o}", "input", lens + "attn.hook_z", order=20, heads=heads),
        "attn_pattern": P(attn, "output", lens + "attn.hook_pattern", index=1, order=30),
        "mlp_in": P(mlp, "input", lens + "mlp.hook_in", order=46),  # what the MLP reads (its norm's output in pre-norm blocks)
        "mlp_act": P(f"{mlp}.{layout.down}", "input", lens + "mlp.hook_post", order=55),
        "resid_post": P(layer, "output", lens + "hook_resid_post", index=0 if layout.layer_output_tuple else None, order=80),
    }
    # the projections' outputs per head, before any q/k norm and RoPE; fused projections are cut by a `Part`
    qkv_order = dict(q=12, k=14, v=16) if layout.qk_norm_each else dict(q=12, k=13, v=14)
    for c, (module, part) in qkv_parts(layout, n).items():
        whole = part.groups == 1 and part.lo == 0 and part.hi == part.slots
        points[c] = P(f"{attn}.{module}", "output", lens + f"attn.hook_{c}", order=qkv_order[c],
                      heads=part.hi if whole else 0, part=None if whole else part)
    if layout.attn_post_norm:  # sandwich / post-norm: the residual receives the post-norm's output
        points["attn_out"] = P(f"{layer}.{layout.attn_post_norm}", "output", lens + "hook_attn_out", order=40)
        points["mlp_out"] = P(f"{layer}.{layout.mlp_post_norm}", "output", lens + "hook_mlp_out", order=65)
    else:
        points["attn_out"] = P(attn, "output", lens + "hook_attn_out", index=0, order=30, scale=m)
        points["mlp_out"] = P(mlp, "output", lens + "hook_mlp_out", order=60, scale=m,
                              clone=layout.block == "parallel" and family == "falcon")
    if layout.block == "post_norm":  # the MLP reads the residual directly
        points["resid_mid"] = P(mlp, "input", lens + "hook_resid_mid", order=45)
    elif layout.block != "parallel":
        points["resid_mid"] = P(f"{layer}.{layout.ln2}", "input", lens + "hook_resid_mid", order=45)
    if layout.moe:
        router_logits, expert_out = moe_derivers(layout, config)
        points["router_logits"] = P(mlp, "input", None, order=47, derive=router_logits)
        points["expert_out"] = P(mlp, "input", None, order=48, derive=expert_out)

    divisor = _norm_divisor(layout.norm)
    norms = {"final": P(layout.final_norm, "input", "ln_final.hook_scale", order=0, derive=divisor)}
    if layout.ln1:
        norms["ln1"] = P(f"{layer}.{layout.ln1}", "input", lens + "ln1.hook_scale", order=10, derive=divisor)
    if layout.ln2:
        norms["ln2"] = P(f"{layer}.{layout.ln2}", "input", lens + "ln2.hook_scale", order=11 if layout.ln2_first else 45,
                         derive=divisor)

    rules = [RulePoint(p.module, "norm", p.order) for p in norms.values()]
    qk_norm_order = (13, 15) if layout.qk_norm_each else (15, 16)
    for i, name in enumerate((layout.q_norm, layout.k_norm)):
        if name and layout.qk_norm_per_head_modules:
            count = n["n_heads"] if i == 0 else n["n_kv_heads"]
            rules += [RulePoint(f"{attn}.{name}.norms.{h}", "norm", qk_norm_order[i]) for h in range(count)]
        elif name:
            rules.append(RulePoint(f"{attn}.{name}", "norm", qk_norm_order[i]))
    if layout.attn_post_norm:
        rules += [RulePoint(f"{layer}.{layout.attn_post_norm}", "norm", 40),
                  RulePoint(f"{layer}.{layout.mlp_post_norm}", "norm", 65)]
    act = f"{mlp}.{layout.act}"
    dense = "dense" if layout.moe else None
    rules.append(RulePoint(act, "activation", 50, only=dense))
    if layout.moe:
        rules.append(RulePoint(f"{mlp}.experts.{layout.act}", "activation", 50, only="moe", repeated=True))
    if layout.gate_up_fused:
        rules.append(RulePoint(f"{mlp}.{layout.up}", "gated_product", 49))
    elif layout.up:
        rules += [RulePoint(act, "gated_product", 50, only=dense), RulePoint(f"{mlp}.{layout.up}", "gated_product", 51, only=dense)]

    n_layers = n["n_layers"]
    moe = moe_layers(config, layout, n_layers)
    return Adapter(
        family=family, block=layout.block, points=points, norms=norms, norm=layout.norm,
        rule_points=tuple(sorted(rules, key=lambda r: (r.order, r.module))), layers=layout.layers,
        final_norm=layout.final_norm, unembed=layout.unembed, embed=layout.embed, **n,
        **weight_fns(layout, n), windows=windows(config, layout, n_layers),
        moe_layers=moe, n_experts=_first(config, "num_experts", "num_local_experts", default=0) if moe else 0,
        notes=layout.notes, logit_post=logit_post(config, caps_logits),
        softcaps=(n_layers if getattr(config, "attn_logit_softcapping", None) else 0)
        + (1 if caps_logits and getattr(config, "final_logit_softcapping", None) else 0),
        rule_refusals=(("gated_product", f"the experts of {family} compute act(gate) * up inside one fused module, "
                        "which no module hook can split; use --rules ln,identity"),) if moe else (),
    )


def with_paths(layout: Layout, prefix: str) -> Layout:
    """The same layout with the backbone under ``prefix`` (multimodal wrappers keep the text model deeper)."""
    return replace(layout, layers=f"{prefix}.layers", embed=f"{prefix}.embed_tokens", final_norm=f"{prefix}.norm")
