"""Plotly figures for scores, and the self-contained HTML report a run folder carries.

Figures use categorical axes with unique labels (plotly merges repeated category labels, so a
prompt with two " the" tokens would lose a column) and a diverging colour scale centred at zero,
so sign is visible at a glance. `report_html` inlines plotly.js once, so a report opens offline.
"""

import html
from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go
import torch

# How whitespace in a token is drawn in an axis label.
_VISIBLE = {" ": "␣", "\n": "⏎", "\t": "⇥", "\r": "␍"}
# Plotly reads "<b>", "<s>", "<br>" ... in labels as markup; these look alike and are drawn as text.
_NO_MARKUP = {"<": "‹", ">": "›"}

_FIGURE_CONFIG = {"responsive": True, "displaylogo": False}


def inert(text) -> str:
    """``text`` as plotly shows it literally: "<" and ">" drawn as "‹" and "›", so a label, title or name that comes
    from a run folder or a prompt ("<b>", "<a href=...>") is never read as plotly's HTML-like markup."""
    return "".join(_NO_MARKUP.get(ch, ch) for ch in str(text))


def token_label(token: str) -> str:
    """One token as readable text: whitespace drawn visibly, angle brackets made inert."""
    if token == "":
        return "∅"
    return "".join(_VISIBLE.get(ch, _NO_MARKUP.get(ch, ch)) for ch in token)


def position_labels(str_tokens: list[str]) -> list[str]:
    """Unique axis labels for token positions: "0 When", "1 ␣Mary", ...

    The index keeps repeated tokens apart; spaces show as "␣" and newlines as "⏎".
    """
    return [f"{i} {token_label(tok)}" for i, tok in enumerate(str_tokens)]


def _to_numpy(values) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        return values.detach().to("cpu", torch.float64).numpy()
    return np.asarray(values, dtype=np.float64)


def _category_axis(labels: list[str], title: str) -> dict:
    """A categorical axis that shows every label in the given order."""
    return dict(
        title=title,
        type="category",
        categoryorder="array",
        categoryarray=labels,
        tickmode="array",
        tickvals=labels,
        ticktext=labels,
    )


def heatmap(
    values: torch.Tensor,
    x_labels: list[str],
    y_labels: list[str],
    title: str,
    x_title: str,
    y_title: str,
    colorbar_title: str = "",
    zmid: float | None = 0.0,
) -> go.Figure:
    """A [rows, cols] heatmap: RdBu centred at `zmid`, first row at the top, every label shown."""
    z = _to_numpy(values)
    if z.ndim != 2:
        raise ValueError(f"heatmap needs a 2-D tensor, got shape {list(z.shape)}")
    x_labels = [inert(label) for label in x_labels]
    y_labels = [inert(label) for label in y_labels]
    title, x_title, y_title, colorbar_title = inert(title), inert(x_title), inert(y_title), inert(colorbar_title)
    if len(x_labels) != z.shape[1] or len(y_labels) != z.shape[0]:
        raise ValueError(
            f"heatmap of shape {list(z.shape)} needs {z.shape[0]} y labels and {z.shape[1]} x labels, "
            f"got {len(y_labels)} and {len(x_labels)}"
        )
    value_name = colorbar_title or "value"
    trace = go.Heatmap(
        z=z,
        x=x_labels,
        y=y_labels,
        colorscale="RdBu",
        zmid=zmid,
        colorbar=dict(title=dict(text=colorbar_title)),
        hovertemplate=(
            f"{x_title}: %{{x}}<br>{y_title}: %{{y}}<br>{value_name}: %{{z:.4g}}<extra></extra>"
        ),
    )
    fig = go.Figure(trace)
    fig.update_layout(
        title=dict(text=title),
        xaxis=_category_axis(x_labels, x_title),
        yaxis=dict(_category_axis(y_labels, y_title), autorange="reversed"),
        height=min(1400, max(420, 160 + 22 * len(y_labels))),
        template="plotly_white",
    )
    if len(x_labels) > 12:
        fig.update_xaxes(tickangle=-45)
    return fig


def bar(
    values: torch.Tensor, labels: list[str], title: str, x_title: str, y_title: str = ""
) -> go.Figure:
    """A bar chart of a 1-D tensor, one labelled bar per element."""
    y = _to_numpy(values)
    if y.ndim != 1 or len(labels) != y.shape[0]:
        raise ValueError(f"bar needs a 1-D tensor and one label per element, got {list(y.shape)} and {len(labels)} labels")
    labels = [inert(label) for label in labels]
    title, x_title, y_title = inert(title), inert(x_title), inert(y_title)
    fig = go.Figure(
        go.Bar(x=labels, y=y, hovertemplate=f"{x_title}: %{{x}}<br>{y_title or 'value'}: %{{y:.4g}}<extra></extra>")
    )
    fig.update_layout(
        title=dict(text=title),
        xaxis=_category_axis(labels, x_title),
        yaxis=dict(title=y_title),
        template="plotly_white",
    )
    return fig


