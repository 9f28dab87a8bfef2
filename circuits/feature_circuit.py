"""Sparse feature circuits (Marks et al. 2024): latents and error terms of spliced dictionaries as nodes, the
edges between consecutive dictionaries, and the circuit's faithfulness, as a `Circuit` and a run folder.

`feature_circuit_run` is what ``interp features circuit`` calls:

1. node effects: `interp.patching.features_run.feature_run` scores every latent and error term by AtP (or RelP)
   and patches the ``top_k`` latents per dictionary exactly; a node's score is its effect, the metric after
   patching it (clean into corrupt) minus the corrupt run's, exact where patched;
2. nodes: per dictionary, the ``nodes`` largest |effect| among those latents and its error term;
3. edges (`interp.circuits.feature_edges`): from every node of one dictionary into every node of the next one in
   forward order (mean over prompts), and from the last dictionary's nodes to the logits (their effects);
4. faithfulness (`feature_faithfulness`): the metric with every latent and error term of the dictionaries outside
   the circuit mean-ablated, against the full model and the empty circuit, and that curve over circuit sizes.

Feature circuits are measured over their dictionaries: the model's heads and MLPs run as they are.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Callable

import torch

from interp.circuits.feature_edges import feature_edges
from interp.circuits.graph import FEATURE_KINDS, Circuit, Edge, Faithfulness, parse_node
from interp.errors import InterpError
from interp.interventions import Ablate
from interp.metrics import MetricContext, check_finite, get_metric
from interp.model import Model
from interp.prompts import PromptSet, TokenizedPrompts
from interp.results import RunResult, describe_tensor, run_header


def feature_sites(circuit: Circuit) -> list[str]:
    """The dictionary sites (``"resid_post.6"``) of a circuit's feature and error nodes, in first-seen order."""
    sites = []
    for node in map(parse_node, circuit.nodes):
        if node.kind in FEATURE_KINDS and node.dictionary_site not in sites:
            sites.append(node.dictionary_site)
    return sites + [s for s in circuit.provenance.get("dictionary_sites", []) if s not in sites]


def is_feature_circuit(circuit: Circuit) -> bool:
    """Whether ``circuit`` has feature or error nodes (or was built over dictionaries)."""
    return bool(feature_sites(circuit))


@contextmanager
def dictionaries_attached(model: Model, circuit: Circuit) -> Iterator[None]:
    """Load the dictionaries a feature circuit was built with (its provenance's ``dictionaries`` folders), attach
    them for the block and detach them after."""
    from interp.dictionary import load_dictionary

    folders = circuit.provenance.get("dictionaries") or []
    if not folders or not all(isinstance(f, str) for f in folders):
        raise InterpError("this feature circuit does not say which dictionary folders it was built with "
                          "(provenance 'dictionaries'): rebuild it with interp features circuit")
    attached = []
    try:
        for folder in folders:
            attached.append(model.attach(load_dictionary(folder, model=model))[len("sae."):])
        missing = [s for s in feature_sites(circuit) if s not in attached]
        if missing:
            raise InterpError(f"the circuit has nodes at {missing[0]}, but none of its dictionaries sits there")
        yield
    finally:
        for site in attached:
            model.dictionaries.pop(site, None)


def _check(model: Model, circuit: Circuit) -> None:
    others = [n for n in circuit.nodes if parse_node(n).kind not in FEATURE_KINDS]
    if others and len(others) < len(circuit.nodes):
        raise InterpError(f"this circuit mixes feature nodes with {others[0]}: measure feature circuits and component "
                          "circuits separately")
    for name in circuit.nodes:
        node = parse_node(name)
        if node.dictionary_site not in model.dictionaries:
            raise InterpError(f"circuit node {name} needs the dictionary at {node.dictionary_site} attached "
                              f"(attached: {', '.join(sorted(model.dictionaries)) or 'none'})")
        d_sae = int(model.dictionaries[node.dictionary_site].W_enc.shape[1])
        if node.kind == "feature" and node.unit >= d_sae:
            raise InterpError(f"circuit node {name} is out of range: the dictionary at {node.dictionary_site} has "
                              f"latents 0..{d_sae - 1}; was the circuit built with another dictionary?")


