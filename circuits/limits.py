"""Requests checked up front: sequence lengths against the model's context, working memory against the machine's.

A command that would decode 10 million tokens, or hold a KV cache larger than the memory left, is refused in one
line before any work starts, rather than running for hours or being killed by the operating system.
"""

from __future__ import annotations

import torch

from interp.errors import InterpError

MEMORY_SHARE = 0.8  # refuse a request that needs more than this share of the free memory


def gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**28 else f"{n / 2**20:.0f} MiB"


def available_memory(device: torch.device | str) -> int | None:
    """Bytes free on ``device`` (CUDA: free device memory; CPU: MemAvailable), None where unknown."""
    device = torch.device(device)
    if device.type == "cuda":
        try:
            return int(torch.cuda.mem_get_info(device)[0])
        except (RuntimeError, AssertionError):
            return None
    if device.type != "cpu":
        return None
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def element_size(model) -> int:
    return next(model.hf.parameters()).element_size()


def kv_bytes_per_token(model) -> int:
    """Bytes the KV cache holds per token (keys and values of every layer)."""
    return 2 * model.n_layers * model.n_kv_heads * model.d_head * element_size(model)


def check_context(model, n_tokens: int, what: str, fix: str) -> None:
    """Refuse ``n_tokens`` beyond the positions ``model`` supports (when its config says)."""
    n_ctx = getattr(model, "n_ctx", None)
    if n_ctx is not None and n_tokens > n_ctx:
        raise InterpError(f"{what} is {n_tokens} tokens, but {model.name} supports at most {n_ctx}: {fix}")


def check_memory(model, n_bytes: int, what: str, fix: str) -> None:
    """Refuse a request needing more than `MEMORY_SHARE` of the memory free on the model's device."""
    free = available_memory(model.device)
    if free is not None and n_bytes > MEMORY_SHARE * free:
        raise InterpError(f"{what} needs about {gib(n_bytes)} of memory but only {gib(free)} is free on "
                          f"{model.device}: {fix}")
