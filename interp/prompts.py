"""Prompt sets: paired clean/corrupt prompts with the answer and wrong continuation for each row.

A `PromptSet` is plain text (four parallel lists of strings). It can be generated (`interp.ioi`),
loaded from a JSONL file with one `{"clean", "corrupt", "answer", "wrong"}` object per line, or
converted to and from a Hugging Face `datasets.Dataset`. `PromptSet.tokenize` turns it into
tensors for a model's tokenizer and checks what position-resolved patching needs: each clean and
corrupt prompt the same length, every row the same length, and single-token answers.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from interp.errors import PromptSetError

FIELDS: tuple[str, ...] = ("clean", "corrupt", "answer", "wrong")
@dataclass
class TokenizedPrompts:
    """A prompt set as token ids for one tokenizer."""

    clean: torch.LongTensor  # [n, seq]
    corrupt: torch.LongTensor  # [n, seq]
    answer: torch.LongTensor  # [n]
    wrong: torch.LongTensor  # [n]
    str_tokens: list[str]  # tokens of the first clean prompt, decoded one by one (plot labels)

    def __len__(self) -> int:
        return int(self.clean.shape[0])


@dataclass
class PromptSet:
    """Rows of (clean prompt, corrupt prompt, answer, wrong answer), all plain strings."""

    clean: list[str]
    corrupt: list[str]
    answer: list[str]
    wrong: list[str]
    name: str = "custom"

    def __post_init__(self) -> None:
        columns = {field: getattr(self, field) for field in FIELDS}
        for field, values in columns.items():
            if not isinstance(values, (list, tuple)):
                raise PromptSetError(
                    f"prompt set field '{field}' must be a list of strings, got {type(values).__name__}"
                )
        lengths = {field: len(values) for field, values in columns.items()}
        if len(set(lengths.values())) != 1:
            sizes = ", ".join(f"{field} {size}" for field, size in lengths.items())
            raise PromptSetError(f"prompt set columns have different lengths ({sizes}); give one value per row in each")
        if lengths["clean"] == 0:
            raise PromptSetError("prompt set is empty; give at least one row")
        for field, values in columns.items():
            for row, value in enumerate(values, start=1):
                if not isinstance(value, str):
                    raise PromptSetError(
                        f"row {row}: field '{field}' must be a string, got {type(value).__name__}"
                    )
        for field in FIELDS:
            setattr(self, field, list(columns[field]))

    def __len__(self) -> int:
        return len(self.clean)

    def rows(self) -> list[dict[str, str]]:
        """The rows as dicts with keys clean, corrupt, answer, wrong."""
        return [dict(zip(FIELDS, values)) for values in zip(self.clean, self.corrupt, self.answer, self.wrong)]

    def fingerprint(self) -> str:
        """First 16 hex chars of the sha256 of the rows as canonical JSON (the name is not included)."""
        text = json.dumps(self.rows(), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]

    def head(self, n: int) -> PromptSet:
        """The first n rows, as a new set with the same name."""
        if n < 1:
            raise PromptSetError(f"n must be at least 1, got {n}")
        if n > len(self):
            raise PromptSetError(
                f"asked for {n} prompts but prompt set '{self.name}' has only {len(self)}; use n <= {len(self)}"
            )
        return PromptSet(self.clean[:n], self.corrupt[:n], self.answer[:n], self.wrong[:n], name=self.name)

    def to_dataset(self) -> "datasets.Dataset":  # noqa: F821
        """A `datasets.Dataset` with columns clean, corrupt, answer, wrong."""
        import datasets  # heavy; only needed here

        return datasets.Dataset.from_dict({field: list(getattr(self, field)) for field in FIELDS})

    @classmethod
    def from_dataset(cls, ds: Any, name: str = "custom") -> PromptSet:
        """Build a set from a `datasets.Dataset` (or anything with those columns); extra columns are ignored."""
        columns = list(getattr(ds, "column_names", None) or [])
        missing = [field for field in FIELDS if field not in columns]
        if missing:
            raise PromptSetError(
                f"dataset lacks column(s) {', '.join(repr(m) for m in missing)}; "
                f"it needs {', '.join(FIELDS)} (it has {', '.join(columns) or 'none'})"
            )
        return cls(*(list(ds[field]) for field in FIELDS), name=name)

    def to_jsonl(self, path: str | Path) -> None:
        """Write one JSON object per row (keys clean, corrupt, answer, wrong), UTF-8."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        lines = [json.dumps(row, ensure_ascii=False) for row in self.rows()]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")

    def tokenize(self, tokenizer: Any) -> TokenizedPrompts:
        """Token ids for `tokenizer`: prompts with its defaults, answers without special tokens.

        Raises PromptSetError if a row's clean and corrupt prompts differ in length, if rows differ
        in length from the first row, or if an answer or wrong string is not exactly one token.
        """
        clean_ids = tokenizer(self.clean)["input_ids"]
        corrupt_ids = tokenizer(self.corrupt)["input_ids"]
        first_len = len(clean_ids[0])
        if first_len == 0:
            raise PromptSetError("row 1: clean prompt is 0 tokens; prompts must not be empty")
        for row, (clean, corrupt) in enumerate(zip(clean_ids, corrupt_ids), start=1):
            if len(clean) != len(corrupt):
                raise PromptSetError(
                    f"row {row}: clean prompt is {len(clean)} tokens but corrupt is {len(corrupt)}; "
                    "position-resolved patching needs equal lengths"
                )
            if len(clean) != first_len:
                raise PromptSetError(
                    f"row {row}: prompts are {len(clean)} tokens but row 1's are {first_len}; "
                    "make all prompts the same token length"
                )
        single = {}
        for field in ("answer", "wrong"):
            ids = tokenizer(getattr(self, field), add_special_tokens=False)["input_ids"]
            for row, (text, toks) in enumerate(zip(getattr(self, field), ids), start=1):
                if len(toks) != 1:
                    raise PromptSetError(
                        f"row {row}: {field} {text!r} is {len(toks)} tokens, not exactly one; "
                        "use a single-token word (usually with a leading space)"
                    )
            single[field] = [toks[0] for toks in ids]
        return TokenizedPrompts(
            clean=torch.tensor(clean_ids, dtype=torch.long),
            corrupt=torch.tensor(corrupt_ids, dtype=torch.long),
            answer=torch.tensor(single["answer"], dtype=torch.long),
            wrong=torch.tensor(single["wrong"], dtype=torch.long),
            str_tokens=[tokenizer.decode([tok]) for tok in clean_ids[0]],
        )


