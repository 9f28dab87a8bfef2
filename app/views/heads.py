"""Head maps: induction, previous-token and duplicate-token scores and direct logit attribution from
`interp heads detect`, and retrieval-head scores with the masking test from `interp heads retrieval`."""

from __future__ import annotations

import streamlit as st

from interp.app.catalog import RunEntry
from interp.app.widgets import open_run, show_figure, show_lines, show_notes
from interp.results import RunResult

MAP_TITLES = {"heads/induction": "induction", "heads/previous_token": "previous token", "heads/duplicate_token": "duplicate token",
              "dla/head_out": "direct logit attribution", "retrieval/head_score": "retrieval score"}


def top_heads(run: RunResult, name: str, k: int = 10) -> list[dict]:
    """The ``k`` heads with the largest |score| in a [layer, head] map, largest first."""
    values = run.scores[name].float()
    if values.ndim != 2:
        return []
    flat = values.flatten()
    order = flat.abs().nan_to_num(-1.0).argsort(descending=True)[:k]
    n_heads = values.shape[1]
    return [{"head": f"L{int(i) // n_heads}H{int(i) % n_heads}", "score": round(float(flat[i]), 4)} for i in order]


def render(entries: list[RunEntry]) -> None:
    st.header("Heads: induction, retrieval and other head maps")
    picked = open_run(entries, ("heads", "retrieval"), key="heads-run")
    if picked is None:
        return
    _, run = picked
    maps = [n for n in MAP_TITLES if n in run.scores and run.scores[n].ndim >= 1]
    if maps:
        name = st.radio("Map", maps, horizontal=True, key="heads-map", format_func=lambda n: MAP_TITLES[n])
        left, right = st.columns([3, 1])
        with left:
            show_figure(run.plot(name), key=f"map-{name}", name=name.replace("/", "_"))
        with right:
            st.markdown("**Top heads**")
            st.dataframe(top_heads(run, name), hide_index=True)
    else:
        st.info("This run holds none of the head maps this page draws; the Report page shows what it holds.")
    if "retrieval/test_recall" in run.scores and "retrieval/test_success" in run.scores:
        st.subheader("Needle-in-a-haystack tests")
        recall, success = run.scores["retrieval/test_recall"].float(), run.scores["retrieval/test_success"].float()
        st.caption(f"{int((success > 0.5).sum())} of {success.numel()} tests succeeded (ROUGE-1 recall > 0.5); "
                   f"mean recall {float(recall.mean()) if recall.numel() else float('nan'):.3f}")
        show_lines(run, key="retrieval")  # masking the top-k heads against k random heads
    if "dla/mlp_out" in run.scores and run.scores["dla/mlp_out"].ndim >= 1:
        show_figure(run.plot("dla/mlp_out"), key="dla-mlp", name="dla_mlp_out")
    show_notes(run)
