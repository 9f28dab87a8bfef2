"""Steering: control vectors read from the residual stream, what adding them does, and attacks on it.

- `steering.vectors`: R, R-C, PCA-C and probe vectors per layer from contrasting prompts
  (`build_vectors`), saved and loaded as `VectorSet` (safetensors + JSON);
- `steering.effects`: KL, entropy, answer accuracy and answer mass of next-token distributions;
- `steering.sweep`: the coefficient sweep of a vector at the first answer token, with its figure;
- `steering.generate`: greedy or sampled generation (KV-cached) with vectors added at chosen positions;
- `steering.llamacpp`: export a vector set as a llama.cpp control-vector GGUF;
- `steering.puzzles` and `steering.reasoning`: deduction and IOI puzzles, reasoning vectors;
- `steering.east` (one-token agent) and `steering.east_agent` (thought, then action): EAST on a
  two-armed bandit, against temperature;
- `steering.behaviour_sets`, `steering.attack` and `steering.detector`: built-in truthfulness and
  refusal sets, the backdoor activation attack, and a detector of steered forward passes;
- `steering.cli`: ``interp steer build|eval|generate|attack|east``, with run folders from
  `steering.runs`, `steering.east_run` and `steering.attack_run`.

Apply a vector with the hook layer's `interp.Add(site, vector, coeff, positions, keep_norm)`.
"""

from steering.effects import answer_accuracy, answer_mass, entropy_bits, kl_nats
from steering.generate import generate
from steering.llamacpp import export_gguf
from steering.reasoning import reasoning_sweep, reasoning_vectors
from steering.sweep import coefficient_sweep, sweep_figure
from steering.vectors import VectorSet, build_vectors, contrast_vectors, read_activations

__all__ = ["VectorSet", "answer_accuracy", "answer_mass", "build_vectors", "coefficient_sweep", "contrast_vectors",
           "entropy_bits", "export_gguf", "generate", "kl_nats", "read_activations", "reasoning_sweep", "reasoning_vectors",
           "sweep_figure"]
