"""Requests checked up front, before any work: sequence lengths against the model's context, sizes against memory.

A command that would decode ten million tokens or hold a cache larger than the memory left is refused in one
line that says what it would take and what to change, instead of running for hours or being killed by the
operating system. The method packages estimate their own buffers and call `check_memory` and `check_context`.
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
