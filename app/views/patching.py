"""Patching runs: [layer, pos] heatmaps with the real tokens and [layer, head] heatmaps, a method and
component switch (activation, AtP, RelP, IG one at a time or side by side), and the faithfulness of each
estimator against activation patching (scatter and correlations)."""

from __future__ import annotations

import streamlit as st
from plotly.subplots import make_subplots

from interp.app.catalog import RunEntry
from interp.app.widgets import md, pick_run, run_header, scalar, show_figure, table
from interp.results import RunResult

METHOD_TITLES = {"activation": "activation patching", "atp": "AtP", "relp": "RelP", "ig": "integrated gradients"}


def patching_grid(run: RunResult) -> dict[str, list[str]]:
    """component -> the methods that scored it, from the run's ``<method>/<component>`` tensors."""
    grid: dict[str, list[str]] = {}
    for name, values in run.scores.items():
        parts = name.split("/")
        if len(parts) == 2 and parts[0] in METHOD_TITLES and values.ndim >= 1:
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
    top = max((float(s.abs().nan_to_num(0.0).max()) for s in shifted if s.numel()), default=1.0) or 1.0
    y_axis, x_axis = info["axes"][0], info["axes"][1]
    metric = run.manifest.get("metric") if isinstance(run.manifest.get("metric"), str) else "metric"
    fig = make_subplots(rows=1, cols=len(methods), subplot_titles=[METHOD_TITLES[m] for m in methods],
                        shared_yaxes=True, horizontal_spacing=0.02)
    for i, (name, values) in enumerate(zip(names, shifted), start=1):
        axes = run.tensor_info(name)["axes"]
        single = plots.heatmap(values, run.axis_labels(name, axes[1]), run.axis_labels(name, axes[0]), name, x_axis, y_axis,
                               f"change in {metric}")
        trace = single.data[0]
        trace.update(zmin=-top, zmax=top, zmid=None, showscale=i == len(methods))
        fig.add_trace(trace, row=1, col=i)
        fig.update_xaxes(type="category", title_text=plots.inert(x_axis), row=1, col=i)
    fig.update_yaxes(type="category", autorange="reversed", title_text=plots.inert(y_axis), row=1, col=1)
    fig.update_layout(title=plots.inert(f"{component}: change in {metric}, each method from its own baseline"), template="plotly_white",
                      height=min(1400, max(420, 160 + 22 * shifted[0].shape[0])))
    return fig


def side_by_side_methods(run: RunResult, component: str, methods: list[str]) -> list[str]:
    """The methods whose heatmaps of ``component`` can share one figure: 2-D and up, the shape of the first."""
    shapes = [run.scores[f"{m}/{component}"].shape for m in methods]
    return [m for m, shape in zip(methods, shapes) if len(shape) >= 2 and shape == shapes[0]]


def _baselines(run: RunResult) -> None:
    base = run.manifest.get("baselines", {})
    metric = run.manifest.get("metric") if isinstance(run.manifest.get("metric"), str) else "metric"
    cols = st.columns(4)
    for col, key in zip(cols, ("clean", "corrupt")):
        mean = base.get(key, {}).get("mean") if isinstance(base.get(key), dict) else None
        if isinstance(mean, (int, float)) and not isinstance(mean, bool):
            col.metric(f"{key} {md(metric)}", f"{mean:.3f}")
    prompts = run.manifest.get("prompt_set", {})
    cols[2].metric("prompts", scalar(prompts.get("n_prompts", "—")))
    cols[3].metric("direction", scalar(run.manifest.get("parameters", {}).get("direction", "—")))
    if prompts.get("example_clean"):
        st.caption(f"clean: “{md(prompts['example_clean'])}” · corrupt: “{md(prompts.get('example_corrupt', ''))}”")


def _faithfulness(run: RunResult, component: str, methods: list[str], key: str) -> None:
    estimators = [m for m in methods if m != "activation"]
    if "activation" not in methods or not estimators:
        st.caption("Faithfulness needs activation patching and at least one estimator (AtP, RelP, IG) on this component.")
        return
    stats = run.manifest.get("faithfulness")
    rows = []
    for m in estimators:
        row = {"estimator": METHOD_TITLES[m]}
        per_method = stats.get(m) if isinstance(stats, dict) else None
        found = per_method.get(component) if isinstance(per_method, dict) else None
        if isinstance(found, dict):
            row.update({str(k): scalar(v) for k, v in found.items() if str(k) != "estimator"})
        rows.append(row)
    st.dataframe(table(rows), hide_index=True)
    shape = run.scores[f"activation/{component}"].shape
    comparable = [m for m in estimators if run.scores[f"{m}/{component}"].shape == shape]
    cols = st.columns(max(1, len(comparable)))
    for col, m in zip(cols, comparable):
        with col:
            show_figure(run.compare(f"activation/{component}", f"{m}/{component}"), key=f"{key}-scatter-{m}-{component}",
                        name=f"{m}_vs_activation_{component}")


def show_patching_run(entry: RunEntry, run: RunResult, key: str = "patching") -> None:
    """A patching run: baselines, the component and method switch, the heatmap(s) and faithfulness."""
    run_header(entry, run)
    _baselines(run)
    grid = patching_grid(run)
    if not grid:
        st.info("This run holds no <method>/<component> tensors to show.")
        return
    component = st.radio("Component", list(grid), horizontal=True, key=f"{key}-component", format_func=md)
    methods = grid[component]
    choices = methods + (["side by side"] if len(side_by_side_methods(run, component, methods)) > 1 else [])
    shown = st.radio("Method", choices, horizontal=True, key=f"{key}-method", format_func=lambda m: METHOD_TITLES.get(m, m))
    if shown == "side by side":
        show_figure(side_by_side(run, component, side_by_side_methods(run, component, methods)), key=f"{key}-sbs-{component}",
                    name=f"{component}_side_by_side")
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
