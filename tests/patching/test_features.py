"""Feature effects on spliced dictionaries (`interp.patching.features`): feature AtP equals finite differences of
the metric along each latent's patch; batched exact patching equals one patch per forward; the error node's exact
effect equals patching the error term by hand; backends agree; bad requests are one-line errors."""

from __future__ import annotations

import pytest
import torch

from interp import InterpError, Replace
from interp.metrics import MetricContext, logit_diff
from interp.patching.features import feature_effects
from toy_dictionary import TOY_SITES as SITES, toy



def test_feature_atp_equals_finite_differences(toy_spliced):
    model, tokens, ctx = toy_spliced
    effects = feature_effects(model, tokens.corrupt, SITES, tokens.clean, logit_diff, ctx, methods=("atp",))["atp"]
    base_metric = logit_diff(model.run(tokens.corrupt).logits[:, -1], ctx)
    names = [f"sae.{s}.latents" for s in SITES]
    with torch.no_grad():
        src = model.run(tokens.clean, read=names).acts
        base = model.run(tokens.corrupt, read=names).acts
    eps = 1e-3
    checked = 0
    for name in names:
        moved = (src[name] - base[name]).abs().sum((0, 1))
        for unit in moved.topk(3).indices.tolist():  # latents the patch really moves
            value = base[name][..., unit] + eps * (src[name][..., unit] - base[name][..., unit])
            with torch.no_grad():
                nudged = model.run(tokens.corrupt, [Replace(name, value, index=(slice(None), slice(None), unit))])
            finite = (logit_diff(nudged.logits[:, -1], ctx) - base_metric) / eps
            estimate = effects[name][:, unit] - base_metric
            assert torch.allclose(finite, estimate, rtol=2e-2, atol=2e-3), (name, unit, finite, estimate)
            checked += 1
    assert checked == 6


def test_batched_exact_patching_equals_one_patch_per_forward(toy_spliced):
    model, tokens, ctx = toy_spliced
    units = {"resid_post.0": [0, 5, 11, 47], "mlp_out.1": [2, 3]}
    exact = feature_effects(model, tokens.corrupt, SITES, tokens.clean, logit_diff, ctx, methods=("activation",),
                            latents=units)["activation"]
    with torch.no_grad():
        src = model.run(tokens.clean, read=[f"sae.{s}.{p}" for s in SITES for p in ("latents", "error")]).acts
        for site, chosen in units.items():
            name = f"sae.{site}.latents"
            assert torch.isnan(exact[name]).sum() == 3 * (48 - len(chosen))
            for unit in chosen:
                logits = model.run(tokens.corrupt, [Replace(name, src[name][..., unit],
                                                            index=(slice(None), slice(None), unit))]).logits
                assert torch.allclose(exact[name][:, unit], logit_diff(logits[:, -1], ctx), atol=1e-5)
            err = f"sae.{site}.error"
            logits = model.run(tokens.corrupt, [Replace(err, src[err])]).logits
            assert torch.allclose(exact[err], logit_diff(logits[:, -1], ctx), atol=1e-6)
    with pytest.raises(InterpError, match="one latent patch"):  # a budget smaller than one patch
        feature_effects(model, tokens.corrupt, SITES, tokens.clean, logit_diff, ctx, methods=("activation",),
                        latents=units, max_memory=1)


def test_backends_agree_and_relp_runs(toy_spliced):
    model, tokens, ctx = toy_spliced
    ours = {b: feature_effects(model, tokens.corrupt, SITES, tokens.clean, logit_diff, ctx, methods=("atp",))
            for b in ("torch",)}
    for backend in ("nnsight", "lens"):
        model.backend_name, saved = backend, model.backend_name
        try:
            theirs = feature_effects(model, tokens.corrupt, SITES, tokens.clean, logit_diff, ctx, methods=("atp",))
        finally:
            model.backend_name = saved
        for name, value in ours["torch"]["atp"].items():
            assert torch.allclose(value, theirs["atp"][name], atol=1e-4), (backend, name)
    relp = feature_effects(model, tokens.corrupt, SITES, tokens.clean, logit_diff, ctx, methods=("relp",))["relp"]
    assert all(torch.isfinite(v).all() for v in relp.values())


