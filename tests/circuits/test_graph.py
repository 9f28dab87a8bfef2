"""Circuit graphs: nodes from run folders, save/load, overlap, faithfulness and path patching."""

import json

import pytest
import torch

from interp.circuits.graph import (
    Circuit,
    Edge,
    faithfulness,
    node_scores,
    overlap,
    parse_node,
    threshold,
)
from interp.circuits.path_patching import path_patching
from interp.errors import InterpError, RunFolderError
from interp.interventions import Replace
from interp.ioi import generate_ioi
from interp.metrics import MetricContext, logit_diff
from interp.patching.run import activation_patching


def test_node_names_round_trip_and_bad_names_fail():
    for name in ("head.3.1", "head.3.1@5", "mlp.2", "mlp.2@0", "neuron.4.17", "resid_pre.0@3", "attn.1@2"):
        assert str(parse_node(name)) == name
    assert parse_node("head.3.1@5").pos == 5 and parse_node("neuron.4.17").unit == 17
    with pytest.raises(InterpError, match="bad node name"):
        parse_node("head.3")


def test_overlap_on_hand_built_circuits():
    a = Circuit({"head.0.1": 1.0, "head.0.2": 0.5, "mlp.1": 0.2})
    b = Circuit({"head.0.2": 2.0, "mlp.1": 1.0, "head.1.3": 1.0, "head.1.0": -1.0})
    o = overlap(a, b)
    assert o.shared == ["head.0.2", "mlp.1"] and o.only_a == ["head.0.1"] and o.only_b == ["head.1.0", "head.1.3"]
    assert o.iou == pytest.approx(2 / 5) and o.over_a == pytest.approx(2 / 3) and o.over_b == pytest.approx(2 / 4)
    assert overlap(a, a).iou == 1.0


def test_threshold_and_save_load(tmp_path):
    scores = {"head.0.1": 0.9, "head.1.2": -2.0, "mlp.0": 0.1, "mlp.1@3": -0.5}
    assert list(threshold(scores, top_k=2).nodes) == ["head.1.2", "head.0.1"]
    assert set(threshold(scores, min_abs=0.5).nodes) == {"head.1.2", "head.0.1", "mlp.1@3"}
    circuit = threshold(scores, top_k=3, provenance={"run": "x"}).add_edges([("head.0.1", "head.1.2", 0.3),
                                                                             ("mlp.0", "logits", 0.01)], min_abs=0.1)
    path = circuit.save(tmp_path / "c")
    back = Circuit.load(tmp_path / "c")
    assert back.nodes == circuit.nodes and back.edges == [Edge("head.0.1", "head.1.2", 0.3)]
    assert back.provenance["run"] == "x" and json.loads(path.read_text())["nodes"][0]["layer"] == 1
    path.write_text('{"nodes": [{"name": "head.1"}], "edges": []}')
    with pytest.raises(RunFolderError, match="not a valid circuit.json"):
        Circuit.load(path)


@pytest.fixture(scope="module")
def ioi(tiny_llama):
    return generate_ioi(tiny_llama.tokenizer, 4, seed=5)


def test_node_scores_from_run_folder(tiny_llama, ioi, tmp_path):
    activation_patching(tiny_llama, ioi, components=["head_out", "mlp_out"], out=tmp_path / "run")
    scores = node_scores(tmp_path / "run")
    tokens = ioi.tokenize(tiny_llama.tokenizer)
    # the effect of patching head (0, 3) by hand: clean z of that head into the corrupt run
    clean_z = tiny_llama.run(tokens.clean, read=["head_out.0"]).acts["head_out.0"]
    idx = (slice(None), slice(None), 3)
    ctx = MetricContext(tokens.answer, tokens.wrong, None, None)
    patched = logit_diff(tiny_llama.run(tokens.corrupt, [Replace("head_out.0", clean_z[idx], idx)]).logits[:, -1], ctx)
    base = logit_diff(tiny_llama.run(tokens.corrupt).logits[:, -1], ctx)
    assert scores["head.0.3"] == pytest.approx(float((patched - base).mean()), abs=1e-5)
    assert len(scores) == 2 * 4 + 2 * tokens.clean.shape[1] and "mlp.1@0" in scores
    with pytest.raises(InterpError, match="no 'atp/<component>'"):
        node_scores(tmp_path / "run", method="atp")


def _everything(model):
    return {f"head.{layer}.{h}": 1.0 for layer in range(model.n_layers) for h in range(model.n_heads)} | \
        {f"mlp.{layer}": 1.0 for layer in range(model.n_layers)}


