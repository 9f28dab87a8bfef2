"""Circuit graphs: scored nodes (heads, MLPs, neurons, positions), edges, overlap and faithfulness.

A node is named by a string:

==============  ============================================  ========================
name            what                                          from run tensor
==============  ============================================  ========================
head.L.H        head H of layer L, every position            ``<method>/head_out``
head.L.H@p      head H of layer L at position p              ``<method>/head_out_pos``
mlp.L           the MLP of layer L, every position           (built by hand)
mlp.L@p         the MLP of layer L at position p             ``<method>/mlp_out``
neuron.L.N      neuron N of layer L's MLP                    ``<method>/mlp_act``
attn.L@p        attention output of layer L at position p    ``<method>/attn_out``
resid_pre.L@p   residual stream (also resid_mid, resid_post)  ``<method>/resid_pre``...
kv.L.G          key/value head G of layer L (edge circuits)  ``interp circuit discover``
input           the embeddings (edge circuits)               ``interp circuit discover``
feature.S.L.N   latent N of the dictionary at site S.L       ``interp features circuit``
error.S.L       that dictionary's error term                 ``interp features circuit``
==============  ============================================  ========================

Feature and error nodes (S: resid_pre, resid_mid, resid_post, attn_out, mlp_out, mlp_in, mlp_act or head_out; a
transcoder is named by its input site) are measured over their dictionaries: see
`interp.circuits.feature_circuit`.

`node_scores` reads any run folder (activation patching, AtP, RelP, IG: ``interp.results.load_run``)
and scores each node by its *effect*: the metric after patching it minus the base run's metric.
`threshold` keeps the top-k nodes by |score| or those above a cut; `Circuit.add_edges` adds
path-patching edges. `Circuit.save` / `Circuit.load` write and read ``circuit.json``.
`overlap` compares two circuits; `faithfulness` mean-ablates everything outside a circuit.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from interp.errors import InterpError, RunFolderError
from interp.interventions import Ablate
from interp.metrics import MetricContext, check_finite, get_metric
from interp.model import Model
from interp.prompts import PromptSet, TokenizedPrompts
from interp.results import RunResult, load_run, write_json_atomic

CIRCUIT_FILE = "circuit.json"
CIRCUIT_SCHEMA = 1
_NODE = re.compile(r"^(head|neuron|kv)\.(\d+)\.(\d+)(?:@(\d+))?$|^(mlp|attn|resid_pre|resid_mid|resid_post)\.(\d+)(?:@(\d+))?$")
DICTIONARY_SITE_KINDS = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "mlp_in", "mlp_act", "head_out")
_FEATURE = re.compile(rf"^(feature|error)\.({'|'.join(DICTIONARY_SITE_KINDS)})\.(\d+)(?:\.(\d+))?(?:@(\d+))?$")
FEATURE_KINDS = ("feature", "error")
_NODE_KIND = {"head_out": "head", "head_out_pos": "head", "mlp_out": "mlp", "mlp_act": "neuron", "attn_out": "attn",
              "resid_pre": "resid_pre", "resid_mid": "resid_mid", "resid_post": "resid_post"}


@dataclass(frozen=True)
class Node:
    """A parsed node name: kind, layer, unit (head, neuron or latent; None otherwise), pos (None: every
    position) and, for feature and error nodes, the kind of their dictionary's site (``site``)."""

    kind: str
    layer: int
    unit: int | None = None
    pos: int | None = None
    site: str | None = None

    def __str__(self) -> str:
        if self.kind == "input":
            return "input"
        middle = f"{self.site}.{self.layer}" if self.kind in FEATURE_KINDS else f"{self.layer}"
        name = f"{self.kind}.{middle}" + ("" if self.unit is None else f".{self.unit}")
        return name if self.pos is None else f"{name}@{self.pos}"

    @property
    def dictionary_site(self) -> str | None:
        """``"resid_post.6"`` for a feature or error node of the dictionary there; None for other nodes."""
        return f"{self.site}.{self.layer}" if self.kind in FEATURE_KINDS else None


def receiver_node(receiver: str) -> str:
    """The node an edge's receiver belongs to: ``head.L.H.q`` -> ``head.L.H``, ``kv.L.G.k`` -> ``kv.L.G``; other
    receivers (``mlp.L``, ``logits``, node names) are their own node."""
    base, _, part = receiver.rpartition(".")
    return base if part in ("q", "k", "v") and base.startswith(("head.", "kv.")) else receiver


