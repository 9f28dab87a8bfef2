"""Subspace patching (`interp subspace`): the illusion check as a table (direction, its readable and
unreadable parts, the full site) with the verdict, and the projection histograms."""

from __future__ import annotations

import streamlit as st

from interp.app.catalog import RunEntry
from interp.app.widgets import md, number, open_run, scalar, show_sections, table

PARTS = ("direction", "readable", "unreadable", "full")
PART_TITLES = {"direction": "the direction v", "readable": "its readable part (in the row space of W_out)",
               "unreadable": "its unreadable part (in the null space)", "full": "the whole site"}


def illusion_rows(illusion: dict) -> list[dict]:
    """One row per patched part: what was patched and its logit diff, FLDD and interchange accuracy."""
    rows = []
    for part in PARTS:
        if isinstance(illusion.get(part), dict):
            rows.append({"patched": PART_TITLES[part], **{str(k): scalar(v) for k, v in illusion[part].items() if k != "patched"}})
    return rows


def render(entries: list[RunEntry]) -> None:
    st.header("Subspace patching and the illusion check")
    picked = open_run(entries, ("subspace",), key="subspace-run")
    if picked is None:
        return
    _, run = picked
    illusion = run.manifest.get("illusion")
    if not isinstance(illusion, dict):
        st.info("This run has no illusion check (it patched a given direction without one).")
    else:
        cols = st.columns(3)
        cols[0].metric("site", str(scalar(illusion.get("site", run.manifest.get("site", "—")))))
        cols[1].metric("base logit diff", number(illusion.get("base_logit_diff"), ".4f", "nan"))
        cols[2].metric("illusion", "yes" if illusion.get("illusion") is True else "no", help=md(illusion.get("signature", "")) or None)
        (st.warning if illusion.get("illusion") is True else st.success)(md(illusion.get("verdict", ""), 2000))
        st.dataframe(table(illusion_rows(illusion)), hide_index=True, width="stretch")
        norms = illusion.get("norms")
        if isinstance(norms, dict):
            st.caption("norms of the parts: " + md(", ".join(f"{k} {v}" for k, v in norms.items())))
    titles = tuple(str(h.get("title", "")) for h in run.manifest.get("histograms", []) if isinstance(h, dict))
    if titles:
        show_sections(run, key="subspace", only=titles)
