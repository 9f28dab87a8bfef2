"""Sparse feature circuits (`interp.circuits.feature_circuit`, `interp.circuits.feature_edges`): edges into latents
and error terms equal finite differences; faithfulness equals a hand-written ablation with plain torch hooks; a
built circuit's nodes, edges and curve are the pieces computed on their own; the CLI writes circuit.json that
`interp circuit faithfulness` measures again; feature nodes parse, draw and round-trip."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from interp import InterpError, Replace
from interp.circuits.feature_circuit import feature_circuit_run, feature_faithfulness
from interp.circuits.feature_edges import feature_edges
from interp.circuits.graph import Circuit, parse_node
from interp.metrics import logit_diff
from interp.patching.features import feature_effects
from toy_dictionary import TOY_SITES as SITES, toy

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "saelens"


def test_edges_equal_finite_differences_through_downstream_latents_and_error(toy_spliced):
    model, tokens, ctx = toy_spliced
    up, down = SITES
    run = model.run(tokens.corrupt, read=[f"sae.{down}.latents", f"sae.{down}.error"], grad=True)
    g_lat, g_err = (x.detach() for x in torch.autograd.grad(logit_diff(run.logits[:, -1], ctx).sum(),
                                                             [run.acts[f"sae.{down}.latents"], run.acts[f"sae.{down}.error"]]))
    chosen = (g_lat * run.acts[f"sae.{down}.latents"]).detach().abs().sum((0, 1)).topk(2).indices.tolist()
    edges = feature_edges(model, tokens.corrupt, tokens.clean, up, down, logit_diff, ctx, chosen, down_error=True)
    assert edges.shape == (3, 3, 48 + 1) and edges[:, -1].abs().sum() > 0
    with torch.no_grad():
        src = model.run(tokens.clean, read=[f"sae.{up}.latents", f"sae.{up}.error"]).acts
        base = model.run(tokens.corrupt, read=[f"sae.{up}.latents", f"sae.{up}.error"]).acts
    saved = model.dictionaries.pop(down)

    def through(row, edits):  # g . node, the downstream node recomputed from the site by the dictionary itself
        with torch.no_grad():
            x = model.run(tokens.corrupt, edits, read=[down]).acts[down]
        if row < len(chosen):
            return (g_lat[..., chosen[row]] * saved.encode(x)[..., chosen[row]]).sum(1)
        return (g_err * (x - saved.decode(saved.encode(x)))).sum((1, 2))

    eps = 1e-3
    try:
        moved = (src[f"sae.{up}.latents"] - base[f"sae.{up}.latents"]).abs().sum((0, 1)).topk(2).indices.tolist()
        for row in range(3):
            t0 = through(row, [])
            for unit in moved:
                name = f"sae.{up}.latents"
                value = base[name][..., unit] + eps * (src[name][..., unit] - base[name][..., unit])
                finite = (through(row, [Replace(name, value, index=(slice(None), slice(None), unit))]) - t0) / eps
                assert torch.allclose(finite, edges[:, row, unit], rtol=3e-2, atol=1e-3), (row, unit, finite, edges[:, row, unit])
            name = f"sae.{up}.error"
            finite = (through(row, [Replace(name, base[name] + eps * (src[name] - base[name]))]) - t0) / eps
            assert torch.allclose(finite, edges[:, row, -1], rtol=3e-2, atol=1e-3), (row, finite, edges[:, row, -1])
    finally:
        model.dictionaries[down] = saved
    with pytest.raises(InterpError, match="edges run forward"):
        feature_edges(model, tokens.corrupt, tokens.clean, down, up, logit_diff, ctx, [0])


def _hooked_metric(model, tokens, ctx, keep: dict, means: dict | None):
    """The metric with the dictionaries spliced by plain forward hooks on the HF modules; latents outside ``keep``
    (site -> (latent mask [pos, d_sae], error kept [pos])) set to ``means``; with ``means`` None, the means are
    computed (the per-position mean of the clean run's latents and errors) and returned instead."""
    modules = {"resid_post.0": model.hf.model.layers[0], "mlp_out.1": model.hf.model.layers[1].mlp}
    seen = {}

    def hook_for(site):
        d = model.dictionaries[site]

        def hook(module, args, output):
            x = output[0] if isinstance(output, tuple) else output
            latents = d.encode(x)
            error = x - d.decode(latents)
            if means is None:
                seen[site] = (latents.mean(0), error.mean(0))
                return output
            lat_keep, err_keep = keep[site]
            latents = torch.where(lat_keep, latents, means[site][0])
            error = torch.where(err_keep[:, None], error, means[site][1])
            y = d.decode(latents) + error
            return (y,) + tuple(output[1:]) if isinstance(output, tuple) else y
        return hook

    handles = [modules[s].register_forward_hook(hook_for(s)) for s in SITES]
    try:
        with torch.no_grad():
            logits = model.hf(tokens.clean).logits[:, -1]
    finally:
        for h in handles:
            h.remove()
    return seen if means is None else logit_diff(logits, ctx)


def test_faithfulness_equals_a_hand_written_ablation(toy_spliced):
    model, tokens, ctx = toy_spliced
    circuit = Circuit({"feature.resid_post.0.3": 1.0, "feature.resid_post.0.7": 1.0, "error.mlp_out.1": 1.0,
                       "feature.mlp_out.1.5@2": 1.0})
    result = feature_faithfulness(model, circuit, tokens, logit_diff)
    n_pos = tokens.clean.shape[1]
    means = _hooked_metric(model, tokens, ctx, {}, None)
    keep = {s: (torch.zeros(n_pos, 48, dtype=torch.bool), torch.zeros(n_pos, dtype=torch.bool)) for s in SITES}
    keep["resid_post.0"][0][:, [3, 7]] = True
    keep["mlp_out.1"][0][2, 5] = True
    keep["mlp_out.1"][1][:] = True
    assert torch.allclose(result.circuit, _hooked_metric(model, tokens, ctx, keep, means), atol=1e-4)
    nothing = {s: (torch.zeros(n_pos, 48, dtype=torch.bool), torch.zeros(n_pos, dtype=torch.bool)) for s in SITES}
    assert torch.allclose(result.empty, _hooked_metric(model, tokens, ctx, nothing, means), atol=1e-4)
    assert torch.allclose(result.full, logit_diff(model.run(tokens.clean).logits[:, -1], ctx), atol=1e-6)
    assert (result.circuit - result.empty).abs().max() > 1e-3  # the kept nodes matter
    everything = Circuit({f"feature.{s}.{j}": 1.0 for s in SITES for j in range(48)} | {f"error.{s}": 1.0 for s in SITES})
    whole = feature_faithfulness(model, everything, tokens, logit_diff)
    assert torch.allclose(whole.circuit, whole.full, atol=1e-4) and abs(whole.normalized - 1) < 1e-3
    with pytest.raises(InterpError, match="needs the dictionary at resid_post.1 attached"):
        feature_faithfulness(model, Circuit({"feature.resid_post.1.0": 1.0}), tokens, logit_diff)
    with pytest.raises(InterpError, match="latents 0..47"):
        feature_faithfulness(model, Circuit({"feature.resid_post.0.48": 1.0}), tokens, logit_diff)
    with pytest.raises(InterpError, match="mixes feature nodes with head.0.1"):
        feature_faithfulness(model, Circuit({"feature.resid_post.0.1": 1.0, "head.0.1": 1.0}), tokens, logit_diff)


def test_a_built_circuit_is_its_pieces(tiny_llama, tmp_path):
    from interp.tasks import load_prompt_set

    prompts = load_prompt_set("ioi", tiny_llama.tokenizer, n=3, seed=1)
    dicts = [toy(tiny_llama.d_model, tiny_llama.d_model, s, d_sae=48, seed=i) for i, s in enumerate(SITES)]
    result, circuit = feature_circuit_run(tiny_llama, prompts, dicts, nodes=3, top_k=6)
    assert not tiny_llama.dictionaries  # detached again
    base = result.manifest["baselines"]["corrupt"]["mean"]
    tokens = prompts.tokenize(tiny_llama.tokenizer)
    for d in dicts:
        tiny_llama.attach(d)
    try:
        with torch.no_grad():
            clean, corrupt = tiny_llama.run(tokens.clean).logits[:, -1], tiny_llama.run(tokens.corrupt).logits[:, -1]
        from interp.metrics import MetricContext
        ctx = MetricContext(tokens.answer, tokens.wrong, clean, corrupt)
        effects = feature_effects(tiny_llama, tokens.corrupt, SITES, tokens.clean, logit_diff, ctx, ("atp", "activation"))
        for site in SITES:
            atp = effects["atp"][f"sae.{site}.latents"].mean(0) - base
            candidates = set((atp).abs().topk(6).indices.tolist())
            exact = effects["activation"][f"sae.{site}.latents"].mean(0) - base
            error = float(effects["activation"][f"sae.{site}.error"].mean()) - base
            scored = {f"feature.{site}.{j}": float(exact[j]) for j in candidates} | {f"error.{site}": error}
            want = sorted(scored, key=lambda n: -abs(scored[n]))[:3]
            got = [n for n in circuit.nodes if parse_node(n).dictionary_site == site]
            assert sorted(got) == sorted(want)
            for name in got:
                assert abs(circuit.nodes[name] - scored[name]) < 1e-5
        up, down = SITES
        receivers = [n for n in circuit.nodes if parse_node(n).dictionary_site == down]
        latents = [parse_node(n).unit for n in receivers if parse_node(n).kind == "feature"]
        has_error = f"error.{down}" in circuit.nodes
        edges = feature_edges(tiny_llama, tokens.corrupt, tokens.clean, up, down, logit_diff, ctx, latents,
                              down_error=has_error).mean(0)
        rows = [f"feature.{down}.{j}" for j in latents] + ([f"error.{down}"] if has_error else [])
        senders = [n for n in circuit.nodes if parse_node(n).dictionary_site == up]
        assert len(circuit.edges) == len(rows) * len(senders) + len(receivers)
        for e in circuit.edges:
            if e.receiver == "logits":
                assert e.sender in receivers and e.score == circuit.nodes[e.sender]
                continue
            sender = parse_node(e.sender)
            column = -1 if sender.kind == "error" else sender.unit
            assert abs(e.score - float(edges[rows.index(e.receiver), column])) < 1e-6
        curve = result.scores["circuit/curve"]
        f = feature_faithfulness(tiny_llama, circuit, tokens, logit_diff)
        assert abs(float(curve[-1]) - float(f.circuit.mean())) < 1e-5 and abs(float(curve[0]) - float(f.empty.mean())) < 1e-5
        assert result.manifest["tensors"]["circuit/curve"]["labels"]["nodes"] == ["0", "1", "2", "3"]
    finally:
        tiny_llama.dictionaries.clear()
    loaded = Circuit.load(circuit.save(tmp_path))
    assert loaded.nodes == circuit.nodes and loaded.edges == circuit.edges
    assert loaded.provenance["dictionary_sites"] == SITES
    with pytest.raises(InterpError, match="--nodes must be at least 1 and at most --top-k"):
        feature_circuit_run(tiny_llama, prompts, dicts, nodes=7, top_k=6)


def test_cli_builds_a_feature_circuit_that_circuit_faithfulness_measures_again(interp_cli, tmp_path):
    from interp.results import load_run

    dictionaries = f"{FIXTURES / 'jumprelu'},{FIXTURES / 'standard'}"
    run = interp_cli("features", "circuit", "--model", "tiny-llama", "--backend", "torch", "--dictionary", dictionaries,
                     "--n-prompts", "4", "--nodes", "3", "--top-k", "5", "--out", tmp_path / "fc")
    assert run.returncode == 0, run.stderr
    circuit = Circuit.load(tmp_path / "fc")
    assert {parse_node(n).dictionary_site for n in circuit.nodes} <= {"resid_post.0", "resid_post.1"}
    assert circuit.edges and all(e.receiver == "logits" or parse_node(e.receiver).dictionary_site == "resid_post.1"
                                 for e in circuit.edges)
    built = load_run(tmp_path / "fc").manifest["faithfulness"]
    again = interp_cli("circuit", "faithfulness", tmp_path / "fc", "--model", "tiny-llama", "--backend", "torch",
                       "--n-prompts", "4", "--out", tmp_path / "ff")
    assert again.returncode == 0, again.stderr
    measured = load_run(tmp_path / "ff").manifest["faithfulness"]
    for key in ("full", "circuit", "empty"):
        assert abs(measured[key] - built[key]) < 1e-5, (key, measured, built)
    for args, words in ((["--nodes", "0"], "--nodes must be at least 1"), (["--nodes", "6", "--top-k", "5"], "at most --top-k"),
                        (["--method", "ig"], "unknown --method 'ig'"), (["--reference", "x"], "unknown --reference")):
        bad = interp_cli("features", "circuit", "--model", "tiny-llama", "--dictionary", dictionaries, *args,
                         "--out", tmp_path / "bad")
        assert bad.returncode == 2 and words in bad.stderr and "Traceback" not in bad.stderr, bad.stderr
    keep = interp_cli("circuit", "faithfulness", tmp_path / "fc", "--model", "tiny-llama", "--keep-mlps", "--out",
                      tmp_path / "keep")
    assert keep.returncode == 2 and "--keep-mlps is for circuits of heads" in keep.stderr


def test_feature_nodes_parse_and_draw():
    from interp.circuits.figures import circuit_figure, node_positions

    circuit = Circuit({"feature.resid_post.3.1234": 0.5, "error.resid_post.3": -0.2, "feature.mlp_in.4.7@2": 0.1,
                       "feature.head_out.4.9": 0.3})
    circuit.add_edges([("feature.resid_post.3.1234", "feature.mlp_in.4.7@2", 0.05), ("feature.mlp_in.4.7@2", "logits", 0.1)])
    positions = node_positions(circuit)
    assert positions["feature.resid_post.3.1234"][0] < positions["feature.head_out.4.9"][0] < positions["feature.mlp_in.4.7@2"][0]
    fig = circuit_figure(circuit)
    nodes = next(t for t in fig.data if t.name == "nodes")
    assert list(nodes.text) == ["#1234", "err", "#7@2", "#9"] and list(nodes.customdata) == list(circuit.nodes)
    assert str(parse_node("feature.mlp_in.4.7@2")) == "feature.mlp_in.4.7@2" and parse_node("error.resid_post.3").unit is None
