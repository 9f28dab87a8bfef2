"""Attention patterns: the attention probabilities of one head on one prompt, with the real tokens.

The model is loaded once per app session (`st.cache_resource`); each (prompt, layer) is run once
(`st.cache_data`), so moving between heads of a layer is instant.
"""

from __future__ import annotations

import streamlit as st

from interp.app.catalog import RunEntry
from interp.app.loading import attention_patterns, read_run
from interp.app.loading import model as cached_model
from interp.app.widgets import md, show_figure
from interp import plots
from interp.errors import InterpError

PRESETS = {
    "IOI": "When Mary and John went to the store, John gave a drink to",
    "Repeated text (induction)": "The quick brown fox jumps over the lazy dog. The quick brown fox jumps over the lazy dog.",
}


def _defaults(entries: list[RunEntry]) -> tuple[str, str]:
    """The model and clean prompt of the run chosen elsewhere in the app, if any."""
    chosen = st.session_state.get("run")
    for entry in entries:
        if str(entry.path) == chosen and entry.ok:
            try:
                manifest = read_run(entry.path).manifest
            except InterpError:  # changed since the runs were listed
                break
            model, example = manifest.get("model"), manifest.get("prompt_set", {}).get("example_clean")
            return (model if isinstance(model, str) and model.strip() else "smollm2-135m",
                    example if isinstance(example, str) and example.strip() else PRESETS["IOI"])
    return "smollm2-135m", PRESETS["IOI"]


def _model_name(default: str) -> str:
    """The model box: any name or local path; a choice among the registry's names when the app is served beyond
    this machine without --allow-remote-control (no loading arbitrary paths for whoever reaches it)."""
    if st.session_state.get("control", True):
        return st.text_input("Model", value=default, key="attention-model", help="A name from `interp models`, or a local path")
    from interp.models import list_models

    names = [info.name for info in list_models()]
    return st.selectbox("Model", names, index=names.index(default) if default in names else 0, key="attention-model",
                        help="A name from `interp models` (local paths are off: the app is served beyond this machine)")


def render(entries: list[RunEntry]) -> None:
    st.header("Attention patterns")
    model_default, prompt_default = _defaults(entries)
    name = _model_name(model_default)
    preset = st.radio("Prompt", ["From the chosen run", *PRESETS, "Your own"], horizontal=True, key="attention-preset")
    text = prompt_default if preset == "From the chosen run" else PRESETS.get(preset, prompt_default)
    prompt = st.text_area("Text", value=text, key=f"attention-text-{preset}", disabled=preset != "Your own")
    if st.button("Load the model", key="attention-load") or st.session_state.get("attention-loaded") == name:
        st.session_state["attention-loaded"] = name
    else:
        st.caption("Loading takes a few seconds the first time; then every head is instant.")
        return
    try:
        model = cached_model(name)
    except InterpError as exc:
        st.error(md(exc, None))
        return
    if not prompt.strip():
        st.warning("Type a prompt first.")
        return
    cols = st.columns(2)
    layer = int(cols[0].number_input("Layer", 0, model.n_layers - 1, value=min(model.n_layers - 1, model.n_layers // 2), key="attention-layer"))
    head = int(cols[1].number_input("Head", 0, model.n_heads - 1, value=0, key="attention-head"))
    try:
        patterns, tokens = attention_patterns(name, prompt, layer)
    except InterpError as exc:
        st.error(md(exc, None))
        return
    labels = plots.position_labels(tokens)
    figure = plots.heatmap(patterns[head], labels, labels, f"{name}: layer {layer}, head {head}", "key (attended to)",
                           "query (attending)", "attention", zmid=None)
    figure.update_traces(colorscale="Blues", zmin=0.0, zmax=1.0)
    show_figure(figure, key=f"attention-{layer}-{head}", name=f"attention_L{layer}H{head}")
    st.caption(f"Each row sums to 1: how much the query token attends to each earlier token. {len(tokens)} tokens.")
