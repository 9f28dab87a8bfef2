"""An edge-circuit discovery run (``interp circuit discover``): edge scores, the chosen circuit, its exact
faithfulness and, when asked, the faithfulness curve, as a run folder beside ``circuit.json``.

Tensors: ``circuit/edge_score`` [sender, receiver] (every edge's score, 0 where the graph has none) and
``circuit/curve`` [fraction] (normalized faithfulness of the circuits of those fractions of the edges).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import torch

from interp.circuits.eap import edge_scores
from interp.circuits.edge_circuit import FRACTIONS, edge_faithfulness, faithfulness_curve, prune, select_edges, to_circuit
from interp.circuits.graph import Circuit
from interp.errors import InterpError
from interp.metrics import MetricContext, get_metric
from interp.model import Model
from interp.prompts import PromptSet
from interp.results import RunResult, describe_tensor, run_header


def _fmt(x: float | None) -> str:
    return "undefined" if x is None else f"{x:.3f}"


def discover_run(model: Model, prompts: PromptSet, method: str = "eap", n_edges: int = 100, curve: bool = False,
                 fractions: Sequence[float] = FRACTIONS, how: str = "top", ablation: str = "corrupt",
                 ig_steps: int = 5, direction: str = "noising", metric: str = "logit_diff", seed: int = 0,
                 max_memory: int | None = None, command: str = "circuit discover",
                 progress: Callable | None = None, workers=None) -> tuple[RunResult, Circuit]:
    """Score every edge of ``model``'s graph on ``prompts`` by ``method``, keep the ``n_edges`` chosen by ``how``
    (pruned to paths from the input to the logits), and measure it exactly; with ``curve``, every size of
    ``fractions`` too. ``workers`` (a `interp.ray_workers.RayWorkers`) measures the curve's circuits on Ray."""
    if n_edges < 1:
        raise InterpError(f"--edges must be at least 1, got {n_edges}")
    metric_fn = get_metric(metric)
    tokens = prompts.tokenize(model.tokenizer)
    with torch.no_grad():
        ctx = MetricContext(tokens.answer, tokens.wrong, model.run(tokens.clean).logits[:, -1],
                            model.run(tokens.corrupt).logits[:, -1])
    t0 = time.perf_counter()
    scores = edge_scores(model, tokens.clean, tokens.corrupt, metric_fn, ctx, method, ig_steps, direction,
                         max_memory=max_memory)
    t_scores = time.perf_counter() - t0
    graph = scores.graph
    mask = prune(graph, select_edges(scores, min(n_edges, graph.n_edges), how))
    t0 = time.perf_counter()
    measured = edge_faithfulness(model, graph, tokens.clean, tokens.corrupt, mask[None], metric, ctx, ablation,
                                 max_memory, progress=progress)
    faithful = {"full": float(measured.full.mean()), "circuit": float(measured.values[0].mean()),
                "empty": float(measured.empty.mean()), "normalized": measured.normalized[0],
                "edges": int(mask.sum()), "requested": n_edges}
    result_curve = None
    if curve:
        result_curve = faithfulness_curve(model, scores, tokens.clean, tokens.corrupt, metric, ctx, fractions, how,
                                          ablation, max_memory, progress=progress, workers=workers)
    t_faithful = time.perf_counter() - t0
    provenance = {"method": method, "selection": how, "ablation": ablation, "direction": direction, "metric": metric,
                  "ig_steps": ig_steps if method == "eap-ig" else None, "model": model.name,
                  "prompt_set": prompts.name, "edges_requested": n_edges}
    circuit = to_circuit(scores, mask, provenance)
    manifest = run_header(model, command, seed) | {
        "method": "edge circuit discovery", "metric": metric,
        "prompt_set": {"name": prompts.name, "n_prompts": len(prompts), "fingerprint": prompts.fingerprint(),
                       "n_tokens": int(tokens.clean.shape[1])},
        "parameters": {**provenance, "fractions": list(fractions) if curve else None, "max_memory": max_memory},
        "graph": {"senders": len(graph.senders), "receivers": len(graph.receivers), "edges": graph.n_edges},
        "faithfulness": faithful,
        "timings": {"scores_s": round(t_scores, 3), "faithfulness_s": round(t_faithful, 3)},
    }
    if workers is not None:
        manifest["ray"] = workers.info()
    lines = [f"{e.sender} -> {e.receiver}: {e.score:+.4f}" for e in sorted(circuit.edges, key=lambda e: -abs(e.score))[:30]]
    notes = [{"title": "Circuit", "text": f"{faithful['edges']} of {graph.n_edges} edges ({n_edges} chosen by {how}, "
              f"pruned), {len(circuit.nodes)} nodes; largest edges:\n" + "\n".join(lines)},
             {"title": "Faithfulness", "text": f"{metric}: full {faithful['full']:.4f}, circuit {faithful['circuit']:.4f}, "
              f"empty {faithful['empty']:.4f}; normalized {_fmt(faithful['normalized'])} (edges outside the circuit "
              f"{'patched from the corrupt run' if ablation == 'corrupt' else 'mean-ablated'})"}]
    scores_t = {"circuit/edge_score": scores.scores}
    tensors = {"circuit/edge_score": describe_tensor("circuit/edge_score", scores.scores, ["sender", "receiver"],
                                                     {"sender": graph.senders, "receiver": graph.receivers}) | {"plot": False}}
    if result_curve is not None:
        manifest["curve"] = result_curve
        values = torch.tensor([float("nan") if v is None else v for v in result_curve["normalized"]])
        scores_t["circuit/curve"] = values
        tensors["circuit/curve"] = describe_tensor("circuit/curve", values, ["fraction"],
                                                   {"fraction": [f"{f:g}" for f in fractions]}) | {"plot": True}
        notes.append({"title": "Faithfulness curve", "text": ", ".join(
            f"{f:g} ({k} edges): {_fmt(v)}" for f, k, v in zip(fractions, result_curve["kept"], result_curve["normalized"]))
            + f"; area {_fmt(result_curve['area'])}, area of |1 - faithfulness| {_fmt(result_curve['area_abs_error'])}"})
    manifest["notes"], manifest["tensors"] = notes, tensors
    return RunResult(manifest=manifest, scores=scores_t), circuit