def feature_ablations(model: Model, circuit: Circuit, means: dict[str, torch.Tensor], n_pos: int) -> list[Ablate]:
    """Mean-ablations of every latent and error term of the attached dictionaries that ``circuit`` does not keep.

    A node without a position keeps its latent (or error term) at every position; ``@p`` keeps it at p only.
    ``means`` holds ``sae.<site>.latents`` / ``.error`` on the reference prompts."""
    _check(model, circuit)
    ablations = []
    for site in sorted(model.dictionaries):
        d_sae = int(model.dictionaries[site].W_enc.shape[1])
        keep_latents, keep_error = torch.zeros(n_pos, d_sae, dtype=torch.bool), torch.zeros(n_pos, dtype=torch.bool)
        for node in map(parse_node, circuit.nodes):
            if node.dictionary_site != site:
                continue
            where = slice(None) if node.pos is None else node.pos
            if node.kind == "feature":
                keep_latents[where, node.unit] = True
            else:
                keep_error[where] = True
        pos, unit = (~keep_latents).nonzero(as_tuple=True)
        if len(pos):
            name = f"sae.{site}.latents"
            ablations.append(Ablate(name, "mean", (slice(None), pos, unit), means[name]))
        if not bool(keep_error.all()):
            name = f"sae.{site}.error"
            ablations.append(Ablate(name, "mean", (slice(None), (~keep_error).nonzero(as_tuple=True)[0]), means[name]))
    return ablations


class _Measure:
    """The metric on the clean prompts with a circuit's outside mean-ablated; shared by every circuit measured."""

    def __init__(self, model: Model, tokens: TokenizedPrompts, metric_fn: Callable, reference: str = "clean",
                 backend: str | None = None):
        if reference not in ("clean", "corrupt", "both"):
            raise InterpError(f"unknown reference '{reference}': use clean, corrupt or both")
        if not model.dictionaries:
            raise InterpError("no dictionary is attached: attach the circuit's dictionaries (model.attach) first")
        self.model, self.metric_fn, self.backend = model, metric_fn, backend
        self.clean, corrupt = tokens.clean.to(model.device), tokens.corrupt.to(model.device)
        ref = {"clean": self.clean, "corrupt": corrupt, "both": torch.cat([self.clean, corrupt])}[reference]
        reads = [f"sae.{s}.{part}" for s in model.dictionaries for part in ("latents", "error")]
        with torch.no_grad():
            self.means = model.run(ref, read=reads, backend=backend).acts
            self.full = model.run(self.clean, backend=backend).logits[:, -1]
            corrupt_logits = model.run(corrupt, backend=backend).logits[:, -1]
        self.ctx = MetricContext(tokens.answer.to(model.device), tokens.wrong.to(model.device), self.full, corrupt_logits)

    def metric(self, circuit: Circuit | None, what: str) -> torch.Tensor:
        """Per-prompt metric: the full model for None, else ``circuit`` with the rest mean-ablated."""
        logits = self.full
        if circuit is not None:
            ablations = feature_ablations(self.model, circuit, self.means, self.clean.shape[1])
            with torch.no_grad():
                logits = self.model.run(self.clean, ablations, backend=self.backend).logits[:, -1]
        return check_finite(self.metric_fn(logits, self.ctx).float(), f"the {what} model's metric").cpu()


def feature_faithfulness(model: Model, circuit: Circuit, prompts: PromptSet | TokenizedPrompts,
                         metric: str | Callable = "logit_diff", reference: str = "clean",
                         backend: str | None = None) -> Faithfulness:
    """The metric on the clean prompts with every latent and error term of the attached dictionaries outside
    ``circuit`` mean-ablated (means per position over the ``reference`` prompts), against the full model and the
    empty circuit (every latent and error term mean-ablated). The dictionaries must be attached."""
    tokens = prompts.tokenize(model.tokenizer) if isinstance(prompts, PromptSet) else prompts
    measure = _Measure(model, tokens, get_metric(metric) if isinstance(metric, str) else metric, reference, backend)
    n_ablated = len(feature_ablations(model, circuit, measure.means, tokens.clean.shape[1]))
    empty = Circuit({}, provenance=circuit.provenance)
    return Faithfulness(measure.metric(None, "full"), measure.metric(circuit, "circuit"), measure.metric(empty, "empty"),
                        n_ablated=n_ablated)


