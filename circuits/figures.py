"""Plotly figures of circuits: the graph (nodes by layer, sized by score; path-patching or attribution edges) and
node details.

Layout: x is the layer (an MLP, neuron or resid_post node sits half a layer to the right of the
layer's heads), y orders the nodes of one layer; the logits sit one layer past the last node. Node
size grows with |score| and colour gives its sign (red raises the metric, blue lowers it); an edge's
width grows with |score| and its colour gives its sign. Hovering a node or an edge's midpoint shows
its value.
"""

from __future__ import annotations

import plotly.graph_objects as go

from interp.circuits.graph import Circuit, Edge, parse_node, receiver_node

_LATE = {"mlp", "neuron", "resid_post"}  # read after the layer's attention: drawn half a layer later
# feature and error nodes sit by their dictionary's site, in the order a layer's forward reaches it
_SITE_OFFSET = {"resid_pre": -0.25, "head_out": 0.0, "attn_out": 0.0, "resid_mid": 0.25, "mlp_in": 0.25, "mlp_act": 0.5,
                "mlp_out": 0.5, "resid_post": 0.75}
_POSITIVE, _NEGATIVE = "#c0392b", "#2c6fbb"
_DASH = {"q": "solid", "k": "dot", "v": "dash"}  # an edge into a query, key or value input
MAX_EDGES_DRAWN = 400  # edge circuits can hold thousands: the largest are drawn, all are listed


def node_positions(circuit: Circuit) -> dict[str, tuple[float, float]]:
    """(x, y) for each node name and for "logits" (when an edge reaches it)."""
    by_column: dict[float, list[str]] = {}
    for name in circuit.nodes:
        node = parse_node(name)
        if node.site is not None:
            x = node.layer + _SITE_OFFSET[node.site]
        else:
            x = node.layer + (0.5 if node.kind in _LATE else 0.0) - (0.25 if node.kind == "resid_pre" else 0.0)
        by_column.setdefault(x, []).append(name)
    positions = {}
    for x, names in by_column.items():
        names.sort(key=lambda n: (parse_node(n).kind, parse_node(n).unit or 0, parse_node(n).pos or 0))
        for i, name in enumerate(names):
            positions[name] = (x, i - (len(names) - 1) / 2)
    if any(e.receiver == "logits" for e in circuit.edges) or not circuit.edges:
        last = max((x for x, _ in positions.values()), default=0.0)
        positions["logits"] = (float(int(last)) + 1.0, 0.0)
    return positions


def node_label(name: str) -> str:
    """The text drawn beside a node: its name, or ``#<latent>`` / ``err`` for feature and error nodes (whose
    column says their site; hovering shows the full name)."""
    node = parse_node(name)
    if node.site is None:
        return name
    label = "err" if node.kind == "error" else f"#{node.unit}"
    return label if node.pos is None else f"{label}@{node.pos}"


def edges_of(circuit: Circuit, name: str) -> tuple[list[Edge], list[Edge]]:
    """(incoming, outgoing) edges of node ``name``, each sorted by |score|, largest first."""
    incoming = sorted((e for e in circuit.edges if receiver_node(e.receiver) == name), key=lambda e: -abs(e.score))
    outgoing = sorted((e for e in circuit.edges if e.sender == name), key=lambda e: -abs(e.score))
    return incoming, outgoing


def circuit_figure(circuit: Circuit, title: str = "Circuit", highlight: str | None = None) -> go.Figure:
    """The circuit as a graph: nodes sized by |score|, edges from path patching; ``highlight`` rings one node."""
    positions = node_positions(circuit)
    top_node = max((abs(s) for s in circuit.nodes.values()), default=1.0) or 1.0
    top_edge = max((abs(e.score) for e in circuit.edges), default=1.0) or 1.0
    fig = go.Figure()
    mid_x, mid_y, mid_text = [], [], []
    drawn = sorted(circuit.edges, key=lambda e: -abs(e.score))[:MAX_EDGES_DRAWN]
    for edge in reversed(drawn):
        receiver = receiver_node(edge.receiver)
        if edge.sender not in positions or receiver not in positions:
            continue
        (x0, y0), (x1, y1) = positions[edge.sender], positions[receiver]
        part = edge.receiver.rpartition(".")[2] if receiver != edge.receiver else "q"
        fig.add_trace(go.Scatter(x=[x0, x1], y=[y0, y1], mode="lines", hoverinfo="skip", showlegend=False,
                                 line={"width": 0.5 + 6 * abs(edge.score) / top_edge, "dash": _DASH[part],
                                       "color": _POSITIVE if edge.score >= 0 else _NEGATIVE},
                                 opacity=0.35 + 0.5 * abs(edge.score) / top_edge))
        mid_x.append((x0 + x1) / 2)
        mid_y.append((y0 + y1) / 2)
        mid_text.append(f"{edge.sender} → {edge.receiver}: {edge.score:+.4f}")
    if mid_x:
        fig.add_trace(go.Scatter(x=mid_x, y=mid_y, mode="markers", marker={"size": 6, "opacity": 0.0}, name="edges",
                                 hovertext=mid_text, hoverinfo="text", showlegend=False))
    names = list(circuit.nodes)
    scores = [circuit.nodes[n] for n in names]
    fig.add_trace(go.Scatter(
        x=[positions[n][0] for n in names], y=[positions[n][1] for n in names], mode="markers+text", name="nodes",
        text=[node_label(n) for n in names], textposition="top center", customdata=names,
        hovertext=[f"{n}: {s:+.4f}" for n, s in zip(names, scores)], hoverinfo="text",
        marker={"size": [12 + 36 * abs(s) / top_node for s in scores],
                "color": [_POSITIVE if s >= 0 else _NEGATIVE for s in scores],
                "line": {"width": [4 if n == highlight else 1 for n in names], "color": "#222"}},
        showlegend=False))
    if "logits" in positions:
        x, y = positions["logits"]
        fig.add_trace(go.Scatter(x=[x], y=[y], mode="markers+text", text=["logits"], textposition="top center",
                                 marker={"size": 16, "symbol": "square", "color": "#555"}, hoverinfo="text",
                                 hovertext=["logits"], showlegend=False, name="logits"))
    ys = [y for _, y in positions.values()] or [0.0]
    shown = "" if len(circuit.edges) <= MAX_EDGES_DRAWN else f" (the {MAX_EDGES_DRAWN} largest drawn)"
    fig.update_layout(title=f"{title}: {len(circuit.nodes)} nodes, {len(circuit.edges)} edges{shown}",
                      xaxis={"title": "layer", "zeroline": False, "dtick": 1},
                      yaxis={"visible": False, "range": [min(ys) - 0.8, max(ys) + 0.8]},  # room for the labels
                      plot_bgcolor="white", height=max(360, 60 * max((len(c) for c in _columns(positions)), default=1)))
    return fig


def _columns(positions: dict[str, tuple[float, float]]) -> list[list[str]]:
    columns: dict[float, list[str]] = {}
    for name, (x, _) in positions.items():
        columns.setdefault(x, []).append(name)
    return list(columns.values())
