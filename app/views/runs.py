"""The home page: every run folder with its command, model, date and status; unreadable folders say why."""

from __future__ import annotations

import streamlit as st

from interp.app.catalog import KIND_TITLES, RunEntry
from interp.app.widgets import md

# The page that shows each kind of run (see `interp.app.main.PAGES`).
PAGE_OF_KIND = {
    "patching": "Patching", "circuit": "Circuits", "overlap": "Circuits", "faithfulness": "Circuits",
    "retrieval": "Heads", "heads": "Heads", "neurons": "Neurons", "voids": "Voids", "subspace": "Subspace",
    "sweep": "Steering", "east": "Steering", "attack": "Steering", "vectors": "Steering", "latents": "Latents",
    "other": "Report",
}


def _open(path: str, page: str) -> None:
    st.session_state["run"] = path
    st.session_state["page"] = page


def render(entries: list[RunEntry]) -> None:
    st.header("Runs")
    if not entries:
        st.info("No run folders here yet. Make one with `make demo`, any `interp` command, or the New run page.")
        return
    rows = [{"run": e.name, "kind": KIND_TITLES.get(e.kind, e.kind), "command": e.command, "model": e.model,
             "date": e.created, "status": e.status if e.error is None else "unreadable"} for e in entries]
    st.dataframe(rows, hide_index=True, width="stretch")
    for entry in entries:
        if entry.error is not None:
            st.error(f"**{md(entry.name)}**: {md(entry.error, None)}")
    readable = [e for e in entries if e.ok]
    if readable:
        st.subheader("Open a run")
        for i, entry in enumerate(readable):
            page = PAGE_OF_KIND.get(entry.kind, "Report")
            left, right = st.columns([5, 1])
            left.markdown(f"**{md(entry.name)}** · {KIND_TITLES.get(entry.kind, entry.kind)} · {md(entry.model or '—')} · "
                          f"{md(entry.created)}")
            right.button(f"Open in {page}", key=f"open-{i}", on_click=_open, args=(str(entry.path), page))