def select_nodes(effects: dict[str, dict[str, float]], nodes: int, min_abs: float | None = None) -> dict[str, float]:
    """Per dictionary site, the ``nodes`` candidates (``{site: {node name: effect}}``) with the largest |effect|
    (and |effect| >= ``min_abs``)."""
    kept = {}
    for candidates in effects.values():
        ranked = sorted(candidates.items(), key=lambda kv: -abs(kv[1]))[:nodes]
        kept |= {name: value for name, value in ranked if min_abs is None or abs(value) >= min_abs}
    return kept


def add_feature_edges(model: Model, circuit: Circuit, tokens: TokenizedPrompts, metric_fn: Callable,
                      ctx: MetricContext, sites: list[str], progress: Callable | None = None) -> None:
    """Edges between the circuit's nodes of consecutive dictionaries (``sites`` in forward order), mean over
    prompts, and from the last dictionary's nodes to the logits (their node scores)."""
    by_site: dict[str, list] = {site: [] for site in sites}
    for node in map(parse_node, circuit.nodes):
        by_site[node.dictionary_site].append(node)
    pairs = list(zip(sites, sites[1:]))
    for i, (up, down) in enumerate(pairs):
        senders, receivers = by_site[up], by_site[down]
        latents = [n.unit for n in receivers if n.kind == "feature"]
        has_error = any(n.kind == "error" for n in receivers)
        if senders and (latents or has_error):
            scores = feature_edges(model, tokens.corrupt, tokens.clean, up, down, metric_fn, ctx, latents,
                                   down_error=has_error).mean(0)
            rows = [f"feature.{down}.{j}" for j in latents] + ([f"error.{down}"] if has_error else [])
            for row, receiver in enumerate(rows):
                for sender in senders:
                    score = float(scores[row, -1 if sender.kind == "error" else sender.unit])
                    circuit.edges.append(Edge(str(sender), receiver, score))
        if progress is not None:
            progress("edges", i + 1, len(pairs))
    for node in by_site[sites[-1]] if sites else []:
        circuit.edges.append(Edge(str(node), "logits", circuit.nodes[str(node)]))


def _sizes(nodes: int) -> list[int]:
    sizes, k = [0], 1
    while k < nodes:
        sizes.append(k)
        k *= 2
    return sizes + [nodes]


