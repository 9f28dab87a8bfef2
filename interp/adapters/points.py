"""Points: where a site's activation lives in the HF module tree, and how to read and write it there.

A `Point` names one module (a path template with ``{L}`` for the layer), whether the activation is
that module's input or output, and the few transformations between the raw tensor the module sees
and the site's meaning: an element of a tuple output, a scalar the block multiplies it by before
adding it to the residual (Granite's ``residual_multiplier``), a [.., n_heads * d_head] -> [.., n_heads,
d_head] view, a `Part` of a fused projection's output (the queries, keys or values of a fused q/k/v
projection, per head), a copy (Falcon adds into the MLP's output in place), or a read-only value
*derived* from the module's input (norm divisors, MoE router logits and per-expert outputs).

Every backend reads and writes through `Point.extract` / `Point.insert` / `Point.derived`, so the
same site means the same tensor on every backend.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

# Within one module: its input is reached first, then backward rules edit its output, then sites read it.
INPUT, RULE, OUTPUT = 0, 1, 2


@dataclass(frozen=True)
class Part:
    """Heads ``lo:hi`` of a projection's last dimension seen as [groups, slots, d_head], as [.., (hi-lo)*groups, d_head].

    One rule covers every q/k/v layout: separate projections are one group of n slots; a fused
    [Q|K|V] (Phi-3, GPT-2's thirds, Falcon's multi-query [Q_all, k, v]) is one group of h + 2 kv slots;
    GPT-NeoX's [q_h, k_h, v_h] is h groups of 3; Falcon's grouped layout is kv groups of h/kv + 2.
    `take` and `put` are exact inverses, on activations and on weights' output dimension alike.

    >>> keys = Part(2, 3, 1, 2)                   # per_head: 2 heads of [q, k, v], d_head 2
    >>> x = torch.arange(12.).view(1, 12)
    >>> keys.take(x)                              # [1, 2 heads, 2]
    tensor([[[2., 3.],
             [8., 9.]]])
    >>> keys.put(x, torch.zeros(1, 2, 2))
    tensor([[ 0.,  1.,  0.,  0.,  4.,  5.,  6.,  7.,  0.,  0., 10., 11.]])
    """

    groups: int
    slots: int
    lo: int
    hi: int

    def take(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (self.groups, self.slots, -1))[..., self.lo : self.hi, :].flatten(-3, -2)

    def put(self, x: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
        """``x`` with this part replaced by ``new`` (a new tensor; ``x`` is left as it is)."""
        view = x.unflatten(-1, (self.groups, self.slots, -1))
        new = new.unflatten(-2, (self.groups, self.hi - self.lo)).to(view.dtype)
        return torch.cat([view[..., : self.lo, :], new, view[..., self.hi :, :]], dim=-2).flatten(-3)


@dataclass(frozen=True)
class Point:
    """Where an activation is: an HF module's input or output, and how the site's tensor relates to it."""

    module: str  # path template with {L}, e.g. "model.layers.{L}.mlp"
    io: str  # "input" or "output"
    lens: str | None = None  # TransformerBridge hook name template; None: hook the HF module inside the bridge
    index: int | None = None  # element of a tuple output
    order: int = 0  # execution order inside a layer (module by module)
    scale: float = 1.0  # site = raw * scale (what the block adds to the residual)
    heads: int = 0  # >0: the site is the raw [.., heads * d_head] viewed as [.., heads, d_head]
    part: Part | None = None  # the site is this part of the raw tensor (per-head q/k/v of a projection)
    clone: bool = False  # the model edits this tensor in place later: read a copy, pass a copy on
    derive: Callable[[torch.nn.Module, torch.Tensor], torch.Tensor] | None = None  # read-only value from the input

    def module_path(self, layer: int | None) -> str:
        return self.module.format(L=layer)

    def lens_name(self, layer: int | None) -> str | None:
        return None if self.lens is None else self.lens.format(L=layer)

    def raw(self, value):
        """The tensor inside a module's input/output ``value`` (a tensor, or a tuple for ``index``)."""
        if isinstance(value, tuple):
            return value[self.index or 0]
        return value

    def extract(self, value) -> torch.Tensor:
        """The site's tensor from the module's input/output ``value``."""
        x = self.raw(value)
        if self.clone:
            x = x.clone()
        if self.scale != 1.0:
            x = x * self.scale
        if self.part is not None:
            return self.part.take(x)
        return x.unflatten(-1, (self.heads, -1)) if self.heads else x

    def insert(self, value, new: torch.Tensor):
        """``value`` with the site's tensor replaced by ``new`` (the inverse of `extract`)."""
        if self.part is not None:
            new = self.part.put(self.raw(value), new)
        elif self.heads:
            new = new.flatten(-2)
        if self.scale != 1.0:
            new = new / self.scale
        elif self.clone:
            new = new.clone()
        if isinstance(value, tuple):
            i = self.index or 0
            return value[:i] + (new,) + value[i + 1 :]
        return new


@dataclass(frozen=True)
class RulePoint:
    """A module whose output a backward rule of ``layer_type`` edits (``{L}`` for the layer)."""

    module: str
    layer_type: str  # "norm", "activation" or "gated_product"
    order: int  # execution order inside a layer, on the same scale as `Point.order`
    only: str | None = None  # "moe" / "dense": only on mixture-of-experts / dense MLP layers
    repeated: bool = False  # the module runs several times per forward (once per routed expert)

    @property
    def per_layer(self) -> bool:
        return "{L}" in self.module
