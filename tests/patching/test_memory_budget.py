"""Memory-bounded batches: the batched engine and IG size their forwards from ``max_memory``, and the
numbers are bit-identical (``torch.equal``) for any budget, from one patch per forward to everything at once.
``interp patch --max-memory`` parses sizes and refuses, in one line, a bad value or one too small for a patch."""

from __future__ import annotations

import pytest
import torch

from interp import InterpError
from interp.ioi import generate_ioi
from interp.metrics import MetricContext, logit_diff
from interp.patching.activation import BatchedEngine, row_bytes, sweep
from interp.cli_support import parse_size
from interp.patching.integrated_gradients import integrated_gradients

COMPS = ("resid_pre", "head_out", "mlp_act")


@pytest.fixture(scope="module")
def runs(tiny_llama):
    tokens = generate_ioi(tiny_llama.tokenizer, 3).tokenize(tiny_llama.tokenizer)
    sites = [f"{k}.{layer}" for k in ("resid_pre", "head_out", "mlp_act") for layer in range(tiny_llama.n_layers)]
    with torch.no_grad():
        clean = tiny_llama.run(tokens.clean, read=sites)
        corrupt = tiny_llama.run(tokens.corrupt, read=sites)
    ctx = MetricContext(tokens.answer, tokens.wrong, clean.logits[:, -1], corrupt.logits[:, -1])
    one = tokens.corrupt.shape[0] * row_bytes(tiny_llama, 0, 0, tokens.corrupt.shape[1])  # the costliest patch
    return tokens, clean, corrupt, ctx, one


@pytest.mark.parametrize("component", COMPS)
def test_sweeps_are_identical_for_any_budget(tiny_llama, runs, component):
    tokens, clean, _, ctx, one = runs
    layers = [1] if component == "mlp_act" else None
    results, largest = {}, {}
    for budget in (one, 3 * one, 40 * one, None, 10**15):
        engine, sizes = BatchedEngine(tiny_llama, tokens.corrupt, max_memory=budget), []
        run_chunk = engine._run_chunk
        engine._run_chunk = lambda kind, layer, chunk, *rest: sizes.append(len(chunk)) or run_chunk(kind, layer, chunk, *rest)
        results[budget], _ = sweep(tiny_llama, component, tokens.corrupt, clean.acts, logit_diff, ctx, layers=layers,
                                   batched=engine)
        largest[budget] = max(sizes)  # patches per forward (no-op patches run none)
    assert largest[one] == 1, "a budget of one patch runs one patch per forward"
    assert largest[10**15] > 3, "a large budget packs many patches per forward"
    reference = results[one]
    assert torch.isfinite(reference).all()
    for budget, values in results.items():
        assert torch.equal(values, reference), f"{component}: budget {budget} differs from one patch per forward"


def test_ig_is_identical_for_any_budget(tiny_llama, runs):
    tokens, clean, corrupt, ctx, _ = runs
    n, n_pos = tokens.corrupt.shape
    step = n * row_bytes(tiny_llama, 0, 0, n_pos, grad=True)  # one step at layer 0
    out = {budget: integrated_gradients(tiny_llama, ["resid_pre", "head_out"], tokens.corrupt, clean.acts, corrupt.acts,
                                        logit_diff, ctx, steps=5, max_memory=budget)
           for budget in (step, 2 * step, 10**15)}
    for budget, estimates in out.items():
        for comp, estimate in estimates.items():
            assert torch.equal(estimate, out[10**15][comp]), f"IG {comp}: budget {budget} differs"


def test_a_budget_below_one_patch_is_refused_in_one_line(tiny_llama, runs):
    tokens, *_, one = runs
    with pytest.raises(InterpError, match="more than the memory budget") as err:
        BatchedEngine(tiny_llama, tokens.corrupt, max_memory=one - 1)
    assert "\n" not in str(err.value)


def test_parse_size():
    assert parse_size("512MB") == 512 * 10**6
    assert parse_size("2GB") == 2 * 10**9
    assert parse_size("1.5GiB") == 3 * 2**29
    assert parse_size("1000") == 1000 and parse_size("64kib") == 65536
    for bad in ("", "2XB", "-1GB", "GB", "0", "1.2.3GB"):
        with pytest.raises(InterpError, match="--max-memory must be a size"):
            parse_size(bad)


def test_cli_max_memory(tmp_path, interp_cli):
    bad = interp_cli("patch", "--model", "tiny-llama", "--max-memory", "lots", "--out", tmp_path / "bad")
    assert bad.returncode != 0 and "--max-memory must be a size such as 512MB" in bad.stderr
    small = interp_cli("patch", "--model", "tiny-llama", "--n-prompts", "2", "--max-memory", "1KB",
                       "--out", tmp_path / "small")
    assert small.returncode != 0 and "more than the memory budget of 1.0 KB" in small.stderr
    assert len([line for line in small.stderr.strip().splitlines() if line.strip()]) == 1, small.stderr