def test_bad_requests_are_one_line_errors(toy_spliced):
    model, tokens, ctx = toy_spliced
    with pytest.raises(InterpError, match="no dictionary is attached at resid_pre.1"):
        feature_effects(model, tokens.corrupt, ["resid_pre.1"], tokens.clean, logit_diff, ctx)
    with pytest.raises(InterpError, match="unknown method 'ig'"):
        feature_effects(model, tokens.corrupt, SITES, tokens.clean, logit_diff, ctx, methods=("ig",))
    with pytest.raises(InterpError, match="latents of resid_post.0 must lie in 0..47"):
        feature_effects(model, tokens.corrupt, SITES, tokens.clean, logit_diff, ctx, methods=("activation",),
                        latents={"resid_post.0": [48]})


def test_a_latent_decoder_row_steers_like_adding_to_the_latent(toy_spliced, tmp_path):
    from interp import Add
    from interp.steering.vectors import VectorSet

    model, tokens, _ = toy_spliced
    for site in SITES:
        d = model.dictionaries[site]
        vectors = VectorSet.from_latent(d, 7, model.name)
        loaded = VectorSet.load(vectors.save(tmp_path / site))
        layer = loaded.layers[0]
        steered = model.run(tokens.clean, [Add(f"{loaded.kind}.{layer}", loaded.vector(layer), coeff=3.0)]).logits
        one_hot = torch.zeros(d.d_sae)
        one_hot[7] = 1.0
        by_latent = model.run(tokens.clean, [Add(f"sae.{site}.latents", one_hot, coeff=3.0)]).logits
        assert (steered - by_latent).abs().max() <= 1e-4 and (steered - model.run(tokens.clean).logits).abs().max() > 1e-3
    with pytest.raises(InterpError, match="latent 48 is out of range"):
        VectorSet.from_latent(model.dictionaries[SITES[0]], 48)


def test_feature_run_writes_a_run_folder_with_the_effects(tiny_llama, tmp_path):
    from interp.patching.features_run import feature_run
    from interp.results import load_run
    from interp.tasks import load_prompt_set

    prompts = load_prompt_set("ioi", tiny_llama.tokenizer, n=3, seed=1)
    dicts = [toy(tiny_llama.d_model, tiny_llama.d_model, s, d_sae=48, seed=i) for i, s in enumerate(SITES)]
    run = feature_run(tiny_llama, prompts, dicts, top_k=5)
    assert not tiny_llama.dictionaries  # detached again
    run.save(tmp_path / "run")
    loaded = load_run(tmp_path / "run")
    assert set(loaded.manifest["faithfulness"]["atp"]) == set(SITES)
    for site in SITES:
        top = loaded.scores[f"activation/sae.{site}.top"]
        assert top.shape == (5,) and torch.isfinite(top).all()
        labels = [int(x) for x in loaded.manifest["tensors"][f"activation/sae.{site}.top"]["labels"]["latent"]]
        atp = loaded.scores[f"atp/sae.{site}.latents"]
        base = loaded.manifest["baselines"]["corrupt"]["mean"]
        assert set(labels) == set((atp - base).abs().topk(5).indices.tolist())  # the top 5 by |AtP| were patched
        for d in dicts:
            tiny_llama.attach(d)
        tokens = prompts.tokenize(tiny_llama.tokenizer)
        with torch.no_grad():
            ctx = MetricContext(tokens.answer, tokens.wrong, tiny_llama.run(tokens.clean).logits[:, -1],
                                tiny_llama.run(tokens.corrupt).logits[:, -1])
        exact = feature_effects(tiny_llama, tokens.corrupt, [site], tokens.clean, logit_diff, ctx, methods=("activation",),
                                latents={site: labels})["activation"][f"sae.{site}.latents"]
        tiny_llama.dictionaries.clear()
        assert torch.allclose(top, exact[:, labels].mean(0), atol=1e-6)
    with pytest.raises(InterpError, match="--top-k must be 0"):
        feature_run(tiny_llama, prompts, dicts, top_k=-1)