def _json_type(value: Any) -> str:
    """The JSON name of a parsed value's type, for messages."""
    names = {bool: "boolean", int: "number", float: "number", str: "string", list: "array", dict: "object"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def _parse_line(line: str, number: int, path: Path) -> dict[str, str]:
    """One JSONL line as a row dict, or a PromptSetError naming the file and line."""
    where = f"{path.name} line {number}"
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as err:
        raise PromptSetError(f"{where}: not valid JSON ({err.msg}); write one JSON object per line") from None
    if not isinstance(obj, dict):
        raise PromptSetError(
            f"{where}: is a JSON {_json_type(obj)}, not an object; "
            f"write {{\"clean\": ..., \"corrupt\": ..., \"answer\": ..., \"wrong\": ...}}"
        )
    missing = [field for field in FIELDS if field not in obj]
    if missing:
        raise PromptSetError(
            f"{where}: lacks field(s) {', '.join(repr(m) for m in missing)}; every line needs {', '.join(FIELDS)}"
        )
    for field in FIELDS:
        if not isinstance(obj[field], str):
            raise PromptSetError(
                f"{where}: field '{field}' is a {_json_type(obj[field])}, not a string; quote it"
            )
    return {field: obj[field] for field in FIELDS}


def load_jsonl(path: str | Path) -> PromptSet:
    """Load a prompt set from JSONL (one object per line; blank lines skipped); its name is the file stem."""
    path = Path(path)
    if not path.exists():
        raise PromptSetError(f"prompt file {path} not found; check the path")
    if not path.is_file():
        raise PromptSetError(f"prompt file {path} is not a file; give the path of a .jsonl file")
    try:
        text = path.read_text(encoding="utf-8-sig")  # tolerate a byte-order mark
    except UnicodeDecodeError:
        raise PromptSetError(f"prompt file {path} is not UTF-8 text; save it as UTF-8") from None
    rows = [_parse_line(line, number, path) for number, line in enumerate(text.split("\n"), start=1) if line.strip()]
    if not rows:
        raise PromptSetError(f"prompt file {path} is empty; add one JSON object per line")
    return PromptSet(*([row[field] for row in rows] for field in FIELDS), name=path.stem)
