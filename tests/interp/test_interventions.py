"""Replace, Add and Ablate on small tensors, against results computed by hand (interp.interventions)."""

import dataclasses

import pytest
import torch

from interp import Ablate, Add, InterpError, Intervention, Replace
from interp.interventions import apply_all


def act() -> torch.Tensor:
    """[batch 2, pos 3, d 2] with distinct entries: act[b, p, d] = 100 b + 10 p + d."""
    b, p, d = torch.meshgrid(torch.arange(2), torch.arange(3), torch.arange(2), indexing="ij")
    return (100 * b + 10 * p + d).float()


def check_pure(iv: Intervention, x: torch.Tensor) -> torch.Tensor:
    """Apply ``iv`` and check it neither edited ``x`` in place nor returned a view of it."""
    before = x.clone()
    out = iv.apply(x)
    assert torch.equal(x, before), "the input was modified in place"
    assert out.data_ptr() != x.data_ptr(), "the output shares memory with the input"
    assert out.shape == x.shape and out.dtype == x.dtype
    return out


# ------------------------------------------------------------------------------ Replace


def test_replace_whole_activation():
    value = torch.full((2, 3, 2), 7.0)
    assert torch.equal(check_pure(Replace("resid_pre.0", value), act()), value)


def test_replace_broadcasts_a_vector_at_one_position():
    out = check_pure(Replace("resid_pre.0", torch.tensor([-1.0, -2.0]), index=(slice(None), 1)), act())
    expected = torch.tensor(
        [[[0, 1], [-1, -2], [20, 21]],
         [[100, 101], [-1, -2], [120, 121]]], dtype=torch.float32)
    assert torch.equal(out, expected)


def test_replace_scalar_at_one_feature():
    out = check_pure(Replace("mlp_act.0", torch.tensor(5.0), index=(..., 1)), act())
    expected = act()
    expected[:, :, 1] = 5.0
    assert torch.equal(out, expected)
    assert torch.equal(out[..., 0], act()[..., 0])


def test_replace_one_position_per_row_with_index_tensors():
    rows, positions = torch.tensor([0, 1]), torch.tensor([2, 0])
    value = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    out = check_pure(Replace("resid_pre.0", value, index=(rows, positions)), act())
    expected = act()
    expected[0, 2] = torch.tensor([1.0, 2.0])
    expected[1, 0] = torch.tensor([3.0, 4.0])
    assert torch.equal(out, expected)


def test_replace_casts_value_to_the_activation_dtype():
    x = act().to(torch.bfloat16)
    out = check_pure(Replace("resid_pre.0", torch.tensor([0.5, 0.25], dtype=torch.float64), index=(slice(None), 0)), x)
    assert out.dtype == torch.bfloat16
    assert out[:, 0].tolist() == [[0.5, 0.25], [0.5, 0.25]]


@pytest.mark.parametrize(
    "value, index",
    [(torch.zeros(3), None), (torch.zeros(2, 3, 5), None), (torch.zeros(3), (slice(None), 0)), (torch.zeros(2), (slice(None), 7))],
)
def test_replace_that_does_not_fit_raises_one_line_interp_error(value, index):
    with pytest.raises(InterpError, match=r"does not fit the activation of shape \(2, 3, 2\)") as err:
        Replace("resid_pre.0", value, index=index).apply(act())
    assert "\n" not in str(err.value)


def test_autograd_flows_through_replace():
    x = act().requires_grad_(True)
    value = torch.tensor([1.0, 2.0], requires_grad=True)
    out = Replace("resid_pre.0", value, index=(slice(None), 1)).apply(x)
    weights = torch.arange(12, dtype=torch.float32).reshape(2, 3, 2)
    gx, gv = torch.autograd.grad((out * weights).sum(), [x, value])
    expected_gx = weights.clone()
    expected_gx[:, 1] = 0  # the replaced part no longer depends on x
    assert torch.equal(gx, expected_gx)
    assert torch.equal(gv, weights[:, 1].sum(0))  # the value is broadcast over both rows
    assert x.grad is None and x.is_leaf  # torch.autograd.grad accumulates nothing into x


def test_interventions_are_frozen_data():
    iv = Replace("resid_pre.0", torch.zeros(2))
    with pytest.raises(dataclasses.FrozenInstanceError):
        iv.site = "resid_pre.1"


# ------------------------------------------------------------------------------ Add


def test_add_everywhere():
    out = check_pure(Add("resid_post.0", torch.tensor([1.0, -1.0])), act())
    assert torch.equal(out, act() + torch.tensor([1.0, -1.0]))


def test_add_with_coeff_at_positions():
    out = check_pure(Add("resid_post.0", torch.tensor([1.0, 2.0]), coeff=-3.0, positions=[0, 2]), act())
    expected = act()
    expected[:, 0] += torch.tensor([-3.0, -6.0])
    expected[:, 2] += torch.tensor([-3.0, -6.0])
    assert torch.equal(out, expected)
    assert torch.equal(out[:, 1], act()[:, 1])


def test_add_at_one_position_and_with_a_tensor_of_positions():
    v = torch.tensor([0.5, 0.5])
    one = check_pure(Add("resid_post.0", v, positions=1), act())
    many = check_pure(Add("resid_post.0", v, positions=torch.tensor([1])), act())
    expected = act()
    expected[:, 1] += 0.5
    assert torch.equal(one, expected) and torch.equal(many, expected)


