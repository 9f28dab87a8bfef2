"""``interp doctor``'s checks: does the hook layer compute the model's own numbers on *this* model?

The parity-matrix tests (tests/interp/test_families.py) check every supported family on tiny random
models. `run_checks` runs the same checks on any loaded `Model`, so a user can trust a model that the
tests never saw (or find out that its adapter is wrong) before reading anything off it:

- ``logits = HF forward``: each backend's plain logits against ``model.hf(input_ids=...)``;
- the residual identities of the block shape (sequential, sandwich, post_norm: resid_mid = resid_pre +
  attn_out and resid_post = resid_mid + mlp_out; parallel: resid_post = resid_pre + attn_out + mlp_out;
  always resid_pre[L+1] = resid_post[L]), head_out · W_O + bias = attn_out where the sublayers add
  linearly, and the MoE experts' outputs summing to mlp_out;
- every site read, and two interventions (an Add on resid_pre, a head ablation), equal across backends
  (against ``torch``: plain PyTorch hooks on the HF modules);
- ``extra`` checks supplied by a caller (``interp.patching.doctor`` adds batched engine = hooks engine; interp
  itself never imports a method package);
- no hook left behind on the HF model, TransformerLens's bridge, or torch's global hooks.

``quick=True`` (what ``interp.load(..., verify=True)`` runs) keeps the logits on the model's own
backend, the residual identities and the hook check. Any exception inside a check fails that check
with its one-line reason; a backend that refuses the model (TransformerLens cannot wrap it) is a row
``refused``, not a failure.

Tolerances are float32's of the tests (logits 1e-4, activations 1e-5), scaled by the largest magnitude
of the reference tensor when that exceeds 1 (for the engine's logit differences, of the logits). In
bfloat16 / float16 each is at least 4-16 units of the dtype's rounding (``torch.finfo(dtype).eps``) at
that magnitude, since two correct computations of the same value differ by that much; on the tiny
family models the measured differences stay below a quarter of every tolerance in all three dtypes.

>>> checks = run_checks(interp.load("tiny-llama"))          # doctest: +SKIP
>>> all(c.passed for c in checks)                             # doctest: +SKIP
True
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch

from interp.backends import BACKENDS
from interp.errors import InterpError
from interp.interventions import Ablate, Add
from interp.model import Model

ORDER = ("torch", "nnsight", "lens")  # torch first: the reference of the cross-backend checks
N_PROMPTS, SEQ = 2, 12  # longer than the sliding windows of the tiny test models; cheap on real ones
CHANGED = (5, 8)  # positions where the corrupt prompt differs (for patching checks)
# float32 tolerance, and the multiple of the dtype's eps that reduced precision is allowed
TOLERANCES = {"logits": (1e-4, 8), "identity": (1e-5, 4), "reads": (1e-5, 8), "interventions": (1e-4, 8),
              "engine": (1e-4, 16)}
_HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")


@dataclass
class Check:
    """One row of the doctor's table."""

    name: str
    backend: str
    passed: bool
    max_diff: float | None = None
    tolerance: float | None = None
    detail: str = ""
    refused: bool = False  # the backend refused the model: shown, not a failure

    @property
    def status(self) -> str:
        return "refused" if self.refused else "pass" if self.passed else "FAIL"

    def as_dict(self) -> dict:
        return {**asdict(self), "status": self.status}


@dataclass(frozen=True)
class Probe:
    """The inputs every check shares: clean and corrupt token ids [N_PROMPTS, SEQ] and the model's dtype."""

    clean: torch.Tensor
    corrupt: torch.Tensor
    dtype: torch.dtype

    def tolerance(self, kind: str, scale: float = 1.0) -> float:
        """The tolerance of a ``kind`` comparison whose reference has largest magnitude ``scale``."""
        base, ulps = TOLERANCES[kind]
        if self.dtype in (torch.bfloat16, torch.float16):
            base = max(base, ulps * torch.finfo(self.dtype).eps)
        return base * max(1.0, scale)


