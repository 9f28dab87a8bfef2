"""The coefficient sweep against a hand-written HF forward hook and hand-computed KL, entropy, accuracy and mass."""

import math

import pytest
import torch

from interp.errors import InterpError
from interp.interventions import Add
from interp.steering.effects import answer_accuracy, answer_mass
from interp.steering.puzzles import deduction_puzzles
from interp.steering.sweep import SweepResult, coefficient_sweep, sweep_figure
from interp.steering.vectors import build_vectors


@pytest.fixture(scope="module")
def puzzles(tiny_llama):
    rows = deduction_puzzles(tiny_llama.tokenizer, 6, seed=0)
    assert len(tiny_llama.length_groups(rows.prompts)) > 1  # the prompts do differ in token length
    return rows


@pytest.fixture(scope="module")
def vector(tiny_llama):
    return 3.0 * torch.randn(tiny_llama.d_model, generator=torch.Generator().manual_seed(0))


def _hand_logits(model, prompt: str, steer: dict[int, torch.Tensor], positions: str = "all") -> torch.Tensor:
    """Last-position logits of one prompt via the HF model, with a forward hook adding steer[L] to layer L's output."""
    handles = []
    for layer, delta in steer.items():
        def hook(module, args, output, delta=delta):
            out = output.clone()
            if positions == "all":
                out += delta
            else:
                out[:, -1] += delta
            return out
        handles.append(model.hf.model.layers[layer].register_forward_hook(hook))
    try:
        with torch.no_grad():
            return model.hf(torch.tensor([model.tokenizer(prompt)["input_ids"]])).logits[0, -1].double()
    finally:
        for handle in handles:
            handle.remove()


def _hooks(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.hf.modules())


@pytest.mark.parametrize("layers,positions", [([1], "all"), ([0, 1], "last")])
def test_sweep_equals_a_hand_hook_and_hand_metrics(tiny_llama, puzzles, vector, layers, positions):
    coeffs = [-1.5, 0.0, 2.0]
    ids = puzzles.candidate_ids(tiny_llama.tokenizer)
    correct = torch.tensor([0, 1, 0, 1, 0, 1])  # not always the first candidate
    result = coefficient_sweep(tiny_llama, vector, layers, puzzles.prompts, ids, correct, coeffs, positions=positions)
    assert _hooks(tiny_llama) == 0
    plain = torch.stack([_hand_logits(tiny_llama, p, {}) for p in puzzles.prompts])
    for i, coeff in enumerate(coeffs):
        steered = torch.stack([_hand_logits(tiny_llama, p, {layer: coeff * vector for layer in layers}, positions)
                               for p in puzzles.prompts])
        logp, logq = plain.log_softmax(-1), steered.log_softmax(-1)
        kl = (logp.exp() * (logp - logq)).sum(-1)
        entropy = -(logq.exp() * logq).sum(-1) / math.log(2)
        probs = logq.exp()[torch.arange(6)[:, None], ids]
        right = probs[torch.arange(6), correct]
        hits = steered[torch.arange(6)[:, None], ids].argmax(-1) == correct
        assert torch.allclose(result.kl[i].double(), kl, atol=2e-5), coeff
        assert torch.allclose(result.entropy[i].double(), entropy, atol=2e-5)
        assert torch.equal(result.hits[i], hits)
        assert result.accuracy[i] == pytest.approx(float(hits.double().mean()))
        assert result.kl_mean[i] == pytest.approx(float(kl.mean()), abs=2e-5)
        assert result.kl_std[i] == pytest.approx(float(kl.std(correction=0)), abs=2e-5)
        assert result.entropy_mean[i] == pytest.approx(float(entropy.mean()), abs=2e-5)
        assert result.mass_right[i] == pytest.approx(float(right.mean()), abs=1e-6)
        assert result.mass_wrong[i] == pytest.approx(float((probs.sum(-1) - right).mean()), abs=1e-6)
        # the library's own effect functions on the hand logits agree too
        assert result.accuracy[i] == answer_accuracy(steered.float(), ids, correct)
        assert result.mass_right[i] == pytest.approx(answer_mass(steered.float(), ids, correct)[0], abs=1e-6)
    assert min(result.kl_mean[0], result.kl_mean[2]) > 1e-3  # the steering did something


