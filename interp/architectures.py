"""Architecture tables: where each site lives, per architecture and per backend.

One `ArchTable` per HF architecture maps every site kind to a `Point`: the HF module (relative to
the ``*ForCausalLM`` model) whose input or output holds the activation, and the TransformerLens
TransformerBridge hook name for the same activation. Adding an architecture is adding a table.

Each table also lists its *rule points*: the modules whose outputs the backward-only LRP rules
(`interp.rules`) edit, per layer type ("norm", "activation", "gated_product").

Two kinds are derived rather than hooked directly, identically on every backend:

- ``norm_scale``: the RMS divisor ``sqrt(mean(x**2) + eps)`` computed from the norm's input.
- writes to ``resid_mid``: applied as a change of what attention adds to the residual
  (``attn_out += new_mid - old_mid``), so the residual stream itself is replaced.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from interp.errors import InterpError
from interp.sites import Site


@dataclass(frozen=True)
class Point:
    """Where an activation is: an HF module's input or output (``index`` picks from a tuple)."""

    module: str  # path template with {L}, e.g. "model.layers.{L}.mlp"
    io: str  # "input" or "output"
    lens: str  # TransformerBridge hook name template
    index: int | None = None  # element of a tuple output
    order: int = 0  # execution order inside a layer (module by module)

    def module_path(self, layer: int | None) -> str:
        return self.module.format(L=layer)

    def lens_name(self, layer: int | None) -> str:
        return self.lens.format(L=layer)


@dataclass(frozen=True)
class RulePoint:
    """A module whose output a backward rule of ``layer_type`` edits (``{L}`` for the layer)."""

    module: str
    layer_type: str  # "norm", "activation" or "gated_product"
    order: int  # execution order inside a layer, on the same scale as `Point.order`

    @property
    def per_layer(self) -> bool:
        return "{L}" in self.module


# Within one module: its input is reached first, then the rules edit its output, then sites read it.
INPUT, RULE, OUTPUT = 0, 1, 2


@dataclass(frozen=True)
class ArchTable:
    """Sites of one architecture. ``norms`` maps ln1/ln2/final to the norm modules' points."""

    name: str
    points: dict[str, Point]
    norms: dict[str, Point]
    layers: str = "model.layers"
    final_norm: str = "model.norm"
    unembed: str = "lm_head"
    embed: str = "model.embed_tokens"
    rule_points: tuple[RulePoint, ...] = ()
    norm_offset: float = 0.0  # RMSNorm gain is weight + norm_offset (Gemma stores weight - 1)
    notes: tuple[str, ...] = field(default_factory=tuple)

    def point(self, site: Site) -> Point:
        """The point holding ``site`` (for norm_scale: the norm whose input gives the scale)."""
        if site.kind == "norm_scale":
            return self.norms[site.norm]
        return self.points[site.kind]

    def order_key(self, site: Site) -> tuple[int, int, int]:
        """Sort key giving the order in which a forward pass reaches the site."""
        point = self.point(site)
        within = INPUT if point.io == "input" else OUTPUT
        return (10**6 if site.layer is None else site.layer, point.order, within)

    def rule_key(self, point: RulePoint, layer: int | None) -> tuple[int, int, int]:
        """Sort key of a rule's edit, on the same scale as `order_key`."""
        return (10**6 if layer is None else layer, point.order, RULE)


_LAYER = "model.layers.{L}"

