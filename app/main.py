"""The Streamlit script of `interp app`: a sidebar (runs directory, page), then the chosen page.

Run it with `interp app [RUNS_DIR]`, or `streamlit run app/main.py` with ``INTERP_RUNS_DIR`` set. The pages that
act on this machine (New run, the runs-directory box) are on only for a loopback address or when `interp app
--allow-remote-control` turned them on (`interp.app.access`).
"""

from __future__ import annotations

import os
from pathlib import Path

import streamlit as st

from interp.app.access import control_allowed
from interp.app.loading import default_runs_dir, list_runs
from interp.app.views import (
    attention,
    circuits,
    heads,
    latents,
    launch,
    neurons,
    patching,
    report,
    runs,
    steering,
    subspace,
    voids,
)
from interp.app.widgets import md
from interp.errors import RunFolderError

PAGES = {
    "Runs": runs.render, "Patching": patching.render, "Attention": attention.render, "Heads": heads.render,
    "Neurons": neurons.render, "Voids": voids.render, "Steering": steering.render, "Subspace": subspace.render,
    "Circuits": circuits.render, "Latents": latents.render, "Report": report.render,
}
NEW_RUN = "New run"
PAGE_FAILED = "This page cannot show this run"  # the last-resort message; pages check what they show first


def _runs_dir(control: bool) -> Path:
    if not control:  # served beyond this machine: the folder `interp app` was given, nothing else
        st.caption(f"Runs directory: {md(default_runs_dir())}")
        return Path(default_runs_dir())
    text = st.text_input("Runs directory", value=default_runs_dir(), key="runs-dir").strip()
    return Path(text or ".")


def main() -> None:
    st.set_page_config(page_title="interp circuit browser", layout="wide")
    control = control_allowed(os.environ, st.get_option("server.address"))
    st.session_state["control"] = control
    with st.sidebar:
        st.title("interp")
        root = _runs_dir(control)
        page = st.radio("Page", [*PAGES, NEW_RUN], key="page")
        st.caption("SmolLM2 and Gemma 3 here are 4-bit GGUF weights dequantized to float, "
                   "not the original checkpoints: their numbers are this build's.")
        if st.button("Reload runs"):
            st.cache_data.clear()
    if page == NEW_RUN:
        if control:
            launch.render(root)
        else:
            st.header("New patching run")
            st.info("Starting runs is off: this app is served beyond this machine without a password. Start it with "
                    "`interp app --allow-remote-control` to turn it on, only on a network you trust.")
        return
    try:
        entries = list_runs(root)
    except RunFolderError as exc:
        st.error(md(exc, None))
        return
    except (OSError, ValueError) as exc:  # e.g. a name too long for the file system
        st.error(f"cannot read the runs directory {md(root)}: {md(exc)}")
        return
    try:
        PAGES[page](entries)
    except Exception as exc:  # noqa: BLE001 (one line, never a traceback, whatever a run folder holds)
        st.error(f"{PAGE_FAILED}: {md(type(exc).__name__)}: {md(exc)}")


main()
