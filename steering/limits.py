"""Up-front checks of a steering request's size: against the model's context and the machine's memory.

A request too large for the machine (``steer build --n 100000000``, ``steer east --k 1000000``) is refused
before any work starts, in one line that says what it would take and what to change, instead of
growing until the machine runs out of memory. The estimates are upper bounds of the dominant
buffers (stored activations, KV caches, logits), not exact accounting.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from interp.limits import check_memory, element_size, memory_budget, row_bytes, rows_that_fit
from interp.model import Model

BATCH_ROWS = 64  # vector building and the detector read prompts of one length in batches of at most this many rows
TEXT_BYTES = 4096  # a generous allowance for one prompt's strings (prompt, answer, negative) and their Python objects


def kv_cache_bytes(model: Model, rows: int, length: int) -> int:
    """Bytes of a KV cache of ``rows`` sequences of ``length`` tokens, plus two rows of float32 logits each."""
    kv_width = (getattr(model, "n_kv_heads", None) or model.n_heads) * (getattr(model, "d_head", None) or
                                                                         model.d_model // model.n_heads)
    cache = rows * length * model.n_layers * 2 * kv_width * element_size(model)
    hidden = rows * length * max(model.d_model, getattr(model, "d_mlp", 0) or 0) * 4 * 4  # a block's working tensors
    return cache + hidden + rows * model.d_vocab * 4 * 2


def forward_row_bytes(model: Model, length: int) -> int:
    """Bytes one prompt of ``length`` tokens costs in a no-grad `Model.run`: one layer's working tensors
    (`interp.limits.row_bytes`), every position's logits, and float32 copies of the last position's."""
    return row_bytes(model, 0, 0, length) + length * model.d_vocab * element_size(model) + 4 * model.d_vocab * 4


def budget_groups(model: Model, texts: Sequence[str], max_memory: int | None, row_cost: Callable[[int], int],
                  what: str) -> list[tuple[list[int], torch.Tensor]]:
    """`Model.length_groups` of ``texts`` with as many rows per group as fit the memory budget.

    ``max_memory``: bytes (None: `interp.limits.MEMORY_SHARE` of the device's free memory);
    ``row_cost(length)``: the bytes one prompt of that many tokens costs. A budget that cannot hold one
    prompt is a one-line error naming ``what`` (e.g. "one prompt").
    """
    budget = memory_budget(model, max_memory)
    out = []
    for rows, tokens in model.length_groups(texts):
        k = rows_that_fit(budget, row_cost(tokens.shape[1]), f"{what} of {tokens.shape[1]} tokens")
        out += [(rows[i:i + k], tokens[i:i + k]) for i in range(0, len(rows), k)]
    return out


def activation_bytes(model: Model, n_prompts: int, n_layers: int, copies: int = 2) -> int:
    """Bytes of ``copies`` stored activations ``[n_prompts, n_layers, d_model]`` (float32), plus the prompts' text."""
    return n_prompts * (copies * n_layers * model.d_model * 4 + TEXT_BYTES)


def check_prompt_count(model: Model, n: int, what: str, fix: str, n_layers: int | None = None, copies: int = 2) -> None:
    """Refuse ``n`` prompts whose stored activations (``copies`` per prompt, ``n_layers`` each) and text would not fit."""
    layers = model.n_layers if n_layers is None else n_layers
    read = f", {copies} x {layers} layers of {model.d_model}-wide activations each" if copies and layers else ""
    check_memory(activation_bytes(model, n, layers, copies), f"{what} ({n} prompts{read})", "cpu", fix)
