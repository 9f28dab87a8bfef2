"""The Streamlit script of `interp app`: a sidebar (runs directory, page), then the chosen page.

Run it with `interp app [RUNS_DIR]`, or `streamlit run app/main.py` with ``INTERP_RUNS_DIR`` set.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from interp.app.loading import default_runs_dir, list_runs
from interp.app.views import (
    attention,
    circuits,
    heads,
    launch,
    neurons,
    patching,
    report,
    runs,
    steering,
    subspace,
    voids,
)
from interp.errors import RunFolderError

PAGES = {
    "Runs": runs.render, "Patching": patching.render, "Attention": attention.render, "Heads": heads.render,
    "Neurons": neurons.render, "Voids": voids.render, "Steering": steering.render, "Subspace": subspace.render,
    "Circuits": circuits.render, "Report": report.render,
}
NEW_RUN = "New run"


def main() -> None:
    st.set_page_config(page_title="interp circuit browser", layout="wide")
    with st.sidebar:
        st.title("interp")
        root = Path(st.text_input("Runs directory", value=default_runs_dir(), key="runs-dir").strip() or ".")
        page = st.radio("Page", [*PAGES, NEW_RUN], key="page")
        st.caption("SmolLM2 and Gemma 3 here are 4-bit GGUF weights dequantized to float, "
                   "not the original checkpoints: their numbers are this build's.")
        if st.button("Reload runs"):
            st.cache_data.clear()
    if page == NEW_RUN:
        launch.render(root)
        return
    try:
        entries = list_runs(root)
    except RunFolderError as exc:
        st.error(str(exc))
        return
    PAGES[page](entries)


main()
