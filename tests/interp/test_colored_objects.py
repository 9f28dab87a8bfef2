"""Colored-objects prompts: the answer is the asked object's colour, the corrupt prompt swaps it, rows tokenize evenly."""

import re

import pytest

from interp.errors import PromptSetError
from interp.tasks import load_prompt_set

PATTERN = re.compile(r"On the table, I see a (\w+) (\w+), a (\w+) (\w+) and a (\w+) (\w+)\. What color is the (\w+)\? The \7 is")


def _colour_of(prompt: str) -> str:
    words = PATTERN.fullmatch(prompt).groups()
    colours = dict(zip(words[1:6:2], words[0:6:2]))
    return " " + colours[words[6]]


def test_answers_follow_from_the_prompts(smollm2_tokenizer):
    prompts = load_prompt_set("colored_objects", smollm2_tokenizer, n=12, seed=3)
    assert prompts.name == "colored_objects" and len(prompts) == 12
    for clean, corrupt, answer, wrong in zip(prompts.clean, prompts.corrupt, prompts.answer, prompts.wrong):
        assert _colour_of(clean) == answer and _colour_of(corrupt) == wrong and answer != wrong
        assert sorted(PATTERN.fullmatch(clean).groups()[0:6:2]) == sorted(PATTERN.fullmatch(corrupt).groups()[0:6:2])
    tokens = prompts.tokenize(smollm2_tokenizer)  # equal lengths and single-token answers, or this raises
    assert tokens.clean.shape == tokens.corrupt.shape
    assert load_prompt_set("colored_objects", smollm2_tokenizer, n=12, seed=3).clean == prompts.clean


def test_bad_n(smollm2_tokenizer):
    with pytest.raises(PromptSetError, match="at least 1"):
        load_prompt_set("colored_objects", smollm2_tokenizer, n=0)