def test_coefficient_zero_is_bit_identical_to_the_unsteered_run(tiny_llama, puzzles, vector):
    ids = puzzles.candidate_ids(tiny_llama.tokenizer)
    for keep_norm in (False, True):
        result = coefficient_sweep(tiny_llama, vector, 1, puzzles.prompts, ids, coefficients=(0.0, 1.0), keep_norm=keep_norm)
        assert torch.equal(result.kl[0], torch.zeros(6)) and result.kl_mean[0] == 0.0 and result.kl_std[0] == 0.0
        assert (result.kl[1] > 0).all()
    for rows, tokens in tiny_llama.length_groups(puzzles.prompts):
        plain = tiny_llama.run(tokens).logits
        for backend in ("lens", "nnsight"):  # an Add with coefficient 0 changes no bit either
            zero = tiny_llama.run(tokens, [Add("resid_post.1", vector, 0.0)], backend=backend).logits
            assert torch.equal(zero, plain)
    with torch.no_grad():
        hf = torch.stack([tiny_llama.hf(torch.tensor([tiny_llama.tokenizer(p)["input_ids"]])).logits[0, -1] for p in puzzles.prompts])
    entropy = -(hf.log_softmax(-1).exp() * hf.log_softmax(-1)).sum(-1) / math.log(2)
    assert torch.allclose(result.entropy[0], entropy, atol=1e-5)


def test_backends_give_the_same_sweep(tiny_llama, puzzles, vector):
    kwargs = {"coefficients": (-1.0, 0.0, 1.0), "positions": -3}
    lens = coefficient_sweep(tiny_llama, vector, [0], puzzles.prompts, puzzles.candidates, **kwargs)
    nn = coefficient_sweep(tiny_llama, vector, [0], puzzles.prompts, puzzles.candidates, backend="nnsight", **kwargs)
    assert torch.allclose(lens.kl, nn.kl, atol=1e-5) and torch.allclose(lens.entropy, nn.entropy, atol=1e-5)
    assert torch.equal(lens.hits, nn.hits) and lens.mass_right == pytest.approx(nn.mass_right, abs=1e-6)
    assert lens.kl_mean[0] > 1e-3 and _hooks(tiny_llama) == 0


def test_vector_set_input_table_and_figure(tiny_llama, puzzles):
    vs = build_vectors(tiny_llama, puzzles.positives, puzzles.negatives, "R-C", layers=[0, 1])
    ids = puzzles.candidate_ids(tiny_llama.tokenizer)
    from_set = coefficient_sweep(tiny_llama, vs, None, puzzles.prompts, ids, coefficients=(0.0, 4.0))
    from_tensor = coefficient_sweep(tiny_llama, vs.vectors, [0, 1], puzzles.prompts, ids, coefficients=(0.0, 4.0))
    only_one = coefficient_sweep(tiny_llama, vs, 1, puzzles.prompts, ids, coefficients=(0.0, 4.0))
    assert from_set.layers == [0, 1] and from_set.meta["method"] == "R-C" and torch.equal(from_set.kl, from_tensor.kl)
    assert not torch.equal(from_set.kl, only_one.kl) and only_one.layers == [1]
    assert from_set.at(4.0)["kl_mean"] == from_set.kl_mean[1] and len(from_set.table().splitlines()) == 3
    fig = sweep_figure({"R-C": from_set, "one layer": only_one})
    assert len(fig.data) == 6 and list(fig.data[0].y) == from_set.accuracy and list(fig.data[1].y) == from_set.kl_mean
    assert list(fig.data[5].y) == only_one.entropy_mean and list(fig.data[0].x) == [0.0, 4.0]
    assert isinstance(from_set, SweepResult) and from_set.n_prompts == 6


def test_bad_input_is_an_interp_error(tiny_llama, puzzles, vector):
    prompts, ids = puzzles.prompts, puzzles.candidate_ids(tiny_llama.tokenizer)
    with pytest.raises(InterpError, match="does not fit layers"):
        coefficient_sweep(tiny_llama, torch.zeros(3, tiny_llama.d_model), [0, 1], prompts, ids)
    with pytest.raises(InterpError, match="needs the layer"):
        coefficient_sweep(tiny_llama, vector, None, prompts, ids)
    with pytest.raises(InterpError, match="not \\(64,\\)"):
        coefficient_sweep(tiny_llama, torch.zeros(5), 0, prompts, ids)
    with pytest.raises(InterpError, match="n_prompts=6"):
        coefficient_sweep(tiny_llama, vector, 0, prompts, ids[:3])
    with pytest.raises(InterpError, match="one candidate index"):
        coefficient_sweep(tiny_llama, vector, 0, prompts, ids, correct=[2] * 6)
    with pytest.raises(InterpError, match="positions must be"):
        coefficient_sweep(tiny_llama, vector, 0, prompts, ids, positions="prompt")
    with pytest.raises(InterpError, match="outside a prompt"):
        coefficient_sweep(tiny_llama, vector, 0, prompts, ids, positions=99)
    with pytest.raises(InterpError, match="out of range"):
        coefficient_sweep(tiny_llama, vector, 5, prompts, ids)
    with pytest.raises(InterpError, match="was not swept"):
        coefficient_sweep(tiny_llama, vector, 0, prompts[:1], ids[:1], coefficients=(0.0,)).at(1.0)
