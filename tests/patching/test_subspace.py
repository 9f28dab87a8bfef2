"""Subspace patching and the illusion check, against closed forms and models built to show (or not) the illusion."""

import copy

import pytest
import torch

from interp.errors import InterpError
from interp.interventions import SubspaceReplace
from interp.ioi import generate_ioi
from interp.model import Model
from interp.patching.illusion import illusion_check, readable_basis, split
from interp.patching.subspace import Direction, PatchPairs, gradient, mean_diff, patch_pairs, patched_logits, probe


def test_one_direction_follows_the_closed_form():
    torch.manual_seed(0)
    w, u, v = torch.randn(2, 5, 6), torch.randn(2, 5, 6), torch.randn(6)
    got = SubspaceReplace("resid_pre.0", v * 3.0, u, positions=[1, 4]).apply(w)
    want = w + ((u @ v - w @ v) / v.dot(v))[..., None] * v
    assert torch.allclose(got[:, [1, 4]], want[:, [1, 4]], atol=1e-5)
    assert torch.equal(got[:, [0, 2, 3]], w[:, [0, 2, 3]])  # other positions untouched


def test_two_directions_replace_exactly_their_span():
    torch.manual_seed(1)
    w, u = torch.randn(3, 4, 8), torch.randn(3, 4, 8)
    basis = torch.randn(2, 8)
    got = SubspaceReplace("resid_pre.0", basis, u).apply(w)
    q = torch.linalg.qr(basis.T).Q
    assert torch.allclose(got @ q, u @ q, atol=1e-5)  # inside the span: the source's coordinates
    rest = torch.eye(8) - q @ q.T
    assert torch.allclose(got @ rest, w @ rest, atol=1e-5)  # outside: the base's
    with pytest.raises(InterpError, match="not independent"):
        SubspaceReplace("resid_pre.0", torch.stack([basis[0], 2 * basis[0]]), u).apply(w)
    with pytest.raises(InterpError, match="dimension 5"):
        SubspaceReplace("resid_pre.0", torch.randn(5), u).apply(w)


@pytest.mark.parametrize("site", ["resid_post.0", "mlp_act.1", "attn_out.1"])
def test_patching_along_a_full_basis_equals_patching_the_whole_activation(tiny_llama, site):
    pairs = patch_pairs(tiny_llama, generate_ioi(tiny_llama.tokenizer, 4, seed=3), site, positions=[-1, -3])
    d = pairs.source.shape[-1]
    full = patched_logits(tiny_llama, pairs, None)
    along_all = patched_logits(tiny_llama, pairs, torch.randn(d, d, generator=torch.Generator().manual_seed(0)))
    assert torch.allclose(along_all, full, atol=1e-4)
    assert (full - patched_logits(tiny_llama, pairs, torch.randn(1, d))).abs().max() > 1e-4  # a line is not the space


def test_direction_finders(tiny_llama, tmp_path):
    prompts = generate_ioi(tiny_llama.tokenizer, 6, seed=4, corruption="order")
    pairs = patch_pairs(tiny_llama, prompts, "resid_post.0")
    # classes from the text: is the answer named before the wrong name (ABBA) or after (BABA)?
    acts = torch.cat([pairs.base_act[:, -1], pairs.source[:, -1]])
    texts = prompts.clean + prompts.corrupt
    names = (prompts.answer + prompts.answer, prompts.wrong + prompts.wrong)
    abba = torch.tensor([t.index(a.strip()) < t.index(w.strip()) for t, a, w in zip(texts, *names)])
    assert 0 < int(abba.sum()) < len(abba)
    md = mean_diff(pairs)
    assert torch.allclose(md, acts[abba].mean(0) - acts[~abba].mean(0), atol=1e-6)
    w = probe(pairs)
    proj = acts @ w
    assert (proj[abba][:, None] > proj[~abba][None, :]).float().mean() >= 0.9  # the probe ranks ABBA above BABA
    g = gradient(tiny_llama, pairs)  # moving every base activation by eps * g raises the mean logit diff by eps |g|^2
    eps = 1e-2

    def mean_ld(logits):
        return float((logits.gather(-1, pairs.other[:, None]) - logits.gather(-1, pairs.target[:, None])).mean())

    shifted = PatchPairs(pairs.site, pairs.base, pairs.base_act + eps * g, pairs.base_act, pairs.target, pairs.other,
                         pairs.positions)
    with torch.no_grad():
        unpatched = mean_ld(tiny_llama.run(pairs.base).logits[:, -1])
    slope = (mean_ld(patched_logits(tiny_llama, shifted, None)) - unpatched) / eps
    assert abs(slope - float(g.dot(g))) < 0.05 * float(g.dot(g)) + 1e-4, (slope, float(g.dot(g)))
    saved = Direction("resid_post.0", torch.stack([md, w]), "mean_diff", {"note": "test"})
    back = Direction.load(saved.save(tmp_path / "dirs" / "d1"))
    assert torch.equal(back.vectors, saved.vectors) and back.site == saved.site and back.meta == {"note": "test"}
    with pytest.raises(InterpError, match="no direction at"):
        Direction.load(tmp_path / "missing")


