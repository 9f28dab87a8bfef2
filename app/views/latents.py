"""Latent pages (`interp sae latents`): a sparse dictionary's latents by density or activation, and one latent's
page: its density and activations, their histogram, the contexts it fires on most with every token shaded by its
activation, and the tokens it promotes and suppresses through the unembedding.

Token text comes from the run's manifest (``token_strings``), so no model loads; every token is HTML-escaped (and
markdown characters turned into entities) before it is shaded, so a token such as ``<script>`` shows as typed.
Another page links to a latent with ``st.session_state["latent"]`` or the query parameter ``latent``.
"""

from __future__ import annotations

import plotly.graph_objects as go
import streamlit as st
import torch

from interp.app.catalog import RunEntry
from interp.app.widgets import md, number, open_run, plain, show_figure, show_notes, table

NEEDED = ("latents/density", "latents/max", "latents/mean")
SORTS = {"max": "max activation", "density": "density", "mean": "mean activation when firing"}
_MARKDOWN_CHARS = "\\`*_{}[]()#+-.!|~$:<>&\"'^="


def token_html(text: str) -> str:
    """A token's text as HTML that shows exactly as typed inside ``st.markdown(unsafe_allow_html=True)``: HTML and
    markdown characters as numeric entities, line breaks and tabs as visible marks."""
    text = plain(text).replace("\r\n", "\n").replace("\n", "↵").replace("\r", "↵").replace("\t", "⇥")
    return "".join(f"&#{ord(c)};" if c in _MARKDOWN_CHARS else c for c in text)


def _shaded(ids: list[int], acts: list[float], peak: float, strings: dict, centre: int) -> str:
    spans = []
    for i, (token, act) in enumerate(zip(ids, acts)):
        if token < 0:
            continue
        alpha = max(0.0, min(1.0, act / peak)) if peak > 0 else 0.0
        text = token_html(strings.get(str(token), f"[{token}]"))
        border = "outline:1px solid #333;" if i == centre else ""
        spans.append(f'<span title="{act:.3f}" style="background:rgba(255,120,0,{alpha:.2f});{border}">{text}</span>')
    return f'<div style="white-space:pre-wrap;font-family:monospace;line-height:1.8">{"".join(spans)}</div>'


def _histogram(run, latent: int) -> go.Figure | None:
    counts, edges = run.scores.get("latents/hist"), run.scores.get("latents/hist_edges")
    if counts is None or edges is None or counts.ndim != 2 or edges.numel() != counts.shape[1] + 1:
        return None
    row = counts[latent].double()
    used = row.nonzero().flatten()
    if used.numel() == 0:
        return None
    lo, hi = int(used.min()), int(used.max()) + 1
    centres = (edges[lo:hi].double() * edges[lo + 1: hi + 1].double()).sqrt()
    fig = go.Figure(go.Bar(x=centres.tolist(), y=row[lo:hi].tolist(), name=f"latent {latent}",
                           hovertemplate="activation %{x:.3g}: %{y} tokens<extra></extra>"))
    fig.update_layout(title=f"Activations of latent {latent} where it fires", xaxis_title="activation (log scale)",
                      yaxis_title="tokens", xaxis_type="log", height=320, bargap=0.05)
    return fig


def _default_latent(order: list[int], n: int) -> int:
    wanted = st.session_state.pop("latent", None)
    if wanted is None:
        wanted = st.query_params.get("latent")
    try:
        wanted = int(wanted)
    except (TypeError, ValueError):
        return order[0]
    return wanted if 0 <= wanted < n else order[0]


def _token_table(run, name: str, strings: dict, latent: int) -> list[dict] | None:
    ids, values = run.scores.get(f"latents/{name}_ids"), run.scores.get(f"latents/{name}")
    if ids is None or values is None or ids.shape != values.shape or ids.ndim != 2 or latent >= ids.shape[0]:
        return None
    return [{"token": plain(repr(strings.get(str(int(i)), f"[{int(i)}]"))), "logit effect": float(v)}
            for i, v in zip(ids[latent].tolist(), values[latent].tolist())]


def render(entries: list[RunEntry]) -> None:
    st.header("Latents")
    picked = open_run(entries, ("latents",), key="latents-run")
    if picked is None:
        return
    _, run = picked
    stats = {name.split("/")[1]: run.scores.get(name) for name in NEEDED}
    if any(t is None or t.ndim != 1 for t in stats.values()) or len({t.numel() for t in stats.values()}) != 1:
        st.info("This run lacks the per-latent statistics this page draws; the Report page shows what it holds.")
        return
    n = stats["density"].numel()
    if n == 0:
        st.info("This run holds no latents.")
        return
    strings = run.manifest.get("token_strings") if isinstance(run.manifest.get("token_strings"), dict) else {}
    sort = st.radio("Order latents by", list(SORTS), horizontal=True, format_func=SORTS.get, key="latents-sort")
    order = torch.argsort(stats[sort].float(), descending=True, stable=True).tolist()
    st.dataframe(table([{"latent": j, **{SORTS[s]: float(stats[s][j]) for s in SORTS}} for j in order[:50]]),
                 hide_index=True, key="latents-table")
    latent = int(st.number_input("Latent", min_value=0, max_value=n - 1, value=_default_latent(order, n), step=1,
                                 key="latents-latent"))
    cols = st.columns(3)
    cols[0].metric("density", number(float(stats["density"][latent]), ".4%"))
    cols[1].metric("max activation", number(float(stats["max"][latent]), ".3f"))
    cols[2].metric("mean when firing", number(float(stats["mean"][latent]), ".3f"))
    fig = _histogram(run, latent)
    if fig is not None:
        show_figure(fig, key=f"latents-hist-{latent}", name=f"latent_{latent}_histogram")
    else:
        st.caption(f"Latent {latent} never fired on this corpus.")
    _contexts(run, latent, strings)
    left, right = st.columns(2)
    for column, name in ((left, "promoted"), (right, "suppressed")):
        rows = _token_table(run, name, strings, latent)
        column.markdown(f"**Tokens it {name.removesuffix('d') + 's'}** (direct path to the logits)")
        if rows is None:
            column.caption("not in this run (see the notes)")
        else:
            column.dataframe(rows, hide_index=True, key=f"latents-{name}")
    show_notes(run)


def _contexts(run, latent: int, strings: dict) -> None:
    acts, ids = run.scores.get("latents/window_acts"), run.scores.get("latents/window_ids")
    top = run.scores.get("latents/top_activation")
    context, position = run.scores.get("latents/top_context"), run.scores.get("latents/top_position")
    if any(t is None for t in (acts, ids, top, context, position)) or acts.shape != ids.shape or acts.ndim != 3 \
            or latent >= acts.shape[0] or not top.shape == context.shape == position.shape == acts.shape[:2]:
        st.caption("This run holds no top contexts.")
        return
    st.subheader(f"Top contexts of latent {latent}")
    peak = float(top[latent].max())
    centre = acts.shape[2] // 2
    shown = 0
    for rank in range(top.shape[1]):
        value = float(top[latent, rank])
        if value <= 0:
            continue
        shown += 1
        st.caption(f"{value:.3f} · context {int(context[latent, rank])}, position {int(position[latent, rank])}")
        st.markdown(_shaded(ids[latent, rank].tolist(), acts[latent, rank].float().tolist(), peak, strings, centre),
                    unsafe_allow_html=True)
    if not shown:
        st.caption(md(f"Latent {latent} fired in no context of this corpus."))
