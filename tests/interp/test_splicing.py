"""Dictionaries spliced as sites (`interp.splicing`): with the error term the forward is unchanged; reads of
latents/error/recon equal the dictionary's own encode/decode; a latent edit equals the hand-written edit (a
plain torch hook on the HF module); gradients at latents and the error follow the node convention; a transcoder
replaces the MLP's output; every backend agrees; bad attachments are one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from interp import Ablate, Add, InterpError, Replace
from toy_dictionary import toy

SITE, LAYER = "resid_post.0", 0


@pytest.fixture
def spliced(tiny_llama):
    d = toy(tiny_llama.d_model, tiny_llama.d_model, SITE)
    tiny_llama.attach(d)
    yield tiny_llama, d
    tiny_llama.dictionaries.clear()


@pytest.fixture(scope="module")
def tokens(tiny_llama):
    return tiny_llama.to_tokens(["When Mary and John went to the store, John gave", "The cat sat on the mat and then"][:1])


def hooked_logits(model, edit):
    """Logits with ``edit(resid_post)`` applied by a plain forward hook on the HF decoder layer (the reference)."""
    layer = model.hf.model.layers[LAYER]

    def hook(module, args, output):
        if isinstance(output, tuple):
            return (edit(output[0]),) + tuple(output[1:])
        return edit(output)

    handle = layer.register_forward_hook(hook)
    try:
        return model.hf(model._tokens).logits
    finally:
        handle.remove()


@pytest.mark.parametrize("backend", ["torch", "nnsight", "lens"])
def test_reads_leave_the_forward_unchanged_and_equal_the_dictionary(spliced, tokens, backend):
    model, d = spliced
    plain = model.run(tokens, read=[SITE], backend=backend)
    out = model.run(tokens, read=[SITE, "sae.resid_post.0.latents", "sae.resid_post.0.error", "sae.resid_post.0.recon"],
                    backend=backend)
    x = plain.acts[SITE]
    assert torch.equal(out.logits, plain.logits) or (out.logits - plain.logits).abs().max() <= 1e-5
    assert torch.allclose(out.acts["sae.resid_post.0.latents"], d.encode(x), atol=1e-6)
    assert torch.allclose(out.acts["sae.resid_post.0.recon"], d.decode(d.encode(x)), atol=1e-6)
    assert torch.allclose(out.acts["sae.resid_post.0.error"] + out.acts["sae.resid_post.0.recon"], x, atol=1e-5)
    only_latents = model.run(tokens, read=["sae.resid_post.0.latents"], backend=backend)
    assert torch.equal(only_latents.logits, plain.logits)  # no grad, nothing edited: x itself flows on


@pytest.mark.parametrize("backend", ["torch", "nnsight", "lens"])
def test_latent_edits_equal_the_hand_written_edit(spliced, tokens, backend):
    model, d = spliced
    model._tokens = tokens
    x_clean = model.run(tokens, read=[SITE], backend="torch").acts[SITE]
    error = x_clean - d.decode(d.encode(x_clean))
    vec = torch.zeros(d.d_sae)
    vec[3], vec[7] = 2.0, -1.0

    def edited(fn):
        return lambda x: d.decode(fn(d.encode(x))) + error

    cases = [
        (Add("sae.resid_post.0.latents", vec, coeff=1.5), edited(lambda z: z + 1.5 * vec)),
        (Replace("sae.resid_post.0.latents", torch.tensor(4.0), index=(slice(None), slice(None), 5)),
         edited(lambda z: torch.cat([z[..., :5], torch.full_like(z[..., :1], 4.0), z[..., 6:]], -1))),
        (Ablate("sae.resid_post.0.latents"), edited(lambda z: torch.zeros_like(z))),
        (Ablate("sae.resid_post.0.error"), lambda x: d.decode(d.encode(x))),
    ]
    for iv, reference in cases:
        ours = model.run(tokens, [iv], backend=backend).logits
        assert (ours - hooked_logits(model, reference)).abs().max() <= 1e-4, iv
        assert (ours - model.run(tokens).logits).abs().max() > 1e-3  # the edit did something


def test_gradients_at_latents_and_error_follow_the_node_convention(spliced, tokens):
    model, d = spliced
    out = model.run(tokens, read=[SITE, "resid_pre.0", "sae.resid_post.0.latents", "sae.resid_post.0.error"], grad=True,
                    backend="torch")
    metric = out.logits[:, -1].logsumexp(-1).sum()
    g_site, g_in, g_lat, g_err = torch.autograd.grad(
        metric, [out.acts[SITE], out.acts["resid_pre.0"], out.acts["sae.resid_post.0.latents"],
                 out.acts["sae.resid_post.0.error"]])
    plain = model.run(tokens, read=["resid_pre.0", SITE], grad=True, backend="torch")
    p_metric = plain.logits[:, -1].logsumexp(-1).sum()
    p_in, p_site = torch.autograd.grad(p_metric, [plain.acts["resid_pre.0"], plain.acts[SITE]])
    # the site read holds the spliced value (recon + error): its gradient and the error's are the plain site's
    assert torch.allclose(g_err, p_site, atol=1e-5) and torch.allclose(g_site, p_site, atol=1e-5)
    assert torch.allclose(g_lat, p_site @ d.W_dec.T, atol=1e-5)  # decoder row . site gradient
    assert torch.allclose(g_in, p_in, atol=1e-5)  # upstream: the splice is the identity


@pytest.mark.parametrize("backend", ["torch", "nnsight", "lens"])
@pytest.mark.parametrize("site", ["resid_mid.1", "mlp_in.1"])
def test_a_transcoder_replaces_the_mlp_output(tiny_llama, tokens, backend, site):
    d = toy(tiny_llama.d_model, tiny_llama.d_model, site, out_site="mlp_out.1", seed=1)
    tiny_llama.attach(d)
    try:
        plain = tiny_llama.run(tokens, read=[site, "mlp_out.1"], backend=backend)
        out = tiny_llama.run(tokens, read=[f"sae.{site}.latents", f"sae.{site}.error"], backend=backend)
        x, y = plain.acts[site], plain.acts["mlp_out.1"]
        assert torch.allclose(out.acts[f"sae.{site}.latents"], d.encode(x), atol=1e-6)
        assert torch.allclose(out.acts[f"sae.{site}.error"], y - d.decode(d.encode(x)), atol=1e-5)
        assert (out.logits - plain.logits).abs().max() <= 1e-5
        ablated = tiny_llama.run(tokens, [Ablate(f"sae.{site}.error")], read=["mlp_out.1"], backend=backend)
        assert torch.allclose(ablated.acts["mlp_out.1"], d.decode(d.encode(x)), atol=1e-5)  # the transcoder alone
    finally:
        tiny_llama.dictionaries.clear()


def test_bad_attachments_and_names_are_one_line_errors(tiny_llama, tokens):
    with pytest.raises(InterpError, match="input width is 10, but resid_post.0"):
        tiny_llama.attach(toy(10, tiny_llama.d_model, SITE))
    with pytest.raises(InterpError, match="cannot be spliced at attn_pattern.0"):
        tiny_llama.attach(toy(tiny_llama.d_model, tiny_llama.d_model, "attn_pattern.0"))
    with pytest.raises(InterpError, match="out of range"):
        tiny_llama.attach(toy(tiny_llama.d_model, tiny_llama.d_model, "resid_post.99"))
    with pytest.raises(InterpError, match="no dictionary is attached at resid_post.1"):
        tiny_llama.run(tokens, read=["sae.resid_post.1.latents"])
    with pytest.raises(InterpError, match="bad dictionary site"):
        tiny_llama.run(tokens, read=["sae.resid_post.1.features"])
    assert not tiny_llama.dictionaries


FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "saelens"


@pytest.mark.parametrize("name", ["standard", "standard_layer_norm", "topk", "topk_norm_rescale", "jumprelu",
                                  "jumprelu_hook_z", "transcoder", "jumprelu_skip_transcoder"])
def test_saelens_written_dictionaries_splice_exactly(tiny_llama, tokens, name):
    """Every dictionary SAELens wrote (tests/fixtures/saelens) attaches; the forward is unchanged with the error
    term; the latents are the dictionary's own; without the error term the site holds the dictionary's output."""
    from interp.dictionary import load_dictionary

    d = load_dictionary(FIXTURES / name, model=tiny_llama)
    prefix = tiny_llama.attach(d)
    out_site = d.out_site or d.site
    try:
        plain = tiny_llama.run(tokens, read=[d.site, out_site], backend="torch")
        spliced = tiny_llama.run(tokens, read=[f"{prefix}.latents", f"{prefix}.error"], grad=True, backend="torch")
        assert (spliced.logits - plain.logits).abs().max() <= 1e-5
        assert torch.allclose(spliced.acts[f"{prefix}.latents"], d.encode(plain.acts[d.site]), atol=1e-6)
        ablated = tiny_llama.run(tokens, [Ablate(f"{prefix}.error")], read=[out_site], backend="torch")
        expected = d.forward(plain.acts[d.site])
        assert torch.allclose(ablated.acts[out_site].reshape(expected.shape), expected, atol=1e-5)
    finally:
        tiny_llama.dictionaries.clear()
