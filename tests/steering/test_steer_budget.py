"""Steering sweeps and generation under a memory budget: prompts of one length run as many per forward as
``max_memory`` allows, and the results are identical (``torch.equal``, the same texts) for any budget, from one
prompt per forward to all at once; a budget too small for one prompt is a one-line error."""

from __future__ import annotations

import pytest
import torch

from interp import InterpError
from interp.steering.generate import generate, generation_row_bytes
from interp.steering.limits import forward_row_bytes
from interp.steering.puzzles import deduction_puzzles
from interp.steering.sweep import candidate_hits, coefficient_sweep

# two groups of equal token length (checked below), so a budget decides how each group splits
TEXTS = ["The cat sat on the", "The dog ran to the", "A bird flew over the", "My friend went to the",
         "Once upon a time", "In the beginning", "At the end"]


@pytest.fixture
def rows_per_forward(tiny_llama):
    """Records the batch size of every forward through `Model.run` and `Model.run_cached`."""
    sizes = []
    run, cached = tiny_llama.run, tiny_llama.run_cached
    tiny_llama.run = lambda tokens, *a, **kw: sizes.append(tokens.shape[0]) or run(tokens, *a, **kw)
    tiny_llama.run_cached = lambda tokens, *a, **kw: sizes.append(tokens.shape[0]) or cached(tokens, *a, **kw)
    yield sizes
    del tiny_llama.run, tiny_llama.run_cached  # the class's own methods again (assigning them back would shadow them)


@pytest.fixture(scope="module")
def puzzles(tiny_llama):
    rows = deduction_puzzles(tiny_llama.tokenizer, 8, seed=0)
    groups = tiny_llama.length_groups(rows.prompts)
    assert max(len(r) for r, _ in groups) > 1  # some prompts share a length
    return rows


@pytest.fixture
def one_thread():
    """torch on one thread: with several, its CPU kernels may split the softmax over the vocabulary differently for
    different batch sizes, which moves kl and entropy by float rounding (measured: 2e-7 relative); one thread makes
    them bit-equal."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


def test_sweep_and_hits_are_identical_for_any_budget(tiny_llama, puzzles, rows_per_forward, one_thread):
    vector = 3.0 * torch.randn(tiny_llama.d_model, generator=torch.Generator().manual_seed(0))
    ids = puzzles.candidate_ids(tiny_llama.tokenizer)
    lengths = [len(tiny_llama.tokenizer(p)["input_ids"]) for p in puzzles.prompts]
    one = forward_row_bytes(tiny_llama, max(lengths))  # the costliest prompt, alone
    assert 2 * forward_row_bytes(tiny_llama, min(lengths)) > one  # so this budget runs one prompt per forward
    results, largest = {}, {}
    for budget in (None, one, 2 * one, 10**15):
        rows_per_forward.clear()
        results[budget] = (coefficient_sweep(tiny_llama, vector, [1], puzzles.prompts, ids, coefficients=[-2.0, 0.0, 1.5],
                                             max_memory=budget),
                           candidate_hits(tiny_llama, puzzles.prompts, ids, max_memory=budget))
        largest[budget] = max(rows_per_forward)
    assert largest[one] == 1 and largest[2 * one] == 2 and largest[10**15] > 2
    ref, ref_hits = results[None]
    for budget, (got, hits) in results.items():
        for name in ("kl", "entropy", "hits"):
            assert torch.equal(getattr(got, name), getattr(ref, name)), f"{name} at budget {budget}"
        assert got.rows() == ref.rows() and torch.equal(hits, ref_hits), budget


def test_generation_is_identical_for_any_budget(tiny_llama, rows_per_forward):
    groups = tiny_llama.length_groups(TEXTS)
    assert sorted(len(r) for r, _ in groups)[-1] >= 3
    steer = {"resid_post.0": torch.randn(tiny_llama.d_model, generator=torch.Generator().manual_seed(1))}
    longest = max(t.shape[1] for _, t in groups)
    one = generation_row_bytes(tiny_llama, longest, 4)
    for options in ({}, {"temperature": 1.0, "seed": 5}, {"steer": steer, "coeff": 8.0}):
        texts, largest = {}, {}
        for budget in (None, one, 2 * one, 10**15):
            rows_per_forward.clear()
            texts[budget] = generate(tiny_llama, TEXTS, max_new_tokens=4, max_memory=budget, **options)
            largest[budget] = max(rows_per_forward)
        assert largest[one] == 1 and largest[2 * one] == 2 and largest[10**15] >= 3
        assert all(t == texts[None] for t in texts.values()), options
    rows_per_forward.clear()
    on_lens = generate(tiny_llama, TEXTS, max_new_tokens=3, backend="lens",
                       max_memory=generation_row_bytes(tiny_llama, longest, 3, "lens"))
    assert max(rows_per_forward) == 1 and on_lens == generate(tiny_llama, TEXTS, max_new_tokens=3)


def test_a_budget_below_one_prompt_is_refused_in_one_line(tiny_llama, puzzles):
    ids = puzzles.candidate_ids(tiny_llama.tokenizer)
    calls = [lambda: coefficient_sweep(tiny_llama, torch.ones(tiny_llama.d_model), [0], puzzles.prompts, ids, max_memory=1000),
             lambda: candidate_hits(tiny_llama, puzzles.prompts, ids, max_memory=1000),
             lambda: generate(tiny_llama, TEXTS, max_new_tokens=2, max_memory=1000)]
    for call in calls:
        with pytest.raises(InterpError, match="more than the memory budget of 1.0 KB: raise --max-memory") as err:
            call()
        assert "\n" not in str(err.value)


def test_cli_max_memory(tmp_path, interp_cli):
    small = interp_cli("steer", "generate", "--model", "tiny-llama", "-p", "Hello there", "--max-new-tokens", "2",
                       "--max-memory", "1KB", "--out", tmp_path / "small")
    assert small.returncode != 0 and "more than the memory budget of 1.0 KB" in small.stderr
    assert len([line for line in small.stderr.strip().splitlines() if line.strip()]) == 1, small.stderr
    bad = interp_cli("steer", "eval", "--vectors", tmp_path / "none", "--layers", "0", "--max-memory", "lots",
                     "--out", tmp_path / "bad")
    assert bad.returncode != 0 and "--max-memory must be a size such as 512MB" in bad.stderr
    ok = interp_cli("steer", "generate", "--model", "tiny-llama", "-p", "Hello there", "-p", "Good day", "--max-new-tokens",
                    "2", "--max-memory", "2GB", "--out", tmp_path / "ok", "--json")
    assert ok.returncode == 0, ok.stderr
