"""Edge circuits: choosing edges by their scores, pruning what cannot matter, and measuring faithfulness exactly.

- `select_edges`: the ``n`` edges with the largest |score| (``top``), or greedy growth from the logits (``greedy``:
  repeatedly the largest-|score| edge into a node already connected to the logits, Hanna et al. 2024); then
  `prune` keeps only edges on some path from the input to the logits.
- `faithfulness_curve`: for circuits of growing size, the metric on the clean prompts with every edge *outside*
  the circuit patched, exactly (`interp.circuits.edge_patching`), from the corrupt run or mean-ablated (the
  senders' mean writes over the reference prompts), normalised so that the full model is 1 and the empty circuit
  (every edge patched) is 0; and the areas under the curve over the fraction of edges kept (faithfulness, and
  |1 - faithfulness|), as MIB's circuit track reports circuits.
- `to_circuit`: an edge mask as a `Circuit` (``circuit.json``): its edges with their scores, and the nodes they join.

Nodes of edge circuits: ``input``, ``head.L.H``, ``kv.L.G`` (a KV head: the key and value receivers), ``mlp.L``;
edges name the receiver's input (``head.L.H.q``, ``kv.L.G.k``, ``kv.L.G.v``, ``mlp.L``, ``logits``).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from interp.circuits.eap import EdgeScores
from interp.circuits.edge_graph import EdgeGraph
from interp.circuits.edge_patching import edge_patched_logits, source_writes
from interp.circuits.graph import Circuit, Edge, receiver_node
from interp.errors import InterpError
from interp.limits import memory_budget, row_bytes, rows_that_fit
from interp.metrics import MetricContext, check_finite, get_metric
from interp.model import Model

FRACTIONS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
SELECTIONS = ("top", "greedy")
ABLATIONS = ("corrupt", "mean")


def _feeds(graph: EdgeGraph, sender: str) -> list[str]:
    """The receiver nodes whose reads make up ``sender``'s computation (a head: its query and its KV head)."""
    if sender.startswith("head."):
        _, layer, head = sender.split(".")
        return [sender, f"kv.{layer}.{int(head) // (graph.n_heads // graph.n_kv_heads)}"]
    return [] if sender == "input" else [sender]


def prune(graph: EdgeGraph, mask: torch.Tensor) -> torch.Tensor:
    """``mask`` without the edges on no path from the input to the logits."""
    mask = mask & graph.valid
    nodes = [receiver_node(r) for r in graph.receivers]
    feeds = [_feeds(graph, s) for s in graph.senders]
    while True:
        fed = {nodes[j] for j in mask.any(0).nonzero().flatten().tolist()}  # receiver nodes with a kept edge in
        reached = torch.tensor([s == "input" or any(n in fed for n in feeds[i]) for i, s in enumerate(graph.senders)])
        sending = {n for i in mask.any(1).nonzero().flatten().tolist() for n in feeds[i]}  # feed a sender that sends on
        useful = torch.tensor([n == "logits" or n in sending for n in nodes])
        keep = mask & reached[:, None] & useful[None, :]
        if torch.equal(keep, mask):
            return mask
        mask = keep


def select_edges(scores: EdgeScores, n: int, how: str = "top") -> torch.Tensor:
    """The mask of an ``n``-edge circuit (before pruning) chosen from ``scores`` by ``how``."""
    if how not in SELECTIONS:
        raise InterpError(f"unknown selection '{how}': use top or greedy")
    graph = scores.graph
    if n < 0:
        raise InterpError(f"a circuit needs 0 or more edges, got {n}")
    if how == "top":
        return scores.top(n) if n else torch.zeros_like(graph.valid)
    receivers = [receiver_node(r) for r in graph.receivers]
    by_node: dict[str, list[int]] = {}
    for j, node in enumerate(receivers):
        by_node.setdefault(node, []).append(j)
    magnitude = scores.scores.abs().masked_fill(~graph.valid, -1.0)
    mask, heap, opened = torch.zeros_like(graph.valid), [], set()

    def open_node(node: str) -> None:
        if node in opened:
            return
        opened.add(node)
        for j in by_node.get(node, []):
            for i in graph.valid[:, j].nonzero().flatten().tolist():
                heapq.heappush(heap, (-float(magnitude[i, j]), i, j))

    open_node("logits")
    while heap and int(mask.sum()) < n:
        _, i, j = heapq.heappop(heap)
        if mask[i, j]:
            continue
        mask[i, j] = True
        for node in _feeds(graph, graph.senders[i]):
            open_node(node)
    return mask


