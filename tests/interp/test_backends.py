"""Backend parity: lens, nnsight and torch must give the same numbers, and the numbers must mean
what `interp.sites` says they mean.

Every check runs on the tiny random Llama and Gemma 3 models and on the real SmolLM2-135M (marked
``real_model``). Parity is checked against the plain HF forward and between backends (max abs diff
<= 1e-4, float32); meaning is checked independently of the backends (residual identities, RMS
divisors, attention rows, the linear maps W_O and W_out, causality of patches).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import pytest
import torch

import interp
from interp import Ablate, Add, InterpError, Intervention, Replace, RunOutput, parse_site
from interp.sites import Site

PROMPTS = (
    "When Mary and John went to the store, John gave a drink to",
    "When Tom and James went to the park, James gave a ball to",
)
BACKENDS = ("lens", "nnsight", "torch")
TOL = 1e-4  # max abs diff allowed between backends and against the HF forward (float32)
LAYER_KINDS = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "mlp_in", "head_out", "mlp_act", "attn_pattern")

# (fixture name, layers whose sites are checked): every layer of the tiny models, a few of SmolLM2's.
MODELS = [
    pytest.param(("tiny_llama", (0, 1)), id="tiny-llama"),
    pytest.param(("tiny_gemma3", (0, 1)), id="tiny-gemma3"),
    pytest.param(("smollm2", (0, 14, 29)), id="smollm2-135m", marks=pytest.mark.real_model),
]


# ------------------------------------------------------------------------------------ helpers


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach(), b.detach()
    if a.dtype != b.dtype:
        a, b = a.double(), b.double()
    return (a - b).abs().max().item()


def assert_close(a: torch.Tensor, b: torch.Tensor, what: str, atol: float = TOL, rtol: float = 0.0) -> None:
    """Max abs diff <= atol + rtol * max|b| (rtol only for sums computed in a different order)."""
    assert tuple(a.shape) == tuple(b.shape), f"{what}: shape {tuple(a.shape)} != {tuple(b.shape)}"
    assert torch.isfinite(a).all(), f"{what}: non-finite values"
    tol = atol + rtol * b.detach().abs().max().item()
    diff = max_diff(a, b)
    assert diff <= tol, f"{what}: max abs diff {diff:.3g} > {tol:.3g}"


def rms(x: torch.Tensor, eps: float) -> torch.Tensor:
    """sqrt(mean(x^2) + eps) over the last axis, computed here, not by the library."""
    return (x.double().pow(2).mean(-1, keepdim=True) + eps).sqrt()


def expected_shape(model: interp.Model, site: str, batch: int, pos: int) -> tuple[int, ...]:
    """The layout table of interp/sites.py, written out from the HF config."""
    cfg = model.hf.config
    d_head = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    kind = parse_site(site).kind
    return {
        "resid_pre": (batch, pos, cfg.hidden_size),
        "resid_mid": (batch, pos, cfg.hidden_size),
        "resid_post": (batch, pos, cfg.hidden_size),
        "attn_out": (batch, pos, cfg.hidden_size),
        "mlp_out": (batch, pos, cfg.hidden_size),
        "mlp_in": (batch, pos, cfg.hidden_size),
        "head_out": (batch, pos, cfg.num_attention_heads, d_head),
        "mlp_act": (batch, pos, cfg.intermediate_size),
        "attn_pattern": (batch, cfg.num_attention_heads, pos, pos),
        "norm_scale": (batch, pos, 1),
    }[kind]


def run_all(model: interp.Model, tokens, interventions=(), read=(), grad=False) -> dict[str, RunOutput]:
    return {b: model.run(tokens, interventions, read=read, grad=grad, backend=b) for b in BACKENDS}


def hf_hooks(module: torch.nn.Module) -> dict[str, int]:
    """Modules (by name) that hold PyTorch forward / forward-pre hooks, with their count."""
    found = {}
    for name, sub in module.named_modules():
        n = len(sub._forward_hooks) + len(sub._forward_pre_hooks)
        n += len(getattr(sub, "_forward_hooks_with_kwargs", {})) + len(getattr(sub, "_backward_hooks", {}))
        if n:
            found[name or "<root>"] = n
    return found


def torch_hook_ids(module: torch.nn.Module) -> set[tuple[str, str, int]]:
    """Every PyTorch hook on ``module``'s tree, as (module name, kind, handle id)."""
    ids = set()
    for name, sub in module.named_modules():
        ids |= {(name, "fwd", k) for k in sub._forward_hooks}
        ids |= {(name, "pre", k) for k in sub._forward_pre_hooks}
        ids |= {(name, "bwd", k) for k in sub._backward_hooks}
    return ids