def parse_node(name: str) -> Node:
    """``"head.3.1@5"`` -> Node("head", 3, 1, 5); an `InterpError` for anything else."""
    if str(name) == "input":
        return Node("input", -1)
    f = _FEATURE.match(str(name))
    if f and (f.group(1) == "feature") == (f.group(4) is not None):
        pos = None if f.group(5) is None else int(f.group(5))
        return Node(f.group(1), int(f.group(3)), None if f.group(4) is None else int(f.group(4)), pos, f.group(2))
    m = _NODE.match(str(name))
    if not m:
        raise InterpError(f"bad node name '{name}': use head.L.H, mlp.L, neuron.L.N, attn.L, resid_pre.L, kv.L.G, "
                          "input, feature.SITE.L.N or error.SITE.L (optionally @pos)")
    if m.group(1):
        return Node(m.group(1), int(m.group(2)), int(m.group(3)), None if m.group(4) is None else int(m.group(4)))
    return Node(m.group(5), int(m.group(6)), None, None if m.group(7) is None else int(m.group(7)))


@dataclass(frozen=True)
class Edge:
    """A scored edge from ``sender`` to ``receiver`` (node names, or "logits")."""

    sender: str
    receiver: str
    score: float


@dataclass
class Circuit:
    """Nodes (name -> score), edges and provenance; saved as ``circuit.json``."""

    nodes: dict[str, float]
    edges: list[Edge] = field(default_factory=list)
    provenance: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.nodes = {str(parse_node(k)): float(v) for k, v in self.nodes.items()}

    def __len__(self) -> int:
        return len(self.nodes)

    def __contains__(self, name: str) -> bool:
        return str(parse_node(name)) in self.nodes

    def __repr__(self) -> str:
        return f"Circuit({len(self.nodes)} nodes, {len(self.edges)} edges)"

    def heads(self) -> list[tuple[int, int]]:
        """(layer, head) of every head node, sorted."""
        return sorted({(n.layer, n.unit) for n in map(parse_node, self.nodes) if n.kind == "head"})

    def add_edges(self, edges: Iterable[Edge | tuple[str, str, float]], min_abs: float = 0.0) -> Circuit:
        """Add edges whose |score| >= ``min_abs``; returns self."""
        for e in edges:
            e = e if isinstance(e, Edge) else Edge(str(e[0]), str(e[1]), float(e[2]))
            if abs(e.score) >= min_abs:
                self.edges.append(e)
        return self

    def to_json(self) -> dict:
        nodes = []
        for name, score in self.nodes.items():
            n = parse_node(name)
            nodes.append({"name": name, "kind": n.kind, "layer": n.layer, "unit": n.unit, "pos": n.pos, "score": score})
        return {"schema_version": CIRCUIT_SCHEMA, "nodes": nodes,
                "edges": [{"sender": e.sender, "receiver": e.receiver, "score": e.score} for e in self.edges],
                "provenance": self.provenance}

    def save(self, folder: str | os.PathLike) -> Path:
        """Write ``folder/circuit.json`` atomically (the folder is created); returns its path."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / CIRCUIT_FILE
        write_json_atomic(path, self.to_json())
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> Circuit:
        """Read ``circuit.json`` (or a folder holding one); a `RunFolderError` if it is missing or malformed."""
        path = Path(path)
        if path.is_dir():
            path = path / CIRCUIT_FILE
        if not path.is_file():
            raise RunFolderError(f"no circuit at {path}: expected a {CIRCUIT_FILE} written by Circuit.save")
        try:
            obj = json.loads(path.read_text(encoding="utf-8"))
            if obj.get("schema_version", 0) > CIRCUIT_SCHEMA:
                raise RunFolderError(f"{path} was written by a newer interp (schema {obj['schema_version']}): upgrade interp")
            nodes = {entry["name"]: float(entry["score"]) for entry in obj["nodes"]}
            edges = [Edge(str(e["sender"]), str(e["receiver"]), float(e["score"])) for e in obj["edges"]]
            return cls(nodes, edges, dict(obj.get("provenance", {})))
        except RunFolderError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError, InterpError) as exc:
            raise RunFolderError(f"{path} is not a valid {CIRCUIT_FILE} ({type(exc).__name__}: {exc}); rewrite it with Circuit.save") from None


def check_nodes(model: Model, circuit: Circuit, n_pos: int | None = None) -> None:
    """Refuse, in one line, a node that ``model`` does not have (layer, head, neuron) or a position at or beyond
    ``n_pos`` (the prompts' length), rather than leave it out of the computation silently."""
    limits = {"head": ("heads", model.n_heads), "neuron": ("neurons", model.d_mlp), "kv": ("KV heads", model.adapter.n_kv_heads)}
    for name in circuit.nodes:
        node = parse_node(name)
        if node.layer >= model.n_layers:
            raise InterpError(f"circuit node {name} is out of range: {model.name} has layers 0..{model.n_layers - 1}; "
                              "was the circuit built on another model?")
        if node.kind in limits and node.unit >= limits[node.kind][1]:
            what, n = limits[node.kind]
            raise InterpError(f"circuit node {name} is out of range: {model.name} has {what} 0..{n - 1} per layer; "
                              "was the circuit built on another model?")
        if n_pos is not None and node.pos is not None and node.pos >= n_pos:
            raise InterpError(f"circuit node {name} is out of range: the prompts have {n_pos} tokens (positions "
                              f"0..{n_pos - 1}); use prompts of the circuit's own task")


# --------------------------------------------------------------------------- from run folders
def node_scores(run: RunResult | str | os.PathLike, method: str = "activation",
                components: Iterable[str] | None = None) -> dict[str, float]:
    """Node name -> effect (mean metric after patching minus the base run's) from a run's ``<method>/<component>`` tensors."""
    run = run if isinstance(run, RunResult) else load_run(run)
    manifest = run.manifest
    direction = manifest.get("parameters", {}).get("direction", "denoise")
    base_name = "corrupt" if direction == "denoise" else "clean"
    try:
        base = float(manifest["baselines"][base_name]["mean"])
    except (KeyError, TypeError):
        raise InterpError(f"run has no '{base_name}' baseline in its manifest: use a patching run folder") from None
    available = [k.split("/")[1] for k in run.scores if k.startswith(f"{method}/") and k.count("/") == 1]
    if not available:
        methods = sorted({k.split("/")[0] for k in run.scores})
        raise InterpError(f"run has no '{method}/<component>' tensors: it has methods {', '.join(methods) or 'none'}")
    wanted = available if components is None else list(components)
    scores: dict[str, float] = {}
    for comp in wanted:
        name = f"{method}/{comp}"
        if name not in run.scores or comp not in _NODE_KIND:
            raise InterpError(f"run has no tensor '{name}' usable as nodes: it has {', '.join(f'{method}/{c}' for c in available)}")
        grid, info = run.scores[name].float() - base, manifest["tensors"][name]
        layers = [int(x) for x in info.get("labels", {}).get("layer", range(grid.shape[0]))]
        for cell in torch.cartesian_prod(*[torch.arange(s) for s in grid.shape]).reshape(-1, grid.ndim).tolist():
            where = dict(zip(info["axes"], cell))
            kind = _NODE_KIND[comp]
            node = Node(kind, layers[where["layer"]], where.get("head", where.get("neuron")), where.get("pos"))
            scores[str(node)] = float(grid[tuple(cell)])
    return scores


def threshold(scores: dict[str, float], top_k: int | None = None, min_abs: float | None = None,
              provenance: dict | None = None) -> Circuit:
    """A circuit of the ``top_k`` nodes by |score| and/or those with |score| >= ``min_abs``."""
    if top_k is None and min_abs is None:
        raise InterpError("threshold needs top_k or min_abs: say how many nodes to keep or the cut")
    items = sorted(scores.items(), key=lambda kv: -abs(kv[1]))
    if top_k is not None:
        items = items[:top_k]
    if min_abs is not None:
        items = [(k, v) for k, v in items if abs(v) >= min_abs]
    return Circuit(dict(items), provenance=dict(provenance or {}, top_k=top_k, min_abs=min_abs))


# --------------------------------------------------------------------------- overlap
@dataclass
class CircuitOverlap:
    """Shared nodes of circuits a and b: |a∩b|/|a∪b| (``iou``), /|a| (``over_a``) and /|b| (``over_b``)."""

    shared: list[str]
    only_a: list[str]
    only_b: list[str]
    iou: float
    over_a: float
    over_b: float


def overlap(a: Circuit, b: Circuit) -> CircuitOverlap:
    """Node overlap of two circuits (nan ratios for empty sets)."""
    sa, sb = set(a.nodes), set(b.nodes)
    inter, union = sa & sb, sa | sb
    ratio = lambda x, y: len(x) / len(y) if y else float("nan")
    return CircuitOverlap(sorted(inter), sorted(sa - sb), sorted(sb - sa), ratio(inter, union), ratio(inter, sa), ratio(inter, sb))


# --------------------------------------------------------------------------- faithfulness
@dataclass
class Faithfulness:
    """Metric per prompt of the full model, the circuit (rest mean-ablated) and the empty circuit.

    ``fraction`` = mean circuit / mean full; ``normalized`` = (circuit - empty) / (full - empty); each is None
    when its denominator is 0 (undefined). ``ignored``: the circuit's nodes that are not ablation units (attn,
    resid), which leave the measurement unchanged.
    """

    full: torch.Tensor
    circuit: torch.Tensor
    empty: torch.Tensor
    n_ablated: int
    ignored: list[str] = field(default_factory=list)

    @property
    def fraction(self) -> float | None:
        return float(self.circuit.mean() / self.full.mean()) if float(self.full.mean()) else None

    @property
    def normalized(self) -> float | None:
        den = self.full.mean() - self.empty.mean()
        return float((self.circuit.mean() - self.empty.mean()) / den) if float(den) else None


def ablations_outside(model: Model, circuit: Circuit, means: dict[str, torch.Tensor], n_pos: int) -> list[Ablate]:
    """Mean-ablations of every head and MLP (every position) not kept by ``circuit``.

    A head or MLP node without a position keeps that component at every position; with ``@p`` only
    at p. Neuron nodes of a layer without an MLP node keep those neurons and mean-ablate the layer's
    other neurons (``mlp_act``). Other node kinds (attn, resid) are ignored. ``means`` holds each
    site's activations on the reference prompts.
    """
    keep: dict[tuple[str, int], set] = {}
    for node in map(parse_node, circuit.nodes):
        keep.setdefault((node.kind, node.layer), set()).add((node.unit, node.pos))
    check_nodes(model, circuit, n_pos)
    ablations = []
    for layer in range(model.n_layers):
        kept = keep.get(("head", layer), set())
        pairs = [(p, h) for h in range(model.n_heads) for p in range(n_pos) if (h, None) not in kept and (h, p) not in kept]
        if pairs:
            pos, heads = (torch.tensor(x) for x in zip(*pairs))
            ablations.append(Ablate(f"head_out.{layer}", "mean", (slice(None), pos, heads), means[f"head_out.{layer}"]))
        mlp_kept = keep.get(("mlp", layer), set())
        neurons = sorted({u for u, _ in keep.get(("neuron", layer), set())})
        if neurons and not mlp_kept:
            others = [i for i in range(model.d_mlp) if i not in set(neurons)]
            ablations.append(Ablate(f"mlp_act.{layer}", "mean", (slice(None), slice(None), torch.tensor(others)),
                                    means[f"mlp_act.{layer}"]))
            continue
        if (None, None) in mlp_kept:
            continue
        positions = [p for p in range(n_pos) if (None, p) not in mlp_kept]
        if positions:
            ablations.append(Ablate(f"mlp_out.{layer}", "mean", (slice(None), torch.tensor(positions)), means[f"mlp_out.{layer}"]))
    return ablations


def faithfulness(model: Model, circuit: Circuit, prompts: PromptSet | TokenizedPrompts,
                 metric: str | Callable = "logit_diff", reference: str = "clean", backend: str | None = None) -> Faithfulness:
    """The metric on the clean prompts with every head/MLP outside ``circuit`` mean-ablated.

    Means are per position over the ``reference`` prompts of the set ("clean", "corrupt" or "both").
    """
    if reference not in ("clean", "corrupt", "both"):
        raise InterpError(f"unknown reference '{reference}': use clean, corrupt or both")
    if any(parse_node(n).kind in FEATURE_KINDS for n in circuit.nodes):
        raise InterpError("this circuit has feature nodes: measure it with "
                          "interp.circuits.feature_circuit.feature_faithfulness, its dictionaries attached")
    tokens = prompts.tokenize(model.tokenizer) if isinstance(prompts, PromptSet) else prompts
    metric_fn = get_metric(metric) if isinstance(metric, str) else metric
    check_nodes(model, circuit, tokens.clean.shape[1])
    clean_tok, corrupt_tok = tokens.clean.to(model.device), tokens.corrupt.to(model.device)
    ref_tok = {"clean": clean_tok, "corrupt": corrupt_tok, "both": torch.cat([clean_tok, corrupt_tok])}[reference]
    sites = [f"{k}.{layer}" for k in ("head_out", "mlp_out") for layer in range(model.n_layers)]
    neuron_layers = {n.layer for n in map(parse_node, circuit.nodes) if n.kind == "neuron"}
    sites += [f"mlp_act.{layer}" for layer in sorted(neuron_layers)]
    with torch.no_grad():
        ref = model.run(ref_tok, read=sites, backend=backend).acts
        full = model.run(clean_tok, backend=backend).logits[:, -1]
        corrupt = model.run(corrupt_tok, backend=backend).logits[:, -1]
        ctx = MetricContext(tokens.answer.to(model.device), tokens.wrong.to(model.device), full, corrupt)
        ablations = ablations_outside(model, circuit, ref, clean_tok.shape[1])
        kept = model.run(clean_tok, ablations, backend=backend).logits[:, -1]
        empty = model.run(clean_tok, ablations_outside(model, Circuit({}), ref, clean_tok.shape[1]), backend=backend).logits[:, -1]
        values = [check_finite(metric_fn(x, ctx).float(), f"the {name} model's {metric if isinstance(metric, str) else 'metric'}").cpu()
                  for name, x in (("full", full), ("circuit", kept), ("empty", empty))]
    ignored = [n for n in circuit.nodes if parse_node(n).kind not in ("head", "mlp", "neuron")]
    return Faithfulness(*values, n_ablated=len(ablations), ignored=ignored)
