"""Latent pages (interp.circuits.latent_pages) and ``interp sae latents`` on the tiny random Llama.

Every statistic is checked against an independent computation: the latents encoded from the site's activations
(read without the splice) over all contexts at once, counted, sorted and histogrammed by brute force, and logit
effects through the HF modules themselves (final norm weight, lm_head, o_proj, down_proj).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from toy_dictionary import toy
from typer.testing import CliRunner

import interp.circuits.latent_pages as latent_pages_module
from interp.app.catalog import run_kind
from interp.circuits.corpus import load_corpus, token_contexts
from interp.circuits.latent_pages import PAD, hist_edges, latent_pages, latents_run
from interp.circuits.sae_cli import app
from interp.errors import InterpError
from interp.results import load_run

SAELENS = Path(__file__).resolve().parents[1] / "fixtures" / "saelens"  # dictionaries SAELens wrote for tiny-llama

TOP, WINDOW = 4, 3


@pytest.fixture(scope="module")
def contexts(tiny_llama):
    return token_contexts(list(load_corpus("builtin")["text"]), tiny_llama.tokenizer, 24, 10)


def _brute(model, d, tokens):
    """The latents [n, pos, d_sae] encoded from the site read without any splice, all contexts in one forward."""
    site = d.site
    x = model.run(tokens, read=[site], backend="torch").acts[site]
    return d.encode(x.flatten(-2) if x.shape[-1] * x.shape[-2] == d.d_in and x.ndim == 4 else x).float()


def test_density_activations_and_histogram_match_brute_force(tiny_llama, contexts):
    d = toy(64, 64, "resid_post.1", d_sae=48)
    d.b_enc[0] = -1e4  # latent 0 never fires
    tensors, notes = latent_pages(tiny_llama, d, contexts, top=TOP, window=WINDOW, batch=3, backend="torch")
    assert notes == []
    z = _brute(tiny_llama, d, contexts)[:, 1:].reshape(-1, 48)  # the first position of every context is skipped
    on = z > 0
    assert torch.allclose(tensors["latents/density"], on.float().mean(0))
    assert torch.allclose(tensors["latents/max"], z.max(0).values, atol=1e-5)
    mean = torch.where(on, z, 0).sum(0) / on.sum(0).clamp_min(1)
    assert torch.allclose(tensors["latents/mean"], mean, atol=1e-5)
    edges = hist_edges().numpy()
    for j in (1, 5, 47):
        values = np.clip(z[on[:, j], j].double().numpy(), edges[0], edges[-1] * 0.999)
        expected, _ = np.histogram(values, bins=edges)
        assert np.array_equal(tensors["latents/hist"][j].numpy(), expected), j
    assert tensors["latents/density"][0] == 0 and tensors["latents/hist"][0].sum() == 0
    assert bool((tensors["latents/top_context"][0] == PAD).all()) and bool((tensors["latents/window_ids"][0] == PAD).all())


def test_top_contexts_and_windows_match_a_brute_force_sort(tiny_llama, contexts):
    d = toy(64, 64, "resid_post.0", d_sae=32, seed=3)
    tensors, _ = latent_pages(tiny_llama, d, contexts, top=TOP, window=WINDOW, batch=4, backend="torch")
    z = _brute(tiny_llama, d, contexts)
    peak, where = z[:, 1:].max(1)  # [n, d_sae]
    n_pos = contexts.shape[1]
    for j in range(32):
        order = peak[:, j].argsort(descending=True)[:TOP]
        fired = peak[order, j] > 0
        got = tensors["latents/top_context"][j]
        assert torch.equal(got[fired], order[fired].int()) and bool((got[~fired] == PAD).all()), j
        assert torch.allclose(tensors["latents/top_activation"][j][fired], peak[order, j][fired])
        for rank in range(int(fired.sum())):
            c, p = int(order[rank]), int(where[order[rank], j]) + 1
            assert int(tensors["latents/top_position"][j, rank]) == p
            for i, offset in enumerate(range(-WINDOW, WINDOW + 1)):
                inside = 0 <= p + offset < n_pos
                token = int(tensors["latents/window_ids"][j, rank, i])
                assert token == (int(contexts[c, p + offset]) if inside else PAD)
                act = float(tensors["latents/window_acts"][j, rank, i])
                assert act == pytest.approx(float(z[c, p + offset, j]) if inside else 0.0, abs=1e-5)


def _effects(tensors, j, k=10):
    return tensors["latents/promoted_ids"][j, :k], tensors["latents/suppressed_ids"][j, :k]


def test_logit_effects_are_the_decoder_row_through_the_final_norm_gain_and_unembedding(tiny_llama, contexts):
    hf = tiny_llama.hf
    d = toy(64, 64, "resid_post.1", d_sae=16, seed=1)
    tensors, _ = latent_pages(tiny_llama, d, contexts[:2], top=2, window=1, k=7, backend="torch")
    effects = (d.W_dec * hf.model.norm.weight.float()) @ hf.lm_head.weight.float().T  # [d_sae, vocab]
    up, down = effects.topk(7, dim=-1), effects.topk(7, dim=-1, largest=False)
    assert torch.equal(tensors["latents/promoted_ids"], up.indices)
    assert torch.allclose(tensors["latents/promoted"], up.values, atol=1e-5)
    assert torch.equal(tensors["latents/suppressed_ids"], down.indices)
    assert torch.allclose(tensors["latents/suppressed"], down.values, atol=1e-5)


@pytest.mark.parametrize("site, width, weight", [("head_out.1", 64, "o_proj"), ("mlp_act.0", 128, "down_proj")])
def test_logit_effects_map_heads_and_neurons_through_their_output_weights(tiny_llama, contexts, site, width, weight):
    hf = tiny_llama.hf
    d = toy(width, width, site, d_sae=12, seed=2)
    tensors, notes = latent_pages(tiny_llama, d, contexts[:3], top=2, window=1, backend="torch")
    assert notes == []
    layer = hf.model.layers[int(site.split(".")[1])]
    out = (layer.self_attn.o_proj if weight == "o_proj" else layer.mlp.down_proj).weight.float()  # [d_model, width]
    effects = ((d.W_dec @ out.T) * hf.model.norm.weight.float()) @ hf.lm_head.weight.float().T
    assert torch.equal(tensors["latents/promoted_ids"], effects.topk(10, dim=-1).indices)
    z = _brute(tiny_llama, d, contexts[:3])[:, 1:].reshape(-1, 12)
    assert torch.allclose(tensors["latents/density"], (z > 0).float().mean(0))


def test_a_site_that_writes_no_residual_gives_a_note_and_no_logit_effects(tiny_llama, contexts):
    d = toy(64, 64, "mlp_in.1", d_sae=8)
    tensors, notes = latent_pages(tiny_llama, d, contexts[:2], top=2, window=1, backend="torch")
    assert "latents/promoted" not in tensors and len(notes) == 1 and "mlp_in.1" in notes[0]


@pytest.mark.parametrize("backend", ["lens", "nnsight"])
def test_the_latents_are_the_splices_on_every_backend(tiny_llama, contexts, backend):
    d = toy(64, 64, "resid_post.1", d_sae=8)
    name = tiny_llama.attach(d) + ".latents"
    try:
        spliced = tiny_llama.run(contexts[:3], read=[name], backend=backend).acts[name]
    finally:
        tiny_llama.detach_dictionary("resid_post.1")
    assert torch.allclose(latent_pages_module.read_latents(tiny_llama, d, contexts[:3], backend), spliced, atol=1e-5)


def test_run_uses_the_corpus_once_and_names_every_token_it_shows(tiny_llama):
    d = toy(64, 64, "resid_post.1", d_sae=8)
    run = latents_run(tiny_llama, d, tokens=10**7, context=32, top=3, window=2, backend="torch")
    assert run.manifest["parameters"]["tokens_used"] < 10**7 and "used once" in run.manifest["notes"][1]["text"]
    ids = torch.cat([run.scores["latents/window_ids"].flatten(), run.scores["latents/promoted_ids"].flatten()])
    strings = run.manifest["token_strings"]
    assert all(str(i) in strings for i in ids[ids >= 0].tolist())
    assert strings[str(int(ids[ids >= 0][0]))] == tiny_llama.tokenizer.decode([int(ids[ids >= 0][0])])
    assert run_kind(run) == "latents"


def test_cli_writes_a_run_folder(tmp_path, interp_cli, tiny_llama):
    out = tmp_path / "latents"
    proc = interp_cli("sae", "latents", "--model", "tiny-llama", "--backend", "torch", "--dictionary", SAELENS / "topk",
                      "--tokens", "2k", "--context", "32", "--top", "5", "--window", "4", "--out", out, "--json")
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    manifest = json.loads(proc.stdout)
    assert manifest["dictionary"]["site"] == "resid_mid.1" and manifest["parameters"]["contexts"] == 63
    run = load_run(out)
    assert run.scores["latents/window_ids"].shape == (128, 5, 9) and run_kind(run) == "latents"
    again = interp_cli("sae", "latents", "--model", "tiny-llama", "--dictionary", SAELENS / "topk", "--out", out)
    assert again.returncode == 2 and len(again.stderr.strip().splitlines()) == 1 and "--force" in again.stderr


@pytest.mark.parametrize("args, expected", [
    (["--dictionary", "/nonexistent"], "no dictionary folder"),
    (["--dictionary", str(SAELENS / "topk"), "--tokens", "lots"], "--tokens must be a positive count"),
    (["--dictionary", str(SAELENS / "topk"), "--top", "0"], "--top must be at least 1"),
    (["--dictionary", str(SAELENS / "topk"), "--context", "1"], "--context must be at least 2"),
    (["--dictionary", str(SAELENS / "topk"), "--corpus", "/nonexistent.txt"], "does not exist"),
    (["--dictionary", str(SAELENS / "topk"), "--model", "tiny-gemma3"], "trained on 'tiny-llama'"),
])
def test_bad_input_is_a_one_line_error_and_writes_nothing(args, expected, tmp_path):
    model = [] if "--model" in args else ["--model", "tiny-llama"]
    result = CliRunner().invoke(app, ["latents", *model, *args, "--out", str(tmp_path / "o")])
    assert isinstance(result.exception, InterpError), result.output
    message = str(result.exception)
    assert expected in message and "\n" not in message
    assert not (tmp_path / "o").exists()


def test_ctrl_c_leaves_no_folder(tmp_path, monkeypatch):
    calls = []
    real = latent_pages_module.read_latents

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(latent_pages_module, "read_latents", interrupted)
    result = CliRunner().invoke(app, ["latents", "--model", "tiny-llama", "--backend", "torch", "--dictionary",
                                      str(SAELENS / "topk"), "--tokens", "2k", "--context", "32",
                                      "--out", str(tmp_path / "o")])
    assert result.exit_code == 130 and "nothing was written" in result.output
    assert not (tmp_path / "o").exists()