def lens_hook_leftovers(bridge) -> dict[str, int]:
    """TransformerLens hooks still attached to the bridge's HookPoints (none is expected)."""
    from transformer_lens.hook_points import HookPoint

    left = {name: len(handles) for name, handles in bridge.list_hooks().items()}
    for name, sub in bridge.named_modules():
        if isinstance(sub, HookPoint):
            n = len(sub.fwd_hooks) + len(sub.bwd_hooks) + len(sub._forward_hooks) + len(sub._forward_pre_hooks)
            if n:
                left[name] = n
    return left


@dataclass
class Case:
    """One model with its prompts, the HF reference logits, and (lazily) a clean read on every backend."""

    model: interp.Model
    layers: tuple[int, ...]
    tokens: torch.Tensor
    ref_logits: torch.Tensor
    _reads: dict[str, RunOutput] = field(default_factory=dict)

    @property
    def llama(self) -> bool:
        return self.model.adapter.family == "llama"

    @property
    def eps(self) -> float:
        return float(self.model.hf.config.rms_norm_eps)

    @property
    def sites(self) -> list[str]:
        n = self.model.n_layers
        sites = [f"{k}.{L}" for L in self.layers for k in LAYER_KINDS]
        sites += [f"norm_scale.{L}.{ln}" for L in self.layers for ln in ("ln1", "ln2")]
        sites += [f"resid_pre.{L + 1}" for L in self.layers if L + 1 < n and L + 1 not in self.layers]
        return sites + ["norm_scale.final"]

    @property
    def reads(self) -> dict[str, RunOutput]:
        """A clean run reading every site of `sites`, on every backend."""
        if not self._reads:
            self._reads.update(run_all(self.model, self.tokens, read=self.sites))
        return self._reads

    @property
    def clean(self) -> dict[str, torch.Tensor]:
        return self.reads["torch"].acts


@pytest.fixture(scope="module", params=MODELS)
def case(request) -> Case:
    fixture, layers = request.param
    model = request.getfixturevalue(fixture)
    tokens = model.to_tokens(list(PROMPTS))
    with torch.no_grad():
        ref = model.hf(tokens).logits
    return Case(model, layers, tokens, ref)


# ------------------------------------------------------------------------------------ prompts and logits


def test_prompts_tokenize_to_equal_lengths(case):
    ids = [case.model.tokenizer(p)["input_ids"] for p in PROMPTS]
    assert len(ids[0]) == len(ids[1]) >= 10, [len(i) for i in ids]
    assert case.tokens.tolist() == ids and case.tokens.dtype == torch.long
    assert ids[0] != ids[1]
    assert case.ref_logits.dtype == torch.float32
    assert case.ref_logits.shape == (2, len(ids[0]), case.model.hf.config.vocab_size)


@pytest.mark.parametrize("backend", BACKENDS)
def test_plain_logits_match_hf_forward(case, backend):
    out = case.model.run(case.tokens, backend=backend)
    assert out.acts == {}
    assert not out.logits.requires_grad
    assert_close(out.logits, case.ref_logits, f"{backend} logits vs HF")


# ------------------------------------------------------------------------------------ reads


def test_reads_agree_across_backends_and_have_documented_shapes(case):
    batch, pos = case.tokens.shape
    for backend, out in case.reads.items():
        assert set(out.acts) == set(case.sites), backend
        # reading must not change the forward pass
        assert_close(out.logits, case.ref_logits, f"{backend} logits with reads vs HF")
        for site, act in out.acts.items():
            assert tuple(act.shape) == expected_shape(case.model, site, batch, pos), f"{backend} {site}"
            assert act.dtype == torch.float32 and not act.requires_grad, f"{backend} {site}"
            assert_close(act, case.clean[site], f"{site}: {backend} vs torch")


