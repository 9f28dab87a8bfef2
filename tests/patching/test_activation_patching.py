"""Activation patching: the two engines agree, agree with TransformerLens, and mean what they say.

- Engines: the ``batched`` engine (many patches per forward, started at the patched layer from the
  base run's caches) against the ``hooks`` reference (one forward per patch through the backend),
  for every component, both directions and two metrics, on the tiny Llama (full attention: prefix
  reuse) and the tiny Gemma 3 (sliding-window layer: recompute from position 0). The hooks engine
  also runs through nnsight for one component.
- TransformerLens: ``transformer_lens.patching``'s own ``get_act_patch_*`` functions on the lens
  backend's bridge, full grids on the tiny Llama, chosen layers of SmolLM2-135M (``real_model``).
- Meaning: closed-form checks that need no second implementation (causality, the final residual,
  the only changed token), and the metrics against hand computations.
"""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

import interp
from interp import InterpError, Replace
from interp.ioi import generate_ioi
from interp.metrics import METRICS, MetricContext, answer_prob, get_metric, kl, logit_diff, norm_logit_diff
from interp.patching.activation import COMPONENTS, grid_shape, patches, sweep

ENGINE_TOL = 1e-4  # batched vs hooks, float32
TL_TOL = 1e-3  # ours vs TransformerLens's patching functions
MODELS = ("tiny_llama", "tiny_gemma3")
ALL_SITE_KINDS = sorted({kind for kind, _ in COMPONENTS.values()})


# ------------------------------------------------------------------------------------ helpers


class Setup:
    """IOI prompts for one model, its clean and corrupt runs (every patchable site read) and metric context."""

    def __init__(self, model: interp.Model, n_prompts: int = 4):
        self.model = model
        self.tokens = generate_ioi(model.tokenizer, n_prompts).tokenize(model.tokenizer)
        sites = [f"{kind}.{layer}" for kind in ALL_SITE_KINDS for layer in range(model.n_layers)]
        with torch.no_grad():
            self.clean = model.run(self.tokens.clean, read=sites)
            self.corrupt = model.run(self.tokens.corrupt, read=sites)
        self.ctx = MetricContext(self.tokens.answer, self.tokens.wrong,
                                 self.clean.logits[:, -1], self.corrupt.logits[:, -1])
        changed = (self.tokens.clean != self.tokens.corrupt).any(0).nonzero()[:, 0].tolist()
        assert len(changed) == 1, f"IOI swap should change one position, changed {changed}"
        self.k = changed[0]  # the only position where clean and corrupt tokens differ
        self.n_pos = self.tokens.clean.shape[1]

    def base_and_source(self, direction: str):
        """(base tokens, source activations): denoise patches clean into corrupt, noise the reverse."""
        if direction == "denoise":
            return self.tokens.corrupt, self.clean.acts
        return self.tokens.clean, self.corrupt.acts

    def metric_of(self, run, metric=logit_diff) -> torch.Tensor:
        return metric(run.logits[:, -1], self.ctx)


_SETUPS: dict[str, Setup] = {}


def setup_for(model: interp.Model) -> Setup:
    if model.name not in _SETUPS:
        _SETUPS[model.name] = Setup(model)
    return _SETUPS[model.name]


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item()


def assert_close(a: torch.Tensor, b: torch.Tensor, what: str, atol: float) -> None:
    assert tuple(a.shape) == tuple(b.shape), f"{what}: shape {tuple(a.shape)} != {tuple(b.shape)}"
    assert torch.isfinite(a).all() and torch.isfinite(b).all(), f"{what}: non-finite values"
    diff = max_diff(a, b)
    assert diff <= atol, f"{what}: max abs diff {diff:.3g} > {atol:.3g}"


def layers_for(model: interp.Model, component: str) -> list[int] | None:
    return [0, model.n_layers - 1] if component == "mlp_act" else None


