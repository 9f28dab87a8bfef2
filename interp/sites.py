"""Sites: backend-neutral names for the activations of a decoder-only transformer.

A site is a string such as ``"resid_pre.3"`` (kind ``resid_pre``, layer 3) or
``"norm_scale.final"``. The same names work on every backend and architecture; the architecture
adapters (`interp.adapters`) say where each site lives in TransformerLens and in the HF module
tree that nnsight wraps.

Layouts (batch first, as every backend returns them):

=================  =================================  ==========================================
kind               shape                              meaning
=================  =================================  ==========================================
resid_pre.L        [batch, pos, d_model]              residual stream entering layer L
resid_mid.L        [batch, pos, d_model]              residual after attention, before the MLP
resid_post.L       [batch, pos, d_model]              residual leaving layer L
attn_out.L         [batch, pos, d_model]              what attention adds to the residual
mlp_out.L          [batch, pos, d_model]              what the MLP adds to the residual
mlp_in.L           [batch, pos, d_model]              what the MLP reads (its norm's output, if any)
q.L                [batch, pos, n_heads, d_head]      the query projection's output per head (before q-norm, RoPE)
k.L                [batch, pos, n_kv_heads, d_head]   the key projection's output per KV head (before k-norm, RoPE)
v.L                [batch, pos, n_kv_heads, d_head]   the value projection's output per KV head
head_out.L         [batch, pos, n_heads, d_head]      per-head attention output z (before W_O)
mlp_act.L          [batch, pos, d_mlp]                neurons: act(gate) * up for gated MLPs
attn_pattern.L     [batch, n_heads, q_pos, k_pos]     attention probabilities (read only)
norm_scale.L.ln1   [batch, pos, 1]                    divisor of the pre-attention norm (read only)
norm_scale.L.ln2   [batch, pos, 1]                    divisor of the pre-MLP norm (read only)
norm_scale.final   [batch, pos, 1]                    divisor of the final norm (read only)
router_logits.L    [batch, pos, n_experts]            MoE router logits (read only, MoE layers)
expert_out.L       [batch, pos, n_experts, d_model]   each expert's weighted output; sums to mlp_out
=================  =================================  ==========================================

The meanings hold for every block shape: ``attn_out``/``mlp_out`` are exactly what each sublayer
adds to the residual stream (after any post-norm or residual multiplier), ``resid_mid`` exists
only where attention and MLP run one after the other, and ``mlp_act`` only on dense MLP layers.
``q``/``k``/``v`` are the projections' outputs cut per head out of separate or fused projections
(``ln1(resid_pre) @ W_Q + b_Q``: `Model.W_Q`, ``W_K``, ``W_V``, ``b_QKV``); with grouped-query attention one
KV head serves n_heads / n_kv_heads query heads.
The norm divisor is sqrt(mean(x**2) + eps) for RMSNorm and sqrt(var(x) + eps) for LayerNorm.

Writing ``resid_mid.L`` replaces the residual stream itself (what the MLP *and* later layers see),
not only the MLP's norm input.

>>> parse_site("head_out.5")
Site(kind='head_out', layer=5, norm=None)
>>> str(parse_site("norm_scale.2.ln1"))
'norm_scale.2.ln1'
"""

from __future__ import annotations

from dataclasses import dataclass

from interp.errors import InterpError

LAYER_KINDS = (
    "resid_pre",
    "resid_mid",
    "resid_post",
    "attn_out",
    "mlp_out",
    "mlp_in",
    "q",
    "k",
    "v",
    "head_out",
    "mlp_act",
    "attn_pattern",
    "router_logits",
    "expert_out",
)
READ_ONLY_KINDS = ("attn_pattern", "norm_scale", "router_logits", "expert_out")
NORMS = ("ln1", "ln2")
ALL_KINDS = LAYER_KINDS + ("norm_scale",)


@dataclass(frozen=True)
class Site:
    """A parsed site name. ``layer`` is None only for ``norm_scale.final``."""

    kind: str
    layer: int | None
    norm: str | None = None

    def __str__(self) -> str:
        if self.kind == "norm_scale":
            return "norm_scale.final" if self.layer is None else f"norm_scale.{self.layer}.{self.norm}"
        return f"{self.kind}.{self.layer}"

    @property
    def writable(self) -> bool:
        return self.kind not in READ_ONLY_KINDS


def parse_site(name: str | Site, n_layers: int | None = None) -> Site:
    """Parse ``"kind.layer"`` (or ``norm_scale.L.ln1`` / ``norm_scale.final``) into a `Site`.

    Raises `InterpError` naming the valid kinds for an unknown kind, or the valid layer range.
    """
    if isinstance(name, Site):
        site = name
    else:
        parts = str(name).split(".")
        kind = parts[0]
        if kind not in ALL_KINDS:
            raise InterpError(f"unknown site '{name}': the kind must be one of {', '.join(ALL_KINDS)}")
        if kind == "norm_scale":
            if parts[1:] == ["final"]:
                return Site("norm_scale", None, "final")
            if len(parts) != 3 or not (parts[1].isascii() and parts[1].isdigit()) or parts[2] not in NORMS:
                raise InterpError(f"bad site '{name}': use norm_scale.<layer>.ln1, norm_scale.<layer>.ln2 or norm_scale.final")
            site = Site("norm_scale", int(parts[1]), parts[2])
        else:
            if len(parts) != 2 or not (parts[1].isascii() and parts[1].isdigit()):
                raise InterpError(f"bad site '{name}': use <kind>.<layer>, e.g. {kind}.0")
            site = Site(kind, int(parts[1]))
    if n_layers is not None and site.layer is not None and not 0 <= site.layer < n_layers:
        raise InterpError(f"site '{site}' is out of range: this model has layers 0..{n_layers - 1}")
    return site