def test_reads_mean_what_the_layout_table_says(case):
    """Independent identities between sites, checked on every backend's reads."""
    model, n = case.model, case.model.n_layers
    for backend, out in case.reads.items():
        a = out.acts
        for L in case.layers:
            tag = f"{backend} layer {L}"
            if L + 1 < n:
                assert_close(a[f"resid_post.{L}"], a[f"resid_pre.{L + 1}"], f"{tag}: resid_post.L == resid_pre.L+1")
            assert_close(a[f"resid_mid.{L}"], a[f"resid_pre.{L}"] + a[f"attn_out.{L}"], f"{tag}: resid_mid == resid_pre + attn_out", rtol=1e-6)
            assert_close(a[f"resid_post.{L}"], a[f"resid_mid.{L}"] + a[f"mlp_out.{L}"], f"{tag}: resid_post == resid_mid + mlp_out", rtol=1e-6)
            # RMS divisors of the norms, from the residual they normalise
            assert_close(a[f"norm_scale.{L}.ln1"], rms(a[f"resid_pre.{L}"], case.eps).float(), f"{tag}: ln1 scale", rtol=1e-5)
            assert_close(a[f"norm_scale.{L}.ln2"], rms(a[f"resid_mid.{L}"], case.eps).float(), f"{tag}: ln2 scale", rtol=1e-5)
            # attention probabilities: rows sum to 1, nothing above the diagonal
            pattern = a[f"attn_pattern.{L}"]
            assert (pattern >= 0).all(), tag
            assert_close(pattern.sum(-1), torch.ones(pattern.shape[:-1]), f"{tag}: pattern rows sum to 1", atol=1e-5)
            above = torch.triu(torch.ones(pattern.shape[-2:], dtype=torch.bool), diagonal=1)
            assert pattern[..., above].abs().max() == 0, f"{tag}: pattern is not causal"
            # what the heads and neurons write
            layer = model.hf.get_submodule(f"model.layers.{L}")
            if case.llama:
                heads = torch.einsum("bphd,hdm->bpm", a[f"head_out.{L}"], model.W_O(L))
                assert_close(heads, a[f"attn_out.{L}"], f"{tag}: head_out @ W_O summed over heads == attn_out", rtol=1e-5)
                assert_close(a[f"mlp_act.{L}"] @ model.W_out(L), a[f"mlp_out.{L}"], f"{tag}: mlp_act @ W_out == mlp_out", rtol=1e-5)
            else:  # Gemma 3 post-normalises both sublayer outputs before adding them to the residual
                with torch.no_grad():
                    attn = layer.post_attention_layernorm(layer.self_attn.o_proj(a[f"head_out.{L}"].flatten(-2)))
                    mlp = layer.post_feedforward_layernorm(layer.mlp.down_proj(a[f"mlp_act.{L}"]))
                assert_close(attn, a[f"attn_out.{L}"], f"{tag}: post_norm(o_proj(head_out)) == attn_out", rtol=1e-5)
                assert_close(mlp, a[f"mlp_out.{L}"], f"{tag}: post_norm(down_proj(mlp_act)) == mlp_out", rtol=1e-5)
        last = n - 1
        if last in case.layers:
            final = a["norm_scale.final"]
            assert_close(final, rms(a[f"resid_post.{last}"], case.eps).float(), f"{backend}: final norm scale", rtol=1e-5)
            if case.llama:  # logits = (resid_post / scale * norm weight) @ W_U
                weight = model.hf.get_submodule("model.norm").weight
                logits = (a[f"resid_post.{last}"] / final * weight) @ model.W_U
                assert_close(logits, out.logits, f"{backend}: logits rebuilt from resid_post and norm_scale.final", rtol=1e-5)


def test_gemma3_sliding_window_shows_in_the_pattern(tiny_gemma3):
    tokens = tiny_gemma3.to_tokens(list(PROMPTS))
    window = tiny_gemma3.hf.config.sliding_window
    for backend in BACKENDS:
        pattern = tiny_gemma3.run(tokens, read=["attn_pattern.0", "attn_pattern.1"], backend=backend).acts
        q = torch.arange(tokens.shape[1])[:, None]
        k = torch.arange(tokens.shape[1])[None, :]
        outside = q - k >= window  # sliding layer 0 attends to the last `window` tokens only
        assert pattern["attn_pattern.0"][..., outside].abs().max() == 0, backend
        assert (pattern["attn_pattern.0"][..., (q - k < window) & (k <= q)] > 0).all(), backend
        assert (pattern["attn_pattern.1"][..., k <= q] > 0).all(), backend  # full attention


