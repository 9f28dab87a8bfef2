"""Circuit discovery: the components that matter, and circuits built from them.

- `circuits.heads`: induction, previous-token and duplicate-token head scores; direct logit attribution;
- `circuits.retrieval` (with `circuits.haystack`): retrieval heads from needle-in-a-haystack decoding,
  and masking heads with uniform attention;
- `circuits.neurons` (with `circuits.relations`): relation-specific MLP neurons by average precision,
  and what zeroing them does to every relation;
- `circuits.voids` (with `circuits.mc_set`): void layers by the LAC rule (`lac_activated`), in prompt
  processing and response generation, and skipping them;
- `circuits.graph` and `circuits.path_patching`: circuits from patching runs (`circuit.json`), overlap,
  faithfulness, and edges by path patching;
- `circuits.cli` (run folders from `circuits.runs`): ``interp heads detect|retrieval``,
  ``interp neurons relation``, ``interp voids``, ``interp circuit build|overlap|faithfulness``.
"""
