"""What each sublayer reads from the residual stream, and through which norm: the facts edge-level methods need.

A computational-graph edge runs from a sender's write into the residual stream (the embeddings, a head, an MLP) to
a receiver's read of it (a head's query, key or value input, an MLP's input, the logits). The receiver reads a
residual site through a norm, or directly:

==============  =========================================  ==========================================
block           attention (q, k, v) reads                  the MLP reads
==============  =========================================  ==========================================
sequential      ln1(resid_pre.L)                           ln2(resid_mid.L)
sandwich        ln1(resid_pre.L)                           ln2(resid_mid.L)
parallel        ln1(resid_pre.L)                           ln2(resid_pre.L), or ln1's output if one norm
post_norm       resid_pre.L                                resid_mid.L
==============  =========================================  ==========================================

and the logits read the final norm of ``resid_post`` of the last layer. `sublayer_input` names them; the norm is
the model's own HF module, its ``forward`` called as a plain function (so its gradient is the module's own, and no
hook on the module fires again inside a running forward).

Heads write additively (the attention output is the sum over heads of ``z_h @ W_O[h]`` plus a bias) unless a norm
follows the attention (`heads_write_additively`): sandwich and post-norm blocks (Gemma 2/3, OLMo-2) normalise the
sum, so one head's write depends on the others; `attention_writer` is that norm.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from interp.errors import InterpError
from interp.model import Model

PARTS = ("attn", "mlp", "logits")


@dataclass(frozen=True)
class SublayerInput:
    """A sublayer's read: the residual ``site`` and the ``norm`` applied to it (None: read directly)."""

    site: str
    norm: torch.nn.Module | None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """What the sublayer reads from residual value ``x`` (a plain call of the norm module, no hooks of ours)."""
        if self.norm is None:
            return x
        out = self.norm.forward(x)  # forward, not __call__: no hook of a running forward fires again
        return out[0] if isinstance(out, tuple) else out


def _norm_module(model: Model, role: str, layer: int | None) -> torch.nn.Module:
    return model.hf.get_submodule(model.adapter.norms[role].module_path(layer))


def sublayer_input(model: Model, part: str, layer: int | None = None) -> SublayerInput:
    """What ``part`` ("attn", "mlp" or "logits") of ``layer`` reads: a residual site and its norm."""
    if part not in PARTS:
        raise InterpError(f"unknown sublayer '{part}': use one of {', '.join(PARTS)}")
    adapter, norms = model.adapter, model.adapter.norms
    if part == "logits":
        return SublayerInput(f"resid_post.{model.n_layers - 1}", _norm_module(model, "final", None))
    if layer is None or not 0 <= layer < model.n_layers:
        raise InterpError(f"layer {layer} is out of range: {model.name} has layers 0..{model.n_layers - 1}")
    if part == "attn":
        return SublayerInput(f"resid_pre.{layer}", _norm_module(model, "ln1", layer) if "ln1" in norms else None)
    if adapter.block == "parallel":
        role = "ln2" if "ln2" in norms else "ln1"
        return SublayerInput(f"resid_pre.{layer}", _norm_module(model, role, layer))
    return SublayerInput(f"resid_mid.{layer}", _norm_module(model, "ln2", layer) if "ln2" in norms else None)


def heads_write_additively(model: Model) -> bool:
    """Whether the attention output is the plain sum of the heads' writes (no norm after attention)."""
    return model.adapter.block not in ("sandwich", "post_norm")


def attention_writer(model: Model, layer: int) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """Where heads do not write additively: the function from the heads' summed output (``sum_h z_h @ W_O[h]``
    plus the output bias, `attention_bias`) to what attention adds to the residual (the norm after attention,
    called as the model's own module); None where heads write additively."""
    if heads_write_additively(model):
        return None
    norm = model.hf.get_submodule(model.adapter.points["attn_out"].module_path(layer))

    def write(u: torch.Tensor) -> torch.Tensor:
        out = norm.forward(u)  # forward, not __call__: the hooks reading this module's output do not fire again
        return out[0] if isinstance(out, tuple) else out

    return write


def attention_bias(model: Model, layer: int) -> torch.Tensor | None:
    """The attention output projection's bias [d_model] (times any residual multiplier), None where it has none."""
    return model.adapter.attn_out_bias(model.hf, layer)


def mlp_sees_attention(model: Model) -> bool:
    """Whether a layer's MLP reads its own attention's output (False for parallel blocks)."""
    return model.adapter.block != "parallel"


def input_grads(model: Model, read: SublayerInput, x: torch.Tensor, cotangents: torch.Tensor,
                frozen_norm: bool = False) -> torch.Tensor:
    """Gradients at the residual value ``x`` [b, p, d] for cotangents at the sublayer's input ``[n, b, p, d_in]``,
    through the norm at ``x`` (one vector-Jacobian product per cotangent, batched): ``[n, b, p, d]``.
    ``frozen_norm``: through the norm as RelP's ``ln`` rule sees it (its divisor held constant)."""
    if read.norm is None:
        return cotangents
    from interp.rules import RULES

    with torch.enable_grad():
        leaf = x.detach().requires_grad_(True)
        out = read(leaf)
        if frozen_norm:
            out = RULES["ln"]().edit(read.norm, model.adapter)(leaf, out)
        return torch.autograd.grad(out, leaf, cotangents, is_grads_batched=True)[0]

