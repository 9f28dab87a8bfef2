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

import math
from typing import Callable, Sequence

import torch

from interp.errors import InterpError
from interp.interventions import Add
from interp.metrics import check_finite
from interp.model import Model
from interp.limits import check_context, element_size
from interp.steering.limits import budget_groups, forward_row_bytes, kv_cache_bytes


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
             seed: int = 0, backend: str | None = None, until: Callable[[str], bool] | None = None,
             progress: Callable[[str, int, int], None] | None = None, stage: str = "generating",
             max_memory: int | None = None) -> list[str]:
    """Continuations of ``prompts`` with ``coeff * steer[site]`` added at every site of ``steer`` (None: unsteered).

    ``until(text)`` may end a group early: once it is true for every continuation in the group.
    ``progress(stage, tokens written, tokens to write)`` is called after every step. Prompts that
    tokenize to nothing, a request longer than the model's context or too large for memory, and
    NaN or infinite logits (an overflowing steer) are one-line errors. Prompts of one length decode together,
    as many per batch as fit ``max_memory`` (bytes; None: a share of the device's free memory; a budget that
    cannot hold one prompt is a one-line error). Each prompt samples from its own seeded generator, so the
    texts do not depend on the budget.
    """
    texts = [prompts] if isinstance(prompts, str) else list(prompts)
    if not texts:
        raise InterpError("give at least one prompt to generate from")
    if max_new_tokens < 1:
        raise InterpError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    if not math.isfinite(temperature) or temperature < 0:
        raise InterpError(f"temperature must be 0 (greedy) or a positive finite number, got {temperature}")
    if not math.isfinite(coeff):
        raise InterpError(f"the steering coefficient must be a finite number, got {coeff}")
    for i, text in enumerate(texts):
        if not isinstance(text, str) or not text:
            raise InterpError(f"prompt {i + 1} is empty: give some text to continue")
    for site in steer or {}:
        model.site(site)
    for rows, tokens in model.length_groups(texts):
        if tokens.shape[1] == 0:
            raise InterpError(f"prompt {rows[0] + 1} ({texts[rows[0]]!r}) tokenizes to nothing: give some text to continue")
        check_context(model, tokens.shape[1] + max_new_tokens, f"prompt {rows[0] + 1} plus {max_new_tokens} new tokens",
                      "use a shorter prompt or fewer new tokens")
    groups = budget_groups(model, texts, max_memory, lambda length: generation_row_bytes(model, length, max_new_tokens, backend),
                           f"generating {max_new_tokens} tokens for one prompt")
    row_seeds = torch.randint(2**62, (len(texts),), generator=torch.Generator().manual_seed(seed)).tolist()
    out: list[str] = [""] * len(texts)
    total, written = len(texts) * max_new_tokens, 0
    for rows, tokens in groups:
        prompt_len = tokens.shape[1]
        gens = [torch.Generator().manual_seed(row_seeds[i]) for i in rows]
        step = _recompute_step(model, steer, coeff, where, keep_norm, prompt_len, backend) if backend else \
            _cached_step(model, steer, coeff, where, keep_norm, prompt_len)
        for i in range(max_new_tokens):
            logits = step(tokens)
            check_finite(logits, f"generation step {i + 1} (logits of prompt {rows[0] + 1}{' steered' if steer else ''})")
            written += len(rows)
            if progress:
                progress(stage, written, total)
            if temperature == 0:
                nxt = logits.argmax(-1)
            else:
                probs = (logits / temperature).softmax(-1).cpu()
                nxt = torch.cat([torch.multinomial(probs[j], 1, generator=gens[j]) for j in range(len(rows))]).to(tokens.device)
            tokens = torch.cat([tokens, nxt[:, None]], dim=1)
            if until is not None and all(until(model.tokenizer.decode(row[prompt_len:])) for row in tokens):
                written += len(rows) * (max_new_tokens - i - 1)
                if progress:
                    progress(stage, written, total)
                break
        for j, i in enumerate(rows):
            out[i] = model.tokenizer.decode(tokens[j, prompt_len:])
    return out


def generation_row_bytes(model: Model, prompt_len: int, max_new_tokens: int, backend: str | None = None) -> int:
    """Bytes one prompt costs while it generates: its KV cache and a forward over the prompt (with a named
    ``backend``, every step reruns the whole sequence and returns every position's logits)."""
    total = prompt_len + max_new_tokens
    cost = kv_cache_bytes(model, 1, total) + forward_row_bytes(model, total if backend else prompt_len)
    return cost if backend else cost - (prompt_len - 1) * model.d_vocab * element_size(model)  # cached: last logits only


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
