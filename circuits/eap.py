"""Edge attribution patching over the full graph: EAP, EAP-IG and RelP scores for every edge at once.

The score of the edge from sender s to receiver r (see `interp.circuits.edge_graph`) estimates the change in the
metric when that edge alone carries the source run's value (`interp.circuits.edge_patching`):

    score(s -> r) = mean over prompts of  sum over positions of  (a_s^source - a_s^base) . g_r

with ``a_s`` what s writes into the residual stream and ``g_r`` the gradient of the metric at r's input residual
through r's own read only: a query head's gradient at ``q.L`` taken back through its ``W_Q[h]`` and the pre-attention
norm (keys and values likewise, per KV head), an MLP's at ``mlp_in.L`` back through its norm, the logits' at the last
``resid_post`` (Syed et al. 2023). One forward and one backward give every edge:

- ``eap``: ``g_r`` at the base run;
- ``eap-ig``: ``g_r`` averaged over ``ig_steps`` runs whose input embeddings (``resid_pre.0``) lie on the straight
  path between the base and source prompts, at the midpoints (Hanna et al. 2024, MIB's EAP-IG-inputs);
- ``relp``: ``g_r`` through RelP's LRP rules (`interp.rules`), the receivers' own norms included.

``direction="noising"`` (the default, as circuit faithfulness patches): base = clean, source = corrupt, so a score
is the first-order change of the metric when the edge is corrupted; ``"denoising"`` swaps them.

Since the residual stream only adds, the scores of one sender's edges sum to that sender's node attribution
(AtP of ``head_out``/``mlp_out``), and with EAP-IG the edges out of the input sum to the whole effect of patching
the input, up to the midpoint rule's error (tested).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from interp.circuits.edge_graph import EdgeGraph, edge_graph, sender_sites, sender_writes
from interp.errors import InterpError
from interp.interventions import Intervention, Replace
from interp.metrics import MetricContext
from interp.model import Model
from interp.patching.attribution import batch_metric, prompts_per_pass
from interp.residual_io import (attention_bias, attention_writer, heads_write_additively, input_grads,
                                sublayer_input)
from interp.rules import RELP_RULES

METHODS = ("eap", "eap-ig", "relp")
DIRECTIONS = ("noising", "denoising")


@dataclass
class EdgeScores:
    """Scores ``[n_senders, n_receivers]`` (0 where the graph has no edge) of ``graph``'s edges."""

    graph: EdgeGraph
    scores: torch.Tensor
    method: str
    direction: str

    def top(self, n: int) -> torch.Tensor:
        """The mask of the ``n`` edges with the largest |score|."""
        flat = self.scores.abs().masked_fill(~self.graph.valid, -1.0).flatten()
        mask = torch.zeros_like(flat, dtype=torch.bool)
        mask[flat.topk(min(n, self.graph.n_edges)).indices] = True
        return mask.view_as(self.scores)


@dataclass(frozen=True)
class _Fresh(Intervention):
    """The same values in a new tensor: what flows on from the site is then read there alone."""

    def apply(self, act: torch.Tensor) -> torch.Tensor:
        return act.clone()


def _receiver_reads(model: Model) -> list[str]:
    reads = []
    for layer in range(model.n_layers):
        reads += [f"q.{layer}", f"k.{layer}", f"v.{layer}", f"mlp_in.{layer}"]
        for part in ("attn", "mlp"):
            site = sublayer_input(model, part, layer).site
            if site not in reads:
                reads.append(site)
    return reads + [sublayer_input(model, "logits").site]


def _receiver_grads(model: Model, acts: dict, grads: dict, layer: int, frozen: bool,
                    weights: dict) -> torch.Tensor:
    """``g_r`` of ``layer``'s receivers (q heads, k heads, v heads, MLP), ``[n_r, b, p, d]``."""
    attn, mlp = sublayer_input(model, "attn", layer), sublayer_input(model, "mlp", layer)
    cot = torch.cat([torch.einsum("bphe,hde->hbpd", grads[f"{part}.{layer}"], weights[part, layer])
                     for part in ("q", "k", "v")])
    g_attn = input_grads(model, attn, acts[attn.site], cot, frozen)
    g_mlp = input_grads(model, mlp, acts[mlp.site], grads[f"mlp_in.{layer}"][None], frozen)
    return torch.cat([g_attn, g_mlp])


def _through_attention_norms(model: Model, graph: EdgeGraph, delta: torch.Tensor, base_acts: dict, w_o: dict) -> None:
    """Behind a norm after attention, a head's write is linearized at the base run: its change of the heads' summed
    output taken through the norm's Jacobian there (``delta``'s head rows, in place)."""
    for layer in range(model.n_layers):
        rows = graph.sender_rows(layer)
        heads = slice(rows.start, rows.stop - 1)
        bias = attention_bias(model, layer)
        u = torch.einsum("bphe,hed->bpd", base_acts[f"head_out.{layer}"], w_o[layer]) + (0 if bias is None else bias)
        write = attention_writer(model, layer)
        delta[heads] = torch.func.vmap(lambda t: torch.func.jvp(write, (u,), (t,))[1])(delta[heads])