@pytest.mark.parametrize("backend", BACKENDS)
def test_single_string_prompt_equals_its_batch_row(tiny_llama, backend):
    tokens = tiny_llama.to_tokens(list(PROMPTS))
    sites = ["resid_pre.1", "head_out.0", "attn_pattern.1", "mlp_act.1", "norm_scale.0.ln2"]
    both = tiny_llama.run(tokens, read=sites, backend=backend)
    for row, prompt in enumerate(PROMPTS):
        one = tiny_llama.run(prompt, read=sites, backend=backend)
        assert_close(one.logits[0], both.logits[row], f"{backend} logits of prompt {row}")
        for site in sites:
            assert_close(one.acts[site][0], both.acts[site][row], f"{backend} {site} of prompt {row}")


# ------------------------------------------------------------------------------------ interventions


@dataclass
class Patch:
    """Interventions to run, sites to read, and a check of what the patch must have done."""

    interventions: list[Intervention]
    read: list[str]
    check: Callable[[RunOutput], None]


def _gen(salt: int) -> torch.Generator:
    return torch.Generator().manual_seed(1000 + salt)


def patch_replace_resid_pre_one_position(case: Case, L: int) -> Patch:
    # a position where the prompts' tokens differ (at layer 0 equal tokens have equal embeddings)
    p = next(i for i in range(3, case.tokens.shape[1]) if case.tokens[0, i] != case.tokens[1, i])
    value = case.clean[f"resid_pre.{L}"][1, p].clone()  # prompt 2's vector, written into both rows

    def check(out: RunOutput) -> None:
        expected = case.clean[f"resid_pre.{L}"].clone()
        expected[:, p] = value
        assert_close(out.acts[f"resid_pre.{L}"], expected, "resid_pre read back")
        # causal: positions before p cannot see the patch; row 0 at p must move
        assert_close(out.logits[:, :p], case.ref_logits[:, :p], "logits before the patched position")
        assert_close(out.logits[1], case.ref_logits[1], "row 1 was patched with its own value")
        assert max_diff(out.logits[0, p], case.ref_logits[0, p]) > 1e-3, "patch did not move the logits at its position"

    return Patch([Replace(f"resid_pre.{L}", value, index=(slice(None), p))], [f"resid_pre.{L}", f"resid_post.{L}"], check)


def patch_resample_resid_pre_swaps_prompts(case: Case, L: int) -> Patch:
    swapped = case.clean[f"resid_pre.{L}"].flip(0)

    def check(out: RunOutput) -> None:
        assert_close(out.acts[f"resid_pre.{L}"], swapped, "resid_pre read back")
        # the whole residual entering layer L carries everything: the rows' logits swap
        assert_close(out.logits, case.ref_logits.flip(0), "logits after swapping resid_pre between prompts", rtol=1e-5)

    return Patch([Ablate(f"resid_pre.{L}", kind="resample", values=swapped)], [f"resid_pre.{L}"], check)


def patch_replace_resid_mid(case: Case, L: int) -> Patch:
    p, mid = 5, case.clean[f"resid_mid.{L}"]
    value = mid[:, p].std() * torch.randn(mid.shape[-1], generator=_gen(1))
    expected = mid.clone()
    expected[:, p] = value

    def check(out: RunOutput) -> None:
        a = out.acts
        assert_close(a[f"resid_mid.{L}"], expected, "resid_mid read back == value written")
        # the residual stream itself is replaced: what the MLP normalises and what flows on
        assert_close(a[f"resid_post.{L}"] - a[f"mlp_out.{L}"], expected, "resid_post - mlp_out == written resid_mid", rtol=1e-6)
        assert_close(a[f"norm_scale.{L}.ln2"], rms(expected, case.eps).float(), "ln2 scale of the written resid_mid", rtol=1e-5)
        assert_close(a[f"resid_pre.{L}"], case.clean[f"resid_pre.{L}"], "resid_pre upstream untouched")
        assert_close(a[f"mlp_out.{L}"][:, :p], case.clean[f"mlp_out.{L}"][:, :p], "mlp_out before the patched position")
        assert max_diff(a[f"mlp_out.{L}"][:, p], case.clean[f"mlp_out.{L}"][:, p]) > 1e-3, "the MLP did not see the new resid_mid"

    reads = [f"resid_pre.{L}", f"resid_mid.{L}", f"mlp_out.{L}", f"resid_post.{L}", f"norm_scale.{L}.ln2"]
    return Patch([Replace(f"resid_mid.{L}", value, index=(slice(None), p))], reads, check)


