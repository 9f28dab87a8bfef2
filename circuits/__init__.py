"""Circuit discovery: the components that matter, and circuits built from them.

- `interp.circuits.heads`: induction, previous-token and duplicate-token head scores; direct logit attribution;
- `interp.circuits.retrieval` (with `interp.circuits.haystack`): retrieval heads from needle-in-a-haystack decoding,
  and masking heads with uniform attention;
- `interp.circuits.neurons` (with `interp.circuits.relations`): relation-specific MLP neurons by average precision,
  and what zeroing them does to every relation;
- `interp.circuits.voids` (with `interp.circuits.mc_set`): void layers by the LAC rule (`lac_activated`), in prompt
  processing and response generation, and skipping them;
- `interp.circuits.graph` and `interp.circuits.path_patching`: circuits from patching runs (`circuit.json`), overlap,
  faithfulness, and edges by path patching;
- `interp.circuits.cli` (run folders from `interp.circuits.runs`): ``interp heads detect|retrieval``,
  ``interp neurons relation``, ``interp voids``, ``interp circuit build|overlap|faithfulness``.
"""
