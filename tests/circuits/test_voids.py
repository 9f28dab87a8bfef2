"""Void layers (LAC): the rule against hand computations and a brute-force loop, the reader, skipping
voids against a hand-built LM-head readout, KV-cached generation against a full rerun, and the MC set."""

from collections import Counter

import pytest
import torch

from interp.circuits.mc_set import (
    LETTERS,
    MC_SET,
    MCQuestion,
    evaluate_mc,
    format_question,
    letter_ids,
    reply_letter,
)
from interp.circuits.voids import (
    generate_with_voids,
    lac_activated,
    last_activated_state,
    norm_sites,
    read_norms,
    void_map,
    void_usage,
)
from interp import InterpError, Replace
from interp.steering.generate import generate

PROMPT = "When Mary and John went to the store, John gave a drink to"


def norms_from_deltas(deltas, start=1.0):
    return torch.tensor([start] + deltas).cumsum(0)


def brute_force_lac(norms: torch.Tensor, alpha: float) -> torch.Tensor:
    """The rule written as plain loops, one token at a time."""
    flat = norms.reshape(-1, norms.shape[-1]).tolist()
    rows = []
    for n in flat:
        deltas = [n[i + 1] - n[i] for i in range(len(n) - 1)]
        row = []
        for l, d in enumerate(deltas):
            tau = alpha * (max(deltas[:l]) - min(deltas[:l])) if l > 0 else 0.0
            row.append(not d < tau)
        rows.append(row)
    return torch.tensor(rows).reshape(norms.shape[:-1] + (norms.shape[-1] - 1,))


def test_lac_hand_example():
    # deltas 3, 1, 0.5, 2: tau = 0, 0, 0.8*(3-1)=1.6, 0.8*(3-0.5)=2.0 -> 0.5 < 1.6 is the only void
    assert lac_activated(norms_from_deltas([3.0, 1.0, 0.5, 2.0])).tolist() == [True, True, False, True]
    # a shrinking first layer is a void (tau_0 = 0); equality is not a void (strict <)
    assert lac_activated(norms_from_deltas([-1.0, 1.0, 1.0]), alpha=0.5).tolist() == [False, True, True]
    assert lac_activated(norms_from_deltas([2.0, 0.0, 1.0]), alpha=0.5).tolist() == [True, True, True]
    assert lac_activated(norms_from_deltas([2.0, 0.0, 0.75]), alpha=0.5).tolist() == [True, True, False]


def test_lac_matches_brute_force_on_batches():
    gen = torch.Generator().manual_seed(0)
    norms = torch.rand(3, 5, 9, generator=gen).cumsum(-1) * 2 - torch.rand(3, 5, 9, generator=gen)
    for alpha in (0.0, 0.3, 0.8, 1.5):
        got = lac_activated(norms, alpha)
        assert got.shape == (3, 5, 8)
        assert torch.equal(got, brute_force_lac(norms, alpha))
    assert not lac_activated(norms, 0.8).all()  # the random case does contain voids


def test_lac_bad_input():
    with pytest.raises(InterpError, match="n_layers \\+ 1"):
        lac_activated(torch.tensor([1.0]))
    with pytest.raises(InterpError):
        lac_activated([1.0, 2.0])


def test_last_activated_state_by_hand():
    states = torch.arange(4.0)[:, None].expand(4, 2)[None].repeat(3, 1, 1)  # slot s holds value s
    mask = torch.tensor([[1, 0, 1], [1, 1, 0], [0, 0, 0]]).bool()
    assert last_activated_state(states, mask)[:, 0].tolist() == [3.0, 2.0, 0.0]  # layer 2, layer 1, embedding
    with pytest.raises(InterpError, match="do not fit"):
        last_activated_state(states, mask[:, :2])


def test_reader_and_void_map_agree_across_backends(tiny_llama):
    tokens = tiny_llama.to_tokens(PROMPT)
    out = tiny_llama.run(tokens, read=norm_sites(tiny_llama))
    by_hand = torch.stack([out.acts[s][0].norm(dim=-1) for s in norm_sites(tiny_llama)], -1)
    assert torch.allclose(read_norms(tiny_llama, tokens)[0], by_hand)
    maps = {b: void_map(tiny_llama, tokens, backend=b) for b in ("lens", "nnsight", "torch")}
    for b, (vmap, logits) in maps.items():
        assert vmap.activated.shape == (tokens.shape[1], tiny_llama.n_layers)
        assert torch.allclose(vmap.norms, by_hand, atol=1e-5), b
        assert torch.equal(vmap.activated, brute_force_lac(by_hand, 0.8)), b
        assert torch.allclose(logits, out.logits[0], atol=1e-4), b  # observing changes nothing
    assert vmap.usage.tolist() == vmap.activated.float().mean(0).tolist()


