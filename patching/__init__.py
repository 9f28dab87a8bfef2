"""Patching methods on the interp hook layer.

>>> from patching import activation_patching
>>> run = activation_patching(model, prompts, ["resid_pre", "head_out"], out="runs/x")   # doctest: +SKIP

This release: activation patching (`patching.activation` for the sweep engines, `patching.run` for
whole runs with run folders, `patching.cli` for ``interp patch``).
"""

from patching.activation import COMPONENTS, sweep
from patching.run import activation_patching

__all__ = ["COMPONENTS", "activation_patching", "sweep"]
