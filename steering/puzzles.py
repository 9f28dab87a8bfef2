"""Reasoning prompt sets for control vectors: built-in deduction puzzles, and IOI recast the same way.

A deduction puzzle states one property per category, says which category someone belongs to and
asks for that person's property (bAbI task 15, "basic deduction", in one sentence per step):

    "All dogs are red. All cats are blue. Tom is a cat. So Tom is"  ->  " blue"  (not " red")

Every property mentioned is a candidate answer; the right one is always first (``correct`` is 0).
``n_rules=1`` is the single-rule form ("All cats are blue. Tom is a cat. So Tom is"), whose second
candidate is a property of the same family that the puzzle does not mention: copying the only
property solves it, so it is a sanity level. With two or more rules the model has to pick the rule
of the named category (SmolLM2-135M is near chance there; see benchmarks/bench_reasoning.py).
Answers are single tokens with their leading space for the tokenizer (properties that are not are
left out of the pool), so accuracy is an argmax over the candidates' first tokens.

Control vectors need positives, "question + correct answer" (the paper's ``f"{question} {answer}"``),
and for R-C / PCA-C a paired negative per row. ``contrast`` picks the negative:

- ``"wrong_answer"`` (default): the same prompt followed by a wrong candidate. The pair shares its
  whole prefix and differs only in whether the final, read token is the logically implied answer,
  so the difference isolates "answered correctly" from the task format;
- ``"shuffled"``: the positive's words in a seeded random order, random text of the same style
  (the reference code's bAbI negatives are random text);
- ``"corrupt"`` (IOI only): the corrupt prompt (S2 swapped to the IO name, so the right answer
  flips) followed by the clean answer, as the reference uses corrupted prompts for IOI.

Generation is prefix-stable: the first k rows of a set of n > k rows are the set of k rows for the
same seed, so a larger set splits into training rows and held-out rows. No prompt repeats in a set.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from interp.errors import InterpError
from interp.ioi import generate_ioi

TASKS: tuple[str, ...] = ("deduction", "ioi")
CONTRASTS: tuple[str, ...] = ("wrong_answer", "shuffled", "corrupt")

NAMES: tuple[str, ...] = (
    "Tom", "Mary", "John", "Anna", "Paul", "Kate", "Mark", "Lisa", "Sam", "Emma",
    "Jack", "Lucy", "Ben", "Sarah", "Max", "Alice", "Peter", "Jane", "Harry", "Rose",
)  # fmt: skip
# (singular, plural) category nouns, in two families so a puzzle does not mix animals and jobs.
CATEGORIES: dict[str, tuple[tuple[str, str], ...]] = {
    "animals": (("dog", "dogs"), ("cat", "cats"), ("bird", "birds"), ("horse", "horses"), ("cow", "cows"),
                ("pig", "pigs"), ("lion", "lions"), ("bear", "bears"), ("wolf", "wolves"), ("fox", "foxes"),
                ("frog", "frogs"), ("duck", "ducks"), ("rabbit", "rabbits"), ("mouse", "mice"), ("goat", "goats")),
    "jobs": (("doctor", "doctors"), ("teacher", "teachers"), ("farmer", "farmers"), ("singer", "singers"),
             ("lawyer", "lawyers"), ("pilot", "pilots"), ("nurse", "nurses"), ("cook", "cooks"),
             ("driver", "drivers"), ("student", "students"), ("soldier", "soldiers"), ("writer", "writers")),
}  # fmt: skip
PROPERTIES: dict[str, tuple[str, ...]] = {
    "colours": ("red", "blue", "green", "yellow", "black", "white", "brown", "pink", "orange", "purple"),
    "moods": ("happy", "sad", "angry", "calm", "tired", "hungry", "brave", "shy", "lazy", "quiet"),
    "sizes": ("big", "small", "tall", "short", "fast", "slow", "strong", "weak", "old", "young"),
}
QUESTIONS: tuple[str, ...] = ("So {name} is", "Therefore {name} is", "This means {name} is")


@dataclass
class PuzzleSet:
    """Rows of (prompt, answer, candidates, negative); ``candidates[i][0]`` is the answer."""

    task: str
    prompts: list[str]
    answers: list[str]
    candidates: list[list[str]]
    negatives: list[str]
    contrast: str
    seed: int

    def __post_init__(self) -> None:
        sizes = {len(self.prompts), len(self.answers), len(self.candidates), len(self.negatives)}
        if len(sizes) != 1:
            raise InterpError(f"puzzle set columns have different lengths {sorted(sizes)}; give one value per row")
        if any(row[0] != answer for row, answer in zip(self.candidates, self.answers)):
            raise InterpError("every row's first candidate must be its answer")

    def __len__(self) -> int:
        return len(self.prompts)

    @property
    def positives(self) -> list[str]:
        """Question + correct answer, the texts control vectors are read from."""
        return [p + a for p, a in zip(self.prompts, self.answers)]

    @property
    def correct(self) -> torch.Tensor:
        """Index of the right candidate per row (always 0)."""
        return torch.zeros(len(self), dtype=torch.long)

    def candidate_ids(self, tokenizer: Any) -> torch.Tensor:
        """Token ids ``[n, c]`` of the candidates (each is one token)."""
        if len({len(row) for row in self.candidates}) != 1:
            raise InterpError("rows have different numbers of candidates; use one n_rules per set")
        return torch.tensor([[single_token_id(tokenizer, c) for c in row] for row in self.candidates], dtype=torch.long)

    def select(self, rows: Sequence[int] | torch.Tensor) -> PuzzleSet:
        """The rows at ``rows`` (indices, or a boolean mask), in that order."""
        if isinstance(rows, torch.Tensor) and rows.dtype == torch.bool:
            rows = rows.nonzero()[:, 0]
        idx = [int(i) for i in rows]
        return PuzzleSet(self.task, [self.prompts[i] for i in idx], [self.answers[i] for i in idx],
                         [list(self.candidates[i]) for i in idx], [self.negatives[i] for i in idx], self.contrast, self.seed)

    def to_dataset(self) -> datasets.Dataset:  # noqa: F821
        """A `datasets.Dataset` with columns prompt, answer, candidates, correct, positive, negative."""
        import datasets  # heavy; only needed here

        return datasets.Dataset.from_dict({
            "prompt": self.prompts, "answer": self.answers, "candidates": self.candidates,
            "correct": [0] * len(self), "positive": self.positives, "negative": self.negatives,
        })


def single_token_id(tokenizer: Any, text: str) -> int:
    """The id of ``text`` if it is exactly one token (no special tokens added), else InterpError."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise InterpError(f"answer {text!r} is {len(ids)} tokens for this tokenizer; answers must be one token")
    return int(ids[0])


