"""A built-in four-option multiple-choice set, and its evaluation with and without skipping void layers.

The 40 questions are written by this project: simple general knowledge a small model can get right
some of the time, with the correct letter spread evenly over A-D (10 each) so a letter bias cannot
pass for knowledge. A question is shown as::

    Question: What color is the sky on a clear day?
    A. Green
    B. Blue
    C. Red
    D. Black
    Answer:

and scored from the next-token logits of " A", " B", " C", " D" (``chat=True``: the same text as the
user turn of the chat template, scored on "A".."D" at the start of the assistant's reply). The
prediction is the letter with the highest logit. `evaluate_mc` runs each question twice through
`interp.circuits.voids.void_map`: plainly, and with the LM head reading each token's last activated layer.

Skipping (as the reference code does it) only changes a token whose *last* layer is a void; at the
answer position of these prompts the last layer is nearly always activated, so the letter logits
rarely move. The paper instead generates the answer (chat template, up to 50 tokens) with skipping
on in every RG step; ``generate_tokens=n`` does that greedily and takes the first standalone letter
A-D in the reply (no letter: wrong; the paper's extraction rule is not published).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from interp.circuits.voids import generate_with_voids, void_map
from interp.chat import chat_prompt
from interp.errors import InterpError
from interp.metrics import check_finite
from interp.model import Model

LETTERS = ("A", "B", "C", "D")


@dataclass(frozen=True)
class MCQuestion:
    """One question, its four options (in display order) and the index of the right one."""

    question: str
    options: tuple[str, str, str, str]
    answer: int


def _q(question: str, options: str, answer: str) -> MCQuestion:
    return MCQuestion(question, tuple(options.split(" | ")), LETTERS.index(answer))


MC_SET: tuple[MCQuestion, ...] = (
    _q("What color is the sky on a clear day?", "Green | Blue | Red | Black", "B"),
    _q("How many legs does a dog have?", "Four | Two | Six | Eight", "A"),
    _q("What is the capital of France?", "Berlin | Madrid | Rome | Paris", "D"),
    _q("Which animal says 'moo'?", "Cat | Dog | Cow | Duck", "C"),
    _q("What do bees make?", "Milk | Honey | Silk | Wool", "B"),
    _q("How many days are in a week?", "Seven | Five | Ten | Twelve", "A"),
    _q("What is frozen water called?", "Steam | Sand | Ice | Oil", "C"),
    _q("Which planet do we live on?", "Mars | Venus | Jupiter | Earth", "D"),
    _q("What is 2 + 2?", "Three | Four | Five | Six", "B"),
    _q("Which season is the coldest?", "Winter | Summer | Spring | Autumn", "A"),
    _q("What color are ripe bananas?", "Purple | Blue | Yellow | Black", "C"),
    _q("What do we use to see?", "Ears | Nose | Hands | Eyes", "D"),
    _q("Which is the largest ocean on Earth?", "Pacific | Indian | Arctic | Atlantic", "A"),
    _q("What gas do people need to breathe to live?", "Helium | Oxygen | Neon | Argon", "B"),
    _q("Where do fish live?", "In trees | In the sky | In water | In the desert", "C"),
    _q("What is the opposite of hot?", "Warm | Loud | Fast | Cold", "D"),
    _q("How many hours are in a day?", "24 | 12 | 60 | 100", "A"),
    _q("Which animal is known as the king of the jungle?", "Mouse | Lion | Rabbit | Sheep", "B"),
    _q("What is the capital of Japan?", "Beijing | Seoul | Tokyo | Bangkok", "C"),
    _q("Which fruit is red and often said to keep the doctor away?", "Banana | Grape | Lemon | Apple", "D"),
    _q("What does a thermometer measure?", "Temperature | Weight | Length | Speed", "A"),
    _q("Which is the closest star to the Earth?", "Sirius | The Sun | Polaris | Vega", "B"),
    _q("What do cows drink?", "Juice | Coffee | Water | Oil", "C"),
    _q("How many months are in a year?", "Ten | Six | Eight | Twelve", "D"),
    _q("What is the main language spoken in Spain?", "Spanish | German | Chinese | Russian", "A"),
    _q("Which shape has three sides?", "Square | Triangle | Circle | Hexagon", "B"),
    _q("What do plants need from the sun to grow?", "Sound | Wind | Light | Snow", "C"),
    _q("Which organ pumps blood through the body?", "Lung | Liver | Brain | Heart", "D"),
    _q("What is 10 minus 3?", "7 | 5 | 9 | 13", "A"),
    _q("What is the capital of Italy?", "Milan | Rome | Venice | Naples", "B"),
    _q("Which animal has a very long neck?", "Pig | Horse | Giraffe | Goat", "C"),
    _q("What do you call a baby cat?", "Puppy | Calf | Foal | Kitten", "D"),
    _q("Which metal is attracted to a magnet?", "Iron | Gold | Silver | Copper", "A"),
    _q("What falls from clouds when it rains?", "Sand | Water | Rocks | Leaves", "B"),
    _q("How many wheels does a bicycle have?", "One | Three | Two | Four", "C"),
    _q("Which continent is Egypt in?", "Europe | Asia | South America | Africa", "D"),
    _q("What is the boiling point of water at sea level in Celsius?", "100 | 50 | 0 | 200", "A"),
    _q("Which bird cannot fly?", "Eagle | Penguin | Sparrow | Pigeon", "B"),
    _q("Who wrote the play Romeo and Juliet?", "Charles Dickens | Mark Twain | William Shakespeare | Jane Austen", "C"),
    _q("What is the largest planet in our solar system?", "Mercury | Mars | Earth | Jupiter", "D"),
)


def format_question(q: MCQuestion) -> str:
    """The question as the model sees it (without the chat template)."""
    lines = [f"Question: {q.question}"] + [f"{letter}. {opt}" for letter, opt in zip(LETTERS, q.options)]
    return "\n".join(lines) + "\nAnswer:"


def letter_ids(model: Model, chat: bool) -> list[int]:
    """Token ids of the four answer letters: " A".." D" after "Answer:", "A".."D" opening a chat reply."""
    ids = []
    for letter in LETTERS:
        toks = model.tokenizer(letter if chat else f" {letter}", add_special_tokens=False)["input_ids"]
        if len(toks) != 1:
            raise InterpError(f"answer letter {letter!r} is {len(toks)} tokens for this tokenizer; the MC scorer needs one")
        ids.append(toks[0])
    return ids


@dataclass
class MCResult:
    """Predicted option per question [question] (-1: no letter) with and without skipping voids, and layer usage.

    ``logits``/``logits_skip`` [question, 4] are the letter logits (logit scoring only, else None);
    ``replies``/``replies_skip`` the generated answers (generation scoring only, else empty).
    """

    alpha: float
    chat: bool
    answers: torch.Tensor  # [question] index of the right option
    predicted: torch.Tensor  # [question]
    predicted_skip: torch.Tensor  # [question]
    usage: torch.Tensor  # [layer] fraction of prompt tokens activating each layer (PP phase)
    usage_last: torch.Tensor  # [layer] the same over the last prompt token only (the one that answers)
    logits: torch.Tensor | None = None
    logits_skip: torch.Tensor | None = None
    replies: list[str] = field(default_factory=list)
    replies_skip: list[str] = field(default_factory=list)

    @property
    def accuracy(self) -> float:
        return float((self.predicted == self.answers).float().mean())

    @property
    def accuracy_skip(self) -> float:
        return float((self.predicted_skip == self.answers).float().mean())

    def tensors(self) -> dict[str, torch.Tensor]:
        """Run-folder tensors: ``voids/mc_predicted`` [question], ``voids/mc_usage`` [layer], ..."""
        out = {"voids/mc_answers": self.answers, "voids/mc_predicted": self.predicted,
               "voids/mc_predicted_skip": self.predicted_skip, "voids/mc_usage": self.usage,
               "voids/mc_usage_last": self.usage_last}
        if self.logits is not None:
            out |= {"voids/mc_logits": self.logits, "voids/mc_logits_skip": self.logits_skip}
        return out


def reply_letter(reply: str) -> int:
    """Index of the first standalone letter A-D in a generated reply, -1 if there is none."""
    found = re.search(r"\b([ABCD])\b", reply)
    return LETTERS.index(found.group(1)) if found else -1


def evaluate_mc(model: Model, questions: Sequence[MCQuestion] | None = None, alpha: float = 0.8, chat: bool = False,
                backend: str | None = None, generate_tokens: int = 0, progress=None) -> MCResult:
    """Score ``questions`` (default: `MC_SET`) with and without skipping void layers.

    ``generate_tokens=0``: letter logits at the last prompt token (two passes per question, on ``backend``).
    ``generate_tokens=n``: greedy replies of n tokens (KV cache), the first letter in each is the answer.
    """
    questions = MC_SET if questions is None else list(questions)
    if not questions:
        raise InterpError("evaluate_mc needs at least one question")
    if generate_tokens < 0:
        raise InterpError(f"generate_tokens must be 0 (score letter logits) or positive; got {generate_tokens}")
    ids = letter_ids(model, chat)
    plain, skipped, masks, replies, replies_skip = [], [], [], [], []
    for q in questions:
        text = chat_prompt(model, format_question(q)) if chat else format_question(q)
        tokens = model.to_tokens(text)
        if generate_tokens:
            gen = generate_with_voids(model, tokens, generate_tokens, alpha)
            replies.append(gen.text)
            replies_skip.append(generate_with_voids(model, tokens, generate_tokens, alpha, skip=True).text)
            masks.append(gen.prompt.activated)
            if progress:
                progress("multiple choice", len(masks), len(questions))
            continue
        vmap, logits = void_map(model, tokens, alpha, backend=backend)
        _, logits_skip = void_map(model, tokens, alpha, skip=True, backend=backend)
        plain.append(check_finite(logits[-1, ids], "the answer letters' logits").cpu())
        skipped.append(check_finite(logits_skip[-1, ids], "the answer letters' logits with voids skipped").cpu())
        masks.append(vmap.activated)
        if progress:
            progress("multiple choice", len(masks), len(questions))
    answers = torch.tensor([q.answer for q in questions])
    usage = torch.cat(masks).float().mean(0)
    usage_last = torch.stack([m[-1] for m in masks]).float().mean(0)
    if generate_tokens:
        return MCResult(alpha, chat, answers, torch.tensor([reply_letter(r) for r in replies]),
                        torch.tensor([reply_letter(r) for r in replies_skip]), usage, usage_last,
                        replies=replies, replies_skip=replies_skip)
    logits, logits_skip = torch.stack(plain), torch.stack(skipped)
    return MCResult(alpha, chat, answers, logits.argmax(-1), logits_skip.argmax(-1), usage, usage_last, logits, logits_skip)
