"""Steering: control vectors read from the residual stream, what adding them does, and attacks on it.

- `interp.steering.vectors`: R, R-C, PCA-C and probe vectors per layer from contrasting prompts
  (`build_vectors`), saved and loaded as `VectorSet` (safetensors + JSON);
- `interp.steering.effects`: KL, entropy, answer accuracy and answer mass of next-token distributions;
- `interp.steering.sweep`: the coefficient sweep of a vector at the first answer token, with its figure;
- `interp.steering.generate`: greedy or sampled generation (KV-cached) with vectors added at chosen positions;
- `interp.steering.llamacpp`: export a vector set as a llama.cpp control-vector GGUF;
- `interp.steering.puzzles` and `interp.steering.reasoning`: deduction and IOI puzzles, reasoning vectors;
- `interp.steering.east` (one-token agent) and `interp.steering.east_agent` (thought, then action): EAST on a
  two-armed bandit, against temperature;
- `interp.steering.behaviour_sets`, `interp.steering.attack` and `interp.steering.detector`: built-in truthfulness and
  refusal sets, the backdoor activation attack, and a detector of steered forward passes;
- `interp.steering.cli`: ``interp steer build|eval|generate|attack|east``, with run folders from
  `interp.steering.runs`, `interp.steering.east_run` and `interp.steering.attack_run`.

Apply a vector with the hook layer's `interp.Add(site, vector, coeff, positions, keep_norm)`.
"""

from interp.steering.effects import answer_accuracy, answer_mass, entropy_bits, kl_nats
from interp.steering.generate import generate
from interp.steering.llamacpp import export_gguf
from interp.steering.reasoning import reasoning_sweep, reasoning_vectors
from interp.steering.sweep import coefficient_sweep, sweep_figure
from interp.steering.vectors import VectorSet, build_vectors, contrast_vectors, read_activations

__all__ = ["VectorSet", "answer_accuracy", "answer_mass", "build_vectors", "coefficient_sweep", "contrast_vectors",
           "entropy_bits", "export_gguf", "generate", "kl_nats", "read_activations", "reasoning_sweep", "reasoning_vectors",
           "sweep_figure"]