def some_cells(model: interp.Model, component: str, n_pos: int, k: int) -> list[tuple[int, ...]]:
    """A few grid cells per component: first/last layer row, position 0, the changed one, the last;
    first/last head or neuron. Cells share layers, so batched chunks hold several patches and start
    at different positions."""
    axes = COMPONENTS[component][1]
    last_row = 1 if component == "mlp_act" else model.n_layers - 1
    h, d = model.n_heads - 1, model.d_mlp - 1
    if axes == ("layer", "pos"):
        return [(0, 0), (0, k), (0, n_pos - 1), (last_row, k), (last_row, n_pos - 1)]
    if axes == ("layer", "head"):
        return [(layer, head) for layer in range(model.n_layers) for head in range(model.n_heads)]
    if axes == ("layer", "head", "pos"):
        return [(0, 0, k), (0, h, 0), (0, h, n_pos - 1), (last_row, 1, k), (last_row, h, n_pos - 1)]
    return [(0, 0), (0, d), (last_row, 7), (last_row, d)]


def sweep_cells(model, component, setup: Setup, direction, metric, cells, engine):
    """Sweep only ``cells`` (the rest are marked done): per-prompt values at those cells, [n, len(cells)]."""
    base, source = setup.base_and_source(direction)
    layers = layers_for(model, component)
    done = torch.ones(grid_shape(model, component, setup.n_pos, layers), dtype=torch.bool)
    for cell in cells:
        done[cell] = False
    values, done_after = sweep(model, component, base, source, metric, setup.ctx, layers=layers,
                               engine=engine, done=done)
    assert done_after.all()
    return torch.stack([values[(slice(None), *cell)] for cell in cells], dim=1)


# ------------------------------------------------------------------------------- engines agree


@pytest.mark.parametrize("direction", ["denoise", "noise"])
@pytest.mark.parametrize("component", list(COMPONENTS))
@pytest.mark.parametrize("fixture", MODELS)
def test_batched_engine_equals_hooks_engine(request, fixture, component, direction):
    model = request.getfixturevalue(fixture)
    setup = setup_for(model)
    cells = some_cells(model, component, setup.n_pos, setup.k)
    values = {}
    for metric in (logit_diff, kl):
        batched = sweep_cells(model, component, setup, direction, metric, cells, "batched")
        hooks = sweep_cells(model, component, setup, direction, metric, cells, "hooks")
        assert_close(batched, hooks, f"{fixture} {component} {direction} {metric.__name__} cells {cells}", ENGINE_TOL)
        values[metric.__name__] = hooks
    # the cells are not all trivial: some patch moves the metric away from the base run's
    base_metric = setup.metric_of(setup.corrupt if direction == "denoise" else setup.clean)
    assert max_diff(values["logit_diff"], base_metric[:, None].expand_as(values["logit_diff"])) > 1e-5
    assert values["kl"].abs().max() > 1e-6


@pytest.mark.parametrize("fixture", MODELS)
def test_batched_engine_full_grid_equals_hooks_engine(request, fixture):
    """A whole grid in production chunking (several chunks per layer, small max_rows) against hooks."""
    model = request.getfixturevalue(fixture)
    setup = setup_for(model)
    base, source = setup.base_and_source("denoise")
    batched, _ = sweep(model, "resid_pre", base, source, logit_diff, setup.ctx, max_rows=12)
    hooks, _ = sweep(model, "resid_pre", base, source, logit_diff, setup.ctx, engine="hooks")
    assert_close(batched, hooks, f"{fixture} resid_pre full grid", ENGINE_TOL)


@pytest.mark.parametrize("fixture", MODELS)
def test_hooks_engine_on_nnsight_equals_lens_and_batched(request, fixture, monkeypatch):
    model = request.getfixturevalue(fixture)
    setup = setup_for(model)
    cells = some_cells(model, "head_out_pos", setup.n_pos, setup.k)
    lens = sweep_cells(model, "head_out_pos", setup, "denoise", logit_diff, cells, "hooks")
    batched = sweep_cells(model, "head_out_pos", setup, "denoise", logit_diff, cells, "batched")
    monkeypatch.setattr(model, "backend_name", "nnsight")  # the hooks engine runs on the model's backend
    nnsight = sweep_cells(model, "head_out_pos", setup, "denoise", logit_diff, cells, "hooks")
    assert_close(nnsight, lens, f"{fixture} head_out_pos nnsight vs lens", ENGINE_TOL)
    assert_close(nnsight, batched, f"{fixture} head_out_pos nnsight vs batched", ENGINE_TOL)


