"""Colored-objects prompt sets (after Merullo et al. 2024, circuit reuse).

"On the table, I see a red book, a blue cup and a green pen. What color is the cup? The cup is"
-> " blue". The corrupt prompt has the same objects and colours, but the asked object's colour is
swapped with another object's ("a red book, a green cup and a blue pen"), so its answer is another
colour of the same context. Answer and wrong are the clean and the corrupt answers. Colours and
objects are limited to single tokens (with a leading space) for the tokenizer, and every row has the
same token length, as position-resolved patching needs.
"""

from __future__ import annotations

import random
from typing import Any

from interp.errors import PromptSetError
from interp.prompts import PromptSet

COLORS: tuple[str, ...] = ("red", "blue", "green", "yellow", "black", "white", "purple", "pink", "brown", "gray")
OBJECTS: tuple[str, ...] = ("book", "cup", "pen", "ball", "key", "hat", "box", "phone", "lamp", "plate", "bag", "shoe",
                            "card", "coin", "bottle", "clock", "chair", "spoon")
TEMPLATE = "On the table, I see a {c0} {o0}, a {c1} {o1} and a {c2} {o2}. What color is the {q}? The {q} is"


def _single(tokenizer: Any, words: tuple[str, ...]) -> list[str]:
    return [w for w in words if len(tokenizer(" " + w, add_special_tokens=False)["input_ids"]) == 1]


def generate_colored_objects(tokenizer: Any, n: int = 8, seed: int = 0) -> PromptSet:
    """A colored-objects prompt set of n rows named "colored_objects", deterministic for (tokenizer, seed)."""
    if n < 1:
        raise PromptSetError(f"n must be at least 1, got {n}")
    colors, objects = _single(tokenizer, COLORS), _single(tokenizer, OBJECTS)
    if len(colors) < 3 or len(objects) < 3:
        raise PromptSetError("fewer than 3 colours or objects are single tokens for this tokenizer; use a JSONL prompt set")
    rng = random.Random(seed)
    rows: dict[str, list[str]] = {"clean": [], "corrupt": [], "answer": [], "wrong": []}
    length = None
    for _ in range(100 * n):
        if len(rows["clean"]) == n:
            break
        cs, os_ = rng.sample(colors, 3), rng.sample(objects, 3)
        asked = rng.randrange(3)
        other = rng.choice([i for i in range(3) if i != asked])
        swapped = list(cs)
        swapped[asked], swapped[other] = cs[other], cs[asked]
        clean, corrupt = (TEMPLATE.format(c0=c[0], o0=os_[0], c1=c[1], o1=os_[1], c2=c[2], o2=os_[2], q=os_[asked])
                          for c in (cs, swapped))
        sizes = {len(tokenizer(t)["input_ids"]) for t in (clean, corrupt)}
        if len(sizes) != 1 or (length is not None and sizes != {length}):
            continue  # a word merged with its neighbours; draw again
        length = sizes.pop()
        rows["clean"].append(clean)
        rows["corrupt"].append(corrupt)
        rows["answer"].append(" " + cs[asked])
        rows["wrong"].append(" " + swapped[asked])
    if len(rows["clean"]) < n:
        raise PromptSetError("could not draw colored-objects prompts of one token length for this tokenizer; use a JSONL prompt set")
    return PromptSet(rows["clean"], rows["corrupt"], rows["answer"], rows["wrong"], name="colored_objects")