@pytest.mark.parametrize("backend", ["lens", "nnsight"])
def test_skipping_forced_voids_reads_last_activated_layer(tiny_llama, backend):
    model = tiny_llama
    tokens = model.to_tokens(PROMPT)
    pos = tokens.shape[1]
    forced = torch.ones(pos, model.n_layers, dtype=torch.bool)
    forced[::3, 1] = False  # layer 1 void: read layer 0
    forced[1::3, :] = False  # both void: read the embedding
    _, logits = void_map(model, tokens, skip=True, activated=forced, backend=backend)
    acts = model.run(tokens, read=norm_sites(model)).acts
    states = torch.stack([acts[s][0] for s in norm_sites(model)])  # [slot, pos, d]
    want_slot = [0 if i % 3 == 1 else (1 if i % 3 == 0 else 2) for i in range(pos)]
    h = torch.stack([states[s, i] for i, s in enumerate(want_slot)])
    with torch.no_grad():
        by_hand = model.hf.model.norm(h) @ model.W_U
    assert torch.allclose(logits, by_hand, atol=1e-4)
    # the same through an ordinary two-pass Replace of the last layer's output
    two_pass = model.run(tokens, [Replace(f"resid_post.{model.n_layers - 1}", h[None])], backend=backend).logits[0]
    assert torch.allclose(logits, two_pass, atol=1e-4)
    assert not torch.allclose(logits, model.run(tokens).logits[0], atol=1e-3)


def test_generation_maps_match_a_full_rerun(tiny_llama):
    model = tiny_llama
    g = generate_with_voids(model, PROMPT, max_new_tokens=6)
    assert g.text == generate(model, PROMPT, max_new_tokens=6)[0]
    n_prompt = model.to_tokens(PROMPT).shape[1]
    full = model.to_tokens(PROMPT + g.text)
    assert full.shape[1] == n_prompt + 6
    norms = read_norms(model, full)[0]
    assert torch.allclose(torch.cat([g.prompt.norms, g.response.norms]), norms, atol=1e-4)
    assert torch.equal(torch.cat([g.prompt.activated, g.response.activated]), lac_activated(norms))
    assert g.response.activated.shape == (6, model.n_layers) and len(g.response.tokens) == 6
    usage = void_usage(model, [PROMPT, "The capital of France is"], max_new_tokens=3)
    t = usage.tensors()
    assert t["voids/usage_prompt"].shape == (model.n_layers,) and t["voids/response_map.1"].shape == (3, model.n_layers)
    pooled = torch.cat([usage.generations[0].prompt.activated, usage.generations[1].prompt.activated]).float().mean(0)
    assert torch.equal(usage.usage_prompt, pooled)
    with pytest.raises(InterpError, match="max_new_tokens"):
        generate_with_voids(model, PROMPT, max_new_tokens=0)


def test_mc_set_is_balanced_and_scored_by_letter_logits(tiny_llama):
    assert len(MC_SET) == 40 and Counter(q.answer for q in MC_SET) == Counter({0: 10, 1: 10, 2: 10, 3: 10})
    assert all(len(set(q.options)) == 4 for q in MC_SET)
    q = MCQuestion("What is 1 + 1?", ("3", "2", "5", "7"), 1)
    assert format_question(q) == "Question: What is 1 + 1?\nA. 3\nB. 2\nC. 5\nD. 7\nAnswer:"
    ids = letter_ids(tiny_llama, chat=False)
    assert [tiny_llama.tokenizer.decode([i]) for i in ids] == [" " + x for x in LETTERS]
    res = evaluate_mc(tiny_llama, MC_SET[:3])
    for row, question in zip(res.logits, MC_SET[:3]):
        want = tiny_llama.run(format_question(question)).logits[0, -1, ids]
        assert torch.allclose(row, want, atol=1e-4)
    correct = sum(int(row.argmax()) == qq.answer for row, qq in zip(res.logits, MC_SET[:3]))
    assert res.accuracy == pytest.approx(correct / 3)
    assert res.usage.shape == (tiny_llama.n_layers,) and res.tensors()["voids/mc_logits_skip"].shape == (3, 4)
    assert torch.equal(res.predicted, res.logits.argmax(-1))
    assert reply_letter(" The answer is C. Ice") == 2 and reply_letter("Apple") == -1 and reply_letter("B) no") == 1
    gen = evaluate_mc(tiny_llama, MC_SET[:2], generate_tokens=3)
    assert gen.replies == generate(tiny_llama, [format_question(q) for q in MC_SET[:2]], max_new_tokens=3)
    assert gen.predicted.tolist() == [reply_letter(r) for r in gen.replies] and gen.logits is None
    chat = evaluate_mc(tiny_llama, MC_SET[:1], chat=True)
    assert [tiny_llama.tokenizer.decode([i]) for i in letter_ids(tiny_llama, chat=True)] == list(LETTERS)
    assert chat.logits.shape == (1, 4)


@pytest.mark.real_model
def test_skipping_real_voids_on_smollm2(smollm2):
    model = smollm2
    tokens = model.to_tokens("The capital of France is")
    vmap, logits = void_map(model, tokens, skip=True)
    acts = model.run(tokens, read=norm_sites(model)).acts
    states = torch.stack([acts[s][0] for s in norm_sites(model)], dim=1)  # [pos, slot, d]
    mask = brute_force_lac(states.norm(dim=-1), 0.8)
    assert torch.equal(vmap.activated, mask)
    assert not mask.all()  # SmolLM2 has voids here, so the check below is not trivial
    last = [max([l + 1 for l in range(model.n_layers) if mask[i, l]], default=0) for i in range(tokens.shape[1])]
    with torch.no_grad():
        by_hand = model.hf.model.norm(torch.stack([states[i, s] for i, s in enumerate(last)])) @ model.W_U
    assert torch.allclose(logits, by_hand, atol=1e-3)
