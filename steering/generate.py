"""Generation with steering: add vectors while the model writes, on any backend, hooks removed each step.

By default (``backend=None``) generation keeps a KV cache: each step runs only the new token
through `interp.Model.run_cached` (plain torch hooks on the HF modules), with `interp.Add` edits
at the steered positions of that chunk. Naming a backend ("lens", "nnsight", "torch") instead
reruns the whole sequence through `interp.Model.run` on it each step, which is slower but goes
through that backend's own hooks; tests check both give the same text. No hook outlives a step.
Prompts of different lengths run in groups of equal length (they stay equal as they grow), so no
padding or attention mask is involved. ``where`` picks the steered positions:

- ``"all"``: prompt and generated tokens;
- ``"prompt"``: the prompt's tokens only;
- ``"generated"``: generated tokens only (and the last prompt token, whose output is the first
  generated token);
- an integer k: every position from k on (negative: from the end of the prompt).

Decoding is greedy (``temperature=0``) or sampled with a seeded generator; it always writes
``max_new_tokens`` tokens (it does not stop at an end-of-text token) unless ``until`` says so.
"""

from __future__ import annotations

from typing import Callable, Sequence

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
             seed: int = 0, backend: str | None = None, until: Callable[[str], bool] | None = None) -> list[str]:
    """Continuations of ``prompts`` with ``coeff * steer[site]`` added at every site of ``steer`` (None: unsteered).

    ``until(text)`` may end a group early: once it is true for every continuation in the group.
    """
    texts = [prompts] if isinstance(prompts, str) else list(prompts)
    if max_new_tokens < 1:
        raise InterpError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    if temperature < 0:
        raise InterpError(f"temperature must be 0 (greedy) or positive, got {temperature}")
    for site in steer or {}:
        model.site(site)
    gen = torch.Generator().manual_seed(seed)
    out: list[str] = [""] * len(texts)
    for rows, tokens in model.length_groups(texts):
        prompt_len = tokens.shape[1]
        step = _recompute_step(model, steer, coeff, where, keep_norm, prompt_len, backend) if backend else \
            _cached_step(model, steer, coeff, where, keep_norm, prompt_len)
        for _ in range(max_new_tokens):
            logits = step(tokens)
            if temperature == 0:
                nxt = logits.argmax(-1)
            else:
                nxt = torch.multinomial((logits / temperature).softmax(-1).cpu(), 1, generator=gen)[:, 0].to(tokens.device)
            tokens = torch.cat([tokens, nxt[:, None]], dim=1)
            if until is not None and all(until(model.tokenizer.decode(row[prompt_len:])) for row in tokens):
                break
        for j, i in enumerate(rows):
            out[i] = model.tokenizer.decode(tokens[j, prompt_len:])
    return out


def _edits(steer: dict[str, torch.Tensor] | None, coeff: float, positions: list[int], keep_norm: bool) -> list[Add]:
    if not positions:
        return []
    return [Add(site, vector, coeff=coeff, positions=positions, keep_norm=keep_norm) for site, vector in (steer or {}).items()]


def _recompute_step(model: Model, steer, coeff, where, keep_norm, prompt_len, backend):
    """Next-token logits from a whole-sequence run on ``backend``."""

    def step(tokens: torch.Tensor) -> torch.Tensor:
        edits = _edits(steer, coeff, _positions(where, prompt_len, tokens.shape[1]), keep_norm)
        with torch.no_grad():
            return model.run(tokens, edits, backend=backend).logits[:, -1].float()

    return step


def _cached_step(model: Model, steer, coeff, where, keep_norm, prompt_len):
    """Next-token logits from the tokens not yet in the KV cache (positions shifted to the chunk)."""
    state = {"past": None, "done": 0}

    def step(tokens: torch.Tensor) -> torch.Tensor:
        start, end = state["done"], tokens.shape[1]
        positions = [p - start for p in _positions(where, prompt_len, end) if p >= start]
        out, state["past"] = model.run_cached(tokens[:, start:], _edits(steer, coeff, positions, keep_norm), past=state["past"])
        state["done"] = end
        return out.logits[:, -1].float()

    return step
