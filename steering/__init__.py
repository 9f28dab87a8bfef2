"""Steering: control vectors read from the residual stream, and what adding them does.

- `steering.vectors`: R, R-C, PCA-C and probe vectors per layer from contrasting prompts
  (`build_vectors`), saved and loaded as `VectorSet` (safetensors + JSON);
- `steering.effects`: KL, entropy, answer accuracy and answer mass of next-token distributions;
- `steering.generate`: greedy or sampled generation with vectors added at chosen positions;
- `steering.llamacpp`: export a vector set as a llama.cpp control-vector GGUF;
- `steering.east`: a two-armed bandit, exact action entropy, rollouts and the EAST vector.

Apply a vector with the hook layer's `interp.Add(site, vector, coeff, positions, keep_norm)`.
EAST's thought-then-action agent, the backdoor attack, reasoning vectors and the CLI come next.
"""

from steering.effects import answer_accuracy, answer_mass, entropy_bits, kl_nats
from steering.generate import generate
from steering.llamacpp import export_gguf
from steering.vectors import VectorSet, build_vectors, contrast_vectors, read_activations

__all__ = ["VectorSet", "answer_accuracy", "answer_mass", "build_vectors", "contrast_vectors", "entropy_bits",
           "export_gguf", "generate", "kl_nats", "read_activations"]
