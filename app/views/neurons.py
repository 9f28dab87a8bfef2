"""Relation neurons (`interp neurons relation`): accuracy change when each relation's top-k neurons are
zeroed, evaluated on every relation, beside the random-k control; overlap of the neuron sets and their layers."""

from __future__ import annotations

import streamlit as st

from interp.app.catalog import RunEntry
from interp.app.widgets import open_run, show_figure, show_lines, show_notes

MATRICES = {"neurons/acc_change": "accuracy change (top-k zeroed)", "neurons/random_change": "accuracy change (random-k zeroed)",
            "neurons/overlap": "overlap of the neuron sets (Jaccard)", "neurons/layers": "top-k neurons by layer"}


def render(entries: list[RunEntry]) -> None:
    st.header("Relation neurons")
    picked = open_run(entries, ("neurons",), key="neurons-run")
    if picked is None:
        return
    _, run = picked
    names = [n for n in MATRICES if n in run.scores and run.scores[n].ndim >= 1]
    if names:
        name = st.radio("Matrix", names, horizontal=True, key="neurons-matrix", format_func=lambda n: MATRICES[n])
        show_figure(run.plot(name), key=f"neurons-{name}", name=name.replace("/", "_"))
    else:
        st.info("This run holds none of the matrices this page draws; the Report page shows what it holds.")
    change = run.scores.get("neurons/acc_change")
    if change is not None and change.ndim == 2:
        change = change.float()
        own = float(change.diagonal().mean())
        others = float((change.sum() - change.diagonal().sum()) / max(1, change.numel() - min(change.shape)))
        cols = st.columns(3)
        cols[0].metric("own relation", f"{own:+.3f}")
        cols[1].metric("other relations", f"{others:+.3f}")
        random = run.scores.get("neurons/random_change")
        if random is not None and random.ndim == 2:
            cols[2].metric("random-k, own relation", f"{float(random.float().diagonal().mean()):+.3f}")
    show_lines(run, key="neurons")
    show_notes(run)
