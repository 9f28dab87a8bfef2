"""Any run, figure by figure: the same sections as its report.html (heatmaps, bars, lines, notes), each
with its downloads. Runs of kinds without a page of their own open here."""

from __future__ import annotations

import streamlit as st

from app.catalog import KIND_TITLES, RunEntry
from app.widgets import pick_run, run_header, show_sections


def render(entries: list[RunEntry]) -> None:
    st.header("Report")
    picked = pick_run(entries, tuple(KIND_TITLES), key="report-run")
    if picked is None:
        return
    entry, run = picked
    run_header(entry, run)
    show_sections(run, key="report")
    with st.expander("manifest.json"):
        st.json(run.manifest, expanded=False)
