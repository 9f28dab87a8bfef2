"""Requests checked up front, before any work: sequence lengths against the model's context, sizes against memory.

A command that would decode ten million tokens or hold a cache larger than the memory left is refused in one
line that says what it would take and what to change, instead of running for hours or being killed by the
operating system. The method packages estimate their own buffers and call `check_memory` and `check_context`.

Batch sizes come from a memory budget (`memory_budget`: ``--max-memory`` or `MEMORY_SHARE` of the free memory):
`row_bytes` estimates one batch row of a forward, `rows_that_fit` turns a budget into rows per forward and refuses,
in one line, a budget too small for one row.
"""

from __future__ import annotations

import os

import torch

from interp.errors import InterpError

MEMORY_SHARE = 0.8  # refuse a request estimated to need more than this share of the memory free now


def available_memory(device: torch.device | str = "cpu") -> int | None:
    """Bytes free for new tensors on ``device`` (the host's available RAM for cpu), or None when unknown."""
    try:
        kind = torch.device(device).type
        if kind == "cuda":
            return int(torch.cuda.mem_get_info(torch.device(device))[0])
        if kind == "mps":
            return int(torch.mps.recommended_max_memory() - torch.mps.current_allocated_memory())
    except Exception:  # an unusual driver or device string: unknown
        return None
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):
        return None


def size_text(n_bytes: float) -> str:
    """``1.5 GB``-style size."""
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if abs(n_bytes) < 1000 or unit == "PB":
            return f"{n_bytes:.0f} {unit}" if unit == "B" else f"{n_bytes:.1f} {unit}"
        n_bytes /= 1000
    return f"{n_bytes:.1f} PB"


def check_memory(need: float, what: str, device: torch.device | str = "cpu", fix: str = "ask for less",
                 free: int | None = None) -> None:
    """A one-line error when ``need`` bytes exceed `MEMORY_SHARE` of the memory free on ``device`` (or ``free``)."""
    free = available_memory(device) if free is None else free
    if free is not None and need > MEMORY_SHARE * free:
        raise InterpError(f"{what} needs about {size_text(need)} of memory, more than the {size_text(free)} free on "
                          f"{torch.device(device)} allows: {fix}")


def check_context(model, n_tokens: int, what: str, fix: str) -> None:
    """A one-line error when a sequence of ``n_tokens`` is longer than ``model`` supports (`Model.n_ctx`, if known)."""
    n_ctx = getattr(model, "n_ctx", None)
    if n_ctx and n_tokens > n_ctx:
        raise InterpError(f"{what} is {n_tokens} tokens, longer than the context of {model.name}, which supports "
                          f"at most {n_ctx} tokens: {fix}")


def element_size(model) -> int:
    """Bytes per number of the model's weights (4 for float32)."""
    try:
        return next(model.hf.parameters()).element_size()
    except (StopIteration, AttributeError):
        return 4


def kv_bytes_per_token(model) -> int:
    """Bytes the KV cache holds per token: keys and values of every layer."""
    return 2 * model.n_layers * model.n_kv_heads * model.d_head * element_size(model)


DEFAULT_MEMORY = 2 * 1024**3  # the budget when the device's free memory is unknown


def row_bytes(model, start: int, a: int, n_pos: int, grad: bool = False) -> int:
    """Bytes one batch row (one patch on one prompt) costs in a forward from layer ``start`` over positions ``a..``.

    Without ``grad``: one layer's activations at a time (residual, queries/keys/values, attention
    scores, MLP hidden), the keys/values of layers ``start..`` it reads and extends (the cached
    prefix ``0..a-1`` copied per row, plus the new ones), the patched value and the last position's
    float32 logits. With ``grad`` every run layer's activations are kept for the backward pass.
    """
    item = element_size(model)
    length, total = n_pos - a, n_pos
    qkv = (model.n_heads + 2 * model.n_kv_heads) * model.d_head
    per_layer = length * (4 * model.d_model + 2 * qkv + 3 * model.d_mlp) + 2 * model.n_heads * length * total
    kv = 2 * (model.n_layers - start) * 2 * model.n_kv_heads * model.d_head * total  # prefix copy + extended cache
    layers_held = (model.n_layers - start) if grad else 1
    value = length * max(model.d_model, model.d_mlp)
    return int(item * (layers_held * per_layer + kv + value + length * model.d_model) + 2 * 4 * model.d_vocab)


def memory_budget(model, max_memory: int | None) -> int:
    """``max_memory`` bytes, or (None) `MEMORY_SHARE` of the memory free now on the model's device."""
    if max_memory is not None:
        if max_memory <= 0:
            raise InterpError(f"the memory budget must be positive, got {max_memory} bytes")
        return int(max_memory)
    free = available_memory(getattr(model, "device", "cpu"))
    return DEFAULT_MEMORY if free is None else int(MEMORY_SHARE * free)


def rows_that_fit(budget: int, per_row: int, what: str) -> int:
    """How many rows of ``per_row`` bytes fit ``budget``; a one-line error when not even one does."""
    if per_row > budget:
        raise InterpError(f"{what} needs about {size_text(per_row)}, more than the memory budget of "
                          f"{size_text(budget)}: raise --max-memory, or use fewer prompts or shorter ones")
    return budget // per_row
