"""The ``torch`` backend: plain PyTorch forward hooks on the HF modules.

`installed_steps` is a context manager that hooks a `Step` plan onto an HF model and removes
every hook on exit, also when the forward pass raises. The patching engine uses it directly to run
only the later layers of a model.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch

from interp.architectures import ArchTable
from interp.backends.steps import Step, norm_eps, rms_scale


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


@contextmanager
def installed_steps(hf: torch.nn.Module, table: ArchTable, steps: list[Step], n_heads: int) -> Iterator[None]:
    """Hook ``steps`` onto ``hf`` for the duration of the block; always removes them."""
    handles = []
    try:
        for step in steps:
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
