"""Patching methods on the interp hook layer.

>>> from patching import activation_patching
>>> run = activation_patching(model, prompts, ["resid_pre", "head_out"], methods=["activation", "relp"])  # doctest: +SKIP

- `patching.activation`: the activation-patching sweep engines;
- `patching.attribution`: attribution patching (AtP) and relevance patching (RelP), every
  component from one forward and one backward;
- `patching.integrated_gradients`: integrated gradients, the expensive reference estimator;
- `patching.faithfulness`: how well an estimator matches activation patching;
- `patching.run`: whole runs with run folders; `patching.cli`: ``interp patch``.
"""

from patching.activation import COMPONENTS, sweep
from patching.attribution import attribution_patching, atp, relp
from patching.integrated_gradients import integrated_gradients
from patching.run import activation_patching

__all__ = ["COMPONENTS", "activation_patching", "atp", "attribution_patching", "integrated_gradients", "relp", "sweep"]
