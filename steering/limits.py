"""Up-front checks of a steering request's size: against the model's context and the machine's memory.

A request too large for the machine (``steer build --n 100000000``, ``steer east --k 1000000``) is refused
before any work starts, in one line that says what it would take and what to change, instead of
growing until the machine runs out of memory. The estimates are upper bounds of the dominant
buffers (stored activations, KV caches, logits), not exact accounting.
"""

from __future__ import annotations

import os

import torch

from interp.errors import InterpError
from interp.model import Model

SHARE = 0.8  # refuse a request estimated to need more than this share of the memory available now
BATCH_ROWS = 64  # prompts of one length run in batches of at most this many rows, so a large --n never makes one huge batch
TEXT_BYTES = 4096  # a generous allowance for one prompt's strings (prompt, answer, negative) and their Python objects


def _fmt(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def host_memory() -> int | None:
    """Bytes of host memory available now (MemAvailable), or None when it cannot be read."""
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except Exception:  # psutil absent or unsupported: read /proc, then sysconf
        pass
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def device_memory(device: torch.device | str) -> int | None:
    """Bytes free on ``device`` (CUDA: free memory; CPU and others: host memory)."""
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        try:
            return int(torch.cuda.mem_get_info(device)[0])
        except Exception:  # an unusual driver: fall back to the host's memory
            return host_memory()
    return host_memory()


def check_memory(need: float, what: str, fix: str, device: torch.device | str = "cpu", available: int | None = None) -> None:
    """A one-line error when ``need`` bytes exceed the usable share of the memory free on ``device``."""
    free = device_memory(device) if available is None else available
    if free is not None and need > SHARE * free:
        where = "on the GPU" if torch.device(device).type == "cuda" else "in memory"
        raise InterpError(f"{what} needs about {_fmt(need)}, more than the {_fmt(free)} free {where}: {fix}")


def check_context(model: Model, n_tokens: int, what: str, fix: str) -> None:
    """A one-line error when a sequence of ``n_tokens`` is longer than the model supports (``Model.n_ctx``)."""
    n_ctx = getattr(model, "n_ctx", None)
    if n_ctx and n_tokens > n_ctx:
        raise InterpError(f"{what} is {n_tokens} tokens, longer than the {n_ctx} tokens {model.name} supports: {fix}")


def _bytes(model: Model) -> int:
    try:
        return next(model.hf.parameters()).element_size()
    except (StopIteration, AttributeError):
        return 4


def kv_cache_bytes(model: Model, rows: int, length: int) -> int:
    """Bytes of a KV cache of ``rows`` sequences of ``length`` tokens, plus two rows of float32 logits each."""
    kv_width = (getattr(model, "n_kv_heads", None) or model.n_heads) * (getattr(model, "d_head", None) or
                                                                         model.d_model // model.n_heads)
    cache = rows * length * model.n_layers * 2 * kv_width * _bytes(model)
    hidden = rows * length * max(model.d_model, getattr(model, "d_mlp", 0) or 0) * 4 * 4  # a block's working tensors
    return cache + hidden + rows * model.d_vocab * 4 * 2


def activation_bytes(model: Model, n_prompts: int, n_layers: int, copies: int = 2) -> int:
    """Bytes of ``copies`` stored activations ``[n_prompts, n_layers, d_model]`` (float32), plus the prompts' text."""
    return n_prompts * (copies * n_layers * model.d_model * 4 + TEXT_BYTES)


def check_prompt_count(model: Model, n: int, what: str, fix: str, n_layers: int | None = None, copies: int = 2) -> None:
    """Refuse ``n`` prompts whose stored activations (``copies`` per prompt, ``n_layers`` each) and text would not fit."""
    layers = model.n_layers if n_layers is None else n_layers
    read = f", {copies} x {layers} layers of {model.d_model}-wide activations each" if copies and layers else ""
    check_memory(activation_bytes(model, n, layers, copies), f"{what} ({n} prompts{read})", fix, "cpu")