def edge_scores(model: Model, clean: torch.Tensor, corrupt: torch.Tensor, metric: Callable, ctx: MetricContext,
                method: str = "eap", ig_steps: int = 5, direction: str = "noising", backend: str | None = None,
                max_memory: int | None = None) -> EdgeScores:
    """Scores of every edge of ``model``'s graph for the ``clean``/``corrupt`` prompts (token ids, same shape).

    ``max_memory`` (bytes; None: a share of the device's free memory) bounds each forward and backward: the prompts
    run in as many batches as it takes, with the same scores (each prompt's gradient is its own)."""
    if method not in METHODS:
        raise InterpError(f"unknown method '{method}': use one of {', '.join(METHODS)}")
    if direction not in DIRECTIONS:
        raise InterpError(f"unknown direction '{direction}': use noising or denoising")
    if method == "eap-ig" and ig_steps < 1:
        raise InterpError(f"--ig-steps must be at least 1, got {ig_steps}")
    if clean.shape != corrupt.shape:
        raise InterpError(f"clean and corrupt prompts must tokenize to the same shape, got {tuple(clean.shape)} "
                          f"and {tuple(corrupt.shape)}")
    graph = edge_graph(model)
    base, source = (clean, corrupt) if direction == "noising" else (corrupt, clean)
    weights = {(part, layer): getattr(model, f"W_{part.upper()}")(layer).detach()
               for part in ("q", "k", "v") for layer in range(model.n_layers)}
    w_o = {layer: model.W_O(layer) for layer in range(model.n_layers)}
    reads = _receiver_reads(model)
    n = base.shape[0]
    per_pass = prompts_per_pass(model, base, len(reads) + len(graph.senders), max_memory)
    scores = torch.zeros(len(graph.senders), len(graph.receivers))
    for lo in range(0, n, per_pass):
        hi = min(n, lo + per_pass)
        scores += _batch_scores(model, graph, base[lo:hi], source[lo:hi], metric, ctx, lo, n, method, ig_steps,
                                reads, weights, w_o, backend)
    scores = scores / n
    return EdgeScores(graph, scores.masked_fill(~graph.valid, 0.0), method, direction)


def _batch_scores(model: Model, graph: EdgeGraph, base: torch.Tensor, source: torch.Tensor, metric: Callable,
                  ctx: MetricContext, lo: int, n: int, method: str, ig_steps: int, reads: list[str], weights: dict,
                  w_o: dict, backend: str | None) -> torch.Tensor:
    """The scores of prompts ``lo..`` (summed over them, not yet averaged) for every edge."""
    with torch.no_grad():
        base_acts = model.run(base, read=sender_sites(model), backend=backend).acts
        src_acts = model.run(source, read=sender_sites(model), backend=backend).acts
        delta = sender_writes(model, src_acts, w_o=w_o) - sender_writes(model, base_acts, w_o=w_o)
        if not heads_write_additively(model):
            _through_attention_norms(model, graph, delta, base_acts, w_o)
        delta = delta.flatten(1)
    rules = RELP_RULES if method == "relp" else ()
    logits_site = sublayer_input(model, "logits").site
    wanted = [s for s in reads if s.split(".")[0] in ("q", "k", "v", "mlp_in") or s == logits_site]
    alphas = [(k + 0.5) / ig_steps for k in range(ig_steps)] if method == "eap-ig" else [None]
    scores = torch.zeros(len(graph.senders), len(graph.receivers))
    # each MLP reads a tensor of its own, so the gradient there is its branch's alone (where an MLP reads the residual
    # directly, post-norm blocks, its input is otherwise the residual itself)
    own_inputs = [_Fresh(f"mlp_in.{layer}") for layer in range(model.n_layers)]
    for alpha in alphas:
        edits = list(own_inputs)
        if alpha is not None:
            emb = base_acts["resid_pre.0"] + alpha * (src_acts["resid_pre.0"] - base_acts["resid_pre.0"])
            edits.append(Replace("resid_pre.0", emb))
        run = model.run(base, edits, read=reads, grad=True, backend=backend, rules=rules)
        value = batch_metric(metric, run.logits[:, -1], ctx, lo, n)
        grads = dict(zip(wanted, torch.autograd.grad(value.sum(), [run.acts[s] for s in wanted])))
        acts = {name: value.detach() for name, value in run.acts.items()}
        del run
        for layer in range(model.n_layers + 1):
            if layer < model.n_layers:
                g = _receiver_grads(model, acts, grads, layer, method == "relp", weights)
            else:
                g = grads[logits_site][None]
            cols = graph.receiver_columns(layer)
            scores[:, cols] += (delta @ g.flatten(1).T.to(delta.dtype)).float().cpu()
    return scores / len(alphas)
