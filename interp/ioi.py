"""Indirect-object-identification (IOI) prompt sets.

"When Mary and John went to the park, John gave a ball to" -> " Mary" (the indirect object, IO)
rather than " John" (the subject, S). Two name orders: in ABBA the IO is named first, in BABA the
subject is. The corrupt prompt changes the second mention of the subject (S2): "swap" puts the IO
name there, so the right answer flips; "three_names" puts a third name there. "order" instead swaps
the first two names (ABBA <-> BABA) and keeps S2 and the answer: the pair differs only in where
the subject first appears, the name-position feature subspace patching looks for.

Answer and wrong stay those of the clean prompt, so the clean logit difference (answer - wrong)
is positive and, for "swap", the corrupt one negative. Names are limited to those that are one
token (with their leading space) for the tokenizer, and only templates sharing one token length are
used, so every row of a set has the same length, as position-resolved patching needs.
"""

from __future__ import annotations

import random
from collections import defaultdict
from typing import Any

from interp.errors import PromptSetError
from interp.prompts import PromptSet

IOI_NAMES: tuple[str, ...] = (
    "Mary", "John", "Tom", "James", "Dan", "Sarah", "Paul", "Kate", "Anna", "Lisa",
    "Mark", "David", "Michael", "Robert", "William", "Richard", "Joseph", "Thomas", "Charles", "Daniel",
    "Matthew", "Andrew", "Kevin", "Brian", "George", "Edward", "Ryan", "Jacob", "Eric", "Frank",
    "Scott", "Peter", "Jack", "Henry", "Adam", "Sam", "Alex", "Ben", "Emma", "Laura",
    "Rachel", "Jessica", "Linda", "Susan", "Karen", "Helen", "Ruth", "Grace", "Alice", "Rose",
    "Jane", "Lucy", "Emily", "Max", "Chris", "Steve", "Amy", "Sophie", "Oliver", "Harry",
)  # fmt: skip

# {A} and {B} are the first two mentions, {S} the second mention of the subject (S2).
# Every name follows a space, so a single-token " Name" stays one token in the prompt.
IOI_TEMPLATES: tuple[str, ...] = (
    "When {A} and {B} went to the park, {S} gave a ball to",
    "When {A} and {B} arrived at the store, {S} handed a bag to",
    "After {A} and {B} went to the beach, {S} gave a towel to",
    "While {A} and {B} were at the office, {S} passed a note to",
    "Once {A} and {B} got to the party, {S} brought a drink to",
    "When {A} and {B} sat in the garden, {S} threw a flower to",
    "Since {A} and {B} were at the bakery, {S} bought a cookie for",
    "When {A} and {B} got to the kitchen, {S} gave a spoon to",
    "After {A} and {B} walked into the classroom, {S} gave a pen to",
    "After {A} and {B} finished their dinner, {S} offered the cake to",
    "When {A} and {B} visited the museum, {S} showed a painting to",
    "Then {A} and {B} went to the station, and {S} sold a ticket to",
)

CORRUPTIONS: tuple[str, ...] = ("swap", "three_names", "order")
ORDERS: tuple[str, ...] = ("ABBA", "BABA")


def _n_tokens(tokenizer: Any, text: str, special: bool = True) -> int:
    return len(tokenizer(text, add_special_tokens=special)["input_ids"])


def single_token_names(tokenizer: Any) -> list[str]:
    """Names from IOI_NAMES whose " Name" is exactly one token for `tokenizer`, in pool order."""
    return [name for name in IOI_NAMES if _n_tokens(tokenizer, " " + name, special=False) == 1]


def template_lengths(tokenizer: Any, names: list[str]) -> dict[str, int]:
    """Token length (tokenizer defaults, so BOS included if it adds one) of each template filled with names."""
    a, b = names[0], names[1]
    return {t: _n_tokens(tokenizer, t.format(A=a, B=b, S=b)) for t in IOI_TEMPLATES}


def usable_templates(tokenizer: Any, names: list[str]) -> tuple[list[str], int]:
    """The largest group of templates sharing one token length (ties: the group met first), and that length."""
    groups: dict[int, list[str]] = defaultdict(list)
    for template, length in template_lengths(tokenizer, names).items():
        groups[length].append(template)
    length = max(groups, key=lambda k: len(groups[k]))  # dicts keep insertion order, so ties go to the first
    return groups[length], length


def _check_args(n: int, corruption: str, orders: tuple[str, ...]) -> None:
    if n < 1:
        raise PromptSetError(f"n must be at least 1, got {n}")
    if corruption not in CORRUPTIONS:
        raise PromptSetError(f"unknown IOI corruption {corruption!r}; valid corruptions: {', '.join(CORRUPTIONS)}")
    if isinstance(orders, str) or not orders or any(order not in ORDERS for order in orders):
        raise PromptSetError(f"IOI orders must be a non-empty tuple from {', '.join(ORDERS)}, got {orders!r}")


def generate_ioi(
    tokenizer: Any,
    n: int = 8,
    seed: int = 0,
    corruption: str = "swap",
    orders: tuple[str, ...] = ("ABBA", "BABA"),
) -> PromptSet:
    """An IOI prompt set of n rows named "ioi", deterministic for (tokenizer, seed).

    Row i uses order orders[i % len(orders)] and the next template every len(orders) rows, so each
    template appears in every order; names are drawn with random.Random(seed).
    """
    _check_args(n, corruption, orders)
    names = single_token_names(tokenizer)
    if len(names) < 3:
        raise PromptSetError(
            f"only {len(names)} IOI names are single tokens for this tokenizer; IOI needs at least 3"
        )
    templates, length = usable_templates(tokenizer, names)
    rng = random.Random(seed)
    rows: dict[str, list[str]] = {"clean": [], "corrupt": [], "answer": [], "wrong": []}
    for i in range(n):
        order = orders[i % len(orders)]
        template = templates[(i // len(orders)) % len(templates)]
        io, s, third = rng.sample(names, 3)
        a, b = (io, s) if order == "ABBA" else (s, io)
        rows["clean"].append(template.format(A=a, B=b, S=s))
        if corruption == "order":  # the first two names trade places; S2 and the answer stay
            rows["corrupt"].append(template.format(A=b, B=a, S=s))
        else:
            rows["corrupt"].append(template.format(A=a, B=b, S=io if corruption == "swap" else third))
        rows["answer"].append(" " + io)
        rows["wrong"].append(" " + s)
    for row, (clean, corrupt) in enumerate(zip(rows["clean"], rows["corrupt"]), start=1):
        for kind, text in (("clean", clean), ("corrupt", corrupt)):
            got = _n_tokens(tokenizer, text)
            if got != length:
                raise PromptSetError(
                    f"IOI row {row}: {kind} prompt {text!r} is {got} tokens, not the template length {length}; "
                    "this tokenizer joins a name to the words around it; use a JSONL prompt set instead"
                )
    return PromptSet(rows["clean"], rows["corrupt"], rows["answer"], rows["wrong"], name="ioi")
