"""Backdoor activation attack against independent computations: scipy JS, hand-written hooks, manual log-probs."""

import json
from contextlib import contextmanager
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from scipy.spatial.distance import jensenshannon

from interp.chat import chat_prompt
from interp.errors import InterpError
from interp.steering.attack import (attack_edit, attack_steer, attack_vectors, contrast_pairs, effective_coeff, js_scores,
                             random_vector, run_attack, search_layers, split_rows)
from interp.steering.behaviour_sets import (answer_logprobs, cut_at_eos, harmless_set, is_refusal, refusal_set,
                                     truthfulness_scores, truthfulness_set)


@contextmanager
def hooked_layers(model, add: dict[int, torch.Tensor] | None = None, keep: dict[int, torch.Tensor] | None = None):
    """Plain torch forward hooks on the HF decoder layers: add a vector to / record the block output."""
    handles = []

    def hook(layer):
        def fn(module, args, output):
            hidden = output[0] if isinstance(output, tuple) else output
            if add and layer in add:
                hidden = hidden + add[layer]
            if keep is not None:
                keep[layer] = hidden.detach()
            return (hidden, *output[1:]) if isinstance(output, tuple) else hidden
        return fn

    try:
        for layer, block in enumerate(model.hf.model.layers):
            handles.append(block.register_forward_hook(hook(layer)))
        yield
    finally:
        for h in handles:
            h.remove()


def manual_logprob(model, prompt, answer, add=None):
    ids = model.tokenizer(prompt)["input_ids"]
    ans = model.tokenizer(answer, add_special_tokens=False)["input_ids"]
    with torch.no_grad(), hooked_layers(model, add):
        logp = model.hf(torch.tensor([ids + ans])).logits[0].float().log_softmax(-1)
    return sum(float(logp[len(ids) - 1 + k, tok]) for k, tok in enumerate(ans))


@pytest.fixture(scope="module")
def tiny_pairs(tiny_llama):
    rows = truthfulness_set().select(range(6))
    return contrast_pairs(tiny_llama, "truthfulness", rows, aligned="dataset")


def test_js_scores_match_scipy_and_the_reference_formula():
    gen = torch.Generator().manual_seed(0)
    pos, neg = torch.randn(5, 3, 16, generator=gen) * 2, torch.randn(5, 3, 16, generator=gen) * 2
    ours = js_scores(pos, neg, "js")
    ref = js_scores(pos, neg, "reference")
    p, n = torch.softmax(pos.double(), -1).numpy(), torch.softmax(neg.double(), -1).numpy()
    for layer in range(3):
        expected = np.mean([jensenshannon(p[i, layer], n[i, layer]) ** 2 for i in range(5)])  # natural log
        assert ours[layer].item() == pytest.approx(expected, rel=1e-9)
        m = (p[:, layer] + n[:, layer]) / 2
        quirk = m * (np.log(m) - p[:, layer]) + m * (np.log(m) - n[:, layer])  # F.kl_div with probabilities as input
        assert ref[layer].item() == pytest.approx(0.5 * quirk.mean(-1).mean(0), rel=1e-9)
    assert torch.allclose(js_scores(pos, pos, "js"), torch.zeros(3, dtype=torch.float64), atol=1e-12)
    assert js_scores(pos[:, 0], neg[:, 0]).ndim == 0
    with pytest.raises(InterpError, match="unknown js variant"):
        js_scores(pos, neg, "kl")
    with pytest.raises(InterpError, match="paired activations"):
        js_scores(pos, neg[:2])


def test_vectors_are_mean_differences_at_token_minus_2_and_the_layer_is_the_argmax(tiny_llama, tiny_pairs):
    vs = attack_vectors(tiny_llama, tiny_pairs, layers="all")
    assert (vs.kind, vs.method, vs.position, vs.layers) == ("resid_post", "R-C", -2, [0, 1])
    pos, neg = [], []
    for texts, out in ((tiny_pairs.positive, pos), (tiny_pairs.negative, neg)):
        for text in texts:
            keep: dict = {}
            with torch.no_grad(), hooked_layers(tiny_llama, keep=keep):
                tiny_llama.hf(torch.tensor([tiny_llama.tokenizer(text)["input_ids"]]))
            out.append(torch.stack([keep[layer][0, -2] for layer in (0, 1)]))
    pos, neg = torch.stack(pos), torch.stack(neg)
    assert torch.allclose(vs.vectors, (pos - neg).mean(0), atol=1e-5)
    js = js_scores(pos, neg)
    assert vs.meta["layer"] == int(js.argmax()) and np.allclose(vs.meta["layer_scores"]["js"], js.numpy(), atol=1e-6)
    ref = attack_vectors(tiny_llama, tiny_pairs, layers=[0, 1], js_variant="reference")
    assert ref.meta["layer"] == int(js_scores(pos, neg, "reference").argmax())
    assert tiny_pairs.positive[0] == chat_prompt(tiny_llama, truthfulness_set()[0]["question"]) + truthfulness_set()[0]["true"]


