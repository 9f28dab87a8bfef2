"""Edge-level graphs (`interp.circuits.edge_graph`), exact edge patching (`interp.circuits.edge_patching`) and edge
attribution (`interp.circuits.eap`):

- patching no edge is the base run bit for bit, every edge the source run; every edge into one receiver equals
  replacing that receiver's input by the source's (a plain Replace of ``mlp_in``, one head of ``q``/``k``, the
  last ``resid_post``);
- an EAP score is the derivative of exact patching of its edge (finite differences, edges of every kind);
- one sender's edges sum to its node attribution (AtP, and RelP for relp scores, from `interp.patching.attribution`);
- EAP-IG: the edges out of the input sum to the effect of patching the whole input;
- the backends agree; parallel blocks and fused q/k/v projections work; sandwich norms are refused in one line.
"""

from __future__ import annotations

import pytest
import torch

from family_models import ROW_IDS, build, tokens as family_tokens
from interp import InterpError, Replace
from interp.circuits.eap import edge_scores
from interp.circuits.edge_graph import EdgeGraph, edge_graph
from interp.circuits.graph import Circuit, parse_node
from interp.circuits.edge_patching import edge_patched_logits, source_writes
from interp.metrics import MetricContext, logit_diff
from interp.patching.attribution import attribution_patching
from interp.rules import RELP_RULES
from ioi_runs import ioi_runs


@pytest.fixture(scope="module")
def ioi(tiny_llama):
    tokens, clean, corrupt, ctx = ioi_runs(tiny_llama, 3, 1)
    return tiny_llama, tokens.clean, tokens.corrupt, ctx


def _family(row_id: str):
    model = build(row_id)
    clean, corrupt = family_tokens(model)
    with torch.no_grad():
        c, k = model.run(clean).logits[:, -1], model.run(corrupt).logits[:, -1]
    ctx = MetricContext(torch.full((3,), 11), torch.full((3,), 12), c, k)
    return model, clean, corrupt, ctx


def test_the_graph_lists_senders_receivers_and_forward_edges():
    g = EdgeGraph(n_layers=2, n_heads=4, n_kv_heads=2)
    assert g.senders[:3] == ["input", "head.0.0", "head.0.1"] and g.senders[-1] == "mlp.1"
    assert g.receivers[:6] == ["head.0.0.q", "head.0.1.q", "head.0.2.q", "head.0.3.q", "kv.0.0.k", "kv.0.1.k"]
    assert g.receivers[-2:] == ["mlp.1", "logits"]
    mask = g.mask([("head.0.1", "mlp.0"), ("input", "logits"), ("mlp.0", "kv.1.1.v")])
    assert g.edges(mask) == [("input", "logits"), ("head.0.1", "mlp.0"), ("mlp.0", "kv.1.1.v")]
    for bad in (("head.1.0", "head.1.2.q"), ("mlp.0", "mlp.0"), ("mlp.1", "head.0.0.q"), ("head.0.0", "nope")):
        with pytest.raises(InterpError, match="no edge"):
            g.mask([bad])
    # the input reaches all 19 receivers; a layer-0 head mlp.0, layer 1's 9 and the logits; mlp.0 layer 1's 9 and
    # the logits; a layer-1 head mlp.1 and the logits; mlp.1 the logits
    assert g.n_edges == 19 + 4 * 11 + 10 + 4 * 2 + 1
    parallel = EdgeGraph(n_layers=1, n_heads=2, n_kv_heads=2, mlp_sees_attention=False)
    with pytest.raises(InterpError, match="no edge"):
        parallel.mask([("head.0.0", "mlp.0")])


@pytest.mark.parametrize("backend", ["torch", "nnsight", "lens"])
def test_no_edge_is_the_base_run_and_every_edge_the_source_run(ioi, backend):
    model, clean, corrupt, _ = ioi
    g = edge_graph(model)
    src = source_writes(model, corrupt, backend=backend)
    out = edge_patched_logits(model, g, clean, src, torch.stack([torch.zeros_like(g.valid), g.valid]), backend=backend)
    with torch.no_grad():
        base, source = model.run(clean, backend=backend).logits[:, -1], model.run(corrupt, backend=backend).logits[:, -1]
    assert torch.equal(out[:3], base)
    assert torch.allclose(out[3:], source, atol=1e-5)


