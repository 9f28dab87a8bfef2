"""The real Qwen2.5-Coder-0.5B-Instruct (4-bit GGUF, dequantized): backend parity, IOI, patching engines agree.

Qwen2 is Llama's layout with q/k/v biases, 14 query heads sharing 2 KV heads and an output matrix
separate from the embedding (in this GGUF). The tiny random qwen2 in the parity matrix covers the
architecture; this checks the real weights through every backend and the batched engine.
"""

import pytest
import torch

import interp
from interp.ioi import generate_ioi
from interp.metrics import MetricContext, logit_diff
from interp.patching.activation import BatchedEngine, sweep

pytestmark = pytest.mark.real_model

N_IOI = 16  # IOI prompts for the solved-on-most check; the first two are the parity and sweep prompts


@pytest.fixture(scope="module")
def qwen():
    return interp.load("qwen2.5-coder-0.5b", backend="torch")


@pytest.fixture(scope="module")
def ioi(qwen):
    return generate_ioi(qwen.tokenizer, N_IOI, seed=0).tokenize(qwen.tokenizer)


def test_backends_match_hf_and_each_other(qwen, ioi):
    tokens = ioi.clean[:2]
    sites = ["resid_pre.0", "resid_mid.3", "attn_out.5", "head_out.9", "mlp_act.11", "mlp_out.17",
             "norm_scale.7.ln1", "norm_scale.7.ln2", "resid_post.23", "norm_scale.final"]
    with torch.no_grad():
        hf_logits = qwen.hf(tokens).logits
        runs = {b: qwen.run(tokens, read=sites, backend=b) for b in ("torch", "nnsight", "lens")}
    for backend, out in runs.items():
        assert (out.logits - hf_logits).abs().max() <= 1e-4, backend
        for site in sites:
            assert out.acts[site].shape == runs["torch"].acts[site].shape, (backend, site)
            assert (out.acts[site] - runs["torch"].acts[site]).abs().max() <= 1e-4, (backend, site)
    assert runs["torch"].acts["head_out.9"].shape[2:] == (qwen.n_heads, qwen.d_head)


def test_solves_ioi_on_most_prompts(qwen, ioi):
    with torch.no_grad():
        clean = qwen.run(ioi.clean).logits[:, -1]
        corrupt = qwen.run(ioi.corrupt).logits[:, -1]
    ctx = MetricContext(ioi.answer, ioi.wrong, clean, corrupt)
    clean_ld, corrupt_ld = logit_diff(clean, ctx), logit_diff(corrupt, ctx)
    # measured (seed 0): clean > 0 on 14 of 16 (mean 4.8), corrupt < 0 on 15 of 16 (mean -4.7)
    assert (clean_ld > 0).sum() >= 12 and clean_ld.mean() > 2
    assert (corrupt_ld < 0).sum() >= 12 and corrupt_ld.mean() < -2


def test_batched_engine_equals_hooks(qwen, ioi):
    """Batched sweep over whole grids; the hooks engine (one forward per patch) on a subset of their cells."""
    clean_tokens, corrupt_tokens = ioi.clean[:2], ioi.corrupt[:2]
    layers = [0, 11, 23]
    with torch.no_grad():
        clean = qwen.run(clean_tokens, read=[f"{k}.{layer}" for k in ("resid_pre", "head_out") for layer in layers])
        corrupt = qwen.run(corrupt_tokens)
    ctx = MetricContext(ioi.answer[:2], ioi.wrong[:2], clean.logits[:, -1], corrupt.logits[:, -1])
    engine = BatchedEngine(qwen, corrupt_tokens)
    changed = (clean_tokens != corrupt_tokens).any(0).nonzero().flatten().tolist()  # the corrupted name (S2)
    positions = [1, *changed, clean_tokens.shape[1] - 1]  # a no-op cell, the corrupted one, the last token
    base = logit_diff(ctx.corrupt_logits, ctx)
    for component in ("resid_pre", "head_out"):
        fast, fast_done = sweep(qwen, component, corrupt_tokens, clean.acts, logit_diff, ctx, layers=layers,
                                batched=engine)
        assert fast_done.all()
        subset = torch.zeros_like(fast_done)
        if component == "resid_pre":
            subset[:, positions] = True
        else:  # the four heads that matter most, and two that barely do
            effect = (fast - base.view(-1, 1, 1)).abs().mean(0)
            subset.view(-1)[effect.flatten().topk(4).indices] = True
            subset[0, :2] = True
        slow, slow_done = sweep(qwen, component, corrupt_tokens, clean.acts, logit_diff, ctx, layers=layers,
                                engine="hooks", done=~subset)
        assert slow_done.all()
        assert (fast[:, subset] - slow[:, subset]).abs().max() <= 1e-4, component
        assert (fast[:, subset] - base[:, None]).abs().max() > 0.1, component  # some cells matter
