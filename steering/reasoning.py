"""Reasoning control vectors (Højer, Jarvis & Heinrich, ICLR 2025) and their coefficient sweep.

1. Generate a puzzle set (`interp.steering.puzzles`: built-in deduction puzzles or IOI).
2. Keep the rows the unsteered model already answers correctly (``only_correct``: argmax over the
   candidates' first tokens at the last prompt position is the right one), so the vector encodes a
   "typical correct" state. How many rows passed is reported.
3. Read the residual stream at the last token of "prompt + correct answer" (positives) and of the
   paired negatives (see `interp.steering.puzzles` for the contrast choices), per layer, and form the R,
   R-C or PCA-C vector with `interp.steering.vectors.build_vectors`.
4. `reasoning_sweep`: build the vectors on the first ``n_train`` rows and run
   `interp.steering.sweep.coefficient_sweep` at one layer on the next ``n_test`` rows (held out; no prompt
   repeats across the split). The held-out rows are not filtered: accuracy is over all of them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from interp.errors import InterpError
from interp.model import Model
from interp.steering.puzzles import PuzzleSet, load_puzzles
from interp.steering.sweep import (
    DEFAULT_COEFFICIENTS,
    SweepResult,
    candidate_hits,
    coefficient_sweep,
)
from interp.steering.vectors import VectorSet, build_vectors


@dataclass
class ReasoningVectors:
    """Vectors per layer, the puzzles they were read from, and what the correctness filter kept."""

    vectors: VectorSet
    puzzles: PuzzleSet  # every generated row
    hits: list[bool]  # whether the unsteered model answered each row correctly
    only_correct: bool

    @property
    def n_prompts(self) -> int:
        return len(self.puzzles)

    @property
    def n_correct(self) -> int:
        return sum(self.hits)

    @property
    def baseline_accuracy(self) -> float:
        return self.n_correct / self.n_prompts

    @property
    def n_used(self) -> int:
        """Rows the vectors were read from."""
        return self.n_correct if self.only_correct else self.n_prompts


@dataclass
class ReasoningSweep:
    """Vectors built on the training rows and the sweep on the held-out rows at one layer."""

    vectors: ReasoningVectors
    held_out: PuzzleSet
    layer: int
    sweep: SweepResult


def vectors_from_puzzles(model: Model, puzzles: PuzzleSet, method: str = "R-C", layers: Sequence[int] | None = None,
                         seed: int = 0, only_correct: bool = True, backend: str | None = None,
                         progress: Callable[[str, int, int], None] | None = None) -> ReasoningVectors:
    """Filter ``puzzles`` by the model's own answers (if ``only_correct``) and build the vectors.

    ``progress(stage, done, total)`` follows the answer check and the reading of positives and negatives.
    """
    hits = candidate_hits(model, puzzles.prompts, puzzles.candidate_ids(model.tokenizer), puzzles.correct, backend, progress)
    used = puzzles.select(hits) if only_correct else puzzles
    if len(used) == 0:
        raise InterpError(f"the model answered none of the {len(puzzles)} {puzzles.task} prompts correctly; "
                          "use more prompts or only_correct=False")
    if method == "PCA-C" and len(used) < 2:
        raise InterpError(f"PCA-C needs at least 2 correctly answered prompts; only {len(used)} of {len(puzzles)} were")
    provenance = {"task": puzzles.task, "contrast": puzzles.contrast, "seed": puzzles.seed, "only_correct": only_correct,
                  "n_generated": len(puzzles), "n_correct": int(hits.sum())}
    vectors = build_vectors(model, used.positives, used.negatives if method != "R" else None, method, "resid_post",
                            layers, position=-1, seed=seed, backend=backend, provenance=provenance, progress=progress)
    return ReasoningVectors(vectors, puzzles, [bool(h) for h in hits], only_correct)


def reasoning_vectors(model: Model, task: str = "deduction", method: str = "R-C", n: int = 64,
                      layers: Sequence[int] | None = None, seed: int = 0, only_correct: bool = True,
                      contrast: str = "wrong_answer", n_rules: int = 2, backend: str | None = None) -> ReasoningVectors:
    """Control vectors per layer (None: all) from ``n`` generated ``task`` prompts the model answers correctly.

    ``n_rules``: rules per deduction puzzle (ignored for IOI).
    """
    puzzles = load_puzzles(task, model.tokenizer, n, seed, contrast, n_rules)
    return vectors_from_puzzles(model, puzzles, method, layers, seed, only_correct, backend)


def reasoning_sweep(model: Model, task: str = "deduction", method: str = "R-C", layer: int = 15, n_train: int = 64,
                    n_test: int = 64, seed: int = 0, coefficients: Sequence[float] = DEFAULT_COEFFICIENTS,
                    only_correct: bool = True, contrast: str = "wrong_answer", keep_norm: bool = False,
                    positions: str | int = "all", n_rules: int = 2, backend: str | None = None) -> ReasoningSweep:
    """Build ``method`` vectors at ``layer`` on ``n_train`` rows and sweep them on ``n_test`` held-out rows."""
    if n_train < 1 or n_test < 1:
        raise InterpError(f"n_train and n_test must be at least 1, got {n_train} and {n_test}")
    model.site(f"resid_post.{layer}")
    everything = load_puzzles(task, model.tokenizer, n_train + n_test, seed, contrast, n_rules)
    train, held_out = everything.select(range(n_train)), everything.select(range(n_train, n_train + n_test))
    vectors = vectors_from_puzzles(model, train, method, [layer], seed, only_correct, backend)
    sweep = coefficient_sweep(model, vectors.vectors, layer, held_out.prompts, held_out.candidate_ids(model.tokenizer),
                              held_out.correct, coefficients, keep_norm, positions, backend=backend)
    sweep.meta.update(task=task, n_train_used=vectors.n_used, layer=layer)
    return ReasoningSweep(vectors, held_out, layer, sweep)
