"""The ``lens`` backend: TransformerLens's TransformerBridge.

The bridge is booted from a private copy of the loaded HF model (booting rewires the module tree
it is given). A site whose adapter point names a bridge hook (``blocks.L.hook_resid_pre``...)
becomes a ``run_with_hooks`` forward hook there, which TransformerLens removes when the run ends,
also when it raises. Sites without a bridge hook of the same meaning (MoE router logits and expert
outputs) and backward rules are PyTorch hooks on the HF modules the bridge wraps, removed the same
way. A family the bridge cannot boot is refused with the bridge's reason in one line.

Booting a multimodal checkpoint makes TransformerLens 4.3 fetch an image processor from the hub
and, when that fails, ``pip install torchvision`` (which replaces the pinned CPU torch with a CUDA
build). interp runs text only, so the boot runs with that step switched off (`_no_processor`).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import logging
from collections.abc import Callable, Iterator

import torch

from interp.adapters import Adapter
from interp.backends.steps import RuleStep, Step
from interp.backends.torch_backend import installed_steps
from interp.errors import InterpError


class LensBackend:
    """Runs through ``TransformerBridge.run_with_hooks``."""

    name = "lens"

    def __init__(self, hf: torch.nn.Module, tokenizer, adapter: Adapter, model_name: str):
        from transformer_lens.model_bridge import TransformerBridge

        private = copy.deepcopy(hf)
        if not getattr(private.config, "architectures", None):
            private.config.architectures = [type(private).__name__]
        logging.getLogger("transformer_lens").setLevel(logging.ERROR)
        try:
            with _no_processor():
                    self.bridge = TransformerBridge.boot_transformers(model_name, hf_model=private, tokenizer=tokenizer)
        except Exception as e:  # the bridge's own refusal, in one line
            first = (str(e).strip().splitlines() or [""])[0]
            raise InterpError(f"TransformerLens's bridge cannot wrap this {adapter.family} model ({type(e).__name__}: "
                              f"{first[:200]}); use --backend nnsight or torch") from e
        self.adapter = adapter

    def _hook(self, step: Step):
        def hook(x, hook):
            new = step.fn(x)
            return None if step.read_only else new

        return hook

    def hook_name(self, step: Step) -> str | None:
        return self.adapter.point(step.location).lens_name(step.location.layer)

    def run(self, tokens: torch.Tensor, steps: list[Step | RuleStep], grad: bool) -> torch.Tensor:
        steps = [dataclasses.replace(s, fn=_marked(s.fn)) for s in steps]
        hooks = [(self.hook_name(s), self._hook(s)) for s in steps if isinstance(s, Step) and self.hook_name(s)]
        on_modules = [s for s in steps if isinstance(s, RuleStep) or not self.hook_name(s)]
        with torch.set_grad_enabled(grad), installed_steps(self.bridge.original_model, self.adapter, on_modules,
                                                           rules_on_wrappers=True):
            try:
                return self.bridge.run_with_hooks(tokens, fwd_hooks=hooks, reset_hooks_end=True)
            except RuntimeError as e:  # the bridge's own failure, e.g. mixing dtypes on OLMo-2 in bfloat16
                if getattr(e, _FROM_STEP, False):  # raised by an intervention or rule: not the bridge's
                    raise
                first = (str(e).strip().splitlines() or [""])[0]
                dtype = str(next(self.bridge.parameters()).dtype).replace("torch.", "")
                raise InterpError(f"TransformerLens's bridge failed on this {self.adapter.family} model in {dtype} "
                                  f"({first[:200]}); use --backend nnsight or torch") from e


@contextlib.contextmanager
def _no_processor() -> Iterator[None]:
    """Boot without TransformerLens's modality-processor step (a hub fetch, then a torchvision pip install)."""
    from transformer_lens.model_bridge.sources.transformers import helpers, source

    saved = source.load_modality_processor, helpers._ensure_torchvision
    source.load_modality_processor = lambda *args, **kwargs: None
    helpers._ensure_torchvision = lambda: False
    try:
        yield
    finally:
        source.load_modality_processor, helpers._ensure_torchvision = saved


_FROM_STEP = "_interp_from_step"


def _marked(fn: Callable) -> Callable:
    """``fn``, with any exception it raises marked as coming from a step (so `LensBackend.run` passes it on)."""

    @functools.wraps(fn)
    def call(*args):
        try:
            return fn(*args)
        except Exception as e:
            setattr(e, _FROM_STEP, True)
            raise

    return call