def scatter(
    x: Sequence[float] | torch.Tensor,
    y: Sequence[float] | torch.Tensor,
    x_title: str,
    y_title: str,
    title: str,
    labels: list[str] | None = None,
) -> go.Figure:
    """Points (x, y) with a dashed y = x line, e.g. an estimate against the ground truth."""
    xs = _to_numpy(x).reshape(-1)
    ys = _to_numpy(y).reshape(-1)
    if xs.shape != ys.shape:
        raise ValueError(f"scatter needs as many x as y values, got {xs.shape[0]} and {ys.shape[0]}")
    if labels is not None and len(labels) != xs.shape[0]:
        raise ValueError(f"scatter got {xs.shape[0]} points but {len(labels)} labels")
    x_title, y_title, title = inert(x_title), inert(y_title), inert(title)
    hover = f"{x_title}: %{{x:.4g}}<br>{y_title}: %{{y:.4g}}"
    if labels is not None:
        hover = "%{text}<br>" + hover
    fig = go.Figure(
        go.Scatter(
            x=xs,
            y=ys,
            mode="markers",
            text=[inert(label) for label in labels] if labels is not None else None,
            hovertemplate=hover + "<extra></extra>",
            name="points",
        )
    )
    finite = np.concatenate([xs, ys])
    finite = finite[np.isfinite(finite)]
    if finite.size:
        lo, hi = float(finite.min()), float(finite.max())
        fig.add_trace(
            go.Scatter(
                x=[lo, hi], y=[lo, hi], mode="lines", line=dict(dash="dash", color="grey"), name="y = x", hoverinfo="skip"
            )
        )
    fig.update_layout(
        title=dict(text=title), xaxis=dict(title=x_title), yaxis=dict(title=y_title), template="plotly_white"
    )
    return fig


def histogram(series: dict[str, Sequence[float] | torch.Tensor], title: str, x_title: str) -> go.Figure:
    """Overlaid histograms, one per named series (e.g. projections of base vs source activations)."""
    fig = go.Figure()
    for name, values in series.items():
        fig.add_trace(go.Histogram(x=_to_numpy(values).reshape(-1), name=inert(name), opacity=0.6, nbinsx=40))
    fig.update_layout(barmode="overlay", title=dict(text=inert(title)), xaxis=dict(title=inert(x_title)), yaxis=dict(title="count"),
                      template="plotly_white")
    return fig


def lines(x: Sequence[float] | torch.Tensor, series: dict[str, Sequence[float] | torch.Tensor], title: str, x_title: str,
          y_title: str) -> go.Figure:
    """One line with markers per named series against shared ``x`` (e.g. KL and entropy against a steering coefficient)."""
    fig = go.Figure()
    xs = _to_numpy(x).reshape(-1)
    for name, values in series.items():
        fig.add_trace(go.Scatter(x=xs, y=_to_numpy(values).reshape(-1), mode="lines+markers", name=inert(name)))
    fig.update_layout(title=dict(text=inert(title)), xaxis=dict(title=inert(x_title)), yaxis=dict(title=inert(y_title)),
                      template="plotly_white")
    return fig


def _text_html(text: str) -> str:
    """A section's text: a paragraph, or a two-column table when it spans several "key: value" lines."""
    if "\n" not in text.strip():
        return f"<p>{html.escape(text)}</p>" if text.strip() else ""
    rows = []
    for line in text.strip().splitlines():
        if not line.strip():
            continue
        key, sep, value = line.partition(":")
        if sep:
            rows.append(f"<tr><th>{html.escape(key.strip())}</th><td>{html.escape(value.strip())}</td></tr>")
        else:
            rows.append(f'<tr><td colspan="2" class="pre">{html.escape(line.rstrip())}</td></tr>')  # e.g. a fixed-width table
    return '<table class="summary">' + "".join(rows) + "</table>"


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; padding: 0 1em; color: #222; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; margin-top: 2em; border-bottom: 1px solid #ddd; }
table.summary { border-collapse: collapse; margin: 0.5em 0; }
table.summary th, table.summary td { text-align: left; padding: 0.2em 1em 0.2em 0; vertical-align: top; }
table.summary th { color: #555; font-weight: 600; white-space: nowrap; }
table.summary td.pre { white-space: pre; font-family: ui-monospace, monospace; }
.figure { margin: 1em 0; }
"""


def report_html(title: str, sections: list[tuple[str, str, list[go.Figure]]]) -> str:
    """One self-contained HTML page: a heading, then per section a heading, its text and figures.

    plotly.js is inlined once, before the first figure, so the page works offline.
    """
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title>",
        f"<style>{_STYLE}</style>",
        "</head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    plotlyjs_done = False
    for heading, text, figures in sections:
        parts.append(f"<section><h2>{html.escape(heading)}</h2>")
        parts.append(_text_html(text))
        for fig in figures:
            div = fig.to_html(
                full_html=False,
                include_plotlyjs=not plotlyjs_done,
                config=_FIGURE_CONFIG,
                default_width="100%",
                default_height="520px",
            )
            plotlyjs_done = True
            parts.append(f'<div class="figure">{div}</div>')
        parts.append("</section>")
    parts.append("</body></html>")
    return "\n".join(parts)