def _is_one_token(tokenizer: Any, text: str) -> bool:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"]) == 1


def _shuffled(text: str, rng: random.Random) -> str:
    words = text.split(" ")
    for _ in range(10):  # a shuffle that happens to restore the text is drawn again
        rng.shuffle(words)
        if " ".join(words) != text:
            break
    return " ".join(words)


def _check(n: int, contrast: str, allowed: tuple[str, ...]) -> None:
    if n < 1:
        raise InterpError(f"n must be at least 1, got {n}")
    if contrast not in allowed:
        raise InterpError(f"unknown contrast {contrast!r} for this task: use one of {', '.join(allowed)}")


def _article(noun: str) -> str:
    return "an" if noun[0] in "aeiou" else "a"


def deduction_puzzles(tokenizer: Any, n: int = 32, seed: int = 0, n_rules: int = 2,
                      contrast: str = "wrong_answer") -> PuzzleSet:
    """``n`` distinct deduction puzzles with ``n_rules`` rules each (``max(n_rules, 2)`` candidates), seeded."""
    _check(n, contrast, ("wrong_answer", "shuffled"))
    if not 1 <= n_rules <= 5:
        raise InterpError(f"n_rules must be between 1 and 5, got {n_rules}")
    n_candidates = max(n_rules, 2)
    properties = {family: [p for p in words if _is_one_token(tokenizer, " " + p)] for family, words in PROPERTIES.items()}
    properties = {family: words for family, words in properties.items() if len(words) >= n_candidates}
    if not properties:
        raise InterpError(f"fewer than {n_candidates} properties of any family are single tokens for this tokenizer")
    rng = random.Random(seed)
    prompts: list[str] = []
    answers: list[str] = []
    candidates: list[list[str]] = []
    negatives: list[str] = []
    seen: set[str] = set()
    for _ in range(100 * n):
        if len(prompts) == n:
            break
        props = rng.sample(properties[rng.choice(sorted(properties))], n_candidates)  # beyond n_rules: unmentioned
        cats = rng.sample(CATEGORIES[rng.choice(sorted(CATEGORIES))], n_rules)
        name = rng.choice(NAMES)
        asked = rng.randrange(n_rules)
        rules = " ".join(f"All {plural} are {prop}." for (_, plural), prop in zip(cats, props[:n_rules]))
        singular = cats[asked][0]
        prompt = f"{rules} {name} is {_article(singular)} {singular}. " + rng.choice(QUESTIONS).format(name=name)
        answer = " " + props[asked]
        wrong = [" " + p for i, p in enumerate(props) if i != asked]
        negative = prompt + rng.choice(wrong) if contrast == "wrong_answer" else _shuffled(prompt + answer, rng)
        if prompt in seen:
            continue
        seen.add(prompt)
        prompts.append(prompt)
        answers.append(answer)
        candidates.append([answer, *wrong])
        negatives.append(negative)
    if len(prompts) < n:
        raise InterpError(f"could only make {len(prompts)} distinct deduction puzzles, not {n}")
    return PuzzleSet("deduction", prompts, answers, candidates, negatives, contrast, seed)


