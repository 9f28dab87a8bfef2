"""Needle-in-a-haystack prompts: a haystack text and needles written for this project.

`niah_prompt` hides one `Needle` (a fact sentence) in the haystack at a chosen context length (in
tokens) and depth (0 = start, 100 = end), then asks its question. The prompt is built as token ids
by concatenating separately tokenized pieces, so the needle's token span (`NeedlePrompt.needle_span`)
is exact rather than searched for afterwards. The haystack is repeated as often as needed, so any
length up to the model's context (8k tokens for SmolLM2) can be built. The needle goes in at the
sentence boundary at or before the requested depth.

Two prompt templates: ``"plain"`` is the retrieval-head paper's
``{context}\\nBased on the content of the book, Question: {question}\\nAnswer:``; ``"chat"`` wraps
``<book>{context}</book>`` and the same question in the tokenizer's chat template (for instruct
models; SmolLM2-135M-Instruct answers the plain prompt with an immediate end of turn). ``"auto"``
picks ``"chat"`` when the tokenizer has a chat template.

>>> from circuits.haystack import NEEDLES
>>> NEEDLES[0].question
'What is the best thing to pack for a trip to Lisbon?'
"""

from __future__ import annotations

from dataclasses import dataclass

from interp.errors import InterpError

HAYSTACK = """\
The tide pools below the old sea wall are busiest an hour after low water. Small crabs move between the stones with a \
sideways patience, and the anemones close into soft green knots whenever a shadow passes over them. Children who visit \
in the morning learn quickly that the best creatures hide under the flat rocks, and that every rock must be put back \
exactly as it was found. The wall itself was built from granite brought down the coast on barges, and its upper stones \
still carry the chisel marks of the masons who shaped them.

A clock repairer once said that most broken clocks are not broken at all, only dirty. Oil turns to a brown varnish after \
twenty years, and the wheels, which were cut to turn freely, begin to drag against their pivots. The cure is slow. Each \
part is taken out, washed, dried in warm air and laid on a cloth in the order it came out. Putting the movement back \
together takes longer than taking it apart, because every wheel has to be seated before the plates can close, and a \
single bent tooth can stop the whole train.

The canal that runs past the brickworks was dug by hand in less than four years. Its builders had no machines for moving \
earth, so they used spades, wheelbarrows and long planks laid over the mud. Where the ground was soft they lined the bed \
with clay, trampled in layers by cattle driven back and forth along the cutting. Today the towpath is used by cyclists \
and dog walkers, and the only boats are painted narrowboats that move at the pace of a person strolling beside them.

Good bread asks for time more than for skill. Flour, water, salt and a little yeast will, if left alone overnight in a \
cool room, develop more flavour than any recipe that hurries them. In the morning the dough is shaped gently so that \
the gas it has gathered is not pressed out, then left to rise once more before it goes into a very hot oven. A baker \
listens to a loaf as much as looks at it: a hollow sound when the base is tapped means the crumb inside has set.

Night trains have a rhythm of their own. The carriages sway a little on the long curves, the lights of small stations \
slide past the window, and every so often the train stops in a town that nobody seems to be leaving or arriving at. \
Travellers who cannot sleep walk to the dining car and sit with a cup of tea, watching fields go by in the dark. By dawn \
the landscape has changed completely, and the passengers who boarded among hills step out beside a flat grey sea.

Old maps are often wrong in interesting ways. Rivers bend where no river ever bent, islands appear that were only low \
clouds seen from a ship, and mountain ranges are drawn as rows of identical little hills. Yet the mapmakers were careful \
people who copied the best reports they could find. Their errors travelled from one map to the next for a century, \
because each new map was built on the last one, and a mistake with a long history looked just as trustworthy as a fact.

Beekeepers work slowly because bees notice sudden movements. A calm keeper lifts each frame straight up, checks it for \
eggs and capped brood, and sets it back without crushing the workers along its edge. In late summer the hive is heavy \
with honey, and the keeper must decide how much to take and how much to leave for the winter. Taking too much saves a \
few jars and can cost the whole colony, so experienced keepers err on the side of leaving more than they think is needed.

The village choir rehearses on Thursday evenings in a hall that smells of floor polish and damp coats. Most of its \
members cannot read music well, so they learn each part by ear from the director, who sings it line by line until the \
sound settles. The tenors are always too few and the altos always too many. Still, by the week of the winter concert \
the harmonies hold together, and for the length of one carol the hall sounds larger than it is.

A well kept garden path tells you about the person who walks it. Some paths are swept every morning and edged with a \
spade so that the grass never creeps over the bricks. Others wander, soft with moss, between beds that have been allowed \
to seed themselves year after year. Neither kind is wrong. A path is simply the record of where someone has chosen to go \
most often, written in the ground a little at a time.

Lighthouses were once kept by families who lived at the foot of the tower. Every evening the keeper climbed the spiral \
stairs, trimmed the wick, polished the great lens and lit the lamp before sunset. During storms someone stayed awake all \
night to wind the clockwork that turned the light. Most towers now run themselves, and the keepers' cottages have become \
holiday houses, but the lamps still sweep the water in the same pattern, each tower flashing its own signature.
"""