def test_every_edge_into_one_receiver_is_replacing_its_input(ioi):
    model, clean, corrupt, _ = ioi
    g = edge_graph(model)
    src = source_writes(model, corrupt)
    with torch.no_grad():
        theirs = model.run(corrupt, read=["mlp_in.1", "q.1", "k.1", "resid_post.1"]).acts
        cases = {"mlp.1": Replace("mlp_in.1", theirs["mlp_in.1"]),
                 "head.1.2.q": Replace("q.1", theirs["q.1"][:, :, 2], index=(slice(None), slice(None), 2)),
                 "kv.1.1.k": Replace("k.1", theirs["k.1"][:, :, 1], index=(slice(None), slice(None), 1)),
                 "logits": Replace("resid_post.1", theirs["resid_post.1"])}
        for receiver, edit in cases.items():
            mask = g.valid & torch.tensor([r == receiver for r in g.receivers])[None, :]
            patched = edge_patched_logits(model, g, clean, src, mask)
            assert torch.allclose(patched, model.run(clean, [edit]).logits[:, -1], atol=1e-5), receiver


def test_eap_is_the_derivative_of_exact_edge_patching(ioi):
    model, clean, corrupt, ctx = ioi
    scores = edge_scores(model, clean, corrupt, logit_diff, ctx)
    g = scores.graph
    src = source_writes(model, corrupt)
    with torch.no_grad():
        base = logit_diff(model.run(clean).logits[:, -1], ctx).mean()
    wanted = [("input", "kv.0.0.k"), ("head.0.2", "head.1.0.q"), ("head.0.1", "kv.1.0.v"), ("mlp.0", "head.1.0.q"),
              ("head.0.0", "logits"), ("head.1.3", "mlp.1"), ("mlp.1", "logits"), ("input", "mlp.0")]
    eps = 1e-3
    masks = torch.stack([g.mask([edge]) for edge in wanted])
    moved = logit_diff(edge_patched_logits(model, g, clean, src, masks, fraction=eps), ctx.rows(3 * len(wanted)))
    finite = (moved.view(len(wanted), 3).mean(1) - base) / eps
    estimate = torch.stack([scores.scores[m].sum() for m in masks])
    assert estimate.abs().max() > 1e-2
    assert torch.allclose(finite, estimate, rtol=5e-2, atol=2e-3), (finite, estimate)


@pytest.mark.parametrize("method", ["eap", "relp"])
def test_a_senders_edges_sum_to_its_node_attribution(ioi, method):
    model, clean, corrupt, ctx = ioi
    scores = edge_scores(model, clean, corrupt, logit_diff, ctx, method=method)
    g = scores.graph
    source = model.run(corrupt, read=[f"{k}.{layer}" for k in ("head_out", "mlp_out") for layer in range(2)]).acts
    nodes = attribution_patching(model, ["head_out", "mlp_out"], clean, source, logit_diff, ctx,
                                 rules=RELP_RULES if method == "relp" else ())
    base = logit_diff(model.run(clean).logits[:, -1], ctx)
    for layer in range(model.n_layers):
        rows = g.sender_rows(layer)
        heads = (nodes["head_out"][:, layer] - base[:, None]).mean(0)
        mlp = (nodes["mlp_out"][:, layer] - base[:, None]).sum(1).mean(0)
        assert torch.allclose(scores.scores[rows.start:rows.stop - 1].sum(1), heads, atol=1e-5)
        assert abs(float(scores.scores[rows.stop - 1].sum()) - float(mlp)) < 1e-5


def test_eap_ig_edges_out_of_the_input_sum_to_patching_the_input(ioi):
    model, clean, corrupt, ctx = ioi
    scores = edge_scores(model, clean, corrupt, logit_diff, ctx, method="eap-ig", ig_steps=32)
    with torch.no_grad():
        source_emb = model.run(corrupt, read=["resid_pre.0"]).acts["resid_pre.0"]
        patched = logit_diff(model.run(clean, [Replace("resid_pre.0", source_emb)]).logits[:, -1], ctx)
        base = logit_diff(model.run(clean).logits[:, -1], ctx)
    total = float(scores.scores[0].sum())
    effect = float((patched - base).mean())
    assert abs(effect) > 0.05 and abs(total - effect) < 0.01 * abs(effect), (total, effect)
    one_step = edge_scores(model, clean, corrupt, logit_diff, ctx, method="eap-ig", ig_steps=1)
    assert abs(float(one_step.scores[0].sum()) - effect) > abs(total - effect)  # more steps, closer