def test_add_casts_vector_dtype():
    x = act().double()
    out = check_pure(Add("resid_post.0", torch.tensor([1, 2], dtype=torch.float32), coeff=0.5), x)
    assert out.dtype == torch.float64 and torch.equal(out, x + torch.tensor([0.5, 1.0], dtype=torch.float64))


@pytest.mark.parametrize("vector, positions", [(torch.ones(3), None), (torch.ones(2), [5])])
def test_add_that_does_not_fit_raises_one_line_interp_error(vector, positions):
    """Like Replace and Ablate: a steering vector of the wrong size is a user mistake, not a crash."""
    with pytest.raises(InterpError, match=r"does not fit the activation of shape \(2, 3, 2\)"):
        Add("resid_post.0", vector, positions=positions).apply(act())


def test_autograd_flows_through_add():
    x = act().requires_grad_(True)
    vector = torch.tensor([1.0, 2.0], requires_grad=True)
    out = Add("resid_post.0", vector, coeff=2.0, positions=[1, 2]).apply(x)
    gx, gv = torch.autograd.grad(out.sum(), [x, vector])
    assert torch.equal(gx, torch.ones_like(x))
    assert torch.equal(gv, torch.full((2,), 2.0 * 2 * 2))  # coeff * batch * positions


# ------------------------------------------------------------------------------ Ablate


def test_zero_ablate_whole_and_indexed():
    assert torch.equal(check_pure(Ablate("attn_out.0"), act()), torch.zeros(2, 3, 2))
    out = check_pure(Ablate("attn_out.0", index=(slice(None), 2)), act())
    expected = act()
    expected[:, 2] = 0
    assert torch.equal(out, expected)


def test_mean_ablate_whole():
    values = torch.stack([torch.ones(3, 2), 3 * torch.ones(3, 2), 5 * torch.ones(3, 2)])  # [ref batch 3, pos, d]
    out = check_pure(Ablate("mlp_out.0", kind="mean", values=values), act())
    assert torch.equal(out, torch.full((2, 3, 2), 3.0))


def test_mean_ablate_at_one_position_uses_that_positions_mean():
    values = torch.arange(4 * 3 * 2, dtype=torch.float32).reshape(4, 3, 2)
    out = check_pure(Ablate("mlp_out.0", kind="mean", index=(slice(None), 1), values=values), act())
    expected = act()
    expected[:, 1] = values[:, 1].mean(0)  # rows [2, 3], [8, 9], [14, 15], [20, 21] -> [11, 12]
    assert expected[0, 1].tolist() == [11.0, 12.0]
    assert torch.equal(out, expected)


def test_mean_ablate_one_head():
    x = torch.zeros(2, 3, 4, 2)  # [batch, pos, heads, d_head]
    values = torch.randn(5, 3, 4, 2, generator=torch.Generator().manual_seed(0))
    out = check_pure(Ablate("head_out.0", kind="mean", index=(slice(None), slice(None), 2), values=values), x)
    expected = x.clone()
    expected[:, :, 2] = values[:, :, 2].mean(0)
    assert torch.allclose(out, expected, atol=0, rtol=0)
    assert out[:, :, [0, 1, 3]].abs().max() == 0


def test_resample_ablate_row_for_row():
    values = -act()
    assert torch.equal(check_pure(Ablate("resid_pre.0", kind="resample", values=values), act()), values)
    out = check_pure(Ablate("resid_pre.0", kind="resample", index=(slice(None), 0), values=values), act())
    expected = act()
    expected[:, 0] = values[:, 0]
    assert torch.equal(out, expected)


@pytest.mark.parametrize("kind", ["mean", "resample"])
def test_ablate_without_values_raises(kind):
    with pytest.raises(InterpError, match=f"{kind}-ablation of mlp_out.3 needs `values`"):
        Ablate("mlp_out.3", kind=kind).apply(act())


def test_unknown_ablation_raises():
    with pytest.raises(InterpError, match="unknown ablation 'median'"):
        Ablate("mlp_out.3", kind="median", values=act()).apply(act())


def test_autograd_flows_through_ablate():
    x = act().requires_grad_(True)
    values = act().requires_grad_(True)
    out = Ablate("resid_pre.0", kind="mean", index=(slice(None), 1), values=values).apply(x)
    gx, gvals = torch.autograd.grad(out.sum(), [x, values])
    expected_gx = torch.ones_like(x)
    expected_gx[:, 1] = 0
    assert torch.equal(gx, expected_gx)
    expected_gv = torch.zeros_like(values)
    expected_gv[:, 1] = 1.0  # mean over 2 reference rows, written into 2 rows
    assert torch.equal(gvals, expected_gv)


# ------------------------------------------------------------------------------ order


def test_apply_all_applies_in_order():
    add = Add("resid_pre.0", torch.ones(2))
    replace = Replace("resid_pre.0", torch.zeros(2), index=(slice(None), 0))
    first_add = apply_all([add, replace], act())
    first_replace = apply_all([replace, add], act())
    assert torch.equal(first_add[:, 0], torch.zeros(2, 2))
    assert torch.equal(first_replace[:, 0], torch.ones(2, 2))
    assert torch.equal(first_add[:, 1:], act()[:, 1:] + 1) and torch.equal(first_replace[:, 1:], act()[:, 1:] + 1)
    x = act()
    assert apply_all([], x) is x