def test_unknown_engine_and_component_raise(tiny_llama):
    setup = setup_for(tiny_llama)
    base, source = setup.base_and_source("denoise")
    with pytest.raises(InterpError, match="unknown engine 'fast'.*batched, hooks"):
        sweep(tiny_llama, "resid_pre", base, source, logit_diff, setup.ctx, engine="fast")
    with pytest.raises(InterpError, match="unknown component 'resid'.*" + ".*".join(COMPONENTS)):
        sweep(tiny_llama, "resid", base, source, logit_diff, setup.ctx)


def test_grid_shapes_and_patch_order(tiny_llama):
    m = tiny_llama
    assert grid_shape(m, "resid_pre", 7) == (m.n_layers, 7)
    assert grid_shape(m, "head_out", 7) == (m.n_layers, m.n_heads)
    assert grid_shape(m, "head_out_pos", 7) == (m.n_layers, m.n_heads, 7)
    assert grid_shape(m, "mlp_act", 7, [1]) == (1, m.d_mlp)
    for comp in COMPONENTS:
        layers = layers_for(m, comp)
        cells = [p.cell for p in patches(m, comp, 5, layers)]
        shape = grid_shape(m, comp, 5, layers)
        assert cells == [tuple(int(i) for i in idx) for idx in torch.cartesian_prod(
            *[torch.arange(s) for s in shape]).reshape(-1, len(shape)).tolist()], comp


# --------------------------------------------------------------------------- vs TransformerLens


def tl_setup(model: interp.Model, n_prompts: int = 4):
    setup = setup_for(model) if n_prompts == 4 else Setup(model, n_prompts)
    bridge = model.backend("lens").bridge
    with torch.no_grad():
        _, clean_cache = bridge.run_with_cache(setup.tokens.clean)
    tl_metric = lambda logits: logit_diff(logits[:, -1], setup.ctx).mean()  # noqa: E731
    return setup, bridge, clean_cache, tl_metric


def test_tiny_llama_full_grids_match_transformer_lens(tiny_llama):
    from transformer_lens import patching as tl

    setup, bridge, clean_cache, metric = tl_setup(tiny_llama)
    base, source = setup.base_and_source("denoise")
    cases = [
        ("resid_pre", tl.get_act_patch_resid_pre, None),
        ("attn_out", tl.get_act_patch_attn_out, None),
        ("mlp_out", tl.get_act_patch_mlp_out, None),
        ("head_out", tl.get_act_patch_attn_head_out_all_pos, None),
        ("head_out_pos", tl.get_act_patch_attn_head_out_by_pos, (0, 2, 1)),  # TL: [layer, pos, head]
    ]
    for component, tl_fn, perm in cases:
        with torch.no_grad():
            ref = tl_fn(bridge, setup.tokens.corrupt, clean_cache, metric)
        ours, _ = sweep(tiny_llama, component, base, source, logit_diff, setup.ctx)
        mean = ours.mean(0)
        if perm is not None:
            mean = mean.permute(*perm)
        assert_close(mean, ref.cpu(), f"tiny-llama {component} vs TransformerLens", TL_TOL)
        assert ref.abs().max() > 1e-3, f"{component}: TransformerLens grid is all zeros"


def test_tiny_llama_noising_matches_transformer_lens(tiny_llama):
    from transformer_lens import patching as tl

    setup = setup_for(tiny_llama)
    bridge = tiny_llama.backend("lens").bridge
    with torch.no_grad():
        _, corrupt_cache = bridge.run_with_cache(setup.tokens.corrupt)
        ref = tl.get_act_patch_resid_pre(bridge, setup.tokens.clean, corrupt_cache,
                                         lambda logits: logit_diff(logits[:, -1], setup.ctx).mean())
    base, source = setup.base_and_source("noise")
    ours, _ = sweep(tiny_llama, "resid_pre", base, source, logit_diff, setup.ctx)
    assert_close(ours.mean(0), ref.cpu(), "tiny-llama resid_pre noising vs TransformerLens", TL_TOL)