def test_backends_agree(ioi):
    model, clean, corrupt, ctx = ioi
    ours = edge_scores(model, clean, corrupt, logit_diff, ctx, method="eap-ig", ig_steps=2, backend="torch").scores
    for backend in ("nnsight", "lens"):
        theirs = edge_scores(model, clean, corrupt, logit_diff, ctx, method="eap-ig", ig_steps=2, backend=backend).scores
        assert torch.allclose(ours, theirs, atol=1e-5), backend


@pytest.mark.parametrize("row", ROW_IDS)
def test_every_family(row):
    """Every block shape, q/k/v layout, norm placement, MoE and multiplier of the parity matrix: the base and source
    runs, node sums = AtP, and an edge's score = the slope of its exact patching."""
    model, clean, corrupt, ctx = _family(row)
    g = edge_graph(model)
    src = source_writes(model, corrupt)
    out = edge_patched_logits(model, g, clean, src, torch.stack([torch.zeros_like(g.valid), g.valid]))
    with torch.no_grad():  # MoE layers route a doubled batch with other float rounding: 1e-5, not bit for bit
        assert torch.allclose(out[:3], model.run(clean).logits[:, -1], atol=1e-5, rtol=0)
        assert torch.allclose(out[3:], model.run(corrupt).logits[:, -1], atol=1e-4)
    scores = edge_scores(model, clean, corrupt, logit_diff, ctx)
    sites = [f"{k}.{layer}" for k in ("head_out", "mlp_out") for layer in range(model.n_layers)]
    nodes = attribution_patching(model, ["head_out"], clean, model.run(corrupt, read=sites).acts, logit_diff, ctx)
    base = logit_diff(model.run(clean).logits[:, -1], ctx)
    for layer in range(model.n_layers):
        rows = g.sender_rows(layer)
        heads = (nodes["head_out"][:, layer] - base[:, None]).mean(0)
        assert torch.allclose(scores.scores[rows.start:rows.stop - 1].sum(1), heads, atol=1e-4), layer
    edges = g.valid.nonzero()[torch.randperm(g.n_edges, generator=torch.Generator().manual_seed(0))[:8]].tolist()
    masks = torch.zeros(len(edges), *g.valid.shape, dtype=torch.bool)
    for k, (i, j) in enumerate(edges):
        masks[k, i, j] = True
    eps = 1e-3  # each edge moved a little: its score is the slope
    moved = logit_diff(edge_patched_logits(model, g, clean, src, masks, fraction=eps), ctx.rows(3 * len(edges)))
    finite = (moved.view(len(edges), 3).mean(1) - base.mean()) / eps
    estimate = torch.stack([scores.scores[m].sum() for m in masks])
    assert torch.allclose(finite, estimate, rtol=0.1, atol=2e-3), (finite, estimate)


def test_behind_a_norm_after_attention_head_edges_are_recomputed_exactly(tiny_gemma3):
    """Gemma 3 normalises the heads' summed output: an edge from a head moves what its receiver reads by
    norm(u) - norm(u - that head's change), which a plain hook on the post-attention norm reproduces."""
    model = tiny_gemma3
    tokens, clean_run, corrupt_run, ctx = ioi_runs(model, 3, 1)
    g = edge_graph(model)
    src = source_writes(model, tokens.corrupt)
    with torch.no_grad():  # layer 1 attends fully (layer 0's window of 4 does not reach the corrupted name)
        z = model.run(tokens.corrupt, read=["head_out.1"]).acts["head_out.1"]
        # the edge head.1.1 -> logits: the final residual as if that head alone were corrupted in layer 1's
        # attention (its post-attention norm recomputed), everything else clean
        edited = model.run(tokens.clean, [Replace("head_out.1", z[:, :, 1], index=(slice(None), slice(None), 1))],
                           read=["attn_out.1"]).acts["attn_out.1"]
        acts = model.run(tokens.clean, read=["attn_out.1", "resid_post.1"]).acts
        final = acts["resid_post.1"] - acts["attn_out.1"] + edited
        expected = model.run(tokens.clean, [Replace("resid_post.1", final)]).logits[:, -1]
    patched = edge_patched_logits(model, g, tokens.clean, src, g.mask([("head.1.1", "logits")]))
    assert torch.allclose(patched, expected, atol=1e-5) and (patched - clean_run.logits[:, -1]).abs().max() > 1e-4
    with pytest.raises(InterpError, match="unknown method 'acdc'"):
        edge_scores(model, tokens.clean, tokens.corrupt, logit_diff, ctx, method="acdc")


