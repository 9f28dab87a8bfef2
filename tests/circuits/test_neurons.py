"""Relation-specific neurons: AP = sklearn, planted-neuron selection, deactivation = zeroing exactly those units."""

import pytest
import torch
from sklearn.metrics import average_precision_score

import interp
from interp.circuits.neurons import (accuracy_by_relation, answer_first_tokens, average_precision, correct_mask, deactivate, deactivation_matrix,
                              expertise_from_responses, neuron_expertise, pooled_responses, random_units,
                              relation_prompt_sets, top_units, topk_overlap)
from interp.circuits.relations import RELATIONS, RelationPrompt, split_relation
from interp.errors import InterpError

RELS = ["capital_of", "plural_of", "opposite_of"]


def test_builtin_relations_split_without_shared_facts(tiny_llama):
    assert len(RELATIONS) >= 6
    for rel in RELATIONS.values():
        ident, test = split_relation(rel, n_identification=10, seed=3)
        assert len(ident) == 10 * len(rel.templates) and len(test) == len(rel.facts) - 10
        assert not {p.subject for p in ident} & {p.subject for p in test}
        assert all(p.text == rel.templates[0].format(s=p.subject) for p in test)
    paris = RelationPrompt("capital_of", "France", "The capital of France is", ("Paris",))
    assert answer_first_tokens(tiny_llama, paris) == [tiny_llama.tokenizer(" Paris")["input_ids"][0]]
    with pytest.raises(InterpError):
        split_relation(RELATIONS["capital_of"], n_identification=0)


def test_average_precision_equals_sklearn_with_ties():
    g = torch.Generator().manual_seed(0)
    scores = torch.cat([torch.randint(0, 4, (60, 40), generator=g).float(),  # many ties
                        torch.randn(60, 40, generator=g)], 1)
    labels = torch.rand(60, generator=g) > 0.7
    ours = average_precision(scores, labels)
    ref = torch.tensor([average_precision_score(labels.numpy(), scores[:, j].numpy()) for j in range(80)])
    assert torch.allclose(ours, ref.float(), atol=1e-6)
    with pytest.raises(InterpError):
        average_precision(scores, torch.zeros(60, dtype=torch.bool))


def test_relation_the_model_never_answers_fails_before_expertise(tiny_llama):
    # the random tiny model answers no held-out fact right, so keep_correct leaves every relation empty
    with pytest.raises(InterpError, match=r"no test prompts left for capital_of \(0 of \d+\).*--no-keep-correct"):
        relation_prompt_sets(tiny_llama, RELS, n_identification=4)


def test_ap_selection_picks_planted_neuron_in_real_responses(tiny_llama):
    sets = relation_prompt_sets(tiny_llama, RELS, n_identification=4, keep_correct=False)
    names = [p.relation for p in sets.identification]
    resp = pooled_responses(tiny_llama, [p.text for p in sets.identification])
    assert resp.shape == (len(names), tiny_llama.n_layers, tiny_llama.d_mlp)
    # pooled response = the mean over positions of mlp_act, checked on one prompt by hand
    one = tiny_llama.run(sets.identification[5].text, read=["mlp_act.1"]).acts["mlp_act.1"][0].mean(0)
    assert torch.allclose(resp[5, 1], one, atol=1e-6)
    planted = resp.clone()
    planted[:, 1, 17] = torch.tensor([2.0 if n == "plural_of" else 0.0 for n in names]) + 0.01 * torch.rand(len(names))
    exp = expertise_from_responses(planted, names, RELS)
    i = RELS.index("plural_of")
    assert top_units(exp.ap[i], 1).tolist() == [[1, 17]]
    assert float(exp.ap[i, 1, 17]) == pytest.approx(1.0)
    y = [n == "capital_of" for n in names]
    assert float(exp.ap[0, 0, 3]) == pytest.approx(average_precision_score(y, planted[:, 0, 3].numpy()), abs=1e-6)
    # the planted unit is in plural_of's top-k only, so the other relations overlap it nowhere
    assert float(topk_overlap(exp, 1)[i, i]) == 1.0