def feature_circuit_run(model: Model, prompts: PromptSet, dictionaries: list, metric: str = "logit_diff", nodes: int = 8,
                        top_k: int = 32, method: str = "atp", exact: bool = True, edges: bool = True,
                        min_abs: float | None = None, reference: str = "clean", command: str = "python", seed: int = 0,
                        max_memory: int | None = None, sources: list[str] | None = None,
                        progress: Callable | None = None) -> tuple[RunResult, Circuit]:
    """Build the sparse feature circuit of ``dictionaries`` (attached here, detached after) on ``prompts``.

    ``method``: atp or relp, the estimate that ranks every latent; ``exact`` patches its ``top_k`` latents per
    dictionary exactly and scores them by that. ``progress(phase, done, total)`` reports "edges" and "curve"."""
    from interp.patching.features_run import feature_run

    if method not in ("atp", "relp"):
        raise InterpError(f"unknown method '{method}': use atp or relp")
    if nodes < 1 or (top_k and top_k < nodes):
        raise InterpError(f"--nodes must be at least 1 and at most --top-k ({top_k}), got {nodes}")
    effects_run = feature_run(model, prompts, dictionaries, (method, "activation") if exact else (method,), metric,
                              top_k, command, seed, max_memory, sources)
    scored = "activation" if exact else method
    base = float(effects_run.manifest["baselines"]["corrupt"]["mean"])
    sites = [entry["site"] for entry in effects_run.manifest["dictionaries"]]
    candidates: dict[str, dict[str, float]] = {}
    for site in sites:
        name = f"{scored}/sae.{site}.top"
        ids = effects_run.manifest["tensors"][name]["labels"]["latent"]
        values = effects_run.scores[name].float() - base
        candidates[site] = {f"feature.{site}.{u}": float(v) for u, v in zip(ids, values)}
        candidates[site][f"error.{site}"] = float(effects_run.scores[f"{scored}/sae.{site}.error"].float().mean()) - base
    attached = []
    try:
        for d in dictionaries:
            attached.append(model.attach(d)[len("sae."):])
        order = sorted(sites, key=lambda s: model.adapter.order_key(model.site(s)))
        source_of = {e["site"]: e["source"] for e in effects_run.manifest["dictionaries"]}
        provenance = {"method": method, "exact": exact, "metric": metric, "nodes": nodes, "top_k": top_k,
                      "min_abs": min_abs, "dictionary_sites": order, "dictionaries": [source_of[s] for s in order]}
        circuit = Circuit(select_nodes(candidates, nodes, min_abs), provenance=provenance)
        tokens = prompts.tokenize(model.tokenizer)
        measure = _Measure(model, tokens, get_metric(metric), reference)
        if edges:
            add_feature_edges(model, circuit, tokens, get_metric(metric), measure.ctx, order, progress)
        sizes = _sizes(nodes)
        curve = []
        for i, k in enumerate(sizes):
            sub = Circuit(select_nodes({s: {n: v for n, v in circuit.nodes.items() if parse_node(n).dictionary_site == s}
                                        for s in order}, k), provenance=provenance)
            curve.append(float(measure.metric(sub, f"{k}-node").mean()))
            if progress is not None:
                progress("curve", i + 1, len(sizes))
        full = float(measure.metric(None, "full").mean())
    finally:
        for site in attached:
            model.dictionaries.pop(site, None)
    return _result(model, prompts, effects_run, circuit, sizes, curve, full, reference, command, seed), circuit


def _ratio(value: float, empty: float, full: float) -> float | None:
    return (value - empty) / (full - empty) if full != empty else None


def _result(model, prompts, effects_run, circuit, sizes, curve, full, reference, command, seed) -> RunResult:
    names = list(circuit.nodes)
    values = torch.tensor([circuit.nodes[n] for n in names])
    normalized = [_ratio(v, curve[0], full) for v in curve]
    faithfulness = {"full": full, "circuit": curve[-1], "empty": curve[0], "normalized": normalized[-1],
                    "fraction": curve[-1] / full if full else None, "reference": reference}
    effects = effects_run.manifest
    lines = [f"{n}: {circuit.nodes[n]:+.4f}" for n in sorted(names, key=lambda n: -abs(circuit.nodes[n]))]
    curve_text = ", ".join(f"{k}: {'undefined' if r is None else f'{r:.3f}'}" for k, r in zip(sizes, normalized))
    manifest = run_header(model, command, seed) | {
        "method": "feature circuit", "metric": effects["metric"], "prompt_set": effects["prompt_set"],
        "parameters": {**circuit.provenance, "reference": reference},
        "dictionaries": effects["dictionaries"], "baselines": effects["baselines"],
        "estimates": {"methods": effects["methods"], "faithfulness": effects["faithfulness"],
                      "top_latents": effects["top_latents"], "error_effects": effects["error_effects"]},
        "faithfulness": faithfulness,
        "circuit": circuit.to_json(),
        "notes": [{"title": "Feature circuit", "text": "\n".join(lines)},
                  {"title": "Faithfulness", "text": f"{effects['metric']}: full {full:.4f}, circuit {curve[-1]:.4f}, "
                   f"empty {curve[0]:.4f}; normalized by nodes per dictionary: {curve_text}"}],
        "tensors": {"circuit/node_score": describe_tensor("circuit/node_score", values, ["node"], {"node": names})
                    | {"plot": True},
                    "circuit/curve": describe_tensor("circuit/curve", torch.tensor(curve), ["nodes"],
                                                     {"nodes": [str(k) for k in sizes]}) | {"plot": True}},
    }
    return RunResult(manifest=manifest, scores={"circuit/node_score": values, "circuit/curve": torch.tensor(curve)})
