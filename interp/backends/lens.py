"""The ``lens`` backend: TransformerLens's TransformerBridge.

The bridge is booted from a private copy of the loaded HF model (booting rewires the module tree
it is given) and the plan's steps become ``run_with_hooks`` forward hooks on the bridge's canonical
hook names, which TransformerLens removes when the run ends, also when it raises. Backward rules
are PyTorch hooks on the HF modules the bridge wraps (so they act before the bridge's own output
hooks), removed the same way.
"""

from __future__ import annotations

import copy
import logging

import torch

from interp.architectures import ArchTable
from interp.backends.steps import RuleStep, Step
from interp.backends.torch_backend import installed_steps


class LensBackend:
    """Runs through ``TransformerBridge.run_with_hooks``."""

    name = "lens"

    def __init__(self, hf: torch.nn.Module, tokenizer, table: ArchTable, model_name: str, n_heads: int):
        from transformer_lens.model_bridge import TransformerBridge

        private = copy.deepcopy(hf)
        if not getattr(private.config, "architectures", None):
            private.config.architectures = [type(private).__name__]
        logging.getLogger("transformer_lens").setLevel(logging.ERROR)
        self.bridge = TransformerBridge.boot_transformers(model_name, hf_model=private, tokenizer=tokenizer)
        self.table, self.n_heads = table, n_heads

    def _hook(self, step: Step):
        def hook(x, hook):
            new = step.fn(x)
            return None if step.read_only else new

        return hook

    def hook_name(self, step: Step) -> str:
        return self.table.point(step.location).lens_name(step.location.layer)

    def run(self, tokens: torch.Tensor, steps: list[Step | RuleStep], grad: bool) -> torch.Tensor:
        hooks = [(self.hook_name(s), self._hook(s)) for s in steps if isinstance(s, Step)]
        rules = [s for s in steps if isinstance(s, RuleStep)]
        with torch.set_grad_enabled(grad), installed_steps(self.bridge.original_model, self.table, rules, self.n_heads):
            return self.bridge.run_with_hooks(tokens, fwd_hooks=hooks, reset_hooks_end=True)
