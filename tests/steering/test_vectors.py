"""Control vectors against independent computations; steering effects against closed forms."""

import math

import pytest
import torch

from interp.errors import InterpError
from interp.interventions import Add
from interp.steering.effects import answer_accuracy, answer_mass, entropy_bits, kl_nats
from interp.steering.vectors import VectorSet, build_vectors, contrast_vectors, read_activations

POS = ["The movie was wonderful and I", "What a great, happy day it", "She smiled because the news was good"]
NEG = ["The movie was awful and I", "What a terrible, sad day it", "She cried because the news was bad"]


def test_read_activations_reads_each_prompt_at_its_own_position(tiny_llama):
    layers = [0, 1]
    acts = read_activations(tiny_llama, POS, "resid_post", layers, position=-2)
    mean = read_activations(tiny_llama, POS, "resid_post", layers, position="mean")
    for i, prompt in enumerate(POS):  # one prompt at a time, independently
        out = tiny_llama.run(prompt, read=[f"resid_post.{layer}" for layer in layers])
        for j, layer in enumerate(layers):
            site = out.acts[f"resid_post.{layer}"][0]
            assert torch.allclose(acts[i, j], site[-2], atol=1e-5)
            assert torch.allclose(mean[i, j], site.mean(0), atol=1e-5)
    assert len({len(tiny_llama.tokenizer(p)["input_ids"]) for p in POS}) > 1  # the prompts do differ in length


def test_r_and_r_c_are_means_and_pca_c_is_signed_and_scaled():
    torch.manual_seed(0)
    direction = torch.randn(8)
    neg = torch.randn(20, 2, 8)
    pos = neg + 3.0 * direction + 0.1 * torch.randn(20, 2, 8) + torch.randn(20, 1, 1) * direction  # spread along direction
    assert torch.allclose(contrast_vectors(pos, None, "R"), pos.mean(0))
    rc = contrast_vectors(pos, neg, "R-C")
    assert torch.allclose(rc, (pos - neg).mean(0), atol=1e-6)
    pca = contrast_vectors(pos, neg, "PCA-C")
    assert torch.allclose(pca.norm(dim=-1), rc.norm(dim=-1), atol=1e-5)  # scaled to the mean difference's norm
    assert ((pca * rc).sum(-1) > 0).all()  # signed to agree with it
    cos = torch.nn.functional.cosine_similarity(pca, direction.expand(2, 8), dim=-1)
    assert (cos > 0.99).all()  # the spread of the differences is along the planted direction
    probe = contrast_vectors(pos, neg, "probe")
    assert ((probe * rc).sum(-1) > 0).all() and torch.allclose(probe.norm(dim=-1), rc.norm(dim=-1), atol=1e-5)
    with pytest.raises(InterpError, match="as many negative prompts"):
        contrast_vectors(pos, neg[:5], "R-C")
    with pytest.raises(InterpError, match="unknown control-vector method"):
        contrast_vectors(pos, neg, "PCA")


def test_build_save_load_and_steer(tiny_llama, tmp_path):
    vs = build_vectors(tiny_llama, POS, NEG, "R-C", layers=[0, 1], provenance={"set": "sentiment"})
    assert vs.vectors.shape == (2, tiny_llama.d_model) and vs.meta["set"] == "sentiment"
    back = VectorSet.load(vs.save(tmp_path / "vs" / "sentiment"))
    assert torch.equal(back.vectors, vs.vectors) and back.layers == [0, 1] and back.method == "R-C" and back.position == -1
    with pytest.raises(InterpError, match="no layer 5"):
        back.vector(5)
    tokens = tiny_llama.to_tokens(POS[0])
    plain = tiny_llama.run(tokens).logits[:, -1]
    kl = {}
    for coeff in (0.0, 2.0, 8.0):
        steered = tiny_llama.run(tokens, [Add("resid_post.0", vs.vector(0), coeff=coeff)]).logits[:, -1]
        kl[coeff] = float(kl_nats(plain, steered))
    assert kl[0.0] < 1e-6 < kl[2.0] < kl[8.0]
    keep = tiny_llama.run(tokens, [Add("resid_post.0", vs.vector(0), coeff=8.0, keep_norm=True)], read=["resid_post.0"])
    plain_acts = tiny_llama.run(tokens, read=["resid_post.0"]).acts["resid_post.0"]
    assert torch.allclose(keep.acts["resid_post.0"].norm(dim=-1), plain_acts.norm(dim=-1), atol=1e-4)


def test_effects_closed_forms():
    uniform = torch.zeros(2, 8)
    assert torch.allclose(entropy_bits(uniform), torch.full((2,), 3.0))  # log2(8)
    peaked = torch.tensor([[10.0, 0, 0, 0, 0, 0, 0, 0]])
    p = peaked.softmax(-1)[0]
    assert torch.allclose(kl_nats(peaked, uniform[:1]), (p * (p.log() + math.log(8))).sum(), atol=1e-5)
    assert float(kl_nats(peaked, peaked)) == pytest.approx(0.0, abs=1e-6)
    logits = torch.tensor([[0.0, 2.0, 1.0], [3.0, 0.0, 0.0]])
    candidates = torch.tensor([[1, 2], [1, 2]])
    assert answer_accuracy(logits, candidates, torch.tensor([0, 1])) == 0.5
    right, wrong = answer_mass(logits, candidates, torch.tensor([0, 0]))
    probs = logits.softmax(-1)
    assert right == pytest.approx(float((probs[0, 1] + probs[1, 1]) / 2)) and wrong == pytest.approx(float((probs[0, 2] + probs[1, 2]) / 2))


def test_llamacpp_gguf_export_reads_back(tiny_llama, tmp_path):
    import gguf

    from interp.steering.llamacpp import export_gguf

    vs = build_vectors(tiny_llama, POS, NEG, "R-C", kind="resid_post", layers=[1])
    path = export_gguf(vs, tmp_path / "cv.gguf")
    reader = gguf.GGUFReader(str(path))
    fields = {name: field for name, field in reader.fields.items()}
    assert bytes(fields["general.architecture"].parts[-1]).decode() == "controlvector"
    assert bytes(fields["controlvector.model_hint"].parts[-1]).decode() == "llama"
    assert int(fields["controlvector.layer_count"].parts[-1][0]) == 1
    (tensor,) = reader.tensors
    assert tensor.name == "direction.1"
    assert torch.equal(torch.from_numpy(tensor.data.copy()).reshape(-1), vs.vectors[0].float())
    both = build_vectors(tiny_llama, POS, NEG, "R-C", kind="resid_post")
    with pytest.raises(InterpError, match="drop resid_post.0"):
        export_gguf(both, tmp_path / "all.gguf")
    assert torch.equal(both.select([1]).vectors, both.vectors[1:]) and both.select([1]).layers == [1]
    pre = build_vectors(tiny_llama, POS, NEG, "R-C", kind="resid_pre", layers=[1])
    with pytest.raises(InterpError, match="cannot steer block 0"):
        export_gguf(pre, tmp_path / "bad.gguf")
    mid = build_vectors(tiny_llama, POS, NEG, "R-C", kind="resid_mid", layers=[1])
    with pytest.raises(InterpError, match="resid_mid vectors cannot be exported"):
        export_gguf(mid, tmp_path / "bad2.gguf")