ExtraCheck = Callable[[Model, Probe], list[Check]]


def diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest absolute difference (an error if the shapes differ)."""
    if a.shape != b.shape:
        raise InterpError(f"shapes differ: {tuple(a.shape)} against {tuple(b.shape)}")
    return (a.double() - b.double()).abs().max().item()


def compare(name: str, backend: str, kind: str, probe: Probe, pairs: dict[str, tuple[torch.Tensor, torch.Tensor]],
            what: str = "", scale: float | None = None) -> Check:
    """One check over ``pairs`` {label: (got, reference)}: passes when every pair is within its tolerance.

    The tolerance scales with each reference's largest magnitude, or with ``scale`` when given (a metric
    that is a difference of logits errs like the logits). Reports the pair furthest over its tolerance.
    """
    worst, ratio, d_w, t_w = "", -1.0, 0.0, 0.0
    for label, (got, ref) in pairs.items():
        if got.shape != ref.shape:
            return Check(name, backend, False, None, None, f"{label}: shape {tuple(got.shape)}, expected {tuple(ref.shape)}")
        d = diff(got, ref)
        t = probe.tolerance(kind, ref.detach().abs().max().item() if scale is None else scale)
        if math.isnan(d) or d / t > ratio:  # NaN is the worst
            worst, ratio, d_w, t_w = label, (math.inf if math.isnan(d) else d / t), d, t
    passed = ratio <= 1.0
    detail = what or (f"largest: {worst}" if len(pairs) > 1 and d_w > 0 else "")
    if not passed and worst and worst not in detail:
        detail = f"{detail}; largest: {worst}" if detail else f"largest: {worst}"
    return Check(name, backend, passed, d_w, t_w, detail)


def probe_tokens(model: Model, seed: int = 0) -> Probe:
    """Seeded random token ids (ordinary vocabulary, away from special and image tokens)."""
    generator = torch.Generator().manual_seed(seed)
    vocab = model.d_vocab
    low, high = (100, min(vocab, 5000)) if vocab > 200 else (0, vocab)
    clean = torch.randint(low, high, (N_PROMPTS, SEQ), generator=generator)
    corrupt = clean.clone()
    corrupt[:, list(CHANGED)] = torch.randint(low, high, (N_PROMPTS, len(CHANGED)), generator=generator)
    dtype = next(model.hf.parameters()).dtype
    return Probe(clean.to(model.device), corrupt.to(model.device), dtype)


def sites_of(model: Model) -> list[str]:
    """Every site the model has, on every layer (norm divisors included)."""
    a, out = model.adapter, []
    for layer in range(model.n_layers):
        for kind in a.points:
            moe = layer in a.moe_layers
            if kind == "mlp_act" and moe or kind in ("router_logits", "expert_out") and not moe:
                continue
            out.append(f"{kind}.{layer}")
        out += [f"norm_scale.{layer}.{n}" for n in ("ln1", "ln2") if n in a.norms]
    return out + (["norm_scale.final"] if "final" in a.norms else [])


# ---------------------------------------------------------------------------- the checks


def residual_checks(model: Model, probe: Probe, backend: str) -> list[Check]:
    """The residual identities of the block shape, W_O, and the MoE expert sum, on one backend's reads."""
    a = model.adapter
    acts = model.run(probe.clean, read=sites_of(model), backend=backend).acts
    n = model.n_layers
    checks = []
    if a.block == "parallel":
        pairs = {f"resid_post.{L} vs resid_pre.{L} + attn_out.{L} + mlp_out.{L}":
                 (acts[f"resid_pre.{L}"] + acts[f"attn_out.{L}"] + acts[f"mlp_out.{L}"], acts[f"resid_post.{L}"])
                 for L in range(n)}
        checks.append(compare("resid_post = resid_pre + attn_out + mlp_out", backend, "identity", probe, pairs))
    else:
        pairs = {f"resid_mid.{L} vs resid_pre.{L} + attn_out.{L}":
                 (acts[f"resid_pre.{L}"] + acts[f"attn_out.{L}"], acts[f"resid_mid.{L}"]) for L in range(n)}
        checks.append(compare("resid_mid = resid_pre + attn_out", backend, "identity", probe, pairs))
        pairs = {f"resid_post.{L} vs resid_mid.{L} + mlp_out.{L}":
                 (acts[f"resid_mid.{L}"] + acts[f"mlp_out.{L}"], acts[f"resid_post.{L}"]) for L in range(n)}
        checks.append(compare("resid_post = resid_mid + mlp_out", backend, "identity", probe, pairs))
    if n > 1:
        pairs = {f"resid_pre.{L + 1} vs resid_post.{L}": (acts[f"resid_pre.{L + 1}"], acts[f"resid_post.{L}"])
                 for L in range(n - 1)}
        checks.append(compare("resid_pre[L+1] = resid_post[L]", backend, "identity", probe, pairs))
    if a.sublayers_add_linearly():  # what the heads write through W_O is what attention adds
        pairs = {}
        for L in range(n):
            z = acts[f"head_out.{L}"].double()
            written = torch.einsum("bphd,hdm->bpm", z, model.W_O(L).double())
            bias = a.attn_out_bias(model.hf, L)
            pairs[f"head_out.{L} · W_O vs attn_out.{L}"] = (written + (0 if bias is None else bias.double()),
                                                             acts[f"attn_out.{L}"])
        checks.append(compare("head_out · W_O + b_O = attn_out", backend, "identity", probe, pairs))
    if a.moe_layers:
        pairs = {f"Σ expert_out.{L} vs mlp_out.{L}": (acts[f"expert_out.{L}"].sum(-2), acts[f"mlp_out.{L}"])
                 for L in sorted(a.moe_layers)}
        checks.append(compare("Σ expert_out = mlp_out", backend, "identity", probe, pairs))
    return checks


