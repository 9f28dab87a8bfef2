"""Generation with steering: unsteered it is HF's own greedy decoding; steering changes it; hooks never stay."""

import pytest
import torch

from interp.errors import InterpError
from interp.steering.generate import _positions, generate

PROMPTS = ["When Mary and John went to the store,", "The capital of France is", "Once upon a time"]


def test_unsteered_greedy_equals_hf_generate(tiny_llama):
    ours = generate(tiny_llama, PROMPTS, max_new_tokens=6)
    for prompt, text in zip(PROMPTS, ours):
        ids = tiny_llama.to_tokens(prompt)
        with torch.no_grad():
            ref = tiny_llama.hf.generate(ids, max_new_tokens=6, do_sample=False, min_new_tokens=6,
                                         pad_token_id=tiny_llama.tokenizer.eos_token_id or 0)
        assert text == tiny_llama.tokenizer.decode(ref[0, ids.shape[1]:]), prompt


def test_steering_changes_the_text_and_zero_steering_does_not(tiny_llama):
    vector = torch.randn(tiny_llama.d_model, generator=torch.Generator().manual_seed(0))
    plain = generate(tiny_llama, PROMPTS, max_new_tokens=5)
    zero = generate(tiny_llama, PROMPTS, {"resid_post.0": vector}, coeff=0.0, max_new_tokens=5)
    strong = generate(tiny_llama, PROMPTS, {"resid_post.0": vector}, coeff=40.0, max_new_tokens=5)
    assert zero == plain and strong != plain
    for backend in ("nnsight", "lens"):
        assert generate(tiny_llama, PROMPTS, {"resid_post.0": vector}, coeff=40.0, max_new_tokens=5, backend=backend) == strong
    handles = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in tiny_llama.hf.modules())
    assert handles == 0  # every step removed its hooks


def test_where_and_sampling():
    assert _positions("all", 4, 6) == [0, 1, 2, 3, 4, 5]
    assert _positions("prompt", 4, 6) == [0, 1, 2, 3]
    assert _positions("generated", 4, 6) == [3, 4, 5]
    assert _positions(-2, 4, 6) == [2, 3, 4, 5] and _positions(1, 4, 6) == [1, 2, 3, 4, 5]
    with pytest.raises(InterpError, match="outside a prompt of 4"):
        _positions(7, 4, 6)
    with pytest.raises(InterpError, match="where must be"):
        _positions("middle", 4, 6)


def test_sampling_is_seeded_and_prompts_of_any_length_batch(tiny_llama):
    a = generate(tiny_llama, PROMPTS, max_new_tokens=5, temperature=1.0, seed=3)
    assert a == generate(tiny_llama, PROMPTS, max_new_tokens=5, temperature=1.0, seed=3)
    assert a != generate(tiny_llama, PROMPTS, max_new_tokens=5, temperature=1.0, seed=4)
    greedy = generate(tiny_llama, PROMPTS, max_new_tokens=4)
    assert greedy == [generate(tiny_llama, p, max_new_tokens=4)[0] for p in PROMPTS]
    with pytest.raises(InterpError, match="max_new_tokens"):
        generate(tiny_llama, PROMPTS, max_new_tokens=0)


def test_cached_generation_equals_whole_sequence_reruns(tiny_llama):
    vector = torch.randn(tiny_llama.d_model, generator=torch.Generator().manual_seed(1))
    for where in ("all", "prompt", "generated", -2):
        cached = generate(tiny_llama, PROMPTS, {"resid_post.1": vector}, coeff=8.0, where=where, max_new_tokens=5,
                          keep_norm=where == "all")
        rerun = generate(tiny_llama, PROMPTS, {"resid_post.1": vector}, coeff=8.0, where=where, max_new_tokens=5,
                         keep_norm=where == "all", backend="torch")
        assert cached == rerun, where


def test_until_stops_a_group_early(tiny_llama):
    full = generate(tiny_llama, PROMPTS[1], max_new_tokens=8)[0]
    short = generate(tiny_llama, PROMPTS[1], max_new_tokens=8, until=lambda text: len(text) >= len(full[:3]))[0]
    assert full.startswith(short) and len(short) < len(full)