@pytest.mark.real_model
def test_smollm2_chosen_layers_match_transformer_lens(smollm2):
    from transformer_lens import patching as tl

    layers = [0, 14, 29]
    setup, bridge, clean_cache, metric = tl_setup(smollm2, n_prompts=2)
    base, source = setup.base_and_source("denoise")
    cases = [
        ("resid_pre", tl.get_act_patch_resid_pre, ["layer", "pos"], setup.n_pos),
        ("attn_out", tl.get_act_patch_attn_out, ["layer", "pos"], setup.n_pos),
        ("mlp_out", tl.get_act_patch_mlp_out, ["layer", "pos"], setup.n_pos),
        ("head_out", tl.get_act_patch_attn_head_out_all_pos, ["layer", "head"], smollm2.n_heads),
    ]
    for component, tl_fn, columns, width in cases:
        # an index_df patches only its rows and returns one value per row, in row order
        index_df = pd.DataFrame([(layer, i) for layer in layers for i in range(width)], columns=columns)
        with torch.no_grad():
            ref = tl_fn(bridge, setup.tokens.corrupt, clean_cache, metric, index_axis_names=None, index_df=index_df)
        ours, _ = sweep(smollm2, component, base, source, logit_diff, setup.ctx, layers=layers)
        assert ours.shape[1:] == (len(layers), width)
        assert_close(ours.mean(0), ref.cpu().reshape(len(layers), width), f"smollm2 {component} layers {layers}", TL_TOL)
        assert ref.abs().max() > 1e-2, f"{component}: TransformerLens values are all ~0"


# ----------------------------------------------------------------------------------- semantics


@pytest.mark.parametrize("fixture", MODELS)
def test_replacing_all_of_resid_pre_0_gives_the_clean_logits(request, fixture):
    model = request.getfixturevalue(fixture)
    setup = setup_for(model)
    for backend in ("lens", "nnsight", "torch"):
        for index in (None, (slice(None), slice(None))):
            out = model.run(setup.tokens.corrupt, [Replace("resid_pre.0", setup.clean.acts["resid_pre.0"], index=index)],
                            backend=backend)
            assert_close(out.logits, setup.clean.logits, f"{fixture} {backend} index {index}", 1e-5)


@pytest.mark.parametrize("engine", ["batched", "hooks"])
@pytest.mark.parametrize("fixture", MODELS)
def test_patching_the_final_residual_at_the_last_position_gives_the_source_metric(request, fixture, engine):
    """The logits of the last position depend on resid_post of the last layer there and nothing else."""
    model = request.getfixturevalue(fixture)
    setup = setup_for(model)
    last = model.n_layers - 1
    for direction, source_run in (("denoise", setup.clean), ("noise", setup.corrupt)):
        base, source = setup.base_and_source(direction)
        for metric in (logit_diff, kl, answer_prob):
            done = torch.ones(1, setup.n_pos, dtype=torch.bool)
            done[0, -1] = False
            values, _ = sweep(model, "resid_post", base, source, metric, setup.ctx, layers=[last], engine=engine, done=done)
            assert_close(values[:, 0, -1], setup.metric_of(source_run, metric), f"{fixture} {direction} {metric.__name__}", 1e-4)
    # and denoising it restores the clean distribution: KL to clean is 0
    base, source = setup.base_and_source("denoise")
    values, _ = sweep(model, "resid_post", base, source, kl, setup.ctx, layers=[last], engine=engine)
    assert values[:, 0, -1].abs().max() < 1e-5
    # patching an earlier position of the final residual changes nothing: the corrupt run's KL
    corrupt_kl = setup.metric_of(setup.corrupt, kl)
    assert (corrupt_kl > 1e-6).all()
    assert_close(values[:, 0, :-1], corrupt_kl[:, None].expand(-1, setup.n_pos - 1), f"{fixture} earlier positions", 1e-5)


