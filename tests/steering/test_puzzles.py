"""Puzzle sets: seeded and prefix-stable, one-token answers, and the answer is what the rules imply (parsed independently)."""

import re

import pytest
import torch

from interp.errors import InterpError
from interp.ioi import generate_ioi
from interp.steering.puzzles import PuzzleSet, deduction_puzzles, ioi_puzzles, load_puzzles

IRREGULAR = {"mouse": "mice", "wolf": "wolves", "fox": "foxes"}


def _implied(prompt: str) -> tuple[str, list[str]]:
    """The property the rules give the named person, and every property the rules mention."""
    rules = dict(re.findall(r"All (\w+) are (\w+)\.", prompt))
    name, singular = re.search(r"(\w+) is an? (\w+)\.", prompt).groups()
    assert prompt.endswith(f" {name} is")  # the question is about the person the fact names
    return rules[IRREGULAR.get(singular, singular + "s")], list(rules.values())


@pytest.fixture(scope="module")
def tokenizer(tiny_llama):
    return tiny_llama.tokenizer  # SmolLM2's tokenizer


@pytest.mark.parametrize("n_rules", [1, 2, 3])
def test_deduction_answers_are_implied_single_tokens(tokenizer, n_rules):
    puzzles = deduction_puzzles(tokenizer, 40, seed=3, n_rules=n_rules)
    assert len(puzzles) == 40 and len(set(puzzles.prompts)) == 40  # no repeats
    for prompt, answer, candidates, negative in zip(puzzles.prompts, puzzles.answers, puzzles.candidates, puzzles.negatives):
        implied, mentioned = _implied(prompt)
        assert answer == " " + implied and candidates[0] == answer
        assert len(candidates) == max(n_rules, 2) and len(set(candidates)) == len(candidates)
        wrong = [c.strip() for c in candidates[1:]]
        if n_rules == 1:
            assert mentioned == [implied] and not set(wrong) & set(prompt.replace(".", " ").split())  # unmentioned
        else:
            assert sorted(wrong) == sorted(p for p in mentioned if p != implied)  # the other rules' properties
        assert negative[len(prompt):] in candidates[1:] and negative.startswith(prompt)  # same question, wrong answer
        for c in candidates:
            assert len(tokenizer(c, add_special_tokens=False)["input_ids"]) == 1
        # "prompt + answer" ends in the answer's own token, so reading position -1 reads the answer
        assert tokenizer(prompt + answer)["input_ids"] == tokenizer(prompt)["input_ids"] + tokenizer(answer)["input_ids"]
    ids = puzzles.candidate_ids(tokenizer)
    assert ids.shape == (40, max(n_rules, 2)) and torch.equal(puzzles.correct, torch.zeros(40, dtype=torch.long))
    assert {_implied(p)[0] for p in puzzles.prompts} != {_implied(puzzles.prompts[0])[0]}  # answers vary


def test_seeded_and_prefix_stable(tokenizer):
    a, b = deduction_puzzles(tokenizer, 12, seed=5), deduction_puzzles(tokenizer, 12, seed=5)
    assert a == b and a.prompts != deduction_puzzles(tokenizer, 12, seed=6).prompts
    longer = deduction_puzzles(tokenizer, 30, seed=5)
    assert longer.select(range(12)) == a
    ioi, ioi_long = ioi_puzzles(tokenizer, 8, seed=1), ioi_puzzles(tokenizer, 20, seed=1)
    assert ioi_long.select(range(8)) == ioi and ioi.prompts != ioi_puzzles(tokenizer, 8, seed=2).prompts


def test_shuffled_contrast_is_the_positive_reordered(tokenizer):
    puzzles = deduction_puzzles(tokenizer, 10, seed=0, contrast="shuffled")
    for positive, negative in zip(puzzles.positives, puzzles.negatives):
        assert sorted(positive.split(" ")) == sorted(negative.split(" ")) and positive != negative


def test_ioi_variant_follows_the_ioi_generator(tokenizer):
    ref = generate_ioi(tokenizer, 6, seed=4, corruption="swap")
    for contrast in ("wrong_answer", "corrupt"):
        puzzles = load_puzzles("ioi", tokenizer, 6, seed=4, contrast=contrast)
        assert puzzles.prompts == ref.clean and puzzles.answers == ref.answer
        assert puzzles.candidates == [[io, s] for io, s in zip(ref.answer, ref.wrong)]
        expected = [c + s for c, s in zip(ref.clean, ref.wrong)] if contrast == "wrong_answer" else \
            [c + io for c, io in zip(ref.corrupt, ref.answer)]
        assert puzzles.negatives == expected
    ids = puzzles.candidate_ids(tokenizer)
    assert ids.shape == (6, 2) and (ids[:, 0] != ids[:, 1]).all()


def test_dataset_and_select(tokenizer):
    puzzles = deduction_puzzles(tokenizer, 5, seed=0)
    ds = puzzles.to_dataset()
    assert ds.column_names == ["prompt", "answer", "candidates", "correct", "positive", "negative"]
    assert ds[2]["prompt"] == puzzles.prompts[2] and ds[2]["candidates"] == puzzles.candidates[2]
    assert ds[2]["positive"] == puzzles.prompts[2] + puzzles.answers[2] and ds["correct"] == [0] * 5
    picked = puzzles.select(torch.tensor([True, False, True, False, False]))
    assert picked.prompts == [puzzles.prompts[0], puzzles.prompts[2]] and picked.negatives == [puzzles.negatives[0], puzzles.negatives[2]]


def test_bad_input_is_an_interp_error(tokenizer):
    with pytest.raises(InterpError, match="unknown reasoning task"):
        load_puzzles("babi", tokenizer)
    with pytest.raises(InterpError, match="unknown contrast"):
        deduction_puzzles(tokenizer, 4, contrast="corrupt")
    with pytest.raises(InterpError, match="n must be at least 1"):
        ioi_puzzles(tokenizer, 0)
    with pytest.raises(InterpError, match="n_rules must be between 1 and 5"):
        deduction_puzzles(tokenizer, 4, n_rules=6)
    with pytest.raises(InterpError, match="answers must be one token"):
        PuzzleSet("custom", ["Q"], [" hippopotamus"], [[" hippopotamus", " no"]], ["Q no"], "wrong_answer", 0).candidate_ids(tokenizer)
    with pytest.raises(InterpError, match="first candidate must be its answer"):
        PuzzleSet("custom", ["Q"], [" yes"], [[" no", " yes"]], ["Q no"], "wrong_answer", 0)
