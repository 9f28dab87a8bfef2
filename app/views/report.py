"""Any run, figure by figure: the same sections as its report.html (heatmaps, bars, lines, notes), each
with its downloads. Runs of kinds without a page of their own open here."""

from __future__ import annotations

import streamlit as st

from interp.app.catalog import KIND_TITLES, RunEntry
from interp.app.widgets import open_run, show_sections


def render(entries: list[RunEntry]) -> None:
    st.header("Report")
    picked = open_run(entries, tuple(KIND_TITLES), key="report-run")
    if picked is None:
        return
    _, run = picked
    show_sections(run, key="report")
    with st.expander("manifest.json"):
        st.json(run.manifest, expanded=False)
