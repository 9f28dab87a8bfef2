"""Plots: labels and values reach the figure, position labels are unique, reports work offline."""

import re

import numpy as np
import plotly.graph_objects as go
import pytest
import torch

from interp.plots import bar, heatmap, position_labels, report_html, scatter

PLOTLYJS_HEADER = re.compile(r"\* plotly\.js v\d")


def test_heatmap_labels_in_order_and_values_exact():
    values = torch.randn(3, 4, generator=torch.Generator().manual_seed(0))
    x_labels = ["0 When", "1 ␣Mary", "2 ␣and", "3 ␣Mary"]
    y_labels = ["2", "0", "1"]  # numeric-looking and out of order: still categories, in this order
    fig = heatmap(values, x_labels, y_labels, "title", "pos", "layer", colorbar_title="logit diff")
    trace = fig.data[0]
    assert list(trace.x) == x_labels and list(trace.y) == y_labels
    assert np.array_equal(np.asarray(trace.z), values.double().numpy())
    assert trace.colorscale == go.Heatmap(colorscale="RdBu").colorscale and trace.zmid == 0.0
    assert fig.layout.xaxis.type == "category" and fig.layout.yaxis.type == "category"
    assert list(fig.layout.xaxis.tickvals) == x_labels  # every label shown
    assert fig.layout.yaxis.autorange == "reversed"  # row 0 at the top
    assert "%{x}" in trace.hovertemplate and "%{y}" in trace.hovertemplate and "%{z" in trace.hovertemplate
    assert fig.layout.title.text == "title"


def test_heatmap_without_zmid_and_bfloat16():
    values = torch.ones(2, 2, dtype=torch.bfloat16)
    fig = heatmap(values, ["a", "b"], ["c", "d"], "t", "x", "y", zmid=None)
    assert fig.data[0].zmid is None
    assert np.array_equal(np.asarray(fig.data[0].z), np.ones((2, 2)))


def test_heatmap_rejects_wrong_label_counts():
    with pytest.raises(ValueError, match="labels"):
        heatmap(torch.zeros(2, 3), ["a", "b"], ["c", "d"], "t", "x", "y")
    with pytest.raises(ValueError, match="2-D"):
        heatmap(torch.zeros(2, 3, 4), ["a"], ["b"], "t", "x", "y")


def test_position_labels_unique_and_visible():
    tokens = ["When", " Mary", " and", " John", " went", ",", " Mary", " gave", "\n", " ", "<s>", ""]
    labels = position_labels(tokens)
    assert len(labels) == len(tokens) == len(set(labels))
    assert labels[0] == "0 When"
    assert labels[1] == "1 ␣Mary" and labels[6] == "6 ␣Mary"
    assert labels[8] == "8 ⏎"
    assert labels[9] == "9 ␣"
    assert "<" not in labels[10] and "s" in labels[10]  # plotly would read "<s>" as strikethrough markup
    assert labels[11] == "11 ∅"


def test_bar_and_scatter():
    fig = bar(torch.tensor([1.0, -2.0]), ["L0", "L1"], "t", "layer", "score")
    assert list(fig.data[0].x) == ["L0", "L1"] and list(fig.data[0].y) == [1.0, -2.0]

    fig = scatter(torch.tensor([0.0, 1.0, 2.0]), [0.1, 0.9, 2.2], "truth", "estimate", "t", labels=["a", "b", "c"])
    points = fig.data[0]
    assert list(points.x) == [0.0, 1.0, 2.0] and list(points.y) == [0.1, 0.9, 2.2]
    assert list(points.text) == ["a", "b", "c"]
    assert fig.data[1].name == "y = x"
    with pytest.raises(ValueError):
        scatter([1.0, 2.0], [1.0], "x", "y", "t")


def test_report_html_offline_plotlyjs_once_and_sections():
    figs = [heatmap(torch.zeros(2, 2), ["a", "b"], ["0", "1"], f"fig {i}", "x", "y") for i in range(3)]
    page = report_html(
        "interp patch <test>",
        [
            ("Run", "command: patch\nmodel: tiny & small", []),
            ("Residual stream", "Patching the residual stream <by layer>.", figs[:2]),
            ("Heads", "", figs[2:]),
        ],
    )
    assert page.startswith("<!DOCTYPE html>")
    assert '<meta charset="utf-8">' in page
    assert len(PLOTLYJS_HEADER.findall(page)) == 1  # plotly.js inlined exactly once
    assert page.count("Plotly.newPlot") == 3  # one call per figure
    assert page.index("plotly.js v") < page.index("Plotly.newPlot")  # loaded before first use
    for heading in ("Run", "Residual stream", "Heads"):
        assert f"<h2>{heading}</h2>" in page
    assert "interp patch &lt;test&gt;" in page and "&lt;by layer&gt;" in page  # text escaped
    assert '<table class="summary">' in page and "<th>model</th><td>tiny &amp; small</td>" in page
    # Offline: nothing is fetched from the network.
    assert not re.search(r"<script[^>]*\bsrc\s*=\s*[\"']?(https?:)?//", page, re.IGNORECASE)
    assert not re.search(r"<link[^>]*\bhref\s*=\s*[\"']?(https?:)?//", page, re.IGNORECASE)


def test_report_html_without_figures_has_no_plotlyjs():
    page = report_html("t", [("Only text", "nothing to plot", [])])
    assert "plotly.js v" not in page and "<p>nothing to plot</p>" in page