def test_pruning_keeps_only_paths_from_the_input_to_the_logits():
    from interp.circuits.edge_circuit import prune

    g = EdgeGraph(n_layers=2, n_heads=4, n_kv_heads=2)
    chain = [("input", "head.0.1.q"), ("head.0.1", "kv.1.0.v"), ("head.1.1", "logits")]  # head.1.1 reads kv.1.0
    dangling = [("head.0.3", "mlp.0"),  # head.0.3 gets nothing in
                ("input", "head.1.3.q"),  # head.1.3 sends nothing on
                ("mlp.0", "kv.1.1.k")]  # kv.1.1 feeds heads 1.2 and 1.3, which send nothing on
    assert g.edges(prune(g, g.mask(chain + dangling))) == g.edges(g.mask(chain))
    assert not prune(g, g.mask([("head.0.0", "logits")])).any()


def test_greedy_grows_from_the_logits_and_top_takes_the_largest(ioi):
    from interp.circuits.edge_circuit import _feeds, select_edges
    from interp.circuits.graph import receiver_node

    model, clean, corrupt, ctx = ioi
    scores = edge_scores(model, clean, corrupt, logit_diff, ctx)
    g = scores.graph
    top = select_edges(scores, 10, "top")
    assert int(top.sum()) == 10 and scores.scores[top].abs().min() >= scores.scores[g.valid & ~top].abs().max()
    greedy = select_edges(scores, 12, "greedy")
    assert int(greedy.sum()) == 12
    into_logits = scores.scores[:, -1].abs()
    assert greedy[int(into_logits.argmax()), -1]  # the first pick: the largest edge into the logits
    sent = {g.senders[i] for i, _ in greedy.nonzero().tolist()}
    for i, j in greedy.nonzero().tolist():  # every edge ends at the logits or at a node feeding a chosen sender
        node = receiver_node(g.receivers[j])
        assert node == "logits" or any(node in _feeds(g, s) for s in sent)


def test_faithfulness_is_exact_patching_outside_the_circuit(ioi):
    from interp import Ablate
    from interp.circuits.edge_circuit import edge_faithfulness, faithfulness_curve, to_circuit

    model, clean, corrupt, ctx = ioi
    g = edge_graph(model)
    out_of_head = g.valid & torch.tensor([s == "head.0.1" for s in g.senders])[:, None]
    circuits = torch.stack([g.valid, g.valid & ~out_of_head, torch.zeros_like(g.valid)])
    with torch.no_grad():
        z = {name: model.run(tokens, read=["head_out.0"]).acts["head_out.0"] for name, tokens in (("clean", clean), ("corrupt", corrupt))}
        index = (slice(None), slice(None), 1)
        corrupted = logit_diff(model.run(clean, [Replace("head_out.0", z["corrupt"][:, :, 1], index=index)]).logits[:, -1], ctx)
        ablated = logit_diff(model.run(clean, [Ablate("head_out.0", "mean", index, torch.cat([z["clean"], z["corrupt"]]))])
                             .logits[:, -1], ctx)
        full = logit_diff(model.run(clean).logits[:, -1], ctx)
        empty = logit_diff(model.run(corrupt).logits[:, -1], ctx)
    result = edge_faithfulness(model, g, clean, corrupt, circuits, logit_diff, ctx, max_memory=10**6 * 3)
    assert torch.equal(result.full, full) and torch.allclose(result.empty, empty, atol=1e-5)
    assert torch.equal(result.values[0], full) and torch.allclose(result.values[2], empty, atol=1e-5)
    assert torch.allclose(result.values[1], corrupted, atol=1e-5) and result.normalized[0] == 1.0
    mean = edge_faithfulness(model, g, clean, corrupt, circuits[1:2], logit_diff, ctx, ablation="mean")
    assert torch.allclose(mean.values[0], ablated, atol=1e-5)
    scores = edge_scores(model, clean, corrupt, logit_diff, ctx)
    curve = faithfulness_curve(model, scores, clean, corrupt, logit_diff, ctx, fractions=(0.1, 0.5, 1.0))
    assert curve["requested"] == [8, 41, 82] and curve["kept"][-1] == 82 and abs(curve["normalized"][-1] - 1) < 1e-6
    ys = [0.0, *curve["normalized"]]
    assert abs(curve["area"] - (0.1 * ys[1] / 2 + 0.4 * (ys[1] + ys[2]) / 2 + 0.5 * (ys[2] + ys[3]) / 2)) < 1e-9
    with pytest.raises(InterpError, match="increasing fractions"):
        faithfulness_curve(model, scores, clean, corrupt, logit_diff, ctx, fractions=(0.5, 0.1))
    circuit = to_circuit(scores, g.mask([("input", "kv.0.1.k"), ("head.0.2", "logits")]), {"method": "eap"})
    assert set(circuit.nodes) == {"input", "kv.0.1", "head.0.2"} and len(circuit.edges) == 2


