"""Distributed alignment search (`interp.patching.das`) on a synthetic model with a planted direction.

The synthetic model is a copy of tiny-llama whose readout of the last residual stream
(``resid_post.1`` -> final RMSNorm -> unembedding) decides between two tokens T and O only through
one known unit direction ``v``: their unembedding rows are ``+a v`` and ``-a v``, and every other
row is projected off ``v`` and a second direction ``u``. Source activations differ from the base
ones along ``v`` (flipping the answer), strongly and consistently along the ignored distractor
``u``, and by a little noise elsewhere. DAS must find ``v`` (and not ``u``, which dominates the mean
difference).
"""

import copy

import pytest
import torch

from interp.errors import InterpError
from interp.model import Model
from interp.patching.das import split, train_das
from interp.patching.subspace import Direction, PatchPairs, evaluate, mean_diff, patched_logits

SITE = "resid_post.1"
T, O = 1000, 2000  # the two answer tokens
N_PAIRS, N_POS = 64, 6


def planted(tiny: Model, seed: int = 0, a: float = 3.0, noise: float = 0.1):
    """(model copy, pairs, v, u): the answer T vs O depends on resid_post.1 only along v."""
    d = tiny.d_model
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d, 2, generator=g))
    v, u = q[:, 0], q[:, 1]
    hf = copy.deepcopy(tiny.hf)  # the session fixture's weights stay untouched
    with torch.no_grad():
        hf.model.norm.weight.fill_(1.0)
        keep = torch.eye(d) - torch.outer(v, v) - torch.outer(u, u)
        w_u = 0.05 * hf.lm_head.weight @ keep  # other tokens: small, blind to v and u
        w_u[T], w_u[O] = a * v, -a * v
        hf.lm_head.weight = torch.nn.Parameter(w_u, requires_grad=False)  # unties it from the embedding
        hf.config.tie_word_embeddings = False
    model = Model("synthetic-das", hf, tiny.tokenizer, backend="torch")

    base = torch.randint(3000, 10000, (2 * N_PAIRS, N_POS), generator=g)
    with torch.no_grad():
        out = model.run(base, read=[SITE])
    along_v = out.acts[SITE][:, -1] @ v
    other = torch.where(along_v > 0, T, O)  # the base run's answer where the v readout wins
    # keep the prompts whose base answer is T or O (drops those with a tiny v coordinate)
    keep_rows = (out.logits[:, -1].argmax(-1) == other).nonzero()[:N_PAIRS, 0]
    assert len(keep_rows) == N_PAIRS
    base, act, along_v, other = base[keep_rows], out.acts[SITE][keep_rows], along_v[keep_rows], other[keep_rows]
    target = torch.where(along_v > 0, O, T)
    x = act[:, -1]
    scale = x.norm(dim=-1).mean()
    c = -along_v - torch.sign(along_v) * scale * (0.2 + 0.3 * torch.rand(N_PAIRS, generator=g))  # flips the sign
    s = scale * (1.0 + torch.rand(N_PAIRS, generator=g))  # large, same sign: dominates the mean difference
    source = act.clone()
    source[:, -1] += c[:, None] * v + s[:, None] * u + noise * scale * torch.randn(N_PAIRS, d, generator=g) @ keep
    return model, PatchPairs(SITE, base, source, act, target, other, [N_POS - 1]), v, u


@pytest.fixture(scope="module")
def synthetic(tiny_llama):
    return planted(tiny_llama)


