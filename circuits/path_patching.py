"""Path patching (Wang et al. 2022, IOI): the effect of a sender head on chosen receivers only.

Activation patching a head measures every path from it to the logits. Path patching keeps only the
paths that reach a *receiver* set without passing through another attention head. The standard
two passes, run on the clean prompts with the sender's output taken from the corrupt prompts:

1. Run clean with the sender head's output z (``head_out``, every position) replaced by its
   corrupt value and every other head's output frozen to its clean value, receivers excepted;
   MLPs recompute (``freeze_mlps=True`` freezes them too). Record the receivers' values.
2. Run clean with only the receivers replaced by those recorded values; the metric of that run is
   the path-patched metric.

Supported receivers:

- ``"logits"`` (the final residual stream): pass 2 is pass 1 itself, so the score is pass 1's metric
  (the sender's direct effect plus its effect through MLPs).
- later heads ``[(layer, head), ...]``: their outputs z. Patching z covers the receiver's query, key
  and value inputs together; per-input (q/k/v) receivers need sites this toolkit does not hook yet.
  All receivers of the set are patched together in pass 2.

A sender that is itself a receiver, or that is not in an earlier layer than some receiver, gets
nan. Senders run in batches (one sender per block of batch rows), pass 1 and pass 2 alike.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from interp.errors import InterpError
from interp.interventions import Replace
from interp.metrics import MetricContext, get_metric
from interp.model import Model
from interp.prompts import PromptSet, TokenizedPrompts

Head = tuple[int, int]


@dataclass
class PathPatchingResult:
    """Metric after path patching each sender head into the receivers.

    ``values`` [n_prompts, layer, head] per prompt (tensor ``path/head_out/per_prompt``; nan where a
    head is not a valid sender), ``clean`` / ``corrupt`` [n_prompts] baselines, ``receivers`` as
    given. ``effect`` [layer, head] is the mean change from the clean run (tensor ``path/head_out``).
    """

    values: torch.Tensor
    clean: torch.Tensor
    corrupt: torch.Tensor
    receivers: str | list[Head]
    metric: str

    @property
    def effect(self) -> torch.Tensor:
        return (self.values - self.clean[:, None, None]).mean(0)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"path/head_out": self.effect, "path/head_out/per_prompt": self.values}

    def top(self, k: int = 5) -> list[tuple[int, int, float]]:
        """The ``k`` senders with the largest absolute effect, as (layer, head, effect)."""
        eff = self.effect
        flat = eff.flatten().nan_to_num(0.0).abs().topk(min(k, eff.numel())).indices
        return [(int(i) // eff.shape[1], int(i) % eff.shape[1], float(eff.flatten()[i])) for i in flat]


def _receivers(model: Model, receivers) -> str | list[Head]:
    if receivers == "logits":
        return "logits"
    if isinstance(receivers, str):
        raise InterpError(f"unknown receiver '{receivers}': use 'logits' or a list of (layer, head) pairs")
    heads = [(int(layer), int(head)) for layer, head in receivers]
    if not heads:
        raise InterpError("no receivers given: pass 'logits' or a list of (layer, head) pairs")
    for layer, head in heads:
        if not (0 <= layer < model.n_layers and 0 <= head < model.n_heads):
            raise InterpError(f"receiver head ({layer}, {head}) does not exist: layers 0..{model.n_layers - 1}, "
                              f"heads 0..{model.n_heads - 1}")
    return sorted(set(heads))


def _valid_senders(model: Model, receivers, senders: Sequence[Head] | None) -> list[Head]:
    last = model.n_layers if receivers == "logits" else max(layer for layer, _ in receivers)
    pool = [(layer, h) for layer in range(model.n_layers) for h in range(model.n_heads)] if senders is None else \
        [(int(a), int(b)) for a, b in senders]
    return [s for s in pool if s[0] < last and (receivers == "logits" or s not in receivers)]


def path_patching(
    model: Model,
    prompts: PromptSet | TokenizedPrompts,
    receivers: str | Sequence[Head] = "logits",
    senders: Sequence[Head] | None = None,
    metric: str | Callable = "logit_diff",
    freeze_mlps: bool = False,
    backend: str | None = None,
    max_senders: int = 8,
) -> PathPatchingResult:
    """Path-patch every sender head (default: every valid head) into ``receivers``; see the module doc."""
    tokens = prompts.tokenize(model.tokenizer) if isinstance(prompts, PromptSet) else prompts
    receivers = _receivers(model, receivers)
    metric_name = metric if isinstance(metric, str) else getattr(metric, "__name__", "metric")
    metric_fn = get_metric(metric) if isinstance(metric, str) else metric
    clean_tok, corrupt_tok = tokens.clean.to(model.device), tokens.corrupt.to(model.device)
    n = clean_tok.shape[0]
    L, H = model.n_layers, model.n_heads
    heads_sites = [f"head_out.{layer}" for layer in range(L)]
    mlp_sites = [f"mlp_out.{layer}" for layer in range(L)] if freeze_mlps else []
    with torch.no_grad():
        clean = model.run(clean_tok, read=heads_sites + mlp_sites, backend=backend)
        corrupt = model.run(corrupt_tok, read=heads_sites, backend=backend)
    ctx = MetricContext(tokens.answer.to(model.device), tokens.wrong.to(model.device),
                        clean.logits[:, -1], corrupt.logits[:, -1])
    clean_metric, corrupt_metric = metric_fn(clean.logits[:, -1], ctx), metric_fn(corrupt.logits[:, -1], ctx)
    values = torch.full((n, L, H), float("nan"))
    todo = _valid_senders(model, receivers, senders)
    recv_by_layer: dict[int, list[int]] = {}
    if receivers != "logits":
        for layer, head in receivers:
            recv_by_layer.setdefault(layer, []).append(head)
    for start in range(0, len(todo), max_senders):
        chunk = todo[start:start + max_senders]
        reps = len(chunk)
        base = clean_tok.repeat(reps, 1)
        rctx = ctx.rows(n * reps)
        # pass 1: sender corrupt, every other non-receiver head frozen clean (MLPs too if asked)
        pass1 = []
        for layer in range(L):
            value = clean.acts[f"head_out.{layer}"].repeat(reps, 1, 1, 1)
            for j, (s_layer, s_head) in enumerate(chunk):
                if s_layer == layer:
                    value[j * n:(j + 1) * n, :, s_head] = corrupt.acts[f"head_out.{layer}"][:, :, s_head]
            frozen = [h for h in range(H) if h not in recv_by_layer.get(layer, [])]
            if frozen:
                pass1.append(Replace(f"head_out.{layer}", value[:, :, frozen], index=(slice(None), slice(None), frozen)))
        pass1 += [Replace(s, clean.acts[s].repeat(reps, 1, 1)) for s in mlp_sites]
        recv_sites = [f"head_out.{layer}" for layer in recv_by_layer]
        with torch.no_grad():
            out1 = model.run(base, pass1, read=recv_sites, backend=backend)
            if receivers == "logits":
                logits = out1.logits[:, -1]
            else:  # pass 2: clean run with only the receivers set to what pass 1 gave them
                pass2 = [Replace(f"head_out.{layer}", out1.acts[f"head_out.{layer}"][:, :, hs],
                                 index=(slice(None), slice(None), hs)) for layer, hs in recv_by_layer.items()]
                logits = model.run(base, pass2, backend=backend).logits[:, -1]
            vals = metric_fn(logits, rctx).float().cpu()
        for j, (s_layer, s_head) in enumerate(chunk):
            values[:, s_layer, s_head] = vals[j * n:(j + 1) * n]
    return PathPatchingResult(values=values, clean=clean_metric.float().cpu(), corrupt=corrupt_metric.float().cpu(),
                              receivers=receivers, metric=metric_name)


def receiver_edges(model: Model, heads: Sequence[Head], prompts: PromptSet | TokenizedPrompts, receiver: str | Head,
                   metric: str | Callable = "logit_diff", backend: str | None = None) -> list[tuple[str, str, float]]:
    """The edges into one ``receiver`` (``"logits"`` or a head) from each of ``heads`` that may send to it."""
    receivers = "logits" if receiver == "logits" else [receiver]
    senders = [h for h in heads if receiver == "logits" or h[0] < receiver[0]]
    effect = path_patching(model, prompts, receivers, senders, metric, backend=backend).effect
    name = "logits" if receiver == "logits" else f"head.{receiver[0]}.{receiver[1]}"
    return [(f"head.{layer}.{head}", name, float(effect[layer, head])) for layer, head in senders]


def circuit_edges(model: Model, heads: Sequence[Head], prompts: PromptSet | TokenizedPrompts, metric: str | Callable = "logit_diff",
                  backend: str | None = None, progress=None, workers=None) -> list[tuple[str, str, float]]:
    """Edges among a circuit's ``heads``: (sender, receiver, mean metric change) for each earlier head into each later
    head, and for each head into ``"logits"`` (node names as in `interp.circuits.graph`: ``head.L.H``).

    ``progress(phase, done, total)`` is called after each receiver's path-patching pass. ``workers`` (a
    `interp.ray_workers.RayWorkers`) runs the receivers' passes on Ray workers (`interp.circuits.ray_circuits`)."""
    heads = sorted({(int(layer), int(head)) for layer, head in heads})
    if not heads:
        raise InterpError("the circuit has no head nodes to connect")
    receivers_all = [r for r in ["logits", *heads] if r == "logits" or any(h[0] < r[0] for h in heads)]
    found: dict[int, list[tuple[str, str, float]]] = {}

    def record(index: int, edges: list[tuple[str, str, float]]) -> None:
        found[index] = edges
        if progress:
            progress("path patching", len(found), len(receivers_all))

    if progress:
        progress("path patching", 0, len(receivers_all))
    if workers is not None:
        from interp.circuits.ray_circuits import ray_edges

        ray_edges(workers, heads, prompts, receivers_all, metric, backend, record)
    for index, receiver in enumerate(receivers_all if workers is None else []):
        record(index, receiver_edges(model, heads, prompts, receiver, metric, backend))
    return [edge for index in range(len(receivers_all)) for edge in found[index]]
