"""Every page of the app, driven by Streamlit's AppTest against run folders the real commands wrote.

Figures are checked against the run folders themselves (the numbers a heatmap shows are the tensor's),
or against an independent computation (attention patterns through the other backend, overlap by set
arithmetic).
"""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from app_runs import BROKEN
from streamlit.testing.v1 import AppTest

from interp.app.catalog import scan_runs
from interp.circuits.graph import Circuit, parse_node
from interp.plots import inert, position_labels
from interp.results import load_run

MAIN = str(Path(__file__).resolve().parents[2] / "app" / "main.py")
PAGES_BY_KIND = {"patching": "Patching", "heads": "Heads", "retrieval": "Heads", "neurons": "Neurons", "voids": "Voids",
                 "sweep": "Steering", "east": "Steering", "attack": "Steering", "vectors": "Steering", "subspace": "Subspace",
                 "circuit": "Circuits", "overlap": "Report", "faithfulness": "Report", "latents": "Latents"}
RUN_PICKERS = {"Patching": "patching-run", "Heads": "heads-run", "Neurons": "neurons-run", "Voids": "voids-run",
               "Steering": "steering-run", "Subspace": "subspace-run", "Circuits": "circuit-run", "Report": "report-run",
               "Latents": "latents-run"}


def _array(value) -> np.ndarray:
    """A plotly JSON array: a list, or {"dtype", "bdata", "shape"} (typed arrays)."""
    if isinstance(value, dict) and "bdata" in value:
        flat = np.frombuffer(base64.b64decode(value["bdata"]), dtype=np.dtype(value["dtype"]))
        shape = value.get("shape")
        if isinstance(shape, str):
            shape = [int(s) for s in shape.split(",")]
        return flat.reshape(shape) if shape else flat
    return np.asarray(value, dtype=float)


def unescape(markdown: str) -> str:
    """Text the app escaped for markdown (`interp.app.widgets.md`), as it reads on screen."""
    return re.sub(r"\\(.)", r"\1", markdown)


def charts(at: AppTest) -> list[dict]:
    return [json.loads(chart.proto.spec) for chart in at.get("plotly_chart")]


