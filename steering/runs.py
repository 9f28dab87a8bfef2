"""Run folders for ``interp steer generate``, ``build`` and ``eval``.

- `generate_run`: continuations with and without a vector set added, in the manifest.
- `build_run`: a control-vector set from a task's contrast prompts, its norm per layer and
  ``vectors.safetensors/json`` beside the report.
- `eval_run`: a coefficient sweep of one layer's vector on a task's held-out prompts:
  ``sweep/coefficient``, ``sweep/kl``, ``sweep/entropy``, ``sweep/accuracy`` and more.
"""

from __future__ import annotations

import time
from typing import Sequence

import torch

from interp.errors import InterpError
from interp.model import Model
from interp.results import RunResult, run_header
from steering.behaviour_sets import chat_prompt
from steering.generate import generate
from steering.vectors import VectorSet


def load_vector_set(model: Model, path: str, layers: Sequence[int] = ()) -> VectorSet:
    """A saved vector set built on ``model``, restricted to ``layers`` (empty: all of its layers)."""
    vectors = VectorSet.load(path)
    if vectors.model != model.name:
        raise InterpError(f"{path} was built on {vectors.model}, not {model.name}; build a vector set on this model")
    return vectors.select(layers) if layers else vectors


def generate_run(model: Model, prompts: list[str], vector_file: str | None = None, layers: Sequence[int] = (), coeff: float = 1.0,
                 where: str | int = "all", keep_norm: bool = False, chat: bool = False, max_new_tokens: int = 40,
                 temperature: float = 0.0, seed: int = 0, command: str = "steer generate") -> RunResult:
    """Generate for ``prompts`` unsteered and (with a vector file) steered; texts go into the manifest."""
    t0 = time.perf_counter()
    texts = [chat_prompt(model, p) if chat else p for p in prompts]
    options = {"max_new_tokens": max_new_tokens, "temperature": temperature, "seed": seed}
    plain = generate(model, texts, **options)
    rows = [{"prompt": p, "unsteered": u} for p, u in zip(prompts, plain)]
    steer = None
    if vector_file:
        vectors = load_vector_set(model, vector_file, layers)
        steer = {f"{vectors.kind}.{layer}": vectors.vector(layer) for layer in vectors.layers}
        for row, text in zip(rows, generate(model, texts, steer, coeff, where, keep_norm, **options)):
            row["steered"] = text
    notes = [{"title": f"Prompt {i + 1}", "text": "\n".join(f"{key}: {value}" for key, value in row.items())} for i, row in enumerate(rows)]
    manifest = {**run_header(model, command, seed, backend="torch (KV cache)"), "method": "generate",
                "parameters": {"vector_file": vector_file, "sites": sorted(steer or {}), "coeff": coeff, "where": where,
                               "keep_norm": keep_norm, "chat": chat, **options},
                "generations": rows, "notes": notes, "tensors": {},
                "timings": {"run_s": round(time.perf_counter() - t0, 3)}}
    return RunResult(manifest=manifest, scores={})


def _unit(values: torch.Tensor) -> torch.Tensor:
    return values / values.norm(dim=-1, keepdim=True).clamp_min(1e-12)