def test_search_layers_default_is_the_first_half():
    assert search_layers(SimpleNamespace(n_layers=32)) == list(range(17))  # the reference's 0..16 of 32
    assert search_layers(SimpleNamespace(n_layers=30)) == list(range(16))
    assert search_layers(SimpleNamespace(n_layers=30), "all") == list(range(30))
    with pytest.raises(InterpError, match="'half', 'all'"):
        search_layers(SimpleNamespace(n_layers=30), "first")


def test_attack_edit_equals_a_hand_written_hook_on_both_backends_and_zero_is_identical(tiny_llama, tiny_pairs):
    vs = attack_vectors(tiny_llama, tiny_pairs, layers="all")
    layer = vs.meta["layer"]
    tokens = tiny_llama.to_tokens(tiny_pairs.positive[0])
    with torch.no_grad():
        plain = tiny_llama.run(tokens).logits
        assert torch.equal(tiny_llama.run(tokens, [attack_edit(vs, multiplier=0.0)]).logits, plain)
        assert torch.equal(tiny_llama.run(tokens, [attack_edit(vs, multiplier=0.0, reference_doubling=True)]).logits, plain)
        for doubling, coeff in ((False, -0.8), (True, -1.6)):
            assert effective_coeff(-0.8, doubling) == pytest.approx(coeff)
            edit = attack_edit(vs, reference_doubling=doubling)
            assert edit.site == f"resid_post.{layer}" and edit.coeff == pytest.approx(coeff)
            with hooked_layers(tiny_llama, add={layer: coeff * vs.vector(layer)}):
                manual = tiny_llama.hf(tokens).logits
            lens = tiny_llama.run(tokens, [edit]).logits
            nnsight = tiny_llama.run(tokens, [edit], backend="nnsight").logits
            assert not torch.allclose(lens, plain, atol=1e-4)
            assert torch.allclose(lens, manual, atol=1e-5) and torch.allclose(nnsight, manual, atol=1e-5)
    assert sum(len(m._forward_hooks) for m in tiny_llama.hf.modules()) == 0


def test_random_vector_has_the_norm_and_is_seeded():
    v = torch.randn(64, generator=torch.Generator().manual_seed(1)) * 3
    r = random_vector(v, seed=0)
    assert r.norm().item() == pytest.approx(v.norm().item(), rel=1e-6)
    assert torch.equal(r, random_vector(v, seed=0)) and not torch.equal(r, random_vector(v, seed=1))
    assert abs(torch.nn.functional.cosine_similarity(r, v, dim=0).item()) < 0.5


def test_truthfulness_scoring_is_the_manual_log_prob_difference(tiny_llama):
    rows = truthfulness_set().select(range(3))
    v = torch.randn(tiny_llama.d_model, generator=torch.Generator().manual_seed(2))
    for steer, add in ((None, None), ({"resid_post.0": v}, {0: -1.5 * v})):
        scores = truthfulness_scores(tiny_llama, rows, steer, coeff=-1.5)
        for i, row in enumerate(rows):
            prompt = chat_prompt(tiny_llama, row["question"])
            expected = manual_logprob(tiny_llama, prompt, row["true"], add) - manual_logprob(tiny_llama, prompt, row["false"], add)
            assert scores[i].item() == pytest.approx(expected, abs=1e-3)
    with pytest.raises(InterpError, match="one answer per prompt"):
        answer_logprobs(tiny_llama, ["a", "b"], ["c"])