def test_faithfulness_full_circuit_is_one_and_missing_head_is_its_mean_ablation(tiny_llama, ioi):
    model = tiny_llama
    full = faithfulness(model, Circuit(_everything(model)), ioi)
    assert full.fraction == 1.0 and full.n_ablated == 0
    nodes = _everything(model)
    del nodes["head.1.2"]
    result = faithfulness(model, Circuit(nodes), ioi)
    tokens = ioi.tokenize(model.tokenizer)
    z = model.run(tokens.clean, read=["head_out.1"]).acts["head_out.1"]
    idx = (slice(None), slice(None), 2)
    ablated = model.run(tokens.clean, [Replace("head_out.1", z[:, :, 2].mean(0), idx)]).logits[:, -1]
    ctx = MetricContext(tokens.answer, tokens.wrong, None, None)
    torch.testing.assert_close(result.circuit, logit_diff(ablated, ctx), atol=1e-5, rtol=1e-4)
    assert result.fraction == pytest.approx(float(logit_diff(ablated, ctx).mean() / full.full.mean()), rel=1e-4)
    # position-resolved node: keeping mlp.0 only at the last position
    nodes = _everything(model)
    del nodes["mlp.0"]
    nodes["mlp.0@" + str(tokens.clean.shape[1] - 1)] = 1.0
    part = faithfulness(model, Circuit(nodes), ioi)
    mlp = model.run(tokens.clean, read=["mlp_out.0"]).acts["mlp_out.0"]
    keep_last = mlp.mean(0, keepdim=True).repeat(len(tokens), 1, 1)
    keep_last[:, -1] = mlp[:, -1]
    by_hand = model.run(tokens.clean, [Replace("mlp_out.0", keep_last)]).logits[:, -1]
    torch.testing.assert_close(part.circuit, logit_diff(by_hand, ctx), atol=1e-5, rtol=1e-4)


def test_faithfulness_backends_agree(tiny_llama, ioi):
    circuit = Circuit({"head.0.1": 1.0, "head.1.3": 1.0, "mlp.1": 1.0, "neuron.0.5": 1.0})
    a = faithfulness(tiny_llama, circuit, ioi)
    b = faithfulness(tiny_llama, circuit, ioi, backend="nnsight")
    for x, y in ((a.circuit, b.circuit), (a.empty, b.empty), (a.full, b.full)):
        torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(a.circuit, a.full)


# ------------------------------------------------------------------ path patching
def _norm_logits(model, resid):
    norm = model.hf.model.norm
    return (resid / (resid.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon).sqrt() * norm.weight) @ model.hf.lm_head.weight.T


def test_path_patching_last_layer_sender_equals_activation_patching(tiny_llama, ioi):
    model = tiny_llama
    res = path_patching(model, ioi, receivers="logits")
    tokens = ioi.tokenize(model.tokenizer)
    ctx = MetricContext(tokens.answer, tokens.wrong, None, None)
    corrupt_z = model.run(tokens.corrupt, read=["head_out.1"]).acts["head_out.1"]
    for h in range(model.n_heads):  # no heads after the last layer: the only path is the direct one (+ MLP 1)
        idx = (slice(None), slice(None), h)
        noised = model.run(tokens.clean, [Replace("head_out.1", corrupt_z[idx], idx)]).logits[:, -1]
        torch.testing.assert_close(res.values[:, 1, h], logit_diff(noised, ctx), atol=1e-5, rtol=1e-4)


def test_path_patching_direct_path_to_logits_by_hand(tiny_llama, ioi):
    model = tiny_llama
    res = path_patching(model, ioi, receivers="logits", senders=[(0, 1), (0, 2)], freeze_mlps=True, max_senders=1)
    tokens = ioi.tokenize(model.tokenizer)
    last = f"resid_post.{model.n_layers - 1}"
    clean = model.run(tokens.clean, read=["head_out.0", last]).acts
    corrupt_z = model.run(tokens.corrupt, read=["head_out.0"]).acts["head_out.0"]
    ctx = MetricContext(tokens.answer, tokens.wrong, None, None)
    for h in (1, 2):  # all else frozen: the final residual moves only by the sender's W_O write
        delta = (corrupt_z[:, -1, h] - clean["head_out.0"][:, -1, h]) @ model.W_O(0)[h]
        by_hand = logit_diff(_norm_logits(model, clean[last][:, -1] + delta), ctx)
        torch.testing.assert_close(res.values[:, 0, h], by_hand, atol=1e-4, rtol=1e-4)
    assert torch.isnan(res.values[:, 0, 0]).all() and torch.isnan(res.values[:, 1]).all()


def test_path_patching_to_a_head_receiver_by_brute_force_and_backends(tiny_llama, ioi):
    model, recv, sender = tiny_llama, (1, 2), (0, 3)
    res = path_patching(model, ioi, receivers=[recv], freeze_mlps=True)
    tokens = ioi.tokenize(model.tokenizer)
    ctx = MetricContext(tokens.answer, tokens.wrong, None, None)
    clean = model.run(tokens.clean, read=["head_out.0", "resid_pre.1"]).acts
    corrupt_z = model.run(tokens.corrupt, read=["head_out.0"]).acts["head_out.0"]
    # pass 1 by hand: the receiver's input is the clean residual plus the sender's W_O write (MLP 0 frozen)
    delta = (corrupt_z[:, :, sender[1]] - clean["head_out.0"][:, :, sender[1]]) @ model.W_O(0)[sender[1]]
    z = model.run(tokens.clean, [Replace("resid_pre.1", clean["resid_pre.1"] + delta)], read=["head_out.1"]).acts["head_out.1"]
    idx = (slice(None), slice(None), recv[1])
    by_hand = logit_diff(model.run(tokens.clean, [Replace("head_out.1", z[idx], idx)]).logits[:, -1], ctx)
    torch.testing.assert_close(res.values[:, 0, sender[1]], by_hand, atol=1e-5, rtol=1e-4)
    assert torch.isnan(res.values[:, 1]).all()
    other = path_patching(model, ioi, receivers=[recv], freeze_mlps=True, backend="nnsight", max_senders=3)
    torch.testing.assert_close(other.values, res.values, atol=1e-5, rtol=1e-4, equal_nan=True)
    with pytest.raises(InterpError, match="does not exist"):
        path_patching(model, ioi, receivers=[(5, 0)])
