"""Generation with steering: add vectors while the model writes, on any backend, hooks removed each step.

Each step runs the whole sequence through `interp.Model.run` with `interp.Add` edits, so the same
code steers on TransformerLens, nnsight and plain torch, and no hook outlives a step. Prompts of
different lengths run in groups of equal length (they stay equal as they grow), so no padding or
attention mask is involved. ``where`` picks the steered positions:

- ``"all"``: prompt and generated tokens;
- ``"prompt"``: the prompt's tokens only;
- ``"generated"``: generated tokens only (and the last prompt token, whose output is the first
  generated token);
- an integer k: every position from k on (negative: from the end of the prompt).

Decoding is greedy (``temperature=0``) or sampled with a seeded generator; it always writes
``max_new_tokens`` tokens (it does not stop at an end-of-text token).
"""

from __future__ import annotations

from typing import Sequence

import torch

from interp.errors import InterpError
from interp.interventions import Add
from interp.model import Model


def _positions(where: str | int, prompt_len: int, total: int) -> list[int]:
    if where == "all":
        return list(range(total))
    if where == "prompt":
        return list(range(prompt_len))
    if where == "generated":
        return list(range(prompt_len - 1, total))
    if isinstance(where, int):
        start = where if where >= 0 else prompt_len + where
        if not 0 <= start < prompt_len:
            raise InterpError(f"steering from position {where} is outside a prompt of {prompt_len} tokens")
        return list(range(start, total))
    raise InterpError(f"where must be 'all', 'prompt', 'generated' or a position index; got {where!r}")


def generate(model: Model, prompts: str | Sequence[str], steer: dict[str, torch.Tensor] | None = None, coeff: float = 1.0,
             where: str | int = "all", keep_norm: bool = False, max_new_tokens: int = 20, temperature: float = 0.0,
             seed: int = 0, backend: str | None = None) -> list[str]:
    """Continuations of ``prompts`` with ``coeff * steer[site]`` added at every site of ``steer`` (None: unsteered)."""
    texts = [prompts] if isinstance(prompts, str) else list(prompts)
    if max_new_tokens < 1:
        raise InterpError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    if temperature < 0:
        raise InterpError(f"temperature must be 0 (greedy) or positive, got {temperature}")
    for site in steer or {}:
        model.site(site)
    gen = torch.Generator().manual_seed(seed)
    ids = [model.tokenizer(t)["input_ids"] for t in texts]
    out: list[str] = [""] * len(texts)
    groups: dict[int, list[int]] = {}
    for i, row in enumerate(ids):
        groups.setdefault(len(row), []).append(i)
    for prompt_len, rows in groups.items():
        tokens = torch.tensor([ids[i] for i in rows], device=model.device)
        for _ in range(max_new_tokens):
            pos = _positions(where, prompt_len, tokens.shape[1])
            edits = [Add(site, vector, coeff=coeff, positions=pos, keep_norm=keep_norm) for site, vector in (steer or {}).items()]
            with torch.no_grad():
                logits = model.run(tokens, edits, backend=backend).logits[:, -1].float()
            if temperature == 0:
                nxt = logits.argmax(-1)
            else:
                nxt = torch.multinomial((logits / temperature).softmax(-1).cpu(), 1, generator=gen)[:, 0].to(tokens.device)
            tokens = torch.cat([tokens, nxt[:, None]], dim=1)
        for j, i in enumerate(rows):
            out[i] = model.tokenizer.decode(tokens[j, prompt_len:])
    return out