def test_top_and_random_units():
    ap = torch.rand(3, 50, generator=torch.Generator().manual_seed(1))
    top = top_units(ap, 7)
    brute = sorted(((float(ap[l, u]), l, u) for l in range(3) for u in range(50)), reverse=True)[:7]
    assert top.tolist() == [[l, u] for _, l, u in brute]
    rnd = random_units((3, 50), 140, exclude=top, seed=0)
    flat = set((rnd[:, 0] * 50 + rnd[:, 1]).tolist())
    assert len(flat) == 140 and not flat & set((top[:, 0] * 50 + top[:, 1]).tolist())
    with pytest.raises(InterpError):
        random_units((3, 50), 144, exclude=top)


@pytest.mark.parametrize("backend", ["lens", "nnsight"])
def test_deactivation_zeroes_exactly_those_neurons(tiny_llama, backend):
    units = torch.tensor([[0, 3], [0, 60], [1, 5], [1, 100]])
    text = "The capital of France is"
    read = ["mlp_act.0", "mlp_act.1"]
    clean = tiny_llama.run(text, read=read, backend=backend)
    edited = tiny_llama.run(text, deactivate(tiny_llama, units), read=read, backend=backend)
    a0, a1 = edited.acts["mlp_act.0"], edited.acts["mlp_act.1"]
    assert (a0[..., [3, 60]] == 0).all() and (a1[..., [5, 100]] == 0).all()
    keep = torch.ones(tiny_llama.d_mlp, dtype=torch.bool)
    keep[[3, 60]] = False
    assert torch.equal(a0[..., keep], clean.acts["mlp_act.0"][..., keep])  # layer 0: only the two units change
    assert clean.acts["mlp_act.0"][..., [3, 60]].abs().min() > 0
    # independent check: zeroing neurons = deleting their rows of W_out (down_proj columns)
    copy = interp.load("tiny-llama")
    with torch.no_grad():
        for layer, unit in units.tolist():
            copy.hf.model.layers[layer].mlp.down_proj.weight[:, unit] = 0
    assert torch.allclose(copy.run(text, backend=backend).logits, edited.logits, atol=1e-5)
    other = tiny_llama.run(text, deactivate(tiny_llama, units), backend="nnsight" if backend == "lens" else "lens")
    assert torch.allclose(other.logits, edited.logits, atol=1e-4)


def test_accuracy_and_matrix_match_a_brute_force_loop(tiny_llama):
    tok = tiny_llama.tokenizer
    texts = ["The capital of France is", "One dog, two", "The opposite of up is", "The capital of Peru is"]
    # answers: the tiny model's own greedy token for prompts 0 and 1 (hit if it starts a word), 'zebra' for 2 and 3
    greedy = [tok.decode([int(tiny_llama.run(t).logits[0, -1].argmax())]) for t in texts]
    answers = [greedy[0].strip(), greedy[1].strip(), "zebra", "zebra"]
    prompts = [RelationPrompt(r, "", t, (a,)) for r, t, a in zip(["capital_of", "plural_of", "opposite_of", "capital_of"],
                                                                  texts, answers)]
    brute = [int(tiny_llama.run(p.text).logits[0, -1].argmax()) in answer_first_tokens(tiny_llama, p) for p in prompts]
    assert brute[0] and not brute[2] and not brute[3]
    assert correct_mask(tiny_llama, prompts).tolist() == brute
    expected = [0.5, float(brute[1]), 0.0]
    assert accuracy_by_relation(tiny_llama, prompts, ["capital_of", "plural_of", "opposite_of"]).tolist() == expected
    sets = relation_prompt_sets(tiny_llama, RELS, n_identification=4, keep_correct=False)
    exp = neuron_expertise(tiny_llama, sets)
    mat = deactivation_matrix(tiny_llama, exp, sets, k=20, seed=0)
    row = accuracy_by_relation(tiny_llama, sets.test, RELS, deactivate(tiny_llama, top_units(exp.ap[1], 20)))
    assert torch.equal(mat.acc[1], row)
    assert torch.equal(mat.acc_change, mat.acc - mat.baseline)
    assert mat.acc.shape == mat.random_acc.shape == (3, 3)


@pytest.mark.real_model
def test_smollm2_knows_capitals(smollm2):
    ident, test = split_relation(RELATIONS["capital_of"], n_identification=12)
    hits = correct_mask(smollm2, test[:8])
    brute = [int(smollm2.run(p.text).logits[0, -1].argmax()) in {smollm2.tokenizer(" " + a)["input_ids"][0] for a in p.answers}
             for p in test[:8]]
    assert hits.tolist() == brute and sum(brute) >= 6