def patch_add_resid_post_at_positions(case: Case, L: int) -> Patch:
    positions, coeff = [2, 6], 3.0
    post = case.clean[f"resid_post.{L}"]
    vector = post.std() * torch.randn(post.shape[-1], generator=_gen(2))
    nxt = L + 1 if L + 1 < case.model.n_layers else None

    def check(out: RunOutput) -> None:
        delta = torch.zeros_like(post)
        delta[:, positions] = coeff * vector
        assert_close(out.acts[f"resid_post.{L}"] - post, delta, "resid_post - clean == coeff * vector at positions", rtol=1e-6)
        if nxt is not None:
            assert_close(out.acts[f"resid_pre.{nxt}"], out.acts[f"resid_post.{L}"], "the edit flows into the next layer")

    reads = [f"resid_post.{L}"] + ([f"resid_pre.{nxt}"] if nxt is not None else [])
    return Patch([Add(f"resid_post.{L}", vector, coeff=coeff, positions=positions)], reads, check)


def patch_replace_one_head(case: Case, L: int) -> Patch:
    h, heads = 1, case.clean[f"head_out.{L}"]
    value = heads.flip(0)[:, :, h].clone()  # each prompt gets the other prompt's head h

    def check(out: RunOutput) -> None:
        expected = heads.clone()
        expected[:, :, h] = value
        assert_close(out.acts[f"head_out.{L}"], expected, "head_out read back: only head h replaced")
        if case.llama:
            W_O = case.model.W_O(L)
            attn = case.clean[f"attn_out.{L}"] + (value - heads[:, :, h]) @ W_O[h]
            assert_close(out.acts[f"attn_out.{L}"], attn, "attn_out moves by (new - old) @ W_O[h]", rtol=1e-5)

    return Patch([Replace(f"head_out.{L}", value, index=(slice(None), slice(None), h))], [f"head_out.{L}", f"attn_out.{L}"], check)


def patch_replace_one_neuron(case: Case, L: int) -> Patch:
    n, acts = 7, case.clean[f"mlp_act.{L}"]
    value = torch.tensor(5.0)

    def check(out: RunOutput) -> None:
        expected = acts.clone()
        expected[..., n] = 5.0
        assert_close(out.acts[f"mlp_act.{L}"], expected, "mlp_act read back: only neuron n replaced")
        if case.llama:
            mlp = case.clean[f"mlp_out.{L}"] + (5.0 - acts[..., n])[..., None] * case.model.W_out(L)[n]
            assert_close(out.acts[f"mlp_out.{L}"], mlp, "mlp_out moves by (new - old) * W_out[n]", rtol=1e-5)

    return Patch([Replace(f"mlp_act.{L}", value, index=(..., n))], [f"mlp_act.{L}", f"mlp_out.{L}"], check)


def patch_zero_ablate_attn_out(case: Case, L: int) -> Patch:
    def check(out: RunOutput) -> None:
        a = out.acts
        assert a[f"attn_out.{L}"].abs().max() == 0, "attn_out not zeroed"
        assert_close(a[f"resid_mid.{L}"], a[f"resid_pre.{L}"], "resid_mid == resid_pre once attention is zeroed")

    return Patch([Ablate(f"attn_out.{L}")], [f"resid_pre.{L}", f"attn_out.{L}", f"resid_mid.{L}"], check)


def patch_mean_ablate(case: Case, L: int) -> Patch:
    h, mlp, heads = 2, case.clean[f"mlp_out.{L}"], case.clean[f"head_out.{L}"]

    def check(out: RunOutput) -> None:
        assert_close(out.acts[f"mlp_out.{L}"], mlp.mean(0, keepdim=True).expand_as(mlp), "mlp_out == mean over the reference set", rtol=1e-6)
        expected = heads.clone()
        expected[:, :, h] = heads[:, :, h].mean(0)
        assert_close(out.acts[f"head_out.{L}"], expected, "head h == its mean; other heads untouched", rtol=1e-6)

    ivs = [
        Ablate(f"mlp_out.{L}", kind="mean", values=mlp),
        Ablate(f"head_out.{L}", kind="mean", index=(slice(None), slice(None), h), values=heads),
    ]
    return Patch(ivs, [f"head_out.{L}", f"mlp_out.{L}"], check)