def assert_clean(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def open_page(runs: Path, page: str, monkeypatch, run: str | None = None) -> AppTest:
    """The app on ``page``, with ``run`` (a folder name) chosen in the page's run picker."""
    monkeypatch.setenv("INTERP_RUNS_DIR", str(runs))
    at = AppTest.from_file(MAIN, default_timeout=180)
    at.run()
    at.sidebar.radio(key="page").set_value(page).run()
    if run is not None:
        picker = at.selectbox(key=RUN_PICKERS[page])
        # the options are the shown labels, which start with the folder name
        picker.select_index(next(i for i, label in enumerate(picker.options) if label.split(" · ")[0] == run)).run()
    return at


def test_runs_page_lists_every_folder_and_shows_bad_ones_in_place(app_runs, monkeypatch):
    monkeypatch.setenv("INTERP_RUNS_DIR", str(app_runs))
    at = AppTest.from_file(MAIN, default_timeout=180).run()
    assert not at.exception
    table = at.dataframe[0].value
    entries = scan_runs(app_runs)
    assert sorted(table["run"]) == sorted(e.name for e in entries)
    row = table[table["run"] == "patch"].iloc[0]
    assert row["model"] == "tiny-llama" and row["command"].startswith("interp patch") and row["status"] == "complete"
    errors = unescape(" ".join(e.value for e in at.error))
    for phrase in BROKEN.values():
        assert phrase in errors
    assert table[table["run"] == "running"].iloc[0]["status"] == "unfinished: 3/8 patches"


def test_open_button_takes_a_run_to_its_page(app_runs, monkeypatch):
    monkeypatch.setenv("INTERP_RUNS_DIR", str(app_runs))
    at = AppTest.from_file(MAIN, default_timeout=180).run()
    names = [e.name for e in scan_runs(app_runs) if e.ok]
    at.button(key=f"open-{names.index('retrieval')}").click().run()
    assert at.sidebar.radio(key="page").value == "Heads"
    assert_clean(at)
    assert at.session_state["run"] == str(app_runs / "retrieval")
    z = _array(charts(at)[0]["data"][0]["z"])
    assert np.allclose(z, load_run(app_runs / "retrieval").scores["retrieval/head_score"].numpy())


@pytest.mark.parametrize("folder", ["patch", "circuit_a", "circuit_b", "overlap", "faithfulness", "subspace", "heads", "retrieval",
                                    "neurons", "voids", "steer_build", "steer_eval", "east", "attack", "latents"])
def test_every_run_opens_on_its_page_and_in_the_report(app_runs, monkeypatch, folder):
    kind = next(e.kind for e in scan_runs(app_runs) if e.name == folder)
    for page in {PAGES_BY_KIND[kind], "Report"}:
        at = open_page(app_runs, page, monkeypatch, folder)
        assert_clean(at)
        assert charts(at), f"{folder} on {page}: no figure"


def test_patching_heatmaps_show_the_tensors_with_the_real_tokens(app_runs, monkeypatch):
    run = load_run(app_runs / "patch")
    at = open_page(app_runs, "Patching", monkeypatch, "patch")
    assert [unescape(o) for o in at.radio(key="patching-component").options] == ["resid_pre", "head_out", "mlp_out"]
    for component in ("resid_pre", "head_out"):
        at.radio(key="patching-component").set_value(component).run()
        for method in ("activation", "atp", "relp", "ig"):
            at.radio(key="patching-method").set_value(method).run()
            assert_clean(at)
            trace = charts(at)[0]["data"][0]
            name = f"{method}/{component}"
            assert np.allclose(_array(trace["z"]), run.scores[name].numpy(), atol=1e-6), name
            assert trace["x"] == run.axis_labels(name, run.tensor_info(name)["axes"][1])
    at.radio(key="patching-component").set_value("resid_pre").run()
    assert charts(at)[0]["data"][0]["x"] == position_labels(run.manifest["prompt_set"]["tokens"])  # the prompt's own tokens
    at.radio(key="patching-method").set_value("side by side").run()
    side = charts(at)[0]
    assert [t["type"] for t in side["data"]] == ["heatmap"] * 4
    zmid = run.tensor_info("relp/resid_pre")["zmid"]
    assert np.allclose(_array(side["data"][2]["z"]), run.scores["relp/resid_pre"].numpy() - zmid, atol=1e-5)
    faith = at.dataframe[0].value
    assert list(faith["estimator"]) == ["AtP", "RelP", "integrated gradients"]
    assert faith["pearson"].tolist() == [run.manifest["faithfulness"][m]["resid_pre"]["pearson"] for m in ("atp", "relp", "ig")]
    scatter = charts(at)[1]["data"][0]
    assert scatter["type"] == "scatter" and len(_array(scatter["x"])) == run.scores["activation/resid_pre"].numel()


def test_head_maps_and_top_heads(app_runs, monkeypatch):
    run = load_run(app_runs / "heads")
    at = open_page(app_runs, "Heads", monkeypatch, "heads")
    for name in ("heads/induction", "heads/previous_token", "heads/duplicate_token", "dla/head_out"):
        at.radio(key="heads-map").set_value(name).run()
        assert_clean(at)
        assert np.allclose(_array(charts(at)[0]["data"][0]["z"]), run.scores[name].numpy())
        top = at.dataframe[0].value
        values = run.scores[name]
        best = int(values.abs().flatten().argmax())
        assert top.iloc[0]["head"] == f"L{best // values.shape[1]}H{best % values.shape[1]}"


def test_relation_neuron_matrices(app_runs, monkeypatch):
    run = load_run(app_runs / "neurons")
    at = open_page(app_runs, "Neurons", monkeypatch, "neurons")
    assert_clean(at)
    change = run.scores["neurons/acc_change"]
    assert np.allclose(_array(charts(at)[0]["data"][0]["z"]), change.numpy())
    own = at.metric[0].value
    assert own == f"{float(torch.diagonal(change).mean()):+.3f}"
    at.radio(key="neurons-matrix").set_value("neurons/overlap").run()
    assert np.allclose(_array(charts(at)[0]["data"][0]["z"]), run.scores["neurons/overlap"].numpy())
    assert any(c["layout"]["title"]["text"].startswith("Accuracy against k") for c in charts(at))  # the k sweep


def test_void_maps_per_prompt(app_runs, monkeypatch):
    run = load_run(app_runs / "voids")
    at = open_page(app_runs, "Voids", monkeypatch, "voids")
    assert_clean(at)
    at.selectbox(key="voids-prompt").set_value("1").run()
    shown = charts(at)
    assert np.allclose(_array(shown[2]["data"][0]["z"]), run.scores["voids/prompt_map.1"].numpy())
    assert np.allclose(_array(shown[3]["data"][0]["z"]), run.scores["voids/response_map.1"].numpy())
    assert shown[2]["data"][0]["y"] == [inert(label) for label in run.axis_labels("voids/prompt_map.1", "token")]  # "<|im_start|>" as text


def test_steering_sweep_lines(app_runs, monkeypatch):
    run = load_run(app_runs / "steer_eval")
    at = open_page(app_runs, "Steering", monkeypatch, "steer_eval")
    assert_clean(at)
    titles = [c["layout"]["title"]["text"] for c in charts(at)]
    for line in run.manifest["lines"]:
        assert line["title"] in titles
    kl = next(c for c in charts(at) if c["layout"]["title"]["text"] == run.manifest["lines"][1]["title"])
    assert np.allclose(_array(kl["data"][0]["y"]), run.scores["sweep/kl"].numpy())


def test_subspace_illusion_table(app_runs, monkeypatch):
    run = load_run(app_runs / "subspace")
    at = open_page(app_runs, "Subspace", monkeypatch, "subspace")
    assert not at.exception
    table = at.dataframe[0].value
    illusion = run.manifest["illusion"]
    assert len(table) == 4 and table["fldd"].tolist() == [illusion[p]["fldd"] for p in ("direction", "readable", "unreadable", "full")]
    assert illusion["verdict"] in unescape(" ".join(m.value for m in [*at.success, *at.warning]))


def test_circuit_graph_node_details_and_overlap(app_runs, monkeypatch):
    circuit = Circuit.load(app_runs / "circuit_a")
    at = open_page(app_runs, "Circuits", monkeypatch, "circuit_a")
    assert_clean(at)
    graph = charts(at)[0]
    nodes = next(t for t in graph["data"] if t.get("name") == "nodes")
    assert sorted(nodes["customdata"]) == sorted(circuit.nodes)
    sizes = dict(zip(nodes["customdata"], _array(nodes["marker"]["size"])))
    largest = max(circuit.nodes, key=lambda n: abs(circuit.nodes[n]))
    assert sizes[largest] == max(sizes.values())
    edge_lines = [t for t in graph["data"] if t.get("mode") == "lines"]
    assert len(edge_lines) == len(circuit.edges) > 0
    at.selectbox(key="circuit-node").set_value(largest).run()
    assert_clean(at)
    incoming, outgoing = at.dataframe[0].value, at.dataframe[1].value
    assert len(incoming) == sum(e.receiver == largest for e in circuit.edges)
    assert len(outgoing) == sum(e.sender == largest for e in circuit.edges)

    at.radio(key="circuits-mode").set_value("Overlap of two circuits").run()
    assert_clean(at)
    a = circuit
    names = [e.name for e in scan_runs(app_runs) if e.ok and e.kind == "circuit"]
    at.selectbox(key="overlap-a").set_value(names.index("circuit_a")).run()
    at.selectbox(key="overlap-b").set_value(names.index("circuit_b")).run()
    b = Circuit.load(app_runs / "circuit_b")
    shared, union = set(a.nodes) & set(b.nodes), set(a.nodes) | set(b.nodes)
    assert at.metric[0].value == f"{len(shared) / len(union):.3f}"
    assert at.metric[1].value == f"{len(shared) / len(a.nodes):.3f}"


def test_feature_circuit_graph_curve_and_node_details(app_runs, monkeypatch):
    circuit = Circuit.load(app_runs / "feature_circuit")
    run = load_run(app_runs / "feature_circuit")
    at = open_page(app_runs, "Circuits", monkeypatch, "feature_circuit")
    assert_clean(at)
    graph, curve = charts(at)[:2]
    nodes = next(t for t in graph["data"] if t.get("name") == "nodes")
    assert sorted(nodes["customdata"]) == sorted(circuit.nodes)
    assert all(label == "err" or label.startswith("#") for label in nodes["text"])
    assert len([t for t in graph["data"] if t.get("mode") == "lines"]) == len(circuit.edges) > 0
    assert np.allclose(_array(curve["data"][0]["y"]), run.scores["circuit/curve"].numpy())
    feature = next(n for n in circuit.nodes if n.startswith("feature.resid_mid.1."))  # the topk fixture's latents
    at.selectbox(key="circuit-node").set_value(feature).run()
    assert_clean(at)
    node = parse_node(feature)
    assert any(f"latent {node.unit} of the dictionary at {node.dictionary_site}" in unescape(m.value) for m in at.markdown)
    assert len(at.dataframe[0].value) == sum(e.receiver == feature for e in circuit.edges)
    at.button(key="latent-link-0").click().run()  # the latents run of the same dictionary: its page, on this latent
    assert_clean(at)
    assert at.sidebar.radio(key="page").value == "Latents"
    assert at.number_input[0].value == node.unit and any(h.value == f"Top contexts of latent {node.unit}" for h in at.subheader)


def test_edge_circuit_graph_curve_and_node_edges(app_runs, monkeypatch):
    from interp.circuits.graph import receiver_node

    circuit = Circuit.load(app_runs / "discover")
    run = load_run(app_runs / "discover")
    at = open_page(app_runs, "Circuits", monkeypatch, "discover")
    assert_clean(at)
    graph, curve = charts(at)[:2]
    nodes = next(t for t in graph["data"] if t.get("name") == "nodes")
    assert sorted(nodes["customdata"]) == sorted(circuit.nodes) and "input" in circuit.nodes
    lines = [t for t in graph["data"] if t.get("mode") == "lines"]
    assert len(lines) == len(circuit.edges) == run.manifest["faithfulness"]["edges"]
    dashes = {t["line"].get("dash") for t in lines}
    assert dashes <= {"solid", "dot", "dash"}
    assert np.allclose(_array(curve["data"][0]["y"]), run.scores["circuit/curve"].numpy())
    head = next(n for n in circuit.nodes if n.startswith("head."))
    at.selectbox(key="circuit-node").set_value(head).run()
    assert_clean(at)
    assert len(at.dataframe[0].value) == sum(receiver_node(e.receiver) == head for e in circuit.edges)
    assert len(at.dataframe[1].value) == sum(e.sender == head for e in circuit.edges)


def test_attention_pattern_matches_the_other_backend(app_runs, monkeypatch, tiny_llama):
    at = open_page(app_runs, "Attention", monkeypatch)
    at.text_input(key="attention-model").set_value("tiny-llama").run()
    at.button(key="attention-load").click().run()
    at.number_input(key="attention-layer").set_value(1).run()
    at.number_input(key="attention-head").set_value(2).run()
    assert_clean(at)
    trace = charts(at)[0]["data"][0]
    prompt = at.text_area[0].value
    expected = tiny_llama.run(prompt, read=["attn_pattern.1"], backend="lens").acts["attn_pattern.1"][0, 2]
    assert np.allclose(_array(trace["z"]), expected.numpy(), atol=1e-5)
    assert len(trace["x"]) == tiny_llama.to_tokens(prompt).shape[1]


def test_attention_page_reports_a_missing_model_in_one_line(app_runs, monkeypatch):
    at = open_page(app_runs, "Attention", monkeypatch)
    at.text_input(key="attention-model").set_value("no-such-model").run()
    at.button(key="attention-load").click().run()
    assert not at.exception
    assert len(at.error) == 1 and "\n" not in at.error[0].value.strip()


def test_new_run_form_launches_interp_patch_and_shows_the_result(app_runs, monkeypatch, tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    at = open_page(runs, "New run", monkeypatch)
    form_inputs = {t.label: t for t in at.text_input}
    form_inputs["Model"].set_value("tiny-llama")
    form_inputs["Run folder name"].set_value("fromapp")
    at.number_input[0].set_value(2)
    at.multiselect[0].set_value(["head_out"])
    at.multiselect[1].set_value(["activation", "atp"])
    submit = next(b for b in at.button if b.label == "Start the run")
    submit.click().run()
    assert_clean(at)
    assert "Finished" in at.success[0].value
    run = load_run(runs / "fromapp")
    assert run.manifest["model"] == "tiny-llama" and run.manifest["methods"] == ["activation", "atp"]
    assert np.allclose(_array(charts(at)[0]["data"][0]["z"]), run.scores["activation/head_out"].numpy())
    next(b for b in at.button if b.label == "Start the run").click().run()  # the same name again: refused in one line
    assert any("already exists" in e.value for e in at.error)
