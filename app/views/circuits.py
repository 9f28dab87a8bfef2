"""Circuits: the graph of a circuit (nodes sized by score; path-patching or, for feature circuits, attribution
edges) with node details and, where the run has one, its faithfulness curve; the overlap of two circuits, and
faithfulness runs."""

from __future__ import annotations

import math

import streamlit as st

from interp.app.catalog import RunEntry
from interp.app.loading import read_run
from interp.app.widgets import entry_label, md, number, open_run, pick_run, scalar, show_figure, show_notes
from interp.circuits.figures import circuit_figure, edges_of
from interp.circuits.graph import Circuit, overlap, parse_node
from interp.errors import InterpError
from interp.plots import inert


def _load(entry: RunEntry) -> Circuit | None:
    """The folder's circuit.json, or None (with the one-line reason shown) when it is missing or malformed."""
    try:
        circuit = Circuit.load(entry.path)
        for name in circuit.nodes:
            parse_node(name)
    except InterpError as exc:
        st.error(md(exc, None))
        return None
    bad = [name for name, score in circuit.nodes.items() if not math.isfinite(score)]
    bad += [f"{e.sender} -> {e.receiver}" for e in circuit.edges if not math.isfinite(e.score)]
    if bad:
        st.error(f"{md(entry.path)}/circuit.json holds a score that is not a finite number (at {md(bad[0])}): rebuild the circuit")
        return None
    return circuit


def node_table(circuit: Circuit) -> list[dict]:
    """One row per node, largest |score| first."""
    rows = []
    for name, score in sorted(circuit.nodes.items(), key=lambda item: -abs(item[1])):
        node = parse_node(name)
        incoming, outgoing = edges_of(circuit, name)
        rows.append({"node": name, "kind": node.kind, "layer": node.layer, "unit": node.unit, "pos": node.pos,
                     "score": round(score, 5), "edges in": len(incoming), "edges out": len(outgoing)})
    return rows


def _open_latent(path: str, latent: int) -> None:
    st.session_state.update(run=path, page="Latents", latent=latent)


def _latent_link(entries: list[RunEntry], circuit: Circuit, node) -> None:
    """A button to the Latents page for a feature node, when a latents run of its dictionary is in the folder."""
    provenance = circuit.provenance if isinstance(circuit.provenance, dict) else {}
    sources = dict(zip(provenance.get("dictionary_sites") or [], provenance.get("dictionaries") or []))
    folder = sources.get(node.dictionary_site)
    for i, entry in enumerate(e for e in entries if e.ok and e.kind == "latents"):
        described = read_run(entry.path).manifest.get("dictionary")
        if isinstance(folder, str) and isinstance(described, dict) and described.get("source") == folder:
            st.button(f"Latent {node.unit} on the Latents page ({entry.name})", key=f"latent-link-{i}",
                      on_click=_open_latent, args=(str(entry.path), node.unit))
            return
    st.caption("No latent pages of this dictionary in this folder: `interp sae latents --dictionary ...` makes them.")


