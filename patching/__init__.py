"""Patching methods on the interp hook layer.

>>> from interp.patching import activation_patching
>>> run = activation_patching(model, prompts, ["resid_pre", "head_out"], methods=["activation", "relp"])  # doctest: +SKIP

- `interp.patching.activation`: the activation-patching sweep engines;
- `interp.patching.attribution`: attribution patching (AtP) and relevance patching (RelP), every
  component from one forward and one backward;
- `interp.patching.integrated_gradients`: integrated gradients, the expensive reference estimator;
- `interp.patching.faithfulness`: how well an estimator matches activation patching;
- `interp.patching.run`: whole runs with run folders; `interp.patching.cli`: ``interp patch``.
"""

from interp.patching.activation import COMPONENTS, sweep
from interp.patching.attribution import attribution_patching, atp, relp
from interp.patching.integrated_gradients import integrated_gradients
from interp.patching.run import activation_patching

__all__ = ["COMPONENTS", "activation_patching", "atp", "attribution_patching", "integrated_gradients", "relp", "sweep"]
