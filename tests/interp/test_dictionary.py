"""Sparse dictionaries: closed forms, SAELens's on-disk layout both ways, and refusals."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from interp.dictionary import Dictionary, load_dictionary, save_dictionary
from interp.errors import InterpError

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "saelens"
SAELENS_WRITTEN = sorted(p.name for p in FIXTURE.iterdir() if (p / "cfg.json").is_file())


def rand_dict(arch="relu", d_in=64, d_sae=32, d_out=None, seed=0, **options) -> Dictionary:
    g = torch.Generator().manual_seed(seed)
    d_out = d_out or d_in
    r = lambda *s: torch.randn(s, generator=g)
    return Dictionary(arch, r(d_in, d_sae) / 8, r(d_sae) * 0.2, r(d_sae, d_out) / 6, r(d_out) * 0.2,
                      threshold=r(d_sae).abs() * 0.3 if arch == "jumprelu" else None,
                      site=options.pop("site", "resid_post.1"), model_name="tiny-llama", **options)


def test_the_fixture_was_written_by_saelens():
    assert {"standard", "topk", "jumprelu", "transcoder", "jumprelu_skip_transcoder"} <= set(SAELENS_WRITTEN)
    assert json.loads((FIXTURE / "versions.json").read_text())["sae_lens"].startswith("6.")


@pytest.mark.parametrize("name", SAELENS_WRITTEN)
def test_saelens_fixture_gives_saelens_latents_and_outputs(name):
    d = load_dictionary(FIXTURE / name)
    ref = load_file(FIXTURE / name / "inputs_latents.safetensors")
    latents, recon = d.encode(ref["inputs"]), d(ref["inputs"])
    assert latents.shape == ref["latents"].shape and recon.shape == ref["recon"].shape
    assert (latents - ref["latents"]).abs().max() <= 1e-6
    assert (recon - ref["recon"]).abs().max() <= 1e-6
    assert torch.equal(latents != 0, ref["latents"] != 0)


def test_fixture_fields_map_to_interp_sites():
    tc = load_dictionary(FIXTURE / "jumprelu_skip_transcoder")
    assert (tc.arch, tc.site, tc.out_site, tc.is_transcoder) == ("jumprelu", "resid_mid.0", "mlp_out.0", True)
    assert tc.W_skip.shape == (64, 64) and tc.threshold.shape == (128,) and not tc.W_enc.requires_grad
    topk = load_dictionary(FIXTURE / "topk")
    assert (topk.arch, topk.k, topk.site, topk.out_site, topk.model_name) == ("topk", 8, "resid_mid.1", None, "tiny-llama")
    assert load_dictionary(FIXTURE / "jumprelu_hook_z").site == "head_out.1"
    std = load_dictionary(FIXTURE / "standard")
    assert (std.d_in, std.d_sae, std.d_out, std.apply_b_dec_to_input) == (64, 128, 64, True)


def test_closed_forms():
    x = torch.randn(3, 5, 64, generator=torch.Generator().manual_seed(7)) * 2
    d = rand_dict("relu", apply_b_dec_to_input=True)
    pre = (x - d.b_dec) @ d.W_enc + d.b_enc
    assert torch.allclose(d.encode(x), pre.clamp(min=0), atol=1e-6)
    assert torch.allclose(d(x), pre.clamp(min=0) @ d.W_dec + d.b_dec, atol=1e-6)

    d = rand_dict("jumprelu")
    pre = x @ d.W_enc + d.b_enc
    assert torch.allclose(d.encode(x), torch.where(pre > d.threshold, pre, 0.0).clamp(min=0), atol=1e-6)

    d = rand_dict("topk", k=4)
    lat = d.encode(x)
    pre = x @ d.W_enc + d.b_enc
    kth = pre.topk(4, dim=-1).values[..., -1:]
    assert torch.allclose(lat, torch.where(pre >= kth, pre, 0.0).clamp(min=0), atol=1e-6)
    assert ((lat != 0).sum(-1) <= 4).all()

    d = rand_dict("topk", k=4, rescale_acts_by_decoder_norm=True)
    norms = d.W_dec.norm(dim=-1)
    scaled = (x @ d.W_enc + d.b_enc) * norms
    kth = scaled.topk(4, dim=-1).values[..., -1:]
    lat = torch.where(scaled >= kth, scaled, 0.0).clamp(min=0)
    assert torch.allclose(d.encode(x), lat, atol=1e-6)
    assert torch.allclose(d(x), (lat / norms) @ d.W_dec + d.b_dec, atol=1e-5)


def test_normalisations_closed_form():
    x = torch.randn(4, 64, generator=torch.Generator().manual_seed(3)) * 5
    d = rand_dict("relu", normalize_activations="constant_norm_rescale", apply_b_dec_to_input=True)
    c = 8.0 / x.norm(dim=-1, keepdim=True)
    lat = ((x * c - d.b_dec) @ d.W_enc + d.b_enc).clamp(min=0)
    assert torch.allclose(d.encode(x), lat, atol=1e-6)
    assert torch.allclose(d(x), (lat @ d.W_dec + d.b_dec) / c, atol=1e-5)
    assert torch.allclose(d.decode(lat, x), d(x))

    d = rand_dict("relu", normalize_activations="layer_norm")
    mu, std = x.mean(-1, keepdim=True), x.std(-1, keepdim=True)
    lat = (((x - mu) / (std + 1e-5)) @ d.W_enc + d.b_enc).clamp(min=0)
    assert torch.allclose(d.encode(x), lat, atol=1e-6)
    assert torch.allclose(d(x), (lat @ d.W_dec + d.b_dec) * std + mu, atol=1e-5)
    with pytest.raises(InterpError, match="needs its input x"):
        d.decode(lat)


def test_transcoder_with_skip_closed_form():
    g = torch.Generator().manual_seed(5)
    base = rand_dict("relu", d_out=64, site="resid_mid.0")
    skip = torch.randn(64, 64, generator=g) / 8
    tc = Dictionary("relu", base.W_enc.data, base.b_enc.data, base.W_dec.data, base.b_dec.data, site="resid_mid.0",
                    out_site="mlp_out.0", W_skip=skip, normalize_activations="constant_norm_rescale")
    x = torch.randn(2, 3, 64, generator=g)
    lat = ((x * 8.0 / x.norm(dim=-1, keepdim=True)) @ tc.W_enc + tc.b_enc).clamp(min=0)
    assert torch.allclose(tc.encode(x), lat, atol=1e-6)
    assert torch.allclose(tc(x), lat @ tc.W_dec + tc.b_dec + x @ skip.T, atol=1e-5)  # no un-normalising, as SAELens


def test_head_out_dictionary_reads_heads_flattened():
    d = rand_dict("relu", site="head_out.1")
    z = torch.randn(2, 3, 4, 16)
    assert torch.equal(d.encode(z), d.encode(z.flatten(-2)))
    assert d(z).shape == z.shape and d.decode(d.encode(z)).shape == (2, 3, 64)


@pytest.mark.parametrize("options", [
    {"arch": "relu", "apply_b_dec_to_input": True, "normalize_activations": "layer_norm"},
    {"arch": "topk", "k": 3, "rescale_acts_by_decoder_norm": True, "site": "head_out.0"},
    {"arch": "jumprelu", "normalize_activations": "constant_norm_rescale", "site": "mlp_out.1"},
])
def test_save_load_round_trip(tmp_path, options):
    d = rand_dict(**options)
    save_dictionary(d, tmp_path / "d")
    cfg = json.loads((tmp_path / "d" / "cfg.json").read_text())
    assert {"architecture", "d_in", "d_sae", "apply_b_dec_to_input", "normalize_activations", "metadata"} <= set(cfg)
    assert sorted(load_file(tmp_path / "d" / "sae_weights.safetensors")) == sorted(
        ["W_enc", "b_enc", "W_dec", "b_dec"] + (["threshold"] if d.arch == "jumprelu" else []))
    back = load_dictionary(tmp_path / "d")
    for field in ("arch", "k", "site", "out_site", "apply_b_dec_to_input", "normalize_activations", "model_name",
                  "rescale_acts_by_decoder_norm"):
        assert getattr(back, field) == getattr(d, field), field
    for name, t in d.state_dict().items():
        assert torch.equal(back.state_dict()[name], t), name
    x = torch.randn(5, 4, 16) if d.site.startswith("head_out") else torch.randn(5, 64)
    assert torch.equal(back(x), d(x))


def test_saelens_fixture_round_trips_through_save(tmp_path):
    d = load_dictionary(FIXTURE / "jumprelu_skip_transcoder")
    save_dictionary(d, tmp_path / "again")
    assert json.loads((tmp_path / "again" / "cfg.json").read_text())["metadata"]["hook_name"] == "blocks.0.hook_mlp_in"
    back = load_dictionary(tmp_path / "again")
    ref = load_file(FIXTURE / "jumprelu_skip_transcoder" / "inputs_latents.safetensors")
    assert torch.equal(back(ref["inputs"]), d(ref["inputs"])) and back.out_site == "mlp_out.0"


def test_checks_against_the_model(tiny_llama, tmp_path):
    load_dictionary(FIXTURE / "standard", model=tiny_llama)
    load_dictionary(FIXTURE / "jumprelu_hook_z", model=tiny_llama)  # 4 heads x 16
    cases = {
        "other_model": ({"model_name": "google/gemma-3-270m"}, "trained on 'google/gemma-3-270m', not the loaded"),
        "wide": ({"d_in": 96}, "d_in is 96 but resid_post.1 of 'tiny-llama' is 64 wide"),
        "layer": ({"site": "resid_post.7"}, "out of range"),
    }
    for name, (change, message) in cases.items():
        d = rand_dict(d_in=change.get("d_in", 64), site=change.get("site", "resid_post.1"))
        d.model_name = change.get("model_name", "tiny-llama")
        save_dictionary(d, tmp_path / name)
        with pytest.raises(InterpError, match=message) as err:
            load_dictionary(tmp_path / name, model=tiny_llama)
        assert "\n" not in str(err.value)


def test_refusals(tmp_path):
    with pytest.raises(InterpError, match="no dictionary folder at .*nothing is downloaded"):
        load_dictionary(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InterpError, match="not a dictionary folder"):
        load_dictionary(tmp_path / "empty")
    for change, message in [
        ({"metadata": {"hook_name": "blocks.1.hook_attn_in"}}, "has no interp site"),
        ({"architecture": "gated"}, "'gated' is not supported"),
        ({"normalize_activations": "expected_average_only_in"}, "not applied at inference by SAELens 6"),
        ({"d_sae": 99}, "cfg.json says d_sae 99 but the weights have 128"),
    ]:
        folder = tmp_path / "bad"
        save_dictionary(load_dictionary(FIXTURE / "standard"), folder)
        cfg = json.loads((folder / "cfg.json").read_text())
        cfg.update(change)
        (folder / "cfg.json").write_text(json.dumps(cfg))
        with pytest.raises(InterpError, match=message) as err:
            load_dictionary(folder)
        assert "\n" not in str(err.value)
    with pytest.raises(InterpError, match="SAELens 6 has no TopK transcoder"):
        save_dictionary(rand_dict("topk", k=2, site="resid_mid.0", out_site="mlp_out.0"), tmp_path / "tk")


def test_gemma_scope_2_layout(tmp_path):
    """Gemma Scope 2's files (config.json + params.safetensors with lower-case names) load as JumpReLU."""
    d = rand_dict("jumprelu", site="resid_post.1")
    folder = tmp_path / "resid_post" / "layer_1_width_16k_l0_small"
    folder.mkdir(parents=True)
    from safetensors.torch import save_file
    save_file({"w_enc": d.W_enc.data, "b_enc": d.b_enc.data, "w_dec": d.W_dec.data, "b_dec": d.b_dec.data,
               "threshold": d.threshold.data}, folder / "params.safetensors")
    (folder / "config.json").write_text(json.dumps(
        {"architecture": "jump_relu", "model_name": "gemma-v3-270m-pt", "hf_hook_point_in": "model.layers.1.output"}))
    g = load_dictionary(folder)
    assert (g.arch, g.site, g.apply_b_dec_to_input, g.normalize_activations) == ("jumprelu", "resid_post.1", False, "none")
    x = torch.randn(3, 64)
    assert torch.equal(g.encode(x), d.encode(x))
    (folder / "config.json").write_text(json.dumps({"architecture": "jump_relu", "model_name": "gemma-v3-270m-pt",
        "hf_hook_point_in": "model.layers.1.pre_feedforward_layernorm.output",
        "hf_hook_point_out": "model.layers.1.post_feedforward_layernorm.output"}))
    t = load_dictionary(folder)  # a transcoder from what the MLP reads (its norm's output) to what it writes
    assert (t.site, t.out_site, t.is_transcoder) == ("mlp_in.1", "mlp_out.1", True)
