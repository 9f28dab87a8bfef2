"""Text corpora for training sparse dictionaries: documents in, fixed-length token contexts out.

A corpus is a `datasets.Dataset` with a ``text`` column. `load_corpus` reads one of

- ``"builtin"``: English text written for this project (``circuits/data/corpus.txt``, one document a line:
  everyday prose, science, history, instructions, dialogue), shipped inside the package;
- a local ``.txt`` file: one document per line, or paragraphs separated by blank lines;
- a local ``.jsonl`` / ``.json`` file whose records hold a ``text`` field;

through the ``datasets`` library, from local files only (nothing is downloaded). `token_contexts` tokenizes the
documents and packs them, separated by the tokenizer's EOS token, into contexts of ``context`` tokens; the
documents are shuffled with a seed first, and every ``epoch`` packs them in a different order, so a small corpus
repeated gives contexts that differ from epoch to epoch. `split_documents` holds out documents for evaluation.

>>> from interp.circuits.corpus import load_corpus
>>> len(load_corpus("builtin")) > 200
True
"""

from __future__ import annotations

from pathlib import Path

import torch

from interp.errors import InterpError

BUILTIN = "builtin"
BUILTIN_PATH = Path(__file__).resolve().parent / "data" / "corpus.txt"


def _documents_from_text(text: str) -> list[str]:
    """Blank-line separated paragraphs if the text has blank lines, else one document per line."""
    lines = text.splitlines()
    if any(not line.strip() for line in lines[:-1]) and sum(1 for line in lines if line.strip()) > 1:
        blocks, current = [], []
        for line in lines:
            if line.strip():
                current.append(line.strip())
            elif current:
                blocks.append(" ".join(current))
                current = []
        if current:
            blocks.append(" ".join(current))
        return blocks
    return [line.strip() for line in lines if line.strip()]


def load_corpus(source: str | Path = BUILTIN):
    """The documents of ``source`` (``"builtin"``, a .txt file or a .jsonl file) as a `datasets.Dataset` of ``text``.

    A missing file, an unknown suffix, a JSONL file without a ``text`` field or a corpus with no text are one-line
    `InterpError`s.
    """
    import datasets

    if str(source) == BUILTIN:
        return datasets.Dataset.from_list([{"text": t} for t in _documents_from_text(BUILTIN_PATH.read_text("utf-8"))])
    path = Path(source)
    if not path.is_file():
        raise InterpError(f"--corpus {source} does not exist: give 'builtin', a .txt file or a .jsonl file")
    suffix = path.suffix.lower()
    datasets.disable_progress_bars()
    if suffix in (".txt", ".text", ".md"):
        try:
            raw = path.read_text("utf-8")
        except UnicodeDecodeError:
            raise InterpError(f"--corpus {source} is not UTF-8 text") from None
        sample_by = "paragraph" if _has_blank_line_blocks(raw) else "line"
        ds = datasets.load_dataset("text", data_files=str(path), sample_by=sample_by, split="train")
    elif suffix in (".jsonl", ".json"):
        try:
            ds = datasets.load_dataset("json", data_files=str(path), split="train")
        except Exception as e:  # datasets raises its own (and pyarrow's) error types for malformed JSON
            raise InterpError(f"--corpus {source} cannot be read as JSONL: {' '.join(str(e).split())[:200]}") from None
        if "text" not in ds.column_names:
            raise InterpError(f"--corpus {source} has no 'text' field (it has {', '.join(ds.column_names) or 'none'})")
        ds = ds.select_columns(["text"])
    else:
        raise InterpError(f"--corpus {source}: use 'builtin', a .txt file or a .jsonl file (got '{suffix or 'no suffix'}')")
    ds = ds.filter(lambda row: isinstance(row["text"], str) and bool(row["text"].strip()))
    if len(ds) == 0:
        raise InterpError(f"--corpus {source} holds no text")
    return ds


def _has_blank_line_blocks(text: str) -> bool:
    lines = text.strip().splitlines()
    return any(not line.strip() for line in lines)


def split_documents(ds, eval_fraction: float = 0.1, seed: int = 0, min_eval: int = 1) -> tuple[list[str], list[str]]:
    """(train, eval) document texts: a seeded ``eval_fraction`` of the documents (at least ``min_eval``) held out."""
    texts = list(ds["text"])
    if len(texts) < 2:
        raise InterpError("the corpus needs at least two documents (one is held out for evaluation)")
    order = torch.randperm(len(texts), generator=torch.Generator().manual_seed(seed)).tolist()
    n_eval = min(len(texts) - 1, max(min_eval, round(eval_fraction * len(texts))))
    return [texts[i] for i in order[n_eval:]], [texts[i] for i in order[:n_eval]]


class TokenStream:
    """Contexts of ``context`` tokens packed from ``texts``, in a seeded order that changes every epoch.

    ``contexts(start, n)`` gives contexts ``start .. start + n - 1`` of the endless stream (epoch after epoch),
    so a resumed run asks for exactly the contexts the interrupted one would have seen next.
    """

    def __init__(self, texts: list[str], tokenizer, context: int, seed: int = 0):
        if context < 2:
            raise InterpError(f"the context length must be at least 2 tokens, got {context}")
        sep = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.bos_token_id
        bos = tokenizer.bos_token_id if getattr(tokenizer, "add_bos_token", False) else None
        self.docs = []
        for text in texts:
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            if ids:
                self.docs.append(([bos] if bos is not None else []) + list(ids) + ([sep] if sep is not None else []))
        if not self.docs:
            raise InterpError("the corpus tokenizes to nothing")
        self.context, self.seed = context, seed
        self.tokens_per_epoch = sum(len(d) for d in self.docs)
        if self.tokens_per_epoch < context:
            raise InterpError(f"the corpus has {self.tokens_per_epoch} tokens, fewer than one context of {context}")
        self.per_epoch = self.tokens_per_epoch // context  # the tail of each epoch's packing is dropped
        self._epochs: dict[int, torch.Tensor] = {}

    def _epoch(self, epoch: int) -> torch.Tensor:
        if epoch not in self._epochs:
            order = torch.randperm(len(self.docs), generator=torch.Generator().manual_seed(self.seed * 100_003 + epoch))
            flat = torch.tensor([t for i in order.tolist() for t in self.docs[i]], dtype=torch.long)
            self._epochs = {epoch: flat[: self.per_epoch * self.context].view(self.per_epoch, self.context)}
        return self._epochs[epoch]

    def contexts(self, start: int, n: int) -> torch.Tensor:
        """Contexts ``start .. start + n - 1`` of the stream, [n, context]."""
        rows = []
        while n > 0:
            epoch, offset = divmod(start, self.per_epoch)
            take = min(n, self.per_epoch - offset)
            rows.append(self._epoch(epoch)[offset: offset + take])
            start, n = start + take, n - take
        return torch.cat(rows)

    @property
    def epochs_for(self):
        """Epochs over the corpus that ``n`` contexts take: ``stream.epochs_for(n)``."""
        return lambda n: n / self.per_epoch


def token_contexts(texts: list[str], tokenizer, context: int, n: int | None = None, seed: int = 0) -> torch.Tensor:
    """``n`` contexts (default: one epoch's worth) packed from ``texts``, [n, context]."""
    stream = TokenStream(texts, tokenizer, context, seed)
    return stream.contexts(0, stream.per_epoch if n is None else n)
