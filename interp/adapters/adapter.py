"""`Adapter`: everything interp knows about one model's architecture, resolved from its config.

An adapter is built per loaded model by `interp.adapters.adapter_for` from the family's declarative
description (`interp.adapters.families`) and the HF config. It says

- where things are: decoder layers, embeddings, final norm, unembedding, and the `Point` of every site;
- the block shape: ``sequential`` (pre-norm), ``parallel`` (attention and MLP read the same residual,
  as in GPT-NeoX, GPT-J, Falcon), ``sandwich`` (pre- and post-norms, Gemma 2/3) or ``post_norm``
  (a norm after each sublayer only, OLMo-2);
- the norm kind (RMSNorm with its gain offset, or LayerNorm), the attention layout (how to cut
  W_Q, W_K, W_V and W_O out of separate or fused projections), the MLP kind (gated, plain, fused, MoE);
- the per-layer attention windows and every scalar the forward applies.

Nothing outside `interp.adapters` names an HF module path or config field: methods ask the adapter
(`Adapter.point`, `Adapter.W_O`, `Adapter.windows`...).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from interp.adapters.points import INPUT, OUTPUT, RULE, Point, RulePoint
from interp.errors import InterpError
from interp.sites import Site

BLOCKS = ("sequential", "parallel", "sandwich", "post_norm")

# A weight accessor: (hf model, layer) -> tensor, in the layout documented on the Adapter method.
WeightFn = Callable[[torch.nn.Module, int], torch.Tensor]


@dataclass(frozen=True)
class NormSpec:
    """How the model's norms compute: ``rms`` (x / rms(x)) or ``layer`` ((x - mean) / std); gain = weight + offset."""

    kind: str  # "rms" or "layer"
    offset: float = 0.0

    def divisor(self, x: torch.Tensor, eps: float) -> torch.Tensor:
        """The divisor the norm applies to ``x`` (shape [..., 1]), computed in float32 as the norms do."""
        xf = x.float()
        if self.kind == "layer":
            xf = xf - xf.mean(-1, keepdim=True)
        return (xf.pow(2).mean(-1, keepdim=True) + eps).sqrt().to(x.dtype)


def norm_eps(module: torch.nn.Module) -> float:
    """The epsilon of an HF norm module (Llama: ``variance_epsilon``; Gemma, LayerNorm: ``eps``)."""
    for attr in ("variance_epsilon", "eps", "variance_eps"):
        if hasattr(module, attr):
            return float(getattr(module, attr))
    raise InterpError(f"cannot read the epsilon of norm module {type(module).__name__}")