def patch_two_edits_on_one_site_apply_in_order(case: Case, L: int) -> Patch:
    p, pre = 3, case.clean[f"resid_pre.{L}"]
    vector = torch.randn(pre.shape[-1], generator=_gen(3))
    value = torch.randn(pre.shape[-1], generator=_gen(4))

    def check(out: RunOutput) -> None:
        expected = pre + vector
        expected[:, p] = value
        assert_close(out.acts[f"resid_pre.{L}"], expected, "Add then Replace at p", rtol=1e-6)

    ivs = [Add(f"resid_pre.{L}", vector), Replace(f"resid_pre.{L}", value, index=(slice(None), p))]
    return Patch(ivs, [f"resid_pre.{L}"], check)


PATCHES = [
    patch_replace_resid_pre_one_position,
    patch_resample_resid_pre_swaps_prompts,
    patch_replace_resid_mid,
    patch_add_resid_post_at_positions,
    patch_replace_one_head,
    patch_replace_one_neuron,
    patch_zero_ablate_attn_out,
    patch_mean_ablate,
    patch_two_edits_on_one_site_apply_in_order,
]


@pytest.mark.parametrize("make_patch", PATCHES, ids=lambda f: f.__name__.removeprefix("patch_"))
def test_interventions_agree_across_backends_and_do_what_they_say(case, make_patch):
    L = case.layers[(len(case.layers) - 1) // 2]  # layer 0 of the tiny models, 14 of SmolLM2
    patch = make_patch(case, L)
    outs = run_all(case.model, case.tokens, patch.interventions, read=patch.read)
    for backend, out in outs.items():
        assert set(out.acts) == set(patch.read), backend
        assert max_diff(out.logits, case.ref_logits) > 1e-3, f"{backend}: the patch did not move the logits"
        try:
            patch.check(out)
        except AssertionError as e:
            raise AssertionError(f"{backend}: {e}") from None
        assert_close(out.logits, outs["torch"].logits, f"{backend} vs torch: patched logits")
        for site in patch.read:
            assert_close(out.acts[site], outs["torch"].acts[site], f"{backend} vs torch: patched {site}")
    # the interventions are plain data: using them did not change them
    clean_again = case.model.run(case.tokens, backend="torch")
    assert_close(clean_again.logits, case.ref_logits, "plain run after the patch")


# ------------------------------------------------------------------------------------ hooks are removed


@dataclass(frozen=True)
class Boom(Intervention):
    """An intervention whose apply raises mid-forward."""

    def apply(self, act: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("boom")


def _hooked_run(model: interp.Model, failure: str) -> tuple[list[Intervention], list[str]]:
    """Interventions on many site kinds, with (optionally) a failing one in the middle of layer 0."""
    d = model.d_model
    ivs: list[Intervention] = [
        Add("resid_pre.0", torch.ones(d) * 0.1),
        Replace("head_out.0", torch.zeros(()), index=(slice(None), slice(None), 0)),
        Replace("resid_mid.0", torch.zeros(d), index=(slice(None), 1)),
        Ablate("mlp_out.1"),
    ]
    if failure == "raises":
        ivs.insert(2, Boom("attn_out.0"))
    elif failure == "wrong_shape":
        ivs.insert(2, Replace("mlp_act.0", torch.zeros(3)))
    read = ["resid_pre.1", "attn_pattern.0", "norm_scale.1.ln1", "norm_scale.final", "mlp_act.1", "resid_post.1"]
    return ivs, read


_CLEAN: dict[str, tuple[torch.Tensor, dict[str, torch.Tensor]]] = {}  # HF logits and clean reads per model


@pytest.mark.parametrize("failure", ["none", "raises", "wrong_shape"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_gemma3"])
def test_hooks_are_removed_after_runs_that_succeed_or_raise(request, fixture, backend, failure):
    model = request.getfixturevalue(fixture)
    tokens = model.to_tokens(list(PROMPTS))
    reads = ["resid_pre.1", "head_out.0", "attn_pattern.1"]
    if fixture not in _CLEAN:
        with torch.no_grad():
            _CLEAN[fixture] = model.hf(tokens).logits, model.run(tokens, read=reads, backend="torch").acts
    ref, clean = _CLEAN[fixture]
    model.run(tokens, backend=backend)  # builds the backend and warms it up (TransformerLens wires its own hooks)
    bridge = model.backend("lens").bridge if backend == "lens" else None
    bridge_hooks_before = torch_hook_ids(bridge) if bridge is not None else None

    ivs, read = _hooked_run(model, failure)
    if failure == "none":
        out = model.run(tokens, ivs, read=read, backend=backend)
        assert max_diff(out.logits, ref) > 1e-3
    elif failure == "raises":
        with pytest.raises(RuntimeError, match="boom"):
            model.run(tokens, ivs, read=read, backend=backend)
    else:
        with pytest.raises(InterpError, match=r"does not fit the activation of shape \(2, \d+, \d+\)"):
            model.run(tokens, ivs, read=read, backend=backend)

    assert hf_hooks(model.hf) == {}, f"{backend}: hooks left on the HF modules"
    if bridge is not None:
        assert lens_hook_leftovers(bridge) == {}, "lens: hooks left on the bridge's HookPoints"
        assert torch_hook_ids(bridge) == bridge_hooks_before, "lens: PyTorch hooks left on the bridge's modules"
    # the next plain run is unpatched, on this backend and on the others
    for b in BACKENDS:
        again = model.run(tokens, read=reads, backend=b)
        assert_close(again.logits, ref, f"{b}: plain run after a {failure} {backend} run")
        for site in reads:
            assert_close(again.acts[site], clean[site], f"{b}: {site} after a {failure} {backend} run")


# ------------------------------------------------------------------------------------ errors


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("site", ["attn_pattern.0", "norm_scale.1.ln1", "norm_scale.0.ln2", "norm_scale.final"])
def test_writing_a_read_only_site_raises(tiny_llama, backend, site):
    tokens = tiny_llama.to_tokens(list(PROMPTS))
    for iv in (Replace(site, torch.zeros(())), Ablate(site), Add(site, torch.zeros(1))):
        with pytest.raises(InterpError, match="read only"):
            tiny_llama.run(tokens, [iv], backend=backend)
    assert hf_hooks(tiny_llama.hf) == {}


@pytest.mark.parametrize("backend", BACKENDS)
def test_out_of_range_layer_raises_naming_the_range(tiny_llama, backend):
    tokens = tiny_llama.to_tokens(list(PROMPTS))
    for site in ("resid_pre.2", "attn_pattern.7", "norm_scale.2.ln1"):
        with pytest.raises(InterpError, match=r"out of range.*layers 0\.\.1"):
            tiny_llama.run(tokens, read=[site], backend=backend)
        with pytest.raises(InterpError, match=r"out of range.*layers 0\.\.1"):
            tiny_llama.run(tokens, [Ablate(site)], backend=backend)
    with pytest.raises(InterpError, match="unknown site"):
        tiny_llama.run(tokens, read=["resid.0"], backend=backend)
    assert hf_hooks(tiny_llama.hf) == {}


@pytest.mark.real_model
def test_out_of_range_layer_names_smollm2_range(smollm2):
    with pytest.raises(InterpError, match=r"layers 0\.\.29"):
        smollm2.run(PROMPTS[0], read=["resid_post.30"], backend="torch")


def test_unknown_backend_raises(tiny_llama):
    tokens = tiny_llama.to_tokens(list(PROMPTS))
    with pytest.raises(InterpError, match=r"unknown backend 'jax'.*lens, nnsight, torch"):
        tiny_llama.run(tokens, backend="jax")
    with pytest.raises(InterpError, match="unknown backend 'jax'"):
        tiny_llama.backend("jax")
    with pytest.raises(InterpError, match="unknown backend 'jax'"):
        interp.load("tiny-llama", backend="jax")
    assert "jax" not in tiny_llama._backends


def test_sites_are_accepted_as_site_objects(tiny_llama):
    tokens = tiny_llama.to_tokens(list(PROMPTS))
    out = tiny_llama.run(tokens, read=[Site("resid_pre", 1), parse_site("norm_scale.final")], backend="torch")
    assert set(out.acts) == {"resid_pre.1", "norm_scale.final"}


# ------------------------------------------------------------------------------------ gradients

GRAD_SITES = ("resid_pre.1", "attn_out.0")


def _metric(logits: torch.Tensor) -> torch.Tensor:
    return logits[0, -1, 100] - logits[1, -1, 200] + logits[:, 5, 300].sum()


def _grads(model: interp.Model, tokens: torch.Tensor, backend: str) -> dict[str, torch.Tensor]:
    out = model.run(tokens, read=list(GRAD_SITES), grad=True, backend=backend)
    for site in GRAD_SITES:
        act = out.acts[site]
        assert act.requires_grad, (
            f"{backend}: run(grad=True) returned {site} with requires_grad=False and no grad_fn, so "
            "torch.autograd.grad(logit, out.acts[site]) is impossible"
        )
    grads = torch.autograd.grad(_metric(out.logits), [out.acts[s] for s in GRAD_SITES])
    return dict(zip(GRAD_SITES, grads))


@pytest.mark.parametrize("backend", BACKENDS)
def test_grad_wrt_read_activations(tiny_llama, backend):
    tokens = tiny_llama.to_tokens(list(PROMPTS))
    grads = _grads(tiny_llama, tokens, backend)
    for site, g in grads.items():
        assert g.shape == (*tokens.shape, tiny_llama.d_model) and g.abs().sum() > 0, site
        assert g[:, 6:].abs().max() > 0 and g[0, :5].abs().max() > 0, site
    # the gradient is the real one: central finite difference along a random direction
    clean = tiny_llama.run(tokens, read=list(GRAD_SITES), backend="torch").acts
    for i, site in enumerate(GRAD_SITES):
        direction = torch.randn(clean[site].shape, generator=torch.Generator().manual_seed(i))
        eps = 1e-2
        plus = tiny_llama.run(tokens, [Replace(site, clean[site] + eps * direction)], backend="torch").logits
        minus = tiny_llama.run(tokens, [Replace(site, clean[site] - eps * direction)], backend="torch").logits
        numeric = ((_metric(plus) - _metric(minus)) / (2 * eps)).item()
        analytic = (grads[site] * direction).sum().item()
        assert abs(numeric - analytic) <= 1e-2 * max(1.0, abs(analytic)), f"{site}: {numeric} vs {analytic}"


def test_grads_agree_across_backends(tiny_llama):
    tokens = tiny_llama.to_tokens(list(PROMPTS))
    grads = {b: _grads(tiny_llama, tokens, b) for b in BACKENDS}
    for backend in BACKENDS:
        for site in GRAD_SITES:
            assert_close(grads[backend][site], grads["torch"][site], f"d metric / d {site}: {backend} vs torch")


def test_grad_wrt_intervention_value_agrees_across_backends(tiny_llama):
    """Gradients also flow into the value an intervention writes (attribution through a patch)."""
    tokens = tiny_llama.to_tokens(list(PROMPTS))
    clean = tiny_llama.run(tokens, read=["resid_pre.1", "head_out.0"], backend="torch").acts
    grads = {}
    for backend in BACKENDS:
        resid = clean["resid_pre.1"][:, 3].clone().requires_grad_(True)
        head = clean["head_out.0"][:, :, 2].clone().requires_grad_(True)
        ivs = [Replace("head_out.0", head, index=(slice(None), slice(None), 2)), Replace("resid_pre.1", resid, index=(slice(None), 3))]
        out = tiny_llama.run(tokens, ivs, grad=True, backend=backend)
        assert_close(out.logits, tiny_llama.run(tokens, backend="torch").logits, f"{backend}: patching clean values changes nothing")
        grads[backend] = torch.autograd.grad(_metric(out.logits), [resid, head])
        assert all(g.abs().sum() > 0 for g in grads[backend]), backend
    for backend in BACKENDS:
        for g, g_ref, what in zip(grads[backend], grads["torch"], ("resid_pre.1[:, 3]", "head_out.0 head 2")):
            assert_close(g, g_ref, f"d metric / d {what}: {backend} vs torch")


def test_grad_false_returns_detached_activations(tiny_llama):
    tokens = tiny_llama.to_tokens(list(PROMPTS))
    value = torch.zeros(tiny_llama.d_model, requires_grad=True)
    for backend in BACKENDS:
        out = tiny_llama.run(tokens, [Replace("resid_pre.1", value, index=(slice(None), 2))], read=["resid_pre.1", "attn_out.1"], backend=backend)
        assert not out.logits.requires_grad, backend
        assert not any(a.requires_grad for a in out.acts.values()), backend