def interventions_of(model: Model, probe: Probe) -> list:
    """An Add on resid_pre and the zero-ablation of head 0, both in the middle layer."""
    layer = model.n_layers // 2
    generator = torch.Generator().manual_seed(1)
    vector = torch.randn(model.d_model, generator=generator).to(device=model.device, dtype=probe.dtype)
    return [Add(f"resid_pre.{layer}", vector, coeff=1.0, positions=[3, SEQ - 1]),
            Ablate(f"head_out.{layer}", index=(slice(None), slice(None), 0))]


def cross_backend_checks(model: Model, probe: Probe, backends: Sequence[str]) -> list[Check]:
    """Every site read, and the interventions' logits, equal to the torch backend's."""
    others = [b for b in backends if b != "torch"]
    if not others:
        return []
    sites = sites_of(model)
    ref = model.run(probe.clean, read=sites, backend="torch").acts
    ivs = interventions_of(model, probe)
    ref_edit = model.run(probe.clean, ivs, backend="torch").logits
    effect = diff(ref_edit, model.run(probe.clean, backend="torch").logits)
    checks = []
    for b in others:
        checks += (_guarded(f"reads = torch ({len(sites)} sites)", b, lambda b=b: compare(
            f"reads = torch ({len(sites)} sites)", b, "reads", probe,
            {s: (got, ref[s]) for s, got in model.run(probe.clean, read=sites, backend=b).acts.items()})))
        what = f"Add on {ivs[0].site}, head 0 of {ivs[1].site} zeroed: logits move by {effect:.3g}"
        checks += (_guarded("interventions = torch", b, lambda b=b, what=what: compare(
            "interventions = torch", b, "interventions", probe,
            {"logits": (model.run(probe.clean, ivs, backend=b).logits, ref_edit)}, what)))
    return checks