def _graph(entries: list[RunEntry]) -> None:
    picked = open_run(entries, ("circuit",), key="circuit-run")
    if picked is None:
        return
    entry, run = picked
    circuit = _load(entry)
    if circuit is None:
        return
    names = list(circuit.nodes)
    chosen = st.selectbox("Node", ["(none)"] + names, key="circuit-node")
    highlight = None if chosen == "(none)" else chosen
    show_figure(circuit_figure(circuit, title=inert(entry.name), highlight=highlight), key=f"graph-{entry.path}", name=f"{entry.name}_graph")
    if highlight is not None:
        node = parse_node(highlight)
        incoming, outgoing = edges_of(circuit, highlight)
        metric = run.manifest.get("metric") if isinstance(run.manifest.get("metric"), str) else None
        what = (f"latent {node.unit} of the dictionary at {node.dictionary_site}" if node.kind == "feature" else
                f"the error term of the dictionary at {node.dictionary_site}" if node.kind == "error" else
                f"{node.kind}, layer {node.layer}" + ("" if node.unit is None else f", unit {node.unit}"))
        st.markdown(f"**{md(highlight)}**: {md(what)}" + ("" if node.pos is None else f", position {node.pos}")
                    + f"; score {circuit.nodes[highlight]:+.4f} (change in {md(metric or 'the metric')} when patched)")
        if node.kind == "feature":
            _latent_link(entries, circuit, node)
        cols = st.columns(2)
        cols[0].markdown("Edges in")
        cols[0].dataframe([{"from": e.sender, "score": round(e.score, 5)} for e in incoming], hide_index=True)
        cols[1].markdown("Edges out")
        cols[1].dataframe([{"to": e.receiver, "score": round(e.score, 5)} for e in outgoing], hide_index=True)
    if "circuit/curve" in run.scores and run.scores["circuit/curve"].ndim == 1:
        st.markdown("Faithfulness by circuit size (the metric with everything outside the circuit mean-ablated)")
        show_figure(run.plot("circuit/curve"), key=f"curve-{entry.path}", name=f"{entry.name}_curve")
    if not circuit.edges:
        st.caption("No edges: build with `interp circuit build --edges` (or `interp features circuit --edges`) to add them.")
    st.dataframe(node_table(circuit), hide_index=True, width="stretch")
    provenance = circuit.provenance if isinstance(circuit.provenance, dict) else {}
    st.caption(f"built from {md(scalar(provenance.get('run')))} with {md(scalar(provenance.get('method')))}")


def _overlap(entries: list[RunEntry]) -> None:
    circuits = [e for e in entries if e.ok and e.kind == "circuit"]
    stored = [e for e in entries if e.ok and e.kind == "overlap"]
    if len(circuits) < 2:
        st.info("Overlap needs two circuit runs in this folder (`interp circuit build`).")
    else:
        cols = st.columns(2)
        a = cols[0].selectbox("Circuit A", range(len(circuits)), format_func=lambda i: entry_label(circuits[i]), key="overlap-a")
        b = cols[1].selectbox("Circuit B", range(len(circuits)), index=1, format_func=lambda i: entry_label(circuits[i]),
                              key="overlap-b")
        ca, cb = _load(circuits[a]), _load(circuits[b])
        if ca is not None and cb is not None:
            result = overlap(ca, cb)
            m = st.columns(3)
            m[0].metric("intersection over union", f"{result.iou:.3f}")
            m[1].metric("share of A", f"{result.over_a:.3f}")
            m[2].metric("share of B", f"{result.over_b:.3f}")
            st.dataframe([{"shared": ", ".join(result.shared), "only A": ", ".join(result.only_a),
                           "only B": ", ".join(result.only_b)}], hide_index=True, width="stretch")
            cols = st.columns(2)
            for col, entry, circuit, tag in ((cols[0], circuits[a], ca, "a"), (cols[1], circuits[b], cb, "b")):
                with col:
                    show_figure(circuit_figure(circuit, title=inert(entry.name)), key=f"overlap-{tag}-{entry.path}", name=f"{entry.name}_graph")
    if stored:
        st.subheader("Saved overlap runs")
        picked = pick_run(entries, ("overlap",), key="overlap-run")
        if picked is not None:
            show_notes(picked[1])


def _faithfulness(entries: list[RunEntry]) -> None:
    picked = open_run(entries, ("faithfulness",), key="faithfulness-run")
    if picked is None:
        return
    _, run = picked
    f = run.manifest.get("faithfulness")
    f = f if isinstance(f, dict) else {}
    cols = st.columns(3)
    cols[0].metric("fraction of the full metric", number(f.get("fraction"), ".3f", "undefined"))
    cols[1].metric("normalized (empty = 0, full = 1)", number(f.get("normalized"), ".3f", "undefined"))
    cols[2].metric("components mean-ablated", str(scalar(f.get("n_ablated"))))
    if "circuit/faithfulness" in run.scores and run.scores["circuit/faithfulness"].ndim >= 1:
        show_figure(run.plot("circuit/faithfulness"), key="faithfulness", name="faithfulness")


def render(entries: list[RunEntry]) -> None:
    st.header("Circuits")
    mode = st.radio("Show", ["Graph", "Overlap of two circuits", "Faithfulness"], horizontal=True, key="circuits-mode")
    {"Graph": _graph, "Overlap of two circuits": _overlap, "Faithfulness": _faithfulness}[mode](entries)
