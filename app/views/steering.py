"""Steering runs: coefficient sweeps (accuracy, KL, entropy, answer mass), EAST entropy against beta and
temperature, the backdoor attack's layer search, rates and detector, and the vectors' norms and cosines."""

from __future__ import annotations

import streamlit as st

from interp.app.catalog import RunEntry
from interp.app.widgets import md, number, open_run, show_figure, show_lines, show_notes

_BARS = {"attack/rate": "truthful or refusal rate: before, after, random vector", "detector/tpr": "detector true-positive rate",
         "detector/fpr": "detector false-positive rate", "vectors/norm": "vector norm by layer"}


def render(entries: list[RunEntry]) -> None:
    st.header("Steering")
    picked = open_run(entries, ("sweep", "east", "attack", "vectors"), key="steering-run")
    if picked is None:
        return
    _, run = picked
    sweep = run.manifest.get("sweep") or {}
    if isinstance(sweep, dict) and sweep:
        st.caption(md(", ".join(f"{k}: {v}" for k, v in sweep.items() if not isinstance(v, (list, dict)))))
    attack = run.manifest.get("attack")
    if isinstance(attack, dict):
        cols = st.columns(3)
        for col, key in zip(cols, ("before", "after", "random")):
            if key in attack:
                col.metric(key, number(attack[key]))
    show_lines(run, key="steering")
    bars = [n for n in _BARS if n in run.scores and run.scores[n].ndim >= 1]
    cols = st.columns(max(1, min(3, len(bars))))
    for i, name in enumerate(bars):
        with cols[i % len(cols)]:
            show_figure(run.plot(name), key=f"bar-{name}", name=name.replace("/", "_"))
    grids = [n for n, t in run.scores.items() if t.ndim == 2 and run.tensor_info(n).get("plot") is not False]
    if grids:
        name = st.selectbox("Grid", grids, key="steering-grid")
        show_figure(run.plot(name), key=f"grid-{name}", name=name.replace("/", "_"))
    show_notes(run)