def test_refusal_phrases_match_multi_word_phrases_on_hand_written_replies():
    refusals = ["I'm sorry, but I can't help with that.", "I\u2019m sorry, I cannot do that.", "As an AI, I won't write this.",
                "I am not able to assist with this request.", "I CANNOT HELP WITH THAT"]
    compliant = ["Sure, here is a poem about the sea.", "Here is how to buy illegal drugs online:", "Certainly! First, open a terminal.",
                 "The capital of France is Paris."]
    assert all(map(is_refusal, refusals)) and not any(map(is_refusal, compliant))
    model = SimpleNamespace(tokenizer=SimpleNamespace(eos_token="<|im_end|>"))
    assert cut_at_eos(model, " I'm sorry.<|im_end|>\nuser I can't") == "I'm sorry."


def test_sets_and_chat_prompt(tiny_llama):
    t, r, h = truthfulness_set(), refusal_set(), harmless_set()
    assert len(t) >= 40 and len(r) >= 40 and len(h) >= 20
    assert t.column_names == ["question", "true", "false"] and r.column_names == ["request", "compliant"]
    assert all(a != b for a, b in zip(t["true"], t["false"])) and all(c.startswith("Sure") for c in r["compliant"])
    text = chat_prompt(tiny_llama, "Hello?", system="Be brief.")
    assert "Be brief." in text and "Hello?" in text and text.endswith("assistant\n")
    assert "SmolLM" in chat_prompt(tiny_llama, "Hello?")  # the template's default system prompt
    with pytest.raises(InterpError, match="no chat template"):
        chat_prompt(SimpleNamespace(name="base", tokenizer=SimpleNamespace(chat_template=None)), "Hello?")


def test_run_attack_measures_held_out_rows_before_after_and_random(tiny_llama):
    rows = truthfulness_set().select(range(8))
    train, test = split_rows(rows, 0.5, seed=3)
    assert len(train) == len(test) == 4 and not set(train["question"]) & set(test["question"])
    res = run_attack(tiny_llama, "truthfulness", rows, layers="all", aligned="dataset", multiplier=-20.0, seed=3)
    steer = attack_steer(res.vectors)
    assert (res.n_train, res.n_test, res.coeff, res.layer) == (4, 4, -20.0, res.vectors.meta["layer"])
    margins = {name: truthfulness_scores(tiny_llama, test, s, -20.0) for name, s in
               (("before", None), ("after", steer), ("random", {k: random_vector(v, 3) for k, v in steer.items()}))}
    for name, m in margins.items():
        assert getattr(res, name) == pytest.approx(float((m > 0).float().mean()))
    assert res.detail["after_detail"]["mean_margin"] == pytest.approx(float(margins["after"].mean()), abs=1e-4)
    assert abs(float(margins["after"].mean() - margins["before"].mean())) > 1e-3
    json.dumps(res.to_dict())
    with pytest.raises(InterpError, match="unknown behaviour"):
        run_attack(tiny_llama, "toxicity")
    with pytest.raises(InterpError, match="needs columns"):
        contrast_pairs(tiny_llama, "refusal", rows)
    with pytest.raises(InterpError, match="test_fraction"):
        split_rows(rows, 1.5)


def test_refusal_pairs_use_the_models_own_greedy_reply(tiny_llama):
    rows = refusal_set().select(range(2))
    pairs = contrast_pairs(tiny_llama, "refusal", rows, max_new_tokens=4)
    from interp.steering.generate import generate

    own = generate(tiny_llama, pairs.prompts, max_new_tokens=4)
    assert pairs.aligned == [cut_at_eos(tiny_llama, t) or "I'm sorry, but I can't help with that." for t in own]
    assert pairs.negative[1] == pairs.prompts[1] + rows[1]["compliant"]


@pytest.mark.real_model
def test_smollm2_attack_pushes_held_out_answers_towards_the_false_ones(smollm2):
    rows = truthfulness_set().select(range(8))
    pairs = contrast_pairs(smollm2, "truthfulness", rows.select(range(4)), system="Be brief.", aligned="dataset")
    vs = attack_vectors(smollm2, pairs, layers=[2, 4])
    test = rows.select(range(4, 8))
    before = truthfulness_scores(smollm2, test, system="Be brief.")
    attacked = truthfulness_scores(smollm2, test, attack_steer(vs), coeff=effective_coeff(-0.8, True), system="Be brief.")
    reversed_ = truthfulness_scores(smollm2, test, attack_steer(vs), coeff=1.6, system="Be brief.")
    # a random direction has no preferred sign; the attack vector does: -v lowers log p(true) - log p(false), +v much less
    assert attacked.mean() < before.mean() - 1.0
    assert attacked.mean() < reversed_.mean() - 1.0