@dataclass(frozen=True)
class Needle:
    """A fact sentence to hide, the question that asks for it, and the reference answer (the sentence)."""

    needle: str
    question: str

    @property
    def answer(self) -> str:
        return self.needle


NEEDLES: tuple[Needle, ...] = (
    Needle("The best thing to pack for a trip to Lisbon is a pair of soft walking shoes and a small green umbrella.",
           "What is the best thing to pack for a trip to Lisbon?"),
    Needle("The secret ingredient in the lighthouse keeper's fish soup is a spoonful of smoked paprika.",
           "What is the secret ingredient in the lighthouse keeper's fish soup?"),
    Needle("The password for the reading room of the Maplewood library is silver heron seventeen.",
           "What is the password for the reading room of the Maplewood library?"),
)


@dataclass(frozen=True)
class NeedlePrompt:
    """One test: prompt token ids with the needle at ``ids[needle_span[0]:needle_span[1]]``."""

    ids: tuple[int, ...]
    needle_span: tuple[int, int]
    answer: str
    context_len: int = 0
    depth: float = 0.0
    needle_index: int = 0

    def __post_init__(self):
        start, end = self.needle_span
        if not 0 <= start < end <= len(self.ids):
            raise InterpError(f"needle span {self.needle_span} does not lie inside a prompt of {len(self.ids)} tokens")
        if len(self.ids) < 2:
            raise InterpError("a needle prompt needs at least 2 tokens (all but the last are prefilled)")


def _ids(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _wrappers(tokenizer, question: str, template: str) -> tuple[list[int], list[int]]:
    """Token ids before and after the context."""
    tail = f"\nBased on the content of the book, Question: {question}\nAnswer:"
    if template == "auto":
        template = "chat" if getattr(tokenizer, "chat_template", None) else "plain"
    if template == "plain":
        return [], _ids(tokenizer, tail)
    if template == "chat":
        if not getattr(tokenizer, "chat_template", None):
            raise InterpError("this tokenizer has no chat template; use template='plain'")
        marker = "\x00CONTEXT\x00"
        text = tokenizer.apply_chat_template([{"role": "user", "content": f"<book>{marker}</book>{tail}"}],
                                             tokenize=False, add_generation_prompt=True)
        head, rest = text.split(marker)
        return _ids(tokenizer, head), _ids(tokenizer, rest)
    raise InterpError(f"unknown NIAH template '{template}': use 'auto', 'plain' or 'chat'")


def niah_prompt(tokenizer, needle: Needle, context_len: int, depth: float, template: str = "auto",
                haystack: str = HAYSTACK, needle_index: int = 0) -> NeedlePrompt:
    """The prompt of ``context_len`` tokens in all with ``needle`` at ``depth`` percent of the haystack."""
    if not 0 <= depth <= 100:
        raise InterpError(f"depth must be a percentage in [0, 100], got {depth}")
    head, tail = _wrappers(tokenizer, needle.question, template)
    needle_ids = _ids(tokenizer, " " + needle.needle.strip())
    budget = context_len - len(head) - len(tail) - len(needle_ids)
    if budget < 1:
        raise InterpError(f"context length {context_len} leaves no room for a haystack around this needle "
                          f"and question ({context_len - budget} tokens); use a longer context")
    unit = _ids(tokenizer, haystack.strip() + " ")
    hay = (unit * (budget // len(unit) + 1))[:budget]
    at = round(budget * depth / 100)
    while at > 0 and not tokenizer.decode(hay[at - 1:at]).rstrip().endswith((".", "!", "?")):
        at -= 1  # back to the preceding sentence boundary
    ids = head + hay[:at] + needle_ids + hay[at:] + tail
    start = len(head) + at
    return NeedlePrompt(tuple(ids), (start, start + len(needle_ids)), needle.answer, context_len, float(depth), needle_index)


def niah_prompts(tokenizer, context_lengths, depths, needles=NEEDLES, template: str = "auto") -> list[NeedlePrompt]:
    """Every needle at every context length and depth (needle-major order)."""
    return [niah_prompt(tokenizer, n, int(c), float(d), template, needle_index=i)
            for i, n in enumerate(needles) for c in context_lengths for d in depths]
