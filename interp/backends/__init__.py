"""Backends: the ways a `Model` runs with interventions.

- ``lens``: TransformerLens's TransformerBridge, booted from the loaded HF model (its own copy,
  because the bridge rewires the module tree it wraps).
- ``nnsight``: nnsight's TransformersModel around the HF model.
- ``torch``: plain PyTorch forward hooks on the HF modules; no framework overhead, and the base of
  the batched patching engine.

Each executes the same `interp.backends.steps.Step` plan and must give the same numbers.
"""

BACKENDS = ("lens", "nnsight", "torch")
