"""Void layers (`interp voids`): the share of tokens each layer is active for, in the prompt and the response,
and the token x layer activation maps of each generation (LAC, L2 adaptive computation)."""

from __future__ import annotations

import streamlit as st

from interp.app.catalog import RunEntry
from interp.app.widgets import md, open_run, show_figure, show_notes


def render(entries: list[RunEntry]) -> None:
    st.header("Void layers")
    picked = open_run(entries, ("voids",), key="voids-run")
    if picked is None:
        return
    _, run = picked
    cols = st.columns(2)
    for col, name in zip(cols, ("voids/usage_prompt", "voids/usage_response")):
        if name in run.scores and run.scores[name].ndim >= 1:
            with col:
                show_figure(run.plot(name), key=name, name=name.replace("/", "_"))
    maps = sorted({n.split(".")[-1] for n in run.scores if n.startswith("voids/prompt_map.") and n.split(".")[-1].isascii() and n.split(".")[-1].isdigit()},
                  key=int)
    if maps:
        prompts = run.manifest.get("parameters", {}).get("prompts", [])
        prompts = prompts if isinstance(prompts, list) else []
        generations = run.manifest.get("generations", [])
        generations = generations if isinstance(generations, list) else []
        index = st.selectbox("Prompt", maps, key="voids-prompt",
                             format_func=lambda i: f"prompt {i}" + (f": {str(prompts[int(i)])[:70]}" if int(i) < len(prompts) else ""))
        if int(index) < len(generations):
            st.caption(f"response: “{md(generations[int(index)])}”")
        cols = st.columns(2)
        for col, phase in zip(cols, ("prompt", "response")):
            name = f"voids/{phase}_map.{index}"
            if name in run.scores and run.scores[name].ndim >= 1:
                with col:
                    show_figure(run.plot(name), key=name, name=name.replace("/", "_"))
    show_notes(run)
