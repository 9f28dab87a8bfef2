"""The ``lens`` backend: TransformerLens's TransformerBridge.

The bridge is booted from a private copy of the loaded HF model (booting rewires the module tree
it is given) and the plan's steps become ``run_with_hooks`` forward hooks on the bridge's canonical
hook names, which TransformerLens removes when the run ends, also when it raises.
"""

from __future__ import annotations

import copy
import logging

import torch

from interp.architectures import ArchTable
from interp.backends.steps import Step


class LensBackend:
    """Runs through ``TransformerBridge.run_with_hooks``."""

    name = "lens"

    def __init__(self, hf: torch.nn.Module, tokenizer, table: ArchTable, model_name: str):
        from transformer_lens.model_bridge import TransformerBridge

        private = copy.deepcopy(hf)
        if not getattr(private.config, "architectures", None):
            private.config.architectures = [type(private).__name__]
        logging.getLogger("transformer_lens").setLevel(logging.ERROR)
        self.bridge = TransformerBridge.boot_transformers(model_name, hf_model=private, tokenizer=tokenizer)
        self.table = table

    def _hook(self, step: Step):
        def hook(x, hook):
            new = step.fn(x)
            return None if step.read_only else new

        return hook

    def hook_name(self, step: Step) -> str:
        return self.table.point(step.location).lens_name(step.location.layer)

    def run(self, tokens: torch.Tensor, steps: list[Step], grad: bool) -> torch.Tensor:
        hooks = [(self.hook_name(s), self._hook(s)) for s in steps]
        with torch.set_grad_enabled(grad):
            return self.bridge.run_with_hooks(tokens, fwd_hooks=hooks, reset_hooks_end=True)