@dataclass
class EdgeFaithfulness:
    """The metric per circuit (``values`` [k, n_prompts]) beside the full model and the empty circuit."""

    values: torch.Tensor
    full: torch.Tensor
    empty: torch.Tensor

    @property
    def normalized(self) -> list[float | None]:
        den = float(self.full.mean() - self.empty.mean())
        return [float(v.mean() - self.empty.mean()) / den if den else None for v in self.values]


def _mean_writes(model: Model, reference: torch.Tensor, n: int, backend: str | None) -> dict[str, torch.Tensor]:
    acts = source_writes(model, reference, backend)
    return {name: value.mean(0, keepdim=True).expand(n, *value.shape[1:]) for name, value in acts.items()}


def patched_metric(model: Model, graph: EdgeGraph, clean: torch.Tensor, corrupt: torch.Tensor, masks: torch.Tensor,
                   metric: str | Callable, ctx: MetricContext, ablation: str = "corrupt", max_memory: int | None = None,
                   backend: str | None = None, progress: Callable | None = None) -> torch.Tensor:
    """The metric ``[k, n_prompts]`` on ``clean`` with the edges of each of ``masks`` [k, S, R] patched from the
    corrupt run (``ablation="corrupt"``) or mean-ablated (``"mean"``: the senders' mean writes over the clean and
    corrupt prompts, per position), in as many sets per forward as fit ``max_memory``."""
    if ablation not in ABLATIONS:
        raise InterpError(f"unknown ablation '{ablation}': use corrupt or mean")
    metric = get_metric(metric) if isinstance(metric, str) else metric
    n, n_pos = clean.shape
    source = (source_writes(model, corrupt, backend) if ablation == "corrupt"
              else _mean_writes(model, torch.cat([clean, corrupt]), n, backend))
    per_row = row_bytes(model, 0, 0, n_pos) + len(graph.senders) * n_pos * model.d_model * 4
    k = max(1, rows_that_fit(memory_budget(model, max_memory), n * per_row, f"one edge-patched run of {n} prompts"))
    values = []
    for start in range(0, len(masks), k):
        chunk = masks[start:start + k]
        logits = edge_patched_logits(model, graph, clean, source, chunk, backend=backend)
        values.append(check_finite(metric(logits, ctx.rows(len(chunk) * n)).float().view(len(chunk), n),
                                   "the edge-patched metric"))
        if progress is not None:
            progress("faithfulness", min(start + k, len(masks)), len(masks))
    return torch.cat(values)


def edge_faithfulness(model: Model, graph: EdgeGraph, clean: torch.Tensor, corrupt: torch.Tensor,
                      circuits: torch.Tensor, metric: str | Callable, ctx: MetricContext, ablation: str = "corrupt",
                      max_memory: int | None = None, backend: str | None = None, progress: Callable | None = None,
                      workers=None) -> EdgeFaithfulness:
    """The metric on ``clean`` with every edge outside each circuit (``circuits`` [k, S, R] kept-edge masks) patched
    (see `patched_metric`), beside the full model and the empty circuit. ``workers`` (a
    `interp.ray_workers.RayWorkers`; ``metric`` then by name) measures the circuits on Ray workers."""
    outside = graph.valid & ~circuits.bool()
    every = torch.stack([torch.zeros_like(graph.valid), graph.valid])  # the full model, the empty circuit
    ends = patched_metric(model, graph, clean, corrupt, every, metric, ctx, ablation, max_memory, backend)
    if workers is None:
        values = patched_metric(model, graph, clean, corrupt, outside, metric, ctx, ablation, max_memory, backend,
                                progress)
    else:
        from interp.circuits.ray_circuits import ray_faithfulness

        if not isinstance(metric, str):
            raise InterpError("on Ray workers the metric is passed by name (logit_diff, norm_logit_diff, answer_prob, kl)")
        values = ray_faithfulness(workers, clean, corrupt, outside, metric, ctx, ablation, max_memory, backend, progress)
    return EdgeFaithfulness(values, ends[0], ends[1])