def test_a_direction_in_the_down_projections_nullspace_changes_no_logit(tiny_llama, smollm2):
    """mlp_act.15 of SmolLM2 has 1536 neurons writing 576 dimensions: a 960-dim nullspace."""
    pairs = patch_pairs(smollm2, generate_ioi(smollm2.tokenizer, 2, seed=5), "mlp_act.15", positions=None)
    basis = readable_basis(smollm2, "mlp_act.15")
    assert basis.shape == (1536, 576)
    _, null = split(torch.randn(1536, generator=torch.Generator().manual_seed(0)), basis)
    assert null.norm() > 0.5
    source = PatchPairs(pairs.site, pairs.base, pairs.base_act + 50 * null, pairs.base_act, pairs.target, pairs.other)
    for backend in ("torch", "nnsight", "lens"):
        with torch.no_grad():
            plain = smollm2.run(pairs.base, backend=backend).logits[:, -1]
        patched = patched_logits(smollm2, source, null, backend=backend)
        assert (patched - plain).abs().max() < 1e-3, backend  # 50x a unit direction moved, output unmoved
        row = patched_logits(smollm2, PatchPairs(pairs.site, pairs.base, pairs.base_act + 50 * (basis[:, 0]), pairs.base_act,
                                                 pairs.target, pairs.other), basis[:, 0], backend=backend)
        assert (row - plain).abs().max() > 1e-2, backend  # the same size along a readable direction does move it


def _illusion_model(tiny_llama):
    """tiny-llama with neuron A of the last MLP disconnected and neuron B writing the logit difference."""
    hf = copy.deepcopy(tiny_llama.hf)
    model = Model("tiny-llama", hf, tiny_llama.tokenizer, backend="torch")
    prompts = generate_ioi(model.tokenizer, 6, seed=6)
    pairs = patch_pairs(model, prompts, "mlp_act.1", positions=[-1])
    target, other = pairs.target, pairs.other
    readout = (hf.lm_head.weight[target] - hf.lm_head.weight[other]).mean(0)  # d_model
    a, b = 3, 7
    with torch.no_grad():
        down = hf.model.layers[1].mlp.down_proj.weight  # [d_model, d_mlp]
        down[:, a] = 0.0
        down[:, b] = -4.0 * readout / readout.norm()
        pairs = patch_pairs(model, prompts, "mlp_act.1", positions=[-1])  # recompute with the edited weights
    return model, pairs, a, b


def test_illusion_check_flags_a_dormant_direction_and_passes_a_real_one(tiny_llama):
    model, pairs, a, b = _illusion_model(tiny_llama)
    d = pairs.source.shape[-1]
    e = torch.eye(d)
    # the feature moves disconnected neuron A; B is dormant (same value in base and source)
    dormant = PatchPairs(pairs.site, pairs.base, pairs.base_act + 6.0 * e[a], pairs.base_act, pairs.target, pairs.other, pairs.positions)
    result = illusion_check(model, dormant, e[a] + e[b])
    assert result["illusion"], result["verdict"]
    assert result["direction"]["fldd"] > 20 and abs(result["full"]["fldd"]) < 1 and abs(result["readable"]["fldd"]) < 1
    assert result["norms"]["unreadable"] >= 2 ** -0.5 - 1e-4  # A is wholly unreadable (and d_mlp > d_model)
    assert result["norms"]["readable"] > 0.3
    assert "Illusion signature" in result["verdict"] and result["signature"] == "illusion"
    # the feature really moves B, and the direction is B: a genuine read-out
    genuine = PatchPairs(pairs.site, pairs.base, pairs.base_act + 6.0 * e[b], pairs.base_act, pairs.target, pairs.other, pairs.positions)
    ok = illusion_check(model, genuine, e[b])
    assert not ok["illusion"] and ok["direction"]["fldd"] > 20 and ok["full"]["fldd"] > 20, ok
    assert ok["readable"]["fldd"] > 20 and abs(ok["unreadable"]["fldd"]) < 1  # the null part of B does nothing
    assert "No illusion signature" in ok["verdict"] and ok["signature"] == "none"
    # the dormant direction's readable part alone: the whole activation still does nothing, but now it works
    readable_only = illusion_check(model, PatchPairs(pairs.site, pairs.base, pairs.base_act + 6.0 * (e[a] + e[b]),
                                                     pairs.base_act, pairs.target, pairs.other, pairs.positions), e[b])
    assert not readable_only["illusion"] and readable_only["signature"] == "none"


def test_residual_sites_need_downstream_heads(tiny_llama):
    with pytest.raises(InterpError, match="name the downstream heads"):
        readable_basis(tiny_llama, "resid_post.0")
    with pytest.raises(InterpError, match="does not read resid_post.0"):
        readable_basis(tiny_llama, "resid_post.0", [(0, 1)])
    basis = readable_basis(tiny_llama, "resid_post.0", [(1, 0), (1, 2)])
    assert basis.shape == (tiny_llama.d_model, 2 * tiny_llama.d_head)
    assert torch.allclose(basis.T @ basis, torch.eye(basis.shape[1]), atol=1e-5)


@pytest.mark.parametrize("fldd,flag,signature", [
    ((5.0, 4.0, 0.0, 90.0), False, "no_effect"),
    ((46.0, 13.0, 0.0, 0.5), True, "illusion"),  # Makelov et al.'s MLP8 numbers
    ((50.0, 27.0, 0.0, 1.3), True, "likely_illusion"),
    ((60.0, 10.0, 50.0, 55.0), False, "caution"),
    ((139.0, 126.0, 14.0, 121.0), False, "none"),  # their residual-stream success case
])
def test_verdict_levels(fldd, flag, signature):
    from interp.patching.illusion import verdict

    result = {name: {"fldd": value} for name, value in zip(("direction", "readable", "unreadable", "full"), fldd)}
    got_flag, got_signature, text = verdict(result)
    assert (got_flag, got_signature) == (flag, signature) and f"{fldd[0]:.1f}%" in text