def test_on_a_model_made_linear_eap_equals_exact_edge_patching(tiny_llama):
    """Queries and keys zeroed (uniform attention), the MLP's activation a constant 1 (down(up(x))), norms only their
    gains: every edge acts linearly, so each edge's score is exactly the effect of patching it alone."""
    import copy

    import interp

    hf = copy.deepcopy(tiny_llama.hf)
    for layer in hf.model.layers:
        layer.self_attn.q_proj.weight.data.zero_()
        layer.self_attn.k_proj.weight.data.zero_()
        layer.mlp.act_fn = torch.nn.Module()
        layer.mlp.act_fn.forward = torch.ones_like
    for norm in [hf.model.norm] + [n for layer in hf.model.layers for n in (layer.input_layernorm, layer.post_attention_layernorm)]:
        norm.forward = (lambda module: lambda x: x * module.weight)(norm)
    model = interp.Model("tiny-llama-linear", hf, tiny_llama.tokenizer, backend="torch")
    tokens, clean_run, corrupt_run, ctx = ioi_runs(model, 3, 1)
    scores = edge_scores(model, tokens.clean, tokens.corrupt, logit_diff, ctx)
    g = scores.graph
    edges = g.valid.nonzero().tolist()
    masks = torch.zeros(len(edges), *g.valid.shape, dtype=torch.bool)
    for k, (i, j) in enumerate(edges):
        masks[k, i, j] = True
    src = source_writes(model, tokens.corrupt)
    patched = logit_diff(edge_patched_logits(model, g, tokens.clean, src, masks), ctx.rows(3 * len(edges)))
    exact = (patched.view(len(edges), 3) - logit_diff(clean_run.logits[:, -1], ctx)).mean(1)
    estimate = torch.tensor([float(scores.scores[i, j]) for i, j in edges])
    assert exact.abs().max() > 0.01 and torch.allclose(exact, estimate, atol=1e-6), (exact - estimate).abs().max()
    ig = edge_scores(model, tokens.clean, tokens.corrupt, logit_diff, ctx, method="eap-ig", ig_steps=3)
    assert torch.allclose(ig.scores, scores.scores, atol=1e-5)  # constant gradients: the path changes nothing


def test_scores_are_the_same_for_any_memory_budget(ioi):
    from interp.circuits.eap import prompts_per_pass, _receiver_reads

    model, clean, corrupt, ctx = ioi
    whole = edge_scores(model, clean, corrupt, logit_diff, ctx, method="eap-ig", ig_steps=2)
    n_reads = len(_receiver_reads(model)) + len(whole.graph.senders)
    budget = 10 ** 4
    while True:  # the smallest budget that holds a pass: one prompt at a time
        try:
            assert prompts_per_pass(model, clean, n_reads, budget) == 1
            break
        except InterpError:
            budget = int(budget * 1.1)
    one = edge_scores(model, clean, corrupt, logit_diff, ctx, method="eap-ig", ig_steps=2, max_memory=budget)
    assert torch.allclose(one.scores, whole.scores, atol=1e-6)
    with pytest.raises(InterpError, match="memory budget"):
        edge_scores(model, clean, corrupt, logit_diff, ctx, max_memory=1000)


