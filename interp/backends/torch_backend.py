"""The ``torch`` backend: plain PyTorch forward hooks on the HF modules.

`installed_steps` is a context manager that hooks a plan (`Step`s and `RuleStep`s) onto an HF
model and removes every hook on exit, also when the forward pass raises. The patching engine uses
it directly to run only the later layers of a model, and the lens backend for the sites and rules
it hooks on the HF modules inside TransformerLens's bridge.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch

from interp.adapters import Adapter, Point
from interp.backends.steps import RuleStep, Step
from interp.errors import InterpError

_WRAPPED = "_original_component"  # where TransformerBridge keeps the HF module it wraps


def find_module(root: torch.nn.Module, path: str) -> torch.nn.Module:
    """The HF module at ``path`` under ``root``, looking through wrappers that keep it as ``_original_component``."""
    module = root
    for part in path.split("."):
        while part not in module._modules and _WRAPPED in module._modules:
            module = module._modules[_WRAPPED]
        if part not in module._modules:
            raise InterpError(f"model has no module '{path}' (stopped at '{part}'); is the architecture adapter right?")
        module = module._modules[part]
    while _WRAPPED in module._modules:
        module = module._modules[_WRAPPED]
    return module


def apply_step(step: Step, point: Point, module: torch.nn.Module, value):
    """Run ``step`` on a module's input/output ``value``; returns the value that flows on (``value`` if unchanged)."""
    if point.derive is not None:
        step.fn(point.derive(module, point.raw(value)))
        return value
    new = step.fn(point.extract(value))
    return value if step.read_only else point.insert(value, new)


def _pre_hook(step: Step, point: Point):
    def hook(module, args):
        if not args:
            raise InterpError(f"site '{step.location}' needs the input of {type(module).__name__}, which was passed by keyword")
        new = apply_step(step, point, module, args[0])
        return None if new is args[0] else (new,) + tuple(args[1:])

    return hook


def _post_hook(step: Step, point: Point):
    def hook(module, args, out):
        new = apply_step(step, point, module, out)
        return None if new is out else new

    return hook


def _rule_hook(step: RuleStep):
    def hook(module, args, out):
        if not args:
            raise InterpError(f"rule at '{step.module}' needs the module's input, which was passed by keyword")
        if isinstance(out, tuple):
            return (step.fn(args[0], out[0]),) + out[1:]
        return step.fn(args[0], out)

    return hook


@contextmanager
def installed_steps(hf: torch.nn.Module, adapter: Adapter, steps: list[Step | RuleStep]) -> Iterator[None]:
    """Hook ``steps`` onto ``hf`` (in order) for the duration of the block; always removes them."""
    handles = []
    try:
        for step in steps:
            if isinstance(step, RuleStep):
                handles.append(find_module(hf, step.module).register_forward_hook(_rule_hook(step)))
                continue
            point = adapter.point(step.location)
            module = find_module(hf, point.module_path(step.location.layer))
            if point.io == "input":
                handles.append(module.register_forward_pre_hook(_pre_hook(step, point)))
            else:
                handles.append(module.register_forward_hook(_post_hook(step, point)))
        yield
    finally:
        for handle in handles:
            handle.remove()


class TorchBackend:
    """Runs the HF model itself with PyTorch hooks."""

    name = "torch"

    def __init__(self, hf: torch.nn.Module, adapter: Adapter):
        self.hf, self.adapter = hf, adapter

    def run(self, tokens: torch.Tensor, steps: list[Step], grad: bool) -> torch.Tensor:
        with installed_steps(self.hf, self.adapter, steps), torch.set_grad_enabled(grad):
            return self.hf(input_ids=tokens, use_cache=False).logits

    def run_cached(self, tokens: torch.Tensor, steps: list[Step], past) -> tuple[torch.Tensor, object]:
        """Last-position logits for ``tokens`` continuing the KV cache ``past`` (None: a new one), and the grown cache."""
        with installed_steps(self.hf, self.adapter, steps), torch.no_grad():
            out = self.hf(input_ids=tokens, cache=past, use_cache=True, logits_to_keep=1)
        return out.logits, out.cache