def _area(xs: Sequence[float], ys: Sequence[float | None]) -> float | None:
    if any(y is None for y in ys) or len(xs) < 2:
        return None
    return float(sum((xs[i + 1] - xs[i]) * (ys[i + 1] + ys[i]) / 2 for i in range(len(xs) - 1)))


def faithfulness_curve(model: Model, scores: EdgeScores, clean: torch.Tensor, corrupt: torch.Tensor, metric: Callable,
                       ctx: MetricContext, fractions: Sequence[float] = FRACTIONS, how: str = "top",
                       ablation: str = "corrupt", max_memory: int | None = None, backend: str | None = None,
                       progress: Callable | None = None, workers=None) -> dict:
    """Faithfulness of the circuits of ``fractions`` of the graph's edges chosen from ``scores``: sizes (requested
    and kept after pruning), normalized faithfulness per size, and the areas under the curve."""
    graph = scores.graph
    if not fractions or any(not 0 < f <= 1 for f in fractions) or list(fractions) != sorted(fractions):
        raise InterpError("circuit sizes are increasing fractions of the edges in (0, 1], e.g. 0.01,0.1,1")
    sizes = [max(1, round(f * graph.n_edges)) for f in fractions]
    masks = torch.stack([prune(graph, select_edges(scores, size, how)) for size in sizes])
    result = edge_faithfulness(model, graph, clean, corrupt, masks, metric, ctx, ablation, max_memory, backend, progress,
                               workers)
    normalized = result.normalized
    xs = [0.0, *fractions]
    ys = [0.0, *normalized]
    return {"fractions": list(fractions), "requested": sizes, "kept": [int(m.sum()) for m in masks],
            "normalized": normalized, "metric": [float(v.mean()) for v in result.values],
            "full": float(result.full.mean()), "empty": float(result.empty.mean()), "how": how, "ablation": ablation,
            "area": _area(xs, ys),
            "area_abs_error": _area(xs, [None if y is None else abs(1 - y) for y in ys])}


def is_edge_circuit(circuit: Circuit) -> bool:
    """Whether ``circuit`` is an edge circuit of the full graph (`to_circuit`, ``interp circuit discover``)."""
    provenance = circuit.provenance if isinstance(circuit.provenance, dict) else {}
    return provenance.get("selection") in SELECTIONS or any(
        e.sender == "input" or receiver_node(e.receiver) != e.receiver for e in circuit.edges)


def measure_edge_circuit(model: Model, circuit: Circuit, clean: torch.Tensor, corrupt: torch.Tensor,
                         metric: str | Callable, ctx: MetricContext, ablation: str | None = None,
                         backend: str | None = None) -> EdgeFaithfulness:
    """An edge circuit read back from ``circuit.json``, measured exactly again (its own ablation unless given)."""
    from interp.circuits.edge_graph import edge_graph

    graph = edge_graph(model)
    mask = graph.mask([(e.sender, e.receiver) for e in circuit.edges])
    provenance = circuit.provenance if isinstance(circuit.provenance, dict) else {}
    return edge_faithfulness(model, graph, clean, corrupt, mask[None], metric, ctx,
                             ablation or provenance.get("ablation", "corrupt"), backend=backend)


def to_circuit(scores: EdgeScores, mask: torch.Tensor, provenance: dict | None = None) -> Circuit:
    """An edge mask as a `Circuit`: its edges (sender, receiver, score) and the nodes they join, each node scored by
    the sum of its outgoing edges' scores (the logits' edges end outside the node list)."""
    graph = scores.graph
    edges = [Edge(graph.senders[i], graph.receivers[j], float(scores.scores[i, j])) for i, j in mask.nonzero().tolist()]
    nodes: dict[str, float] = {}
    for e in edges:
        nodes[e.sender] = nodes.get(e.sender, 0.0) + e.score
        receiver = receiver_node(e.receiver)
        if receiver != "logits":
            nodes.setdefault(receiver, 0.0)
    return Circuit(nodes, edges, dict(provenance or {}))