LLAMA = ArchTable(
    name="llama",
    points={
        "resid_pre": Point(_LAYER, "input", "blocks.{L}.hook_resid_pre", order=0),
        "head_out": Point(_LAYER + ".self_attn.o_proj", "input", "blocks.{L}.attn.hook_z", order=20),
        "attn_pattern": Point(_LAYER + ".self_attn", "output", "blocks.{L}.attn.hook_pattern", index=1, order=30),
        "attn_out": Point(_LAYER + ".self_attn", "output", "blocks.{L}.hook_attn_out", index=0, order=30),
        "resid_mid": Point(_LAYER + ".post_attention_layernorm", "input", "blocks.{L}.hook_resid_mid", order=40),
        "mlp_act": Point(_LAYER + ".mlp.down_proj", "input", "blocks.{L}.mlp.hook_post", order=55),
        "mlp_out": Point(_LAYER + ".mlp", "output", "blocks.{L}.hook_mlp_out", order=60),
        "resid_post": Point(_LAYER, "output", "blocks.{L}.hook_resid_post", order=70),
    },
    norms={
        "ln1": Point(_LAYER + ".input_layernorm", "input", "blocks.{L}.ln1.hook_scale", order=10),
        "ln2": Point(_LAYER + ".post_attention_layernorm", "input", "blocks.{L}.ln2.hook_scale", order=40),
        "final": Point("model.norm", "input", "ln_final.hook_scale", order=0),
    },
    rule_points=(
        RulePoint(_LAYER + ".input_layernorm", "norm", 10),
        RulePoint(_LAYER + ".post_attention_layernorm", "norm", 40),
        RulePoint(_LAYER + ".mlp.act_fn", "activation", 50),
        RulePoint(_LAYER + ".mlp.act_fn", "gated_product", 50),
        RulePoint(_LAYER + ".mlp.up_proj", "gated_product", 51),
        RulePoint("model.norm", "norm", 0),
    ),
)

# Gemma 3 normalises each sublayer's output before adding it to the residual, so what a sublayer
# adds to the residual is the output of its post-norm, and the MLP's pre-norm reads resid_mid.
GEMMA3 = ArchTable(
    name="gemma3",
    points={
        "resid_pre": Point(_LAYER, "input", "blocks.{L}.hook_resid_pre", order=0),
        "head_out": Point(_LAYER + ".self_attn.o_proj", "input", "blocks.{L}.attn.hook_z", order=20),
        "attn_pattern": Point(_LAYER + ".self_attn", "output", "blocks.{L}.attn.hook_pattern", index=1, order=30),
        "attn_out": Point(_LAYER + ".post_attention_layernorm", "output", "blocks.{L}.hook_attn_out", order=40),
        "resid_mid": Point(_LAYER + ".pre_feedforward_layernorm", "input", "blocks.{L}.hook_resid_mid", order=50),
        "mlp_act": Point(_LAYER + ".mlp.down_proj", "input", "blocks.{L}.mlp.hook_post", order=65),
        "mlp_out": Point(_LAYER + ".post_feedforward_layernorm", "output", "blocks.{L}.hook_mlp_out", order=70),
        "resid_post": Point(_LAYER, "output", "blocks.{L}.hook_resid_post", order=80),
    },
    norms={
        "ln1": Point(_LAYER + ".input_layernorm", "input", "blocks.{L}.ln1.hook_scale", order=10),
        "ln2": Point(_LAYER + ".pre_feedforward_layernorm", "input", "blocks.{L}.ln2.hook_scale", order=50),
        "final": Point("model.norm", "input", "ln_final.hook_scale", order=0),
    },
    rule_points=(
        RulePoint(_LAYER + ".input_layernorm", "norm", 10),
        RulePoint(_LAYER + ".self_attn.q_norm", "norm", 15),
        RulePoint(_LAYER + ".self_attn.k_norm", "norm", 16),
        RulePoint(_LAYER + ".post_attention_layernorm", "norm", 40),
        RulePoint(_LAYER + ".pre_feedforward_layernorm", "norm", 50),
        RulePoint(_LAYER + ".mlp.act_fn", "activation", 60),
        RulePoint(_LAYER + ".mlp.act_fn", "gated_product", 60),
        RulePoint(_LAYER + ".mlp.up_proj", "gated_product", 61),
        RulePoint(_LAYER + ".post_feedforward_layernorm", "norm", 70),
        RulePoint("model.norm", "norm", 0),
    ),
    norm_offset=1.0,
)

TABLES = {"llama": LLAMA, "gemma3_text": GEMMA3, "gemma3": GEMMA3}


def table_for(model_type: str) -> ArchTable:
    """The table for an HF ``config.model_type``; a clear error for architectures without one."""
    try:
        return TABLES[model_type]
    except KeyError:
        raise InterpError(
            f"architecture '{model_type}' has no site table yet (supported: llama, gemma3); "
            "add one in interp/architectures.py"
        ) from None