@pytest.mark.parametrize("direction", ["denoise", "noise"])
@pytest.mark.parametrize("fixture", MODELS)
def test_resid_pre_0_patch_is_the_source_run_at_the_changed_token_and_a_no_op_elsewhere(request, fixture, direction):
    """Clean and corrupt differ in one token only: patching its embedding turns one run into the other."""
    model = request.getfixturevalue(fixture)
    setup = setup_for(model)
    base, source = setup.base_and_source(direction)
    base_run, source_run = (setup.corrupt, setup.clean) if direction == "denoise" else (setup.clean, setup.corrupt)
    values, _ = sweep(model, "resid_pre", base, source, logit_diff, setup.ctx)
    assert_close(values[:, 0, setup.k], setup.metric_of(source_run), f"{fixture} resid_pre.0 at the changed token", 1e-4)
    others = [p for p in range(setup.n_pos) if p != setup.k]
    assert_close(values[:, 0, others], setup.metric_of(base_run)[:, None].expand(-1, len(others)),
                 f"{fixture} resid_pre.0 at unchanged tokens", 1e-4)


@pytest.mark.parametrize("fixture", MODELS)
def test_positions_before_the_changed_token_change_nothing(request, fixture):
    """Causality: before the first changed token clean and corrupt activations are equal in every layer."""
    model = request.getfixturevalue(fixture)
    setup = setup_for(model)
    base, source = setup.base_and_source("denoise")
    corrupt_metric = setup.metric_of(setup.corrupt)
    for component in ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "head_out_pos"):
        values, _ = sweep(model, component, base, source, logit_diff, setup.ctx)
        before = values[..., : setup.k]
        expected = corrupt_metric.reshape(-1, *[1] * (before.ndim - 1)).expand_as(before)
        assert_close(before, expected, f"{fixture} {component} before position {setup.k}", 1e-4)
        at_k = values[..., setup.k]
        assert (at_k - corrupt_metric.reshape(-1, *[1] * (at_k.ndim - 1))).abs().max() > 1e-4, \
            f"{fixture} {component}: patching the changed position has no effect anywhere"


@pytest.mark.parametrize("fixture", MODELS)
def test_whole_component_patches_agree_across_granularity(request, fixture):
    """All heads everywhere = the attention output everywhere; all neurons = the MLP output."""
    model = request.getfixturevalue(fixture)
    setup = setup_for(model)
    acts = setup.clean.acts
    for layer in range(model.n_layers):
        for fine, coarse in ((f"head_out.{layer}", f"attn_out.{layer}"), (f"mlp_act.{layer}", f"mlp_out.{layer}")):
            a = model.run(setup.tokens.corrupt, [Replace(fine, acts[fine])]).logits
            b = model.run(setup.tokens.corrupt, [Replace(coarse, acts[coarse])]).logits
            assert_close(a, b, f"{fixture} {fine} vs {coarse}", 1e-4)


# ------------------------------------------------------------------------------------- metrics


def _ctx() -> MetricContext:
    clean = torch.tensor([[2.0, 0.0, -1.0, 0.5], [0.0, 3.0, 1.0, 0.0]])
    corrupt = torch.tensor([[0.0, 1.0, 0.0, 0.0], [1.0, 0.0, 2.0, 0.0]])
    return MetricContext(answer=torch.tensor([0, 1]), wrong=torch.tensor([1, 2]), clean_logits=clean, corrupt_logits=corrupt)


def test_logit_diff_is_answer_minus_wrong():
    ctx = _ctx()
    assert torch.equal(logit_diff(ctx.clean_logits, ctx), torch.tensor([2.0, 2.0]))
    assert torch.equal(logit_diff(ctx.corrupt_logits, ctx), torch.tensor([-1.0, -2.0]))