def test_cli_discover_writes_a_circuit_that_circuit_faithfulness_measures_again(interp_cli, tmp_path):
    from interp.results import load_run

    run = interp_cli("circuit", "discover", "--model", "tiny-llama", "--backend", "torch", "--method", "eap-ig",
                     "--n-prompts", "4", "--edges", "15", "--ablation", "mean", "--out", tmp_path / "d")
    assert run.returncode == 0, run.stderr
    circuit = Circuit.load(tmp_path / "d")
    built = load_run(tmp_path / "d").manifest["faithfulness"]
    assert len(circuit.edges) == built["edges"] <= 15 and circuit.provenance["ablation"] == "mean"
    assert {parse_node(n).kind for n in circuit.nodes} <= {"input", "head", "kv", "mlp"}
    again = interp_cli("circuit", "faithfulness", tmp_path / "d", "--model", "tiny-llama", "--backend", "torch",
                       "--n-prompts", "4", "--out", tmp_path / "f")
    assert again.returncode == 0, again.stderr
    measured = load_run(tmp_path / "f").manifest["faithfulness"]
    for key in ("full", "circuit", "empty"):
        assert abs(measured[key] - built[key]) < 1e-5, (key, measured, built)
    for args, words in ((["--method", "acdc"], "unknown --method 'acdc'"), (["--edges", "0"], "--edges must be at least 1"),
                        (["--fractions", "0.5,0.1"], "increasing fractions"), (["--ablation", "zero"], "unknown --ablation"),
                        (["--ig-steps", "0"], "--ig-steps must be at least 1")):
        bad = interp_cli("circuit", "discover", "--model", "tiny-llama", *args, "--out", tmp_path / "bad")
        assert bad.returncode == 2 and words in bad.stderr and "Traceback" not in bad.stderr, bad.stderr


@pytest.mark.parametrize("row", [None, "gpt2"])
def test_exact_edges_equal_path_patching_with_frozen_mlps(tiny_llama, row):
    """Path patching (`interp.circuits.path_patching`, MLPs frozen) of a sender head into the logits is exact patching
    of the single edge head -> logits; into a later head (multi-head attention: its own key and value heads) it is
    exact patching of the edges into that head's query, key and value together. EAP estimates both."""
    from interp.circuits.path_patching import path_patching
    from interp.prompts import TokenizedPrompts

    if row is None:
        model = tiny_llama
        tokens, _, _, ctx = ioi_runs(model, 3, 1)
    else:
        model, clean, corrupt, ctx = _family(row)
        tokens = TokenizedPrompts(clean, corrupt, ctx.answer, ctx.wrong, [])
    g = edge_graph(model)
    src = source_writes(model, tokens.corrupt)
    scores = edge_scores(model, tokens.clean, tokens.corrupt, logit_diff, ctx)
    base = logit_diff(model.run(tokens.clean).logits[:, -1], ctx)
    to_logits = path_patching(model, tokens, "logits", metric=logit_diff, freeze_mlps=True)
    senders = [(0, h) for h in range(model.n_heads)]
    masks = torch.stack([g.mask([(f"head.{a}.{b}", "logits")]) for a, b in senders])
    exact = logit_diff(edge_patched_logits(model, g, tokens.clean, src, masks), ctx.rows(3 * len(senders))).view(-1, 3)
    assert torch.allclose(exact.T, to_logits.values[:, 0], atol=1e-5)
    assert torch.allclose((exact - base).mean(1), torch.stack([scores.scores[m].sum() for m in masks]), atol=0.05)
    if row is None:
        return
    receiver = (model.n_layers - 1, 1)
    into_head = path_patching(model, tokens, [receiver], senders=senders, metric=logit_diff, freeze_mlps=True)
    inputs = [f"head.{receiver[0]}.1.q", f"kv.{receiver[0]}.1.k", f"kv.{receiver[0]}.1.v"]
    masks = torch.stack([g.mask([(f"head.{a}.{b}", r) for r in inputs]) for a, b in senders])
    exact = logit_diff(edge_patched_logits(model, g, tokens.clean, src, masks), ctx.rows(3 * len(senders))).view(-1, 3)
    assert torch.allclose(exact.T, into_head.values[:, 0], atol=1e-5)
