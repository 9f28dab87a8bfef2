"""IOI prompts with their clean and corrupt runs and the metric context, as many patching tests start."""

from __future__ import annotations

import torch

from interp.ioi import generate_ioi
from interp.metrics import MetricContext


def ioi_runs(model, n: int, seed: int, sites=(), backend: str | None = None):
    """``(tokens, clean run, corrupt run, ctx)`` for ``n`` IOI prompts, both runs reading ``sites``."""
    tokens = generate_ioi(model.tokenizer, n, seed=seed).tokenize(model.tokenizer)
    with torch.no_grad():
        clean = model.run(tokens.clean, read=list(sites), backend=backend)
        corrupt = model.run(tokens.corrupt, read=list(sites), backend=backend)
    return tokens, clean, corrupt, MetricContext(tokens.answer, tokens.wrong, clean.logits[:, -1], corrupt.logits[:, -1])
