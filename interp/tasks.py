"""Prompt sets by name: built-in generators (``ioi``, ``colored_objects``) or a JSONL file.

This is where a task name from the CLI or a notebook becomes a `PromptSet`; new built-in
generators register here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from interp.colored_objects import generate_colored_objects
from interp.errors import PromptSetError
from interp.ioi import generate_ioi
from interp.prompts import PromptSet, load_jsonl

TASKS: tuple[str, ...] = ("ioi", "colored_objects")


def check_task(task: str) -> None:
    """Fail fast (before loading a model) on a task that is neither built in nor an existing .jsonl file."""
    task = str(task)
    if task in TASKS:
        return
    if not task.lower().endswith(".jsonl"):
        raise PromptSetError(f"unknown task {task!r}; valid tasks: {', '.join(TASKS)}, or a path to a .jsonl file")
    if not Path(task).is_file():
        raise PromptSetError(f"prompt file {task} does not exist")


def load_prompt_set(task: str, tokenizer: Any, n: int | None = None, seed: int = 0, corruption: str = "swap") -> PromptSet:
    """A prompt set by task name ("ioi", "colored_objects": generated, n defaults to 8) or from a .jsonl path (first n rows).

    ``corruption`` applies to generated sets (IOI: "swap" the S2 name, "three_names", or "order": swap the first two names).
    """
    if n is not None and n < 1:
        raise PromptSetError(f"n must be at least 1, got {n}")
    task = str(task)
    if task == "ioi":
        return generate_ioi(tokenizer, n or 8, seed, corruption=corruption)
    if task == "colored_objects":
        return generate_colored_objects(tokenizer, n or 8, seed)
    check_task(task)
    prompts = load_jsonl(task)
    return prompts.head(n) if n else prompts
