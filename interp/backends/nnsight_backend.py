"""The ``nnsight`` backend: nnsight's TransformersModel around the HF model.

nnsight 0.8 serves a module's ``.input``/``.output`` only in the order the forward pass reaches
them, so the plan's steps (already in execution order) are grouped by module and each module is
read, edited and written back once. A backward rule (`RuleStep`) edits a module's output from
its input and output, before any site step reads that output. nnsight installs its interleaving
for the length of the ``trace`` block only.
"""

from __future__ import annotations

from itertools import groupby

import torch

from interp.architectures import ArchTable
from interp.backends.steps import RuleStep, Step, norm_eps, rms_scale


class NNsightBackend:
    """Runs through ``LanguageModel.trace``."""

    name = "nnsight"

    def __init__(self, hf: torch.nn.Module, tokenizer, table: ArchTable, n_heads: int):
        from nnsight.modeling.transformers import TransformersModel

        self.lm = TransformersModel(hf, task="text-generation", tokenizer=tokenizer)
        self.hf, self.table, self.n_heads = hf, table, n_heads

    def _envoy(self, path: str):
        envoy = self.lm
        for part in path.split("."):
            envoy = envoy[int(part)] if part.isdigit() else getattr(envoy, part)
        return envoy

    def _where(self, step: Step | RuleStep) -> tuple[str, str]:
        if isinstance(step, RuleStep):
            return step.module, "output"
        point = self.table.point(step.location)
        return point.module_path(step.location.layer), point.io

    def _apply(self, step: Step, value):
        """Run one step on a module's input/output ``value``; return the (possibly new) value."""
        point = self.table.point(step.location)
        kind = step.location.kind
        if kind == "norm_scale":
            eps = norm_eps(self.hf.get_submodule(point.module_path(step.location.layer)))
            step.fn(rms_scale(value, eps))
            return value
        is_tuple = isinstance(value, tuple)
        i = point.index or 0
        x = value[i] if is_tuple else value
        view = x.unflatten(-1, (self.n_heads, -1)) if kind == "head_out" else x
        new = step.fn(view)
        if step.read_only:
            return value
        new = new.flatten(-2) if kind == "head_out" else new
        return value[:i] + (new,) + value[i + 1 :] if is_tuple else new

    def run(self, tokens: torch.Tensor, steps: list[Step | RuleStep], grad: bool) -> torch.Tensor:
        groups = [(where, list(group)) for where, group in groupby(steps, key=self._where)]
        inputs: dict[str, torch.Tensor] = {}  # module inputs already fetched (nnsight serves each once)
        with torch.set_grad_enabled(grad):
            with self.lm.trace(tokens):
                for (path, io), group in groups:
                    envoy = self._envoy(path)
                    if io == "output" and path not in inputs and any(isinstance(s, RuleStep) for s in group):
                        inputs[path] = envoy.input
                    value = envoy.output if io == "output" else envoy.input
                    new = value
                    for step in group:
                        new = step.fn(inputs[path], new) if isinstance(step, RuleStep) else self._apply(step, new)
                    if io == "input":
                        inputs[path] = new
                    if new is not value:
                        if io == "output":
                            envoy.output = new
                        else:
                            envoy.input = new
                logits = self.lm.lm_head.output.save()
        return logits
