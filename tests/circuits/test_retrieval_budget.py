"""Retrieval heads under a memory budget and at long contexts.

Decode batches are sized from ``max_memory``; scores, responses and the masking curve are identical for any
budget, from one prompt per batch to all at once. A decode step reduces each layer's attention pattern to its
top keys as the forward reaches that layer, so it never holds more than one layer's pattern (measured here by
the patterns still alive when the next one arrives), also at a long context.
"""

from __future__ import annotations

import weakref

import pytest
import torch

from interp import InterpError
from interp.circuits import retrieval
from interp.circuits.haystack import NEEDLES, niah_prompts
from interp.circuits.retrieval import (check_request, decode_batch, decode_row_bytes, detect_retrieval_heads,
                                       masking_curve, prefill_peak_bytes)


@pytest.fixture(scope="module")
def prompts(tiny_llama):
    out = niah_prompts(tiny_llama.tokenizer, [100, 140], [0, 100], needles=NEEDLES[:2], template="plain")
    assert len({len(p.ids) for p in out}) == 2 and len(out) == 8  # two lengths, four prompts of each
    return out


@pytest.fixture
def rows_per_step(monkeypatch):
    sizes = []
    step = retrieval.decode_step
    monkeypatch.setattr(retrieval, "decode_step", lambda model, tokens, *rest: sizes.append(tokens.shape[0]) or
                        step(model, tokens, *rest))
    return sizes


def test_scores_and_masking_are_identical_for_any_budget(tiny_llama, prompts, rows_per_step):
    longest = max(len(p.ids) for p in prompts)
    one = prefill_peak_bytes(tiny_llama, longest) + decode_row_bytes(tiny_llama, longest, 5)  # one prompt per batch
    results = {}
    for budget in (None, one, 10**15):
        rows_per_step.clear()
        found = detect_retrieval_heads(tiny_llama, prompts, max_new_tokens=5, max_memory=budget)
        assert max(rows_per_step) == (1 if budget == one else 4), (budget, rows_per_step)
        found.success[:] = True  # a random model recalls nothing; rank its heads anyway to mask them
        found.head_score = found.per_test.mean(0)
        curve = masking_curve(tiny_llama, prompts, found, ks=[0, 2], max_new_tokens=4, max_memory=budget)
        results[budget] = found, curve
    ref, ref_curve = results[None]
    for budget, (found, curve) in results.items():
        assert torch.equal(found.per_test, ref.per_test) and torch.equal(found.recall, ref.recall), budget
        assert found.responses == ref.responses
        for name in ("recall_top", "recall_random"):
            assert torch.equal(getattr(curve, name), getattr(ref_curve, name)), (budget, name)


def test_a_step_holds_one_layer_pattern_at_a_time(tiny_llama, monkeypatch):
    """At 2,000 tokens: when a layer's pattern reaches the scorer, no earlier layer's pattern is still alive."""
    arrived: list[weakref.ref] = []
    peaks: list[int] = []
    reduce = retrieval.TopKeys.__setitem__

    def counting(self, site, pattern):
        arrived.append(weakref.ref(pattern))
        peaks.append(sum(ref() is not None for ref in arrived))
        reduce(self, site, pattern)

    monkeypatch.setattr(retrieval.TopKeys, "__setitem__", counting)
    long = niah_prompts(tiny_llama.tokenizer, [2000], [50], needles=NEEDLES[:1], template="plain")
    out = decode_batch(tiny_llama, long, max_new_tokens=3)
    steps = len(out[0].tokens)
    assert len(arrived) == steps * tiny_llama.n_layers >= 2 * tiny_llama.n_layers  # every layer read at every step
    assert max(peaks) == 1, peaks  # one pattern [rows, heads, 1, 2000] alive at a time
    assert tiny_llama.n_layers > 1
    # reading the patterns through Model.run_cached instead keeps every layer's until the step returns
    past = retrieval.prefill(tiny_llama, long[0])
    held, _ = tiny_llama.run_cached(torch.tensor([[long[0].ids[-1]]]), read=[f"attn_pattern.{layer}" for layer in
                                                                             range(tiny_llama.n_layers)], past=past)
    assert len(held.acts) == tiny_llama.n_layers


def test_a_budget_below_one_prompt_is_refused_in_one_line(tiny_llama, prompts):
    for call in (lambda: detect_retrieval_heads(tiny_llama, prompts, max_new_tokens=3, max_memory=1000),
                 lambda: check_request(tiny_llama, [200], [1], max_new_tokens=3, max_memory=1000)):
        with pytest.raises(InterpError, match="decoding a context of .* more than the memory budget of 1.0 KB") as err:
            call()
        assert "\n" not in str(err.value)


def test_cli_max_memory(tmp_path, interp_cli):
    small = interp_cli("heads", "retrieval", "--model", "tiny-llama", "--lengths", "120", "--depths", "0", "--ks", "1",
                       "--max-new-tokens", "3", "--max-memory", "1KB", "--out", tmp_path / "small")
    assert small.returncode != 0 and "more than the memory budget of 1.0 KB" in small.stderr
    assert len([line for line in small.stderr.strip().splitlines() if line.strip()]) == 1, small.stderr
