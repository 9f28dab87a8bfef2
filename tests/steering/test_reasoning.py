"""Reasoning vectors: the correctness filter against a hand argmax, the vectors against hand reads, the held-out sweep."""

import pytest
import torch

from interp.errors import InterpError
from interp.steering.puzzles import PuzzleSet, deduction_puzzles, ioi_puzzles
from interp.steering.reasoning import reasoning_sweep, reasoning_vectors, vectors_from_puzzles


def _hand_hits(model, puzzles) -> list[bool]:
    """Per prompt, one at a time through the HF model: is the first candidate the highest-logit one?"""
    ids = puzzles.candidate_ids(model.tokenizer)
    hits = []
    with torch.no_grad():
        for prompt, cand in zip(puzzles.prompts, ids):
            logits = model.hf(torch.tensor([model.tokenizer(prompt)["input_ids"]])).logits[0, -1]
            hits.append(int(logits[cand].argmax()) == 0)
    return hits


def _hand_last_resid0(model, texts) -> torch.Tensor:
    """Layer 0's output at each text's last token, caught by a plain forward hook (removed after).

    Not ``output_hidden_states=True``: transformers 5 leaves its output-capturing hooks installed
    after such a call, which other tests would count as leaked hooks.
    """
    caught = []
    handle = model.hf.model.layers[0].register_forward_hook(
        lambda module, args, out: caught.append((out[0] if isinstance(out, tuple) else out)[0, -1].clone()))
    try:
        with torch.no_grad():
            for t in texts:
                model.hf(torch.tensor([model.tokenizer(t)["input_ids"]]))
    finally:
        handle.remove()
    return torch.stack(caught)


def test_only_correct_keeps_exactly_the_rows_the_model_gets_right(tiny_llama):
    rv = reasoning_vectors(tiny_llama, "deduction", "R", n=16, layers=[0, 1], seed=2)
    hits = _hand_hits(tiny_llama, rv.puzzles)
    assert rv.hits == hits and 0 < rv.n_correct < 16  # the filter has something to keep and something to drop
    assert rv.n_correct == sum(hits) and rv.baseline_accuracy == sum(hits) / 16 and rv.n_used == rv.n_correct
    kept = [p for p, h in zip(rv.puzzles.positives, hits) if h]
    assert torch.allclose(rv.vectors.vector(0), _hand_last_resid0(tiny_llama, kept).mean(0), atol=1e-5)
    assert rv.vectors.meta["n_positive"] == len(kept) and rv.vectors.meta["n_correct"] == sum(hits)
    assert rv.vectors.meta["task"] == "deduction" and rv.vectors.layers == [0, 1]
    everything = reasoning_vectors(tiny_llama, "deduction", "R", n=16, layers=[0], seed=2, only_correct=False)
    assert everything.n_used == 16 and everything.vectors.meta["n_positive"] == 16
    assert torch.allclose(everything.vectors.vector(0), _hand_last_resid0(tiny_llama, rv.puzzles.positives).mean(0), atol=1e-5)


def test_contrast_vectors_pair_each_kept_positive_with_its_negative(tiny_llama):
    rv = reasoning_vectors(tiny_llama, "ioi", "R-C", n=10, layers=[0], seed=1)
    keep = [i for i, h in enumerate(rv.hits) if h]
    assert rv.puzzles.task == "ioi" and 0 < len(keep)
    pos = _hand_last_resid0(tiny_llama, [rv.puzzles.positives[i] for i in keep])
    neg = _hand_last_resid0(tiny_llama, [rv.puzzles.negatives[i] for i in keep])
    assert torch.allclose(rv.vectors.vector(0), (pos - neg).mean(0), atol=1e-5)
    pca = reasoning_vectors(tiny_llama, "ioi", "PCA-C", n=10, layers=[0], seed=1)
    assert float(pca.vectors.vector(0) @ rv.vectors.vector(0)) > 0  # signed to agree with R-C
    assert torch.allclose(pca.vectors.vector(0).norm(), rv.vectors.vector(0).norm(), atol=1e-4)


def test_reasoning_sweep_builds_on_train_rows_and_measures_held_out_rows(tiny_llama):
    result = reasoning_sweep(tiny_llama, "deduction", "R-C", layer=1, n_train=10, n_test=8, seed=4,
                             coefficients=(0.0, 2.0))
    train = deduction_puzzles(tiny_llama.tokenizer, 10, seed=4)
    assert result.vectors.puzzles == train and len(result.held_out) == 8
    assert not set(result.held_out.prompts) & set(train.prompts)
    hits = _hand_hits(tiny_llama, result.held_out)
    assert result.sweep.accuracy[0] == pytest.approx(sum(hits) / 8) and result.sweep.hits[0].tolist() == hits
    assert result.sweep.layers == [1] and result.sweep.kl_mean[0] == 0.0 and result.sweep.kl_mean[1] > 0
    assert result.sweep.meta["n_train_used"] == result.vectors.n_correct


def test_a_set_the_model_gets_all_wrong_cannot_be_filtered(tiny_llama):
    rows = ioi_puzzles(tiny_llama.tokenizer, 4, seed=0)
    hits = _hand_hits(tiny_llama, rows)
    # put each row's losing candidate first, so the model is wrong on every row
    flipped = [c if not h else c[::-1] for c, h in zip(rows.candidates, hits)]
    wrong = PuzzleSet("ioi", rows.prompts, [c[0] for c in flipped], flipped, rows.negatives, rows.contrast, 0)
    with pytest.raises(InterpError, match="answered none of the 4"):
        vectors_from_puzzles(tiny_llama, wrong, "R-C", [0])
    assert vectors_from_puzzles(tiny_llama, wrong, "R", [0], only_correct=False).n_used == 4
    with pytest.raises(InterpError, match="n_train and n_test"):
        reasoning_sweep(tiny_llama, n_train=0)
    with pytest.raises(InterpError, match="unknown control-vector method"):
        reasoning_vectors(tiny_llama, "ioi", "PCA", n=4, layers=[0])


@pytest.mark.real_model
def test_smollm2_solves_ioi_and_single_rule_deduction_and_steering_moves_it(smollm2):
    # measured (seed 0): IOI 64/64, single-rule deduction 64/64, two-rule deduction 0.53 (chance)
    single = reasoning_vectors(smollm2, "deduction", "R-C", n=12, layers=[15], seed=0, n_rules=1)
    assert single.baseline_accuracy >= 0.9
    result = reasoning_sweep(smollm2, "ioi", "R-C", layer=15, n_train=8, n_test=8, seed=0, coefficients=(0.0, -1.0))
    assert result.vectors.baseline_accuracy >= 0.85 and result.sweep.accuracy[0] >= 0.85
    assert result.sweep.kl_mean[0] == 0.0 and result.sweep.kl_mean[1] > 0.01
    assert result.sweep.mass_right[1] < result.sweep.mass_right[0]  # steering against "correct" lowers the answer's mass
