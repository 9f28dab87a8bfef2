"""The ``torch`` backend: plain PyTorch forward hooks on the HF modules.

`installed_steps` is a context manager that hooks a plan (`Step`s and `RuleStep`s) onto an HF
model and removes every hook on exit, also when the forward pass raises. The patching engine uses
it directly to run only the later layers of a model, and the lens backend for the sites and rules
it hooks on the HF modules inside TransformerLens's bridge.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from interp.adapters import Adapter, Point
from interp.backends.steps import RuleStep, Step
from interp.errors import InterpError

_WRAPPED = "_original_component"  # where TransformerBridge keeps the HF module it wraps


def find_module(root: torch.nn.Module, path: str, unwrap: bool = True) -> torch.nn.Module:
    """The HF module at ``path`` under ``root``, looking through wrappers that keep it as ``_original_component``.

    ``unwrap=False`` returns the outermost module at ``path`` (TransformerBridge's component, whose input and
    output are the HF module's; the bridge may compute them itself without calling the HF module).
    """
    module = root
    for part in path.split("."):
        while part not in module._modules and _WRAPPED in module._modules:
            module = module._modules[_WRAPPED]
        if part not in module._modules:
            raise InterpError(f"model has no module '{path}' (stopped at '{part}'); is the architecture adapter right?")
        module = module._modules[part]
    while unwrap and _WRAPPED in module._modules:
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


def _hook_rule(hf: torch.nn.Module, step: RuleStep, fired: set[int], on_wrappers: bool) -> list:
    """Hook a rule on its HF module; with ``on_wrappers``, on the wrapper too, for calls that bypass the module.

    TransformerBridge's components usually call the HF module inside (the rule must then edit there, before
    the component's own output hooks), but some compute it themselves (LayerNorm from scratch): the wrapper
    applies the rule only to calls where the HF module did not run.
    """
    inner = find_module(hf, step.module)
    outer = find_module(hf, step.module, unwrap=False)
    if not on_wrappers or inner is outer:
        return [inner.register_forward_hook(_rule_hook(step, fired))]
    inside: list[bool] = [False]
    rule = _rule_hook(step, fired)

    def enter(module, args):
        inside[0] = False

    def on_inner(module, args, out):
        inside[0] = True
        return rule(module, args, out)

    def on_outer(module, args, out):
        return None if inside[0] else rule(module, args, out)

    return [outer.register_forward_pre_hook(enter), inner.register_forward_hook(on_inner),
            outer.register_forward_hook(on_outer)]


def _rule_hook(step: RuleStep, fired: set[int]):
    def hook(module, args, out):
        fired.add(id(step))
        if not args:
            raise InterpError(f"rule at '{step.module}' needs the module's input, which was passed by keyword")
        if isinstance(out, tuple):
            return (step.fn(args[0], out[0]),) + out[1:]
        return step.fn(args[0], out)

    return hook


@contextmanager
def installed_steps(hf: torch.nn.Module, adapter: Adapter, steps: list[Step | RuleStep],
                    rules_on_wrappers: bool = False) -> Iterator[None]:
    """Hook ``steps`` onto ``hf`` (in order) for the duration of the block; always removes them.

    A backward rule whose module the forward never called is an error: its gradients would be silently
    the plain ones. ``rules_on_wrappers`` also covers TransformerBridge's components that compute a module
    themselves instead of calling it (`_hook_rule`).
    """
    handles = []
    fired: set[int] = set()
    rules = [s for s in steps if isinstance(s, RuleStep)]
    try:
        for step in steps:
            if isinstance(step, RuleStep):
                handles += _hook_rule(hf, step, fired, rules_on_wrappers)
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
    missed = [s for s in rules if id(s) not in fired]
    if missed:
        raise InterpError(f"rule '{missed[0].rule}' could not edit {missed[0].module}: the forward never called it "
                          f"({len(missed)} such modules; TransformerLens's bridge computes some itself: use --backend torch or nnsight)")


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
