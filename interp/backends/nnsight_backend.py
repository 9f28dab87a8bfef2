"""The ``nnsight`` backend: nnsight's TransformersModel around the HF model.

nnsight 0.8 serves a module's ``.input``/``.output`` only in the order the forward pass reaches
them, so the plan's steps (already in execution order) are grouped by module and each module is
read, edited and written back once. A backward rule (`RuleStep`) edits a module's output from
its input and output, before any site step reads that output. The logits are the model's own
output (after any soft-capping or logit scaling the HF forward applies), not ``lm_head``'s.
nnsight installs its interleaving for the length of the ``trace`` block only.
"""

from __future__ import annotations

from itertools import groupby

import torch

from interp.adapters import Adapter
from interp.backends.steps import RuleStep, Step
from interp.backends.torch_backend import apply_step, installed_steps


class NNsightBackend:
    """Runs through ``LanguageModel.trace``."""

    name = "nnsight"

    def __init__(self, hf: torch.nn.Module, tokenizer, adapter: Adapter):
        from nnsight.modeling.transformers import TransformersModel

        self.lm = TransformersModel(hf, task="text-generation", tokenizer=tokenizer)
        self.hf, self.adapter = hf, adapter

    def _envoy(self, path: str):
        envoy = self.lm
        for part in path.split("."):
            envoy = envoy[int(part)] if part.isdigit() else getattr(envoy, part)
        return envoy

    def _where(self, step: Step | RuleStep) -> tuple[str, str]:
        if isinstance(step, RuleStep):
            return step.module, "output"
        point = self.adapter.point(step.location)
        return point.module_path(step.location.layer), point.io

    def _apply(self, step: Step, path: str, value):
        point = self.adapter.point(step.location)
        return apply_step(step, point, self.hf.get_submodule(path), value)

    def run(self, tokens: torch.Tensor, steps: list[Step | RuleStep], grad: bool) -> torch.Tensor:
        # nnsight serves one call of a module per access; rules on modules that run once per routed expert
        # are plain PyTorch hooks on the same modules instead (they change no forward value).
        repeated = [s for s in steps if isinstance(s, RuleStep) and s.repeated]
        steps = [s for s in steps if not (isinstance(s, RuleStep) and s.repeated)]
        groups = [(where, list(group)) for where, group in groupby(steps, key=self._where)]
        inputs: dict[str, torch.Tensor] = {}  # module inputs already fetched (nnsight serves each once)
        with torch.set_grad_enabled(grad), installed_steps(self.hf, self.adapter, repeated):
            with self.lm.trace(tokens):
                for (path, io), group in groups:
                    envoy = self._envoy(path)
                    if io == "output" and path not in inputs and any(isinstance(s, RuleStep) for s in group):
                        inputs[path] = envoy.input
                    value = envoy.output if io == "output" else envoy.input
                    new = value
                    for step in group:
                        if isinstance(step, RuleStep):
                            new = _rule_output(step, inputs[path], new)
                        else:
                            new = self._apply(step, path, new)
                    if io == "input":
                        inputs[path] = new
                    if new is not value:
                        if io == "output":
                            envoy.output = new
                        else:
                            envoy.input = new
                logits = self.lm.output.logits.save()
        return logits


def _rule_output(step: RuleStep, module_input, out):
    if isinstance(out, tuple):
        return (step.fn(module_input, out[0]),) + out[1:]
    return step.fn(module_input, out)