def ioi_puzzles(tokenizer: Any, n: int = 32, seed: int = 0, contrast: str = "wrong_answer") -> PuzzleSet:
    """IOI rows as puzzles: the clean prompt, answer the IO name, candidates [IO, S], seeded."""
    _check(n, contrast, CONTRASTS)
    ioi = generate_ioi(tokenizer, 2 * n + 16, seed, corruption="swap")  # extra rows stand in for repeats
    rng = random.Random(seed)
    rows: list[tuple[str, str, list[str], str]] = []
    seen: set[str] = set()
    for clean, corrupt, io, s in zip(ioi.clean, ioi.corrupt, ioi.answer, ioi.wrong):
        if clean in seen:
            continue
        seen.add(clean)
        negative = {"wrong_answer": clean + s, "corrupt": corrupt + io}.get(contrast) or _shuffled(clean + io, rng)
        rows.append((clean, io, [io, s], negative))
        if len(rows) == n:
            break
    if len(rows) < n:
        raise InterpError(f"could only make {len(rows)} distinct IOI prompts, not {n}")
    prompts, answers, candidates, negatives = (list(col) for col in zip(*rows))
    return PuzzleSet("ioi", prompts, answers, candidates, negatives, contrast, seed)


def load_puzzles(task: str, tokenizer: Any, n: int = 32, seed: int = 0, contrast: str = "wrong_answer",
                 n_rules: int = 2) -> PuzzleSet:
    """A puzzle set by task name: "deduction" (``n_rules`` rules) or "ioi"."""
    if task == "deduction":
        return deduction_puzzles(tokenizer, n, seed, n_rules, contrast)
    if task == "ioi":
        return ioi_puzzles(tokenizer, n, seed, contrast=contrast)
    raise InterpError(f"unknown reasoning task {task!r}: use one of {', '.join(TASKS)}")