@dataclass(frozen=True)
class Adapter:
    """One model's architecture facts. Build it with `interp.adapters.adapter_for(config)`."""

    family: str  # e.g. "llama", "gpt2", "gemma3"
    block: str
    points: dict[str, Point]
    norms: dict[str, Point]  # ln1 / ln2 / final -> the norm module (input point); absent roles are absent
    norm: NormSpec
    rule_points: tuple[RulePoint, ...]
    layers: str  # path of the decoder layers' ModuleList
    final_norm: str
    unembed: str
    embed: str
    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_model: int
    d_head: int
    d_mlp: int
    d_vocab: int
    n_ctx: int | None  # the longest sequence the positions support (None: the config does not say, e.g. ALiBi)
    w_q: WeightFn  # [n_heads, d_model, d_head]
    w_k: WeightFn  # [n_kv_heads, d_model, d_head]
    w_v: WeightFn  # [n_kv_heads, d_model, d_head]
    qkv_bias: Callable[[torch.nn.Module, int, str], torch.Tensor | None]  # (hf, layer, "q"|"k"|"v") -> [heads, d_head]
    w_o: WeightFn  # [n_heads, d_head, d_model], times what the block multiplies the attention output by
    w_out: WeightFn  # [d_mlp, d_model], likewise
    attn_out_bias: Callable[[torch.nn.Module, int], torch.Tensor | None]
    windows: tuple[int | None, ...] = ()  # per layer: the sliding window, None for full attention
    moe_layers: frozenset[int] = frozenset()
    n_experts: int = 0
    notes: tuple[str, ...] = field(default_factory=tuple)
    softcaps: int = 0  # tanh soft-caps per forward (attention scores in every layer, final logits)
    logit_post: str | None = None  # what the HF forward does after lm_head ("soft-capped at 30", "divided by 8")
    rule_refusals: tuple[tuple[str, str], ...] = ()  # (layer type, why a rule of that type cannot be applied)

    @property
    def name(self) -> str:
        return self.family

    @property
    def norm_offset(self) -> float:
        return self.norm.offset

    # ------------------------------------------------------------------ sites
    def check_site(self, site: Site) -> None:
        """A one-line error if ``site`` does not exist in this architecture (e.g. resid_mid in a parallel block)."""
        kind, layer = site.kind, site.layer
        if kind == "norm_scale":
            if site.norm not in self.norms:
                have = ", ".join(sorted(self.norms)) or "none"
                raise InterpError(f"site '{site}' does not exist: {self.family} layers have no '{site.norm}' norm "
                                  f"({self.block} block; norms: {have})")
            return
        if kind not in self.points:
            if kind == "resid_mid":
                raise InterpError(f"site '{site}' does not exist: {self.family} runs attention and MLP in parallel on "
                                  "the same residual, so there is no residual between them; use resid_pre or resid_post")
            if kind in ("router_logits", "expert_out"):
                raise InterpError(f"site '{site}' needs a mixture-of-experts layer; {self.family} has none")
            raise InterpError(f"site '{site}' is not available for {self.family}")
        moe = layer in self.moe_layers
        if kind == "mlp_act" and moe:
            raise InterpError(f"site '{site}' does not exist: layer {layer} is a mixture of experts; read "
                              f"router_logits.{layer} or expert_out.{layer} (each expert's weighted output), or mlp_out.{layer}")
        if kind in ("router_logits", "expert_out") and not moe:
            raise InterpError(f"site '{site}' does not exist: layer {layer} of {self.family} is a dense MLP "
                              f"(MoE layers: {', '.join(map(str, sorted(self.moe_layers))) or 'none'})")

    def point(self, site: Site) -> Point:
        """The point holding ``site`` (for norm_scale: the norm whose input gives the divisor)."""
        self.check_site(site)
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

    def site_kinds(self) -> tuple[str, ...]:
        """The site kinds this architecture has (norm_scale included when it has any norm)."""
        return tuple(self.points) + (("norm_scale",) if self.norms else ())

    # ------------------------------------------------------------------ modules and weights
    def layer_list(self, hf: torch.nn.Module) -> torch.nn.ModuleList:
        return hf.get_submodule(self.layers)

    def W_U(self, hf: torch.nn.Module) -> torch.Tensor:
        """Unembedding [d_model, d_vocab]."""
        return hf.get_submodule(self.unembed).weight.T

    def unembed_bias(self, hf: torch.nn.Module) -> torch.Tensor | None:
        return hf.get_submodule(self.unembed).bias

    def final_gain(self, hf: torch.nn.Module) -> torch.Tensor:
        """The final norm's gain [d_model] (weight plus the family's offset)."""
        return hf.get_submodule(self.final_norm).weight + self.norm.offset

    def ln1_gain(self, hf: torch.nn.Module, layer: int) -> torch.Tensor:
        """The pre-attention norm's gain [d_model]; an error for blocks without one."""
        if "ln1" not in self.norms:
            raise InterpError(f"{self.family} has no pre-attention norm")
        return hf.get_submodule(self.norms["ln1"].module_path(layer)).weight + self.norm.offset

    def W_Q(self, hf: torch.nn.Module, layer: int) -> torch.Tensor:
        return self.w_q(hf, layer)

    def W_K(self, hf: torch.nn.Module, layer: int) -> torch.Tensor:
        return self.w_k(hf, layer)

    def W_V(self, hf: torch.nn.Module, layer: int) -> torch.Tensor:
        return self.w_v(hf, layer)

    def b_QKV(self, hf: torch.nn.Module, layer: int, which: str) -> torch.Tensor | None:
        """The bias [heads, d_head] of the ``which`` ("q", "k" or "v") projection, None where it has none."""
        if which not in ("q", "k", "v"):
            raise InterpError(f"unknown projection '{which}': use q, k or v")
        return self.qkv_bias(hf, layer, which)

    def W_O(self, hf: torch.nn.Module, layer: int) -> torch.Tensor:
        return self.w_o(hf, layer)

    def W_out(self, hf: torch.nn.Module, layer: int) -> torch.Tensor:
        if layer in self.moe_layers:
            raise InterpError(f"layer {layer} is a mixture of experts: it has no single W_out")
        return self.w_out(hf, layer)

    def max_window(self) -> int | None:
        """The shortest sliding window of any layer, None if every layer attends to the whole past."""
        windows = [w for w in self.windows if w is not None]
        return min(windows) if windows else None

    def sublayers_add_linearly(self) -> bool:
        """True when attention and MLP outputs enter the residual unnormalised (no post-norms)."""
        return self.block in ("sequential", "parallel")