def test_das_recovers_planted_direction(synthetic, tiny_llama):
    model, pairs, v, u = synthetic
    # The construction: v alone flips every answer, u alone changes none, and the mean
    # difference points mostly along the distractor u.
    assert evaluate(model, pairs, v)["interchange_acc"] == 1.0
    with torch.no_grad():
        along_u = patched_logits(model, pairs, u)
    assert (along_u.argmax(-1) == pairs.other).all()
    md = mean_diff(pairs)
    assert abs(float(md @ v / md.norm())) < 0.3 < abs(float(md @ u / md.norm()))

    seen = []
    direction, report = train_das(model, pairs, k=1, seed=0, progress=lambda e, n, loss: seen.append((e, n, loss)))
    w = direction.vectors[0]
    assert direction.site == SITE and direction.method == "das" and direction.vectors.shape == (1, model.d_model)
    assert abs(float(w @ v)) > 0.9, float(w @ v)
    assert abs(float(w @ u)) < 0.2, float(w @ u)
    assert report["n_train"] == report["n_test"] == N_PAIRS // 2
    assert report["test"]["interchange_acc"] >= 0.9 and report["train"]["interchange_acc"] >= 0.9
    assert report["test"]["fldd"] > 100  # the preference is flipped, not only erased
    assert len(report["loss"]) == 30 and report["loss"][-1] < report["loss"][0]
    assert [(e, n) for e, n, _ in seen] == [(e, 30) for e in range(1, 31)]
    assert [loss for *_, loss in seen] == report["loss"]
    assert direction.meta["k"] == 1 and direction.meta["seed"] == 0 and direction.meta["test"] == report["test"]
    # the shared fixture was not modified
    assert tiny_llama.hf.lm_head.weight is tiny_llama.hf.model.embed_tokens.weight


def test_das_k2_orthonormal_deterministic_and_saves(synthetic, tmp_path):
    model, pairs, v, _ = synthetic
    direction, report = train_das(model, pairs, k=2, epochs=3, batch_size=8, test_fraction=0.25, seed=1)
    vecs = direction.vectors
    assert vecs.dtype == torch.float32 and vecs.shape == (2, model.d_model) and not vecs.requires_grad
    assert torch.allclose(vecs @ vecs.T, torch.eye(2), atol=1e-5)
    assert (report["n_train"], report["n_test"]) == (48, 16) and len(report["loss"]) == 3
    again, _ = train_das(model, pairs, k=2, epochs=3, batch_size=8, test_fraction=0.25, seed=1)
    assert torch.equal(again.vectors, vecs)
    other_seed, _ = train_das(model, pairs, k=2, epochs=3, batch_size=8, test_fraction=0.25, seed=2)
    assert not torch.equal(other_seed.vectors, vecs)

    path = direction.save(tmp_path / "das_dir")
    loaded = Direction.load(path)
    assert torch.equal(loaded.vectors, vecs)
    assert (loaded.site, loaded.method) == (SITE, "das")
    assert loaded.meta == direction.meta


def test_split_is_deterministic_and_disjoint():
    train, test = split(10, 0.5, seed=3)
    assert len(train) == len(test) == 5
    assert sorted(torch.cat([train, test]).tolist()) == list(range(10))
    assert torch.equal(split(10, 0.5, seed=3)[1], test)
    assert len(split(2, 0.9, seed=0)[0]) == 1  # always something to train on
    assert len(split(5, 0.0, seed=0)[1]) == 0


def test_no_test_pairs(synthetic):
    model, pairs, _, _ = synthetic
    _, report = train_das(model, pairs.subset(torch.arange(8)), epochs=1, test_fraction=0.0)
    assert report["test"] is None and report["n_test"] == 0 and report["train"] is not None


@pytest.mark.parametrize("kwargs, message", [
    ({"k": 0}, "k=0"),
    ({"k": 65}, "dimension 64"),
    ({"epochs": 0}, "epochs=0"),
    ({"batch_size": 0}, "batch_size=0"),
    ({"test_fraction": 1.0}, "test_fraction=1.0"),
    ({"test_fraction": -0.1}, "test_fraction=-0.1"),
    ({"lr": 0.0}, "lr=0.0"),
])
def test_bad_arguments(synthetic, kwargs, message):
    model, pairs, _, _ = synthetic
    with pytest.raises(InterpError, match=message) as info:
        train_das(model, pairs, **kwargs)
    assert "\n" not in str(info.value)


def test_too_few_pairs(synthetic):
    model, pairs, _, _ = synthetic
    with pytest.raises(InterpError, match="at least 2 patch pairs"):
        train_das(model, pairs.subset(torch.arange(1)), epochs=1)
