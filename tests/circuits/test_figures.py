"""`interp.circuits.figures`: node layout by layer, edges of a node, and the graph figure's traces."""

from __future__ import annotations

from interp.circuits.figures import circuit_figure, edges_of, node_positions
from interp.circuits.graph import Circuit, Edge


def _circuit() -> Circuit:
    return Circuit({"head.1.0": 0.5, "head.1.3": -0.2, "mlp.1": 0.1, "head.3.2": 1.0},
                   [Edge("head.1.0", "head.3.2", 0.3), Edge("head.3.2", "logits", -0.9), Edge("head.1.3", "logits", 0.05)])


def test_layout_puts_heads_at_their_layer_mlps_half_a_layer_later_and_logits_last():
    pos = node_positions(_circuit())
    assert pos["head.1.0"][0] == pos["head.1.3"][0] == 1.0 and pos["mlp.1"][0] == 1.5 and pos["head.3.2"][0] == 3.0
    assert pos["logits"] == (4.0, 0.0)
    assert pos["head.1.0"][1] != pos["head.1.3"][1]  # two heads of one layer do not overlap
    assert sum(pos[n][1] for n in ("head.1.0", "head.1.3")) == 0.0  # a column is centred


def test_edges_of_a_node_largest_first():
    incoming, outgoing = edges_of(_circuit(), "head.3.2")
    assert [e.sender for e in incoming] == ["head.1.0"] and [e.receiver for e in outgoing] == ["logits"]


def test_figure_sizes_nodes_by_score_and_draws_every_edge():
    circuit = _circuit()
    fig = circuit_figure(circuit, highlight="mlp.1")
    nodes = next(t for t in fig.data if t.name == "nodes")
    sizes = dict(zip(nodes.customdata, nodes.marker.size))
    assert max(sizes, key=sizes.get) == "head.3.2" and min(sizes, key=sizes.get) == "mlp.1"
    assert len([t for t in fig.data if t.mode == "lines"]) == len(circuit.edges)
    widths = dict(zip(nodes.customdata, nodes.marker.line.width))
    assert widths["mlp.1"] > widths["head.1.0"]
