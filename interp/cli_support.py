"""Pieces every ``interp`` subcommand shares: comma lists, dtypes, model loading under a status line, a progress bar."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from interp.errors import InterpError

DTYPES = ("float32", "bfloat16", "float16")


def split(text: str) -> list[str]:
    """``"a, b,,c"`` -> ``["a", "b", "c"]``."""
    return [t.strip() for t in text.split(",") if t.strip()]


def numbers(text: str, option: str, kind: type = float) -> list:
    """A comma list of numbers, or a one-line error naming ``option``."""
    try:
        return [kind(t) for t in split(text)]
    except ValueError:
        raise InterpError(f"{option} must be comma-separated {'integers' if kind is int else 'numbers'}, got '{text}'") from None


def load_model(console: Console, model: str, backend: str, device: str = "cpu", dtype: str = "float32"):
    """Load the model and boot its backend (so that counts as load time), under a status line."""
    import torch

    import interp

    if dtype not in DTYPES:
        raise InterpError(f"unknown dtype '{dtype}': use one of {', '.join(DTYPES)}")
    with console.status(f"loading {model} ({backend})"):
        m = interp.load(model, backend=backend, device=device, dtype=getattr(torch, dtype))
        if backend != "torch":
            m.backend()
    return m


def progress_bar(console: Console) -> Progress:
    """A rich progress bar with a description, bar, count and time remaining."""
    return Progress(TextColumn("{task.description:<13}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    console=console, transient=False)
