"""The ``torch`` backend: plain PyTorch forward hooks on the HF modules.

`installed_steps` is a context manager that hooks a plan (`Step`s and `RuleStep`s) onto an HF
model and removes every hook on exit, also when the forward pass raises. The patching engine uses
it directly to run only the later layers of a model, and the lens backend to run backward rules on
the HF modules inside TransformerLens's bridge.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch

from interp.architectures import ArchTable
from interp.backends.steps import RuleStep, Step, norm_eps, rms_scale
from interp.errors import InterpError

_WRAPPED = "_original_component"  # where TransformerBridge keeps the HF module it wraps


def find_module(root: torch.nn.Module, path: str) -> torch.nn.Module:
    """The HF module at ``path`` under ``root``, looking through wrappers that keep it as ``_original_component``."""
    module = root
    for part in path.split("."):
        while part not in module._modules and _WRAPPED in module._modules:
            module = module._modules[_WRAPPED]
        if part not in module._modules:
            raise InterpError(f"model has no module '{path}' (stopped at '{part}'); is the architecture table right?")
        module = module._modules[part]
    while _WRAPPED in module._modules:
        module = module._modules[_WRAPPED]
    return module


def _pre_hook(step: Step, n_heads: int, eps: float | None):
    kind = step.location.kind

    def hook(module, args):
        x = args[0]
        if kind == "norm_scale":
            step.fn(rms_scale(x, eps))
            return None
        view = x.unflatten(-1, (n_heads, -1)) if kind == "head_out" else x
        new = step.fn(view)
        if step.read_only:
            return None
        return (new.flatten(-2) if kind == "head_out" else new,) + tuple(args[1:])

    return hook


def _post_hook(step: Step, index: int | None):
    def hook(module, args, out):
        if index is None and not isinstance(out, tuple):
            new = step.fn(out)
            return None if step.read_only else new
        i = 0 if index is None else index
        new = step.fn(out[i])
        return None if step.read_only else out[:i] + (new,) + out[i + 1 :]

    return hook


def _rule_hook(step: RuleStep):
    def hook(module, args, out):
        if not args:
            raise InterpError(f"rule at '{step.module}' needs the module's input, which was passed by keyword")
        return step.fn(args[0], out)

    return hook


@contextmanager
def installed_steps(hf: torch.nn.Module, table: ArchTable, steps: list[Step | RuleStep], n_heads: int) -> Iterator[None]:
    """Hook ``steps`` onto ``hf`` (in order) for the duration of the block; always removes them."""
    handles = []
    try:
        for step in steps:
            if isinstance(step, RuleStep):
                handles.append(find_module(hf, step.module).register_forward_hook(_rule_hook(step)))
                continue
            point = table.point(step.location)
            module = hf.get_submodule(point.module_path(step.location.layer))
            if point.io == "input":
                eps = norm_eps(module) if step.location.kind == "norm_scale" else None
                handles.append(module.register_forward_pre_hook(_pre_hook(step, n_heads, eps)))
            else:
                handles.append(module.register_forward_hook(_post_hook(step, point.index)))
        yield
    finally:
        for handle in handles:
            handle.remove()


class TorchBackend:
    """Runs the HF model itself with PyTorch hooks."""

    name = "torch"

    def __init__(self, hf: torch.nn.Module, table: ArchTable, n_heads: int):
        self.hf, self.table, self.n_heads = hf, table, n_heads

    def run(self, tokens: torch.Tensor, steps: list[Step], grad: bool) -> torch.Tensor:
        with installed_steps(self.hf, self.table, steps, self.n_heads), torch.set_grad_enabled(grad):
            return self.hf(input_ids=tokens, use_cache=False).logits

    def run_cached(self, tokens: torch.Tensor, steps: list[Step], past) -> tuple[torch.Tensor, object]:
        """Last-position logits for ``tokens`` continuing the KV cache ``past`` (None: a new one), and the grown cache."""
        with installed_steps(self.hf, self.table, steps, self.n_heads), torch.no_grad():
            out = self.hf(input_ids=tokens, past_key_values=past, use_cache=True, logits_to_keep=1)
        return out.logits, out.past_key_values