def test_cli_features_effects_and_steer_latent(interp_cli, tmp_path):
    from pathlib import Path

    from interp.results import load_run
    from interp.steering.vectors import VectorSet

    fixtures = Path(__file__).resolve().parents[1] / "fixtures" / "saelens"
    run = interp_cli("features", "effects", "--model", "tiny-llama", "--backend", "torch", "--dictionary",
                     f"{fixtures / 'standard'},{fixtures / 'transcoder'}", "--n-prompts", "3", "--top-k", "4",
                     "--out", tmp_path / "fe")
    assert run.returncode == 0, run.stderr
    loaded = load_run(tmp_path / "fe")
    assert [d["site"] for d in loaded.manifest["dictionaries"]] == ["resid_post.1", "resid_mid.1"]
    assert loaded.manifest["dictionaries"][1]["transcoder_out"] == "mlp_out.1"
    assert loaded.scores["activation/sae.resid_post.1.top"].shape == (4,) and "atp" in loaded.manifest["faithfulness"]
    vec = interp_cli("steer", "latent", "--dictionary", fixtures / "standard", "--latent", "3", "--out", tmp_path / "v")
    assert vec.returncode == 0, vec.stderr
    vectors = VectorSet.load(tmp_path / "v")
    assert vectors.kind == "resid_post" and vectors.layers == [1] and vectors.meta["latent"] == 3
    for args, words in ((["features", "effects", "--model", "tiny-llama", "--dictionary", tmp_path / "nope"], "nope"),
                        (["features", "effects", "--model", "tiny-llama", "--dictionary", fixtures / "standard",
                          "--method", "ig"], "unknown method 'ig'"),
                        (["steer", "latent", "--dictionary", fixtures / "standard", "--latent", "999", "--out",
                          tmp_path / "w"], "latent 999 is out of range")):
        bad = interp_cli(*args, "--out", tmp_path / "bad") if args[0] == "features" else interp_cli(*args)
        assert bad.returncode == 2 and words in bad.stderr and "Traceback" not in bad.stderr, bad.stderr


def test_feature_edges_equal_finite_differences_through_the_downstream_latent(toy_spliced):
    from interp.circuits.feature_edges import feature_edges

    model, tokens, ctx = toy_spliced
    up, down = SITES  # resid_post.0 -> mlp_out.1
    run = model.run(tokens.corrupt, read=[f"sae.{down}.latents"], grad=True)
    g = torch.autograd.grad(logit_diff(run.logits[:, -1], ctx).sum(), [run.acts[f"sae.{down}.latents"]])[0]
    chosen = (g * run.acts[f"sae.{down}.latents"]).detach().abs().sum((0, 1)).topk(3).indices.tolist()
    edges = feature_edges(model, tokens.corrupt, tokens.clean, up, down, logit_diff, ctx, chosen)
    assert edges.shape == (3, 3, 48 + 1) and edges.abs().sum() > 0
    with torch.no_grad():
        src = model.run(tokens.clean, read=[f"sae.{up}.latents", f"sae.{up}.error"]).acts
        base = model.run(tokens.corrupt, read=[f"sae.{up}.latents", f"sae.{up}.error"]).acts
    saved = model.dictionaries.pop(down)

    def through(j, edits):  # sum over positions of g_j * d_j, the downstream encoder run here on the site
        with torch.no_grad():
            x = model.run(tokens.corrupt, edits, read=[down]).acts[down]
        return (g[..., j].detach() * saved.encode(x)[..., j]).sum(1)

    eps = 1e-3
    try:
        checked = 0
        for row, j in enumerate(chosen):
            t0 = through(j, [])
            moved = (src[f"sae.{up}.latents"] - base[f"sae.{up}.latents"]).abs().sum((0, 1))
            for unit in moved.topk(2).indices.tolist():
                name = f"sae.{up}.latents"
                value = base[name][..., unit] + eps * (src[name][..., unit] - base[name][..., unit])
                finite = (through(j, [Replace(name, value, index=(slice(None), slice(None), unit))]) - t0) / eps
                assert torch.allclose(finite, edges[:, row, unit], rtol=3e-2, atol=1e-3), (j, unit, finite, edges[:, row, unit])
                checked += 1
            name = f"sae.{up}.error"
            value = base[name] + eps * (src[name] - base[name])
            finite = (through(j, [Replace(name, value)]) - t0) / eps
            assert torch.allclose(finite, edges[:, row, -1], rtol=3e-2, atol=1e-3)
        assert checked == 6
    finally:
        model.dictionaries[down] = saved
    with pytest.raises(InterpError, match="edges run forward"):
        feature_edges(model, tokens.corrupt, tokens.clean, down, up, logit_diff, ctx, [0])