def test_norm_logit_diff_maps_clean_to_one_and_corrupt_to_zero():
    ctx = _ctx()
    # mean clean logit diff 2, mean corrupt -1.5
    assert torch.allclose(norm_logit_diff(ctx.clean_logits, ctx), torch.tensor([1.0, 1.0]))
    assert torch.allclose(norm_logit_diff(ctx.corrupt_logits, ctx), torch.tensor([0.5 / 3.5, -0.5 / 3.5]))
    assert norm_logit_diff(ctx.corrupt_logits, ctx).mean().abs() < 1e-7
    halfway = ctx.corrupt_logits.clone()
    halfway[:, 0] += 1.75  # raises the answer logit of row 0 by half the clean-corrupt gap
    assert torch.allclose(norm_logit_diff(halfway, ctx)[0], torch.tensor(0.5 / 3.5 + 0.5))
    same = MetricContext(ctx.answer, ctx.wrong, ctx.clean_logits, ctx.clean_logits)
    with pytest.raises(InterpError, match="norm_logit_diff is undefined"):
        norm_logit_diff(ctx.clean_logits, same)


def test_norm_logit_diff_on_real_runs(tiny_llama):
    setup = setup_for(tiny_llama)
    assert abs(norm_logit_diff(setup.clean.logits[:, -1], setup.ctx).mean().item() - 1) < 1e-5
    assert abs(norm_logit_diff(setup.corrupt.logits[:, -1], setup.ctx).mean().item()) < 1e-5


def test_answer_prob_is_the_softmax_probability_of_the_answer():
    ctx = _ctx()
    row0 = [2.0, 0.0, -1.0, 0.5]
    expected0 = math.exp(2.0) / sum(math.exp(x) for x in row0)
    row1 = [0.0, 3.0, 1.0, 0.0]
    expected1 = math.exp(3.0) / sum(math.exp(x) for x in row1)
    assert torch.allclose(answer_prob(ctx.clean_logits, ctx), torch.tensor([expected0, expected1]))
    uniform = torch.zeros(2, 4)
    assert torch.allclose(answer_prob(uniform, ctx), torch.tensor([0.25, 0.25]))
    # float16 logits are computed in float32
    assert answer_prob(ctx.clean_logits.half(), ctx).dtype == torch.float32


def test_kl_is_zero_for_identical_logits_nonnegative_and_matches_a_hand_computation():
    ctx = _ctx()
    assert torch.allclose(kl(ctx.clean_logits, ctx), torch.zeros(2), atol=1e-6)
    assert torch.allclose(kl(ctx.clean_logits + 5.0, ctx), torch.zeros(2), atol=1e-6)  # shift-invariant
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        logits = torch.randn(2, 4, generator=gen) * 3
        assert (kl(logits, ctx) >= -1e-6).all()
    # clean p = (1/2, 1/4, 1/4, 0+) vs patched q = uniform, computed by hand in nats
    p = torch.tensor([0.5, 0.25, 0.25])
    clean = torch.log(p)[None].repeat(2, 1)
    hand = sum(pi * math.log(pi / (1 / 3)) for pi in (0.5, 0.25, 0.25))
    ctx3 = MetricContext(torch.tensor([0, 0]), torch.tensor([1, 1]), clean, clean)
    assert torch.allclose(kl(torch.zeros(2, 3), ctx3), torch.tensor([hand, hand]), atol=1e-6)
    # direction: KL(clean || patched), not the reverse
    q = torch.tensor([0.7, 0.2, 0.1])
    forward = sum(pi * math.log(pi / qi) for pi, qi in zip(p.tolist(), q.tolist()))
    reverse = sum(qi * math.log(qi / pi) for pi, qi in zip(p.tolist(), q.tolist()))
    got = kl(torch.log(q)[None].repeat(2, 1), ctx3)[0].item()
    assert abs(got - forward) < 1e-6 and abs(got - reverse) > 1e-3


def test_get_metric_and_context_rows():
    for name, fn in METRICS.items():
        assert get_metric(name) is fn
    with pytest.raises(InterpError, match="unknown metric 'loss'.*logit_diff, norm_logit_diff, answer_prob, kl"):
        get_metric("loss")
    ctx = _ctx()
    rows = ctx.rows(6)
    assert rows.answer.tolist() == [0, 1, 0, 1, 0, 1]
    assert torch.equal(rows.clean_logits[4], ctx.clean_logits[0]) and torch.equal(rows.corrupt_logits[5], ctx.corrupt_logits[1])
    logits = torch.randn(6, 4)
    for fn in METRICS.values():
        assert torch.allclose(fn(logits, rows)[2:4], fn(logits[2:4], ctx))
