"""Patching runs: [layer, pos] heatmaps with the real tokens and [layer, head] heatmaps, a method and
component switch (activation, AtP, RelP, IG one at a time or side by side), and the faithfulness of each
estimator against activation patching (scatter and correlations)."""

from __future__ import annotations

import streamlit as st
from plotly.subplots import make_subplots

from interp.app.catalog import RunEntry
from interp.app.widgets import pick_run, run_header, show_figure
from interp.results import RunResult

METHOD_TITLES = {"activation": "activation patching", "atp": "AtP", "relp": "RelP", "ig": "integrated gradients"}


def patching_grid(run: RunResult) -> dict[str, list[str]]:
    """component -> the methods that scored it, from the run's ``<method>/<component>`` tensors."""
    grid: dict[str, list[str]] = {}
    for name in run.scores:
        parts = name.split("/")
        if len(parts) == 2 and parts[0] in METHOD_TITLES:
            grid.setdefault(parts[1], []).append(parts[0])
    order = list(METHOD_TITLES)
    listed = [c for c in run.manifest.get("components", []) if c in grid]  # the order the run was asked for
    return {c: sorted(grid[c], key=order.index) for c in listed + [c for c in grid if c not in listed]}


def side_by_side(run: RunResult, component: str, methods: list[str]):
    """One heatmap per method for ``component``, each measured from its own zero point (``zmid``: the base
    run's metric for activation patching), on one shared colour scale centred on zero."""
    from interp import plots

    names = [f"{m}/{component}" for m in methods]
    info = run.tensor_info(names[0])
    shifted = [run.scores[n].float() - run.tensor_info(n).get("zmid", 0.0) for n in names]
    if shifted[0].ndim > 2:
        shifted = [s.mean(dim=tuple(range(2, s.ndim))) for s in shifted]
    top = max(float(s.abs().max()) for s in shifted) or 1.0
    y_axis, x_axis = info["axes"][0], info["axes"][1]
    metric = run.manifest.get("metric") if isinstance(run.manifest.get("metric"), str) else "metric"
    fig = make_subplots(rows=1, cols=len(methods), subplot_titles=[METHOD_TITLES[m] for m in methods],
                        shared_yaxes=True, horizontal_spacing=0.02)
    for i, (name, values) in enumerate(zip(names, shifted), start=1):
        single = plots.heatmap(values, run.axis_labels(name, x_axis), run.axis_labels(name, y_axis), name, x_axis, y_axis,
                               f"change in {metric}")
        trace = single.data[0]
        trace.update(zmin=-top, zmax=top, zmid=None, showscale=i == len(methods))
        fig.add_trace(trace, row=1, col=i)
        fig.update_xaxes(type="category", title_text=x_axis, row=1, col=i)
    fig.update_yaxes(type="category", autorange="reversed", title_text=y_axis, row=1, col=1)
    fig.update_layout(title=f"{component}: change in {metric}, each method from its own baseline", template="plotly_white",
                      height=min(1400, max(420, 160 + 22 * len(run.axis_labels(names[0], y_axis)))))
    return fig


def _baselines(run: RunResult) -> None:
    base = run.manifest.get("baselines", {})
    metric = run.manifest.get("metric", "metric")
    cols = st.columns(4)
    for col, key in zip(cols, ("clean", "corrupt")):
        if isinstance(base.get(key), dict) and "mean" in base[key]:
            col.metric(f"{key} {metric}", f"{base[key]['mean']:.3f}")
    prompts = run.manifest.get("prompt_set", {})
    cols[2].metric("prompts", prompts.get("n_prompts", "—"))
    cols[3].metric("direction", run.manifest.get("parameters", {}).get("direction", "—"))
    if prompts.get("example_clean"):
        st.caption(f"clean: “{prompts['example_clean']}” · corrupt: “{prompts.get('example_corrupt', '')}”")


def _faithfulness(run: RunResult, component: str, methods: list[str], key: str) -> None:
    estimators = [m for m in methods if m != "activation"]
    if "activation" not in methods or not estimators:
        st.caption("Faithfulness needs activation patching and at least one estimator (AtP, RelP, IG) on this component.")
        return
    stats = run.manifest.get("faithfulness", {})
    rows = []
    for m in estimators:
        row = {"estimator": METHOD_TITLES[m]}
        row.update(stats.get(m, {}).get(component, {}))
        rows.append(row)
    st.dataframe(rows, hide_index=True)
    cols = st.columns(len(estimators))
    for col, m in zip(cols, estimators):
        with col:
            show_figure(run.compare(f"activation/{component}", f"{m}/{component}"), key=f"{key}-scatter-{m}-{component}",
                        name=f"{m}_vs_activation_{component}")


def show_patching_run(entry: RunEntry, run: RunResult, key: str = "patching") -> None:
    """A patching run: baselines, the component and method switch, the heatmap(s) and faithfulness."""
    run_header(entry, run)
    _baselines(run)
    grid = patching_grid(run)
    component = st.radio("Component", list(grid), horizontal=True, key=f"{key}-component")
    methods = grid[component]
    choices = methods + (["side by side"] if len(methods) > 1 else [])
    shown = st.radio("Method", choices, horizontal=True, key=f"{key}-method", format_func=lambda m: METHOD_TITLES.get(m, m))
    if shown == "side by side":
        show_figure(side_by_side(run, component, methods), key=f"{key}-sbs-{component}", name=f"{component}_side_by_side")
    else:
        name = f"{shown}/{component}"
        show_figure(run.plot(name), key=f"{key}-heat-{name}", name=name.replace("/", "_"))
    st.subheader("Faithfulness against activation patching")
    _faithfulness(run, component, methods, key)
    top = run.manifest.get("top_cells")
    if top:
        with st.expander("Top cells"):
            st.json(top)


def render(entries: list[RunEntry]) -> None:
    st.header("Patching")
    picked = pick_run(entries, ("patching",), key="patching-run")
    if picked is not None:
        show_patching_run(*picked)
