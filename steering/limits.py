"""Up-front checks of a steering request's size: against the model's context and the machine's memory.

A request too large for the machine (``steer build --n 100000000``, ``steer east --k 1000000``) is refused
before any work starts, in one line that says what it would take and what to change, instead of
growing until the machine runs out of memory. The estimates are upper bounds of the dominant
buffers (stored activations, KV caches, logits), not exact accounting.
"""

from __future__ import annotations

from interp.limits import check_memory, element_size
from interp.model import Model

BATCH_ROWS = 64  # prompts of one length run in batches of at most this many rows, so a large --n never makes one huge batch
TEXT_BYTES = 4096  # a generous allowance for one prompt's strings (prompt, answer, negative) and their Python objects


def kv_cache_bytes(model: Model, rows: int, length: int) -> int:
    """Bytes of a KV cache of ``rows`` sequences of ``length`` tokens, plus two rows of float32 logits each."""
    kv_width = (getattr(model, "n_kv_heads", None) or model.n_heads) * (getattr(model, "d_head", None) or
                                                                         model.d_model // model.n_heads)
    cache = rows * length * model.n_layers * 2 * kv_width * element_size(model)
    hidden = rows * length * max(model.d_model, getattr(model, "d_mlp", 0) or 0) * 4 * 4  # a block's working tensors
    return cache + hidden + rows * model.d_vocab * 4 * 2


def activation_bytes(model: Model, n_prompts: int, n_layers: int, copies: int = 2) -> int:
    """Bytes of ``copies`` stored activations ``[n_prompts, n_layers, d_model]`` (float32), plus the prompts' text."""
    return n_prompts * (copies * n_layers * model.d_model * 4 + TEXT_BYTES)


def check_prompt_count(model: Model, n: int, what: str, fix: str, n_layers: int | None = None, copies: int = 2) -> None:
    """Refuse ``n`` prompts whose stored activations (``copies`` per prompt, ``n_layers`` each) and text would not fit."""
    layers = model.n_layers if n_layers is None else n_layers
    read = f", {copies} x {layers} layers of {model.d_model}-wide activations each" if copies and layers else ""
    check_memory(activation_bytes(model, n, layers, copies), f"{what} ({n} prompts{read})", "cpu", fix)
