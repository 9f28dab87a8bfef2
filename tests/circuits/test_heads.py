"""Head detectors and direct logit attribution, checked against brute-force loops and hand computation."""

import pytest
import torch

from interp.circuits.heads import (
    detect_heads,
    direct_logit_attribution,
    duplicate_token_scores,
    induction_scores,
    previous_token_scores,
    repeated_random_tokens,
)
from interp.errors import InterpError
from interp.ioi import generate_ioi


def _loop_scores(pattern, tokens):
    """Brute force: for each query, sum attention over target keys; average over queries with a target."""
    b, h, n, _ = pattern.shape
    out = {}
    for name in ("induction", "previous_token", "duplicate_token"):
        total, count = torch.zeros(h, dtype=torch.float64), 0
        for i in range(b):
            for q in range(n):
                if name == "previous_token":
                    keys = [q - 1] if q >= 1 else []
                elif name == "duplicate_token":
                    keys = [k for k in range(q) if tokens[i, k] == tokens[i, q]]
                else:
                    keys = [k for k in range(1, q) if tokens[i, k - 1] == tokens[i, q]]
                if keys:
                    count += 1
                    for k in keys:
                        total += pattern[i, :, q, k].double()
        out[name] = total / count
    return out


def _random_causal_pattern(b, h, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(b, h, n, n, generator=g).masked_fill(torch.ones(n, n).triu(1).bool(), float("-inf"))
    return scores.softmax(-1)


def test_scores_match_brute_force_loop_on_tokens_with_repeats():
    tokens = torch.tensor([[5, 7, 9, 5, 7, 2, 9, 5], [1, 1, 3, 4, 3, 1, 8, 4]])
    pattern = _random_causal_pattern(2, 3, 8)
    loop = _loop_scores(pattern, tokens)
    torch.testing.assert_close(induction_scores(pattern, tokens).double(), loop["induction"])
    torch.testing.assert_close(previous_token_scores(pattern, tokens).double(), loop["previous_token"])
    torch.testing.assert_close(duplicate_token_scores(pattern, tokens).double(), loop["duplicate_token"])


def test_ideal_heads_on_repeated_sequence_score_one():
    T = 6
    tokens = torch.cat([torch.arange(10, 10 + T), torch.arange(10, 10 + T)])[None]
    n = 2 * T
    ideal = torch.zeros(1, 3, n, n)
    ideal[0, :, 0, 0] = 1.0
    for i in range(1, n):
        ideal[0, 0, i, i - 1] = 1.0  # head 0: previous token
        ideal[0, 1, i, i - T + 1 if i >= T else 0] = 1.0  # head 1: induction in the second half
        ideal[0, 2, i, i - T if i >= T else 0] = 1.0  # head 2: duplicate token in the second half
    torch.testing.assert_close(previous_token_scores(ideal), torch.tensor([1.0, 1 / (n - 1), 1 / (n - 1)]))  # query 1 -> key 0
    torch.testing.assert_close(induction_scores(ideal, tokens), torch.tensor([0.0, 1.0, 0.0]))
    torch.testing.assert_close(duplicate_token_scores(ideal, tokens), torch.tensor([0.0, 0.0, 1.0]))


def test_detect_heads_matches_direct_read_of_attention(tiny_llama):
    model, T = tiny_llama, 7
    tokens = repeated_random_tokens(model, n_prompts=2, period=T, seed=3)
    assert torch.equal(tokens[:, :T], tokens[:, T:]) and len(set(tokens[0, :T].tolist())) == T
    scores = detect_heads(model, tokens)
    pats = model.run(tokens, read=[f"attn_pattern.{layer}" for layer in range(model.n_layers)]).acts
    for layer in range(model.n_layers):
        p = pats[f"attn_pattern.{layer}"]
        second = range(T, 2 * T)
        ind = torch.stack([p[:, :, i, i - T + 1] for i in second], -1).mean((0, 2))
        dup = torch.stack([p[:, :, i, i - T] for i in second], -1).mean((0, 2))
        prev = torch.stack([p[:, :, i, i - 1] for i in range(1, 2 * T)], -1).mean((0, 2))
        torch.testing.assert_close(scores.induction[layer], ind)
        torch.testing.assert_close(scores.duplicate_token[layer], dup)
        torch.testing.assert_close(scores.previous_token[layer], prev)
    other = detect_heads(model, tokens, backend="nnsight")
    for name, grid in scores.tensors().items():
        torch.testing.assert_close(other.tensors()[name], grid, atol=1e-5, rtol=1e-4)


@pytest.fixture(scope="module")
def ioi(tiny_llama):
    return generate_ioi(tiny_llama.tokenizer, 3, seed=2).tokenize(tiny_llama.tokenizer)


def test_dla_per_head_by_hand_and_sum_equals_logit_diff(tiny_llama, ioi):
    model = tiny_llama
    dla = direct_logit_attribution(model, ioi.clean, ioi.answer, ioi.wrong)
    torch.testing.assert_close(dla.total, dla.logit_diff, atol=1e-4, rtol=1e-4)
    # one head by hand from the HF weights, with the final RMS scale recomputed from the residual
    layer, head, d = 1, 2, model.d_head
    acts = model.run(ioi.clean, read=[f"head_out.{layer}", f"resid_post.{model.n_layers - 1}"]).acts
    resid = acts[f"resid_post.{model.n_layers - 1}"][:, -1]
    norm = model.hf.model.norm
    scale = (resid.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon).sqrt()
    w_o = model.hf.model.layers[layer].self_attn.o_proj.weight[:, head * d:(head + 1) * d]  # [d_model, d_head]
    written = acts[f"head_out.{layer}"][:, -1, head] @ w_o.T
    w_u = model.hf.lm_head.weight
    by_hand = ((written / scale * norm.weight) * (w_u[ioi.answer] - w_u[ioi.wrong])).sum(-1)
    torch.testing.assert_close(dla.heads[:, layer, head], by_hand, atol=1e-5, rtol=1e-4)
    other = direct_logit_attribution(model, ioi.clean, ioi.answer, ioi.wrong, backend="nnsight")
    torch.testing.assert_close(other.heads, dla.heads, atol=1e-5, rtol=1e-4)


def test_dla_refuses_post_norm_architecture(tiny_gemma3):
    tokens = torch.tensor([[2, 3, 4]])
    with pytest.raises(InterpError, match="post-norms"):
        direct_logit_attribution(tiny_gemma3, tokens, torch.tensor([5]), torch.tensor([6]))


def test_dla_sums_to_the_logit_difference_on_other_families_and_refuses_where_it_cannot():
    from family_models import build, tokens

    for row in ("mistral-window", "qwen3-headdim", "qwen2-window"):
        model = build(row)
        clean, _ = tokens(model)
        dla = direct_logit_attribution(model, clean, torch.tensor([11, 12, 13]), torch.tensor([21, 22, 23]))
        assert torch.allclose(dla.total, dla.logit_diff, atol=1e-4), row
    for row, reason in (("gpt2", "uses LayerNorm"), ("olmo2", "post-norms"), ("gemma2-caps", "post-norms"),
                        ("granite", "divided by 4"), ("gptj", "LayerNorm")):
        model = build(row)
        with pytest.raises(InterpError, match=reason):
            direct_logit_attribution(model, tokens(model)[0], torch.tensor([11, 12, 13]), torch.tensor([21, 22, 23]))


@pytest.mark.real_model
def test_smollm2_has_strong_previous_token_and_induction_heads(smollm2):
    scores = detect_heads(smollm2, n_prompts=2, period=15)
    # random weights give ~1/pos; a trained model has near-pure heads of both kinds
    assert float(scores.previous_token.max()) > 0.6
    assert float(scores.induction.max()) > 0.4
