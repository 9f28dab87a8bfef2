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


DEFAULT_N = 8  # prompts generated for a built-in task when no n is given


def check_task(task: str, corruption: str | None = None) -> None:
    """Fail fast (before loading a model) on a task that is neither built in nor an existing .jsonl file.

    ``corruption`` (None when the user gave none) only applies to the generated IOI set: with any other task
    it would be silently ignored, so it is refused; with IOI an unknown corruption is refused here too.
    """
    from interp.ioi import CORRUPTIONS

    task = str(task)
    if corruption is not None:
        if task != "ioi":
            what = "a JSONL task has its own corrupt prompts" if task.lower().endswith(".jsonl") else \
                f"task {task!r} has its own corruption"
            raise PromptSetError(f"--corruption only applies to the generated ioi task; {what}: drop --corruption")
        if corruption not in CORRUPTIONS:
            raise PromptSetError(f"unknown IOI corruption {corruption!r}; valid corruptions: {', '.join(CORRUPTIONS)}")
    if task in TASKS:
        return
    if not task.lower().endswith(".jsonl"):
        raise PromptSetError(f"unknown task {task!r}; valid tasks: {', '.join(TASKS)}, or a path to a .jsonl file")
    if not Path(task).is_file():
        raise PromptSetError(f"prompt file {task} does not exist")


def load_prompt_set(task: str, tokenizer: Any, n: int | None = None, seed: int = 0,
                    corruption: str | None = None) -> PromptSet:
    """A prompt set by task name ("ioi", "colored_objects": generated, n defaults to 8) or from a .jsonl path.

    For a .jsonl file the default is every row, and ``n`` caps it: the first ``min(n, rows)`` rows (a file
    shorter than ``n`` is not an error). ``corruption`` applies to the generated IOI set ("swap" the S2 name,
    the default; "three_names"; or "order": swap the first two names); other tasks ignore it.
    """
    if n is not None and n < 1:
        raise PromptSetError(f"n must be at least 1, got {n}")
    task = str(task)
    if task == "ioi":
        return generate_ioi(tokenizer, n or DEFAULT_N, seed, corruption=corruption or "swap")
    if task == "colored_objects":
        return generate_colored_objects(tokenizer, n or DEFAULT_N, seed)
    check_task(task)
    prompts = load_jsonl(task)
    return prompts.head(min(n, len(prompts))) if n else prompts