def all_hooks(model: Model) -> dict[tuple, str]:
    """Every hook now on the HF model, the lens bridge and its model (if built) and torch's globals: key -> where."""
    from torch.nn.modules import module as nn_module

    roots: dict[str, torch.nn.Module] = {"model": model.hf}
    lens = model._backends.get("lens")
    if lens is not None:
        roots["bridge"], roots["bridge model"] = lens.bridge, lens.bridge.original_model
    out: dict[tuple, str] = {}
    for root_name, root in roots.items():
        for name, module in root.named_modules():
            for kind in _HOOK_DICTS:
                for key in getattr(module, kind, {}):
                    out.setdefault((id(module), kind, key), f"{root_name} {name or '(root)'}")
    for kind in ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks", "_global_backward_pre_hooks"):
        out.update({("global", kind, key): f"torch {kind}" for key in getattr(nn_module, kind, {})})
    return out


def hook_check(model: Model, before: set[tuple]) -> Check:
    """No hook that was not there ``before`` remains anywhere."""
    left = {key: where for key, where in all_hooks(model).items() if key not in before}
    where = sorted(set(left.values()))
    if left:
        detail = f"left on {', '.join(where[:3])}{f' and {len(where) - 3} more' if len(where) > 3 else ''}"
    else:
        lens = "lens" in model._backends
        detail = "none on the HF model" + (", the lens bridge" if lens else "") + " or torch's global hooks"
    return Check("no hook left behind", "all", not left, detail=f"{len(left)} {detail}" if left else detail)


def _guarded(name: str, backend: str, fn: Callable[[], Check | list[Check]]) -> list[Check]:
    """Run a check; an exception fails it with its one-line reason."""
    try:
        out = fn()
    except Exception as exc:  # noqa: BLE001 - a wrong adapter shows up as any error at all
        first = (str(exc).strip().splitlines() or [""])[0]
        return [Check(name, backend, False, detail=f"{type(exc).__name__}: {first[:240]}")]
    return out if isinstance(out, list) else [out]


def run_checks(model: Model, backends: Sequence[str] | None = None, quick: bool = False,
               extra: Sequence[ExtraCheck] = ()) -> list[Check]:
    """Run the doctor's checks on ``model``; see the module docstring. ``backends`` default: all three."""
    backends = [model.backend_name] if quick else list(backends or ORDER)
    for b in backends:
        if b not in BACKENDS:
            raise InterpError(f"unknown backend '{b}': use one of {', '.join(BACKENDS)}")
    backends = sorted(set(backends), key=ORDER.index)
    hooks = set(all_hooks(model))  # what was there before (TransformerLens wires its own on a bridge's first forward)
    probe = probe_tokens(model)
    with torch.no_grad():
        expected = model.hf(input_ids=probe.clean).logits
    checks, usable = [], []
    for b in backends:
        try:
            model.backend(b)
        except InterpError as exc:
            checks.append(Check("logits = HF forward", b, True, detail=f"refused: {exc}", refused=True))
            continue
        usable.append(b)
        checks += _guarded("logits = HF forward", b, lambda b=b: compare(
            "logits = HF forward", b, "logits", probe, {"logits": (model.run(probe.clean, backend=b).logits, expected)}))
        hooks |= set(all_hooks(model))  # a plain run adds none of ours: what is new is the backend's own wiring
    identity_backend = usable[0] if usable else "torch"
    checks += _guarded("residual identities", identity_backend, lambda: residual_checks(model, probe, identity_backend))
    if not quick:
        checks += _guarded("reads and interventions = torch", ",".join(usable), lambda: cross_backend_checks(model, probe, usable))
        for fn in extra:
            checks += _guarded(getattr(fn, "__name__", "extra check"), model.backend_name, lambda fn=fn: fn(model, probe))
    checks.append(hook_check(model, hooks))
    return checks


def verify(model: Model) -> None:
    """The quick checks; an `InterpError` naming the first failed check and its difference."""
    for check in run_checks(model, quick=True):
        if not check.passed:
            size = "" if check.max_diff is None else f" (difference {check.max_diff:.3g} > {check.tolerance:.3g})"
            raise InterpError(f"{model.name} failed the check '{check.name}' on {check.backend}{size}: {check.detail}; "
                              "its architecture adapter does not match the model (`interp doctor` shows every check)")
