"""Backward rules: LRP propagation rules as gradient edits that leave every forward value unchanged.

RelP (relevance patching) replaces the gradient of attribution patching with LRP propagation
coefficients. Each rule keeps a module's output bit-identical and changes only what flows back
through it, with one identity:

    through(out, x, c) = out.detach() + (x - x.detach()) * c

equals ``out`` in value (the second term is exactly zero) and sends ``c * grad`` back to ``x``.

========  =============  ==========================================  ================================
rule      layer type     backward                                    from
========  =============  ==========================================  ================================
ln        norm           divisor (and LayerNorm's mean) constant     LN-rule (Ali et al. 2022)
identity  activation     d act(x) / dx := act(x) / x (and tanh caps)  Identity-rule (Jafari et al. 2024)
half      gated_product  each factor of act(gate) * up gets half     Half-rule (Arras et al. 2019)
ah        attention      the attention pattern is a constant         AH-rule (Ali et al. 2022)
========  =============  ==========================================  ================================

What a rule does and where it applies are separate (zennit's rule / composite split): a `Rule`
says how to edit one module of its layer type; the architecture adapter (`Adapter.rule_points`)
says which modules have that type; `rule_steps` pairs them into steps that every backend runs at
the right place. Two rules act on operations rather than modules, while the forward runs
(`forward_rules`): the AH-rule detaches every softmax, and the identity rule also covers the tanh
soft-caps some families apply to attention scores and final logits. A rule whose layer type a model lacks (``half`` on a plain GELU MLP) has nothing
to edit and is a no-op there. 
>>> model.run(tokens, read=["mlp_out.3"], grad=True, rules=RELP_RULES)   # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import ClassVar

import torch
from torch.overrides import TorchFunctionMode

from interp.adapters import Adapter, norm_eps
from interp.backends.steps import RuleStep
from interp.backends.torch_backend import find_module
from interp.errors import InterpError

Edit = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def through(out: torch.Tensor, x: torch.Tensor, coef: torch.Tensor | float) -> torch.Tensor:
    """``out`` in value, with the gradient reaching ``x`` set to ``coef`` times the incoming one."""
    return out.detach() + (x - x.detach()) * coef


def stabilize(z: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """``z`` pushed ``eps`` away from zero (zero goes to +eps), so dividing by it is safe."""
    return z + ((z == 0).to(z.dtype) + z.sign()) * eps


class Rule:
    """A backward-only edit for every module of one layer type."""

    name: ClassVar[str]
    layer_type: ClassVar[str]

    def edit(self, module: torch.nn.Module, table: Adapter) -> Edit:
        """The function ``(module input, module output) -> output`` to run at ``module``."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class LNRule(Rule):
    """A norm as the linear map it is once its divisor is frozen: d out / dx = gain / divisor(x).

    For LayerNorm the subtracted mean is held constant too (Ali et al.), so the map is the same
    diagonal one; a norm without a weight has gain 1.
    """

    name, layer_type = "ln", "norm"

    def edit(self, module: torch.nn.Module, table: Adapter) -> Edit:
        weight = getattr(module, "weight", None)
        gain = 1.0 if weight is None else weight.detach().float() + table.norm_offset
        eps = norm_eps(module)

        def ln_rule(x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
            inv = 1.0 / table.norm.divisor(x.detach().float(), eps)
            return through(out, x, (inv * gain).to(x.dtype))

        return ln_rule


class IdentityRule(Rule):
    """An elementwise activation passes the gradient as if it were the linear map x -> (act(x)/x) x."""

    name, layer_type = "identity", "activation"

    def edit(self, module: torch.nn.Module, table: Adapter) -> Edit:
        def identity_rule(x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
            return through(out, x, out.detach() / stabilize(x.detach()))

        return identity_rule


class HalfRule(Rule):
    """Each factor of the gated product act(gate(x)) * up(x) receives half the gradient."""

    name, layer_type = "half", "gated_product"

    def edit(self, module: torch.nn.Module, table: Adapter) -> Edit:
        def half_rule(x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
            return through(out, out, 0.5)

        return half_rule


class AHRule(Rule):
    """The attention pattern is a constant: no gradient reaches queries and keys."""

    name, layer_type = "ah", "attention"


LAYER_TYPES = ("norm", "activation", "gated_product", "attention")
RULES: dict[str, type[Rule]] = {r.name: r for r in (LNRule, IdentityRule, HalfRule, AHRule)}
RELP_RULES: tuple[str, ...] = ("ln", "identity", "half")  # the RelP reference code's default


def parse_rules(rules: str | Sequence[str | Rule]) -> tuple[Rule, ...]:
    """Rules from names ("ln,identity,half" or a list) or `Rule` objects; a clear error otherwise."""
    items = [r.strip() for r in rules.split(",") if r.strip()] if isinstance(rules, str) else list(rules)
    parsed: list[Rule] = []
    for item in items:
        if isinstance(item, Rule):
            parsed.append(item)
        elif item in RULES:
            parsed.append(RULES[item]())
        else:
            raise InterpError(f"unknown rule '{item}': use one or more of {', '.join(RULES)} (RelP default: {','.join(RELP_RULES)})")
    names = [r.name for r in parsed]
    if len(set(names)) != len(names):
        raise InterpError(f"rule given twice in {','.join(names)}")
    return tuple(parsed)


def rule_steps(rules: Sequence[Rule], table: Adapter, hf: torch.nn.Module) -> list[RuleStep]:
    """One `RuleStep` per module of every layer type a rule covers, in any order (they carry their own)."""
    steps = []
    refused = dict(table.rule_refusals)
    for rule in rules:
        if rule.layer_type not in LAYER_TYPES:
            raise InterpError(f"rule '{rule.name}' edits layers of type '{rule.layer_type}', which no architecture has "
                              f"(layer types: {', '.join(LAYER_TYPES)})")
        if rule.layer_type in refused:
            raise InterpError(f"rule '{rule.name}' cannot be applied: {refused[rule.layer_type]}")
        for point in table.rule_points:
            if point.layer_type != rule.layer_type:
                continue
            for layer in (range(table.n_layers) if point.per_layer else [None]):
                if point.only is not None and (layer in table.moe_layers) != (point.only == "moe"):
                    continue
                path = point.module.format(L=layer)
                steps.append(RuleStep(path, rule.edit(find_module(hf, path), table), table.rule_key(point, layer),
                                      rule.name, point.repeated))
    return steps


class _ForwardRules(TorchFunctionMode):
    """Rules on operations that are not modules: every softmax returns a detached result (AH-rule), every
    ``torch.tanh`` passes the gradient as tanh(x)/x (the identity rule on tanh soft-caps). Counts both."""

    _softmax = (torch.nn.functional.softmax, torch.softmax, torch.Tensor.softmax)
    _tanh = (torch.tanh, torch.Tensor.tanh)

    def __init__(self, detach_softmax: bool, identity_tanh: bool) -> None:
        super().__init__()
        self.detach_softmax, self.identity_tanh = detach_softmax, identity_tanh
        self.softmaxes = self.tanhs = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if self.detach_softmax and func in self._softmax:
            self.softmaxes += 1
            return out.detach()
        if self.identity_tanh and func in self._tanh:
            self.tanhs += 1
            x = args[0].detach()
            tiny = x.abs() < 1e-12
            return through(out, args[0], torch.where(tiny, torch.ones_like(x), out.detach() / torch.where(tiny, 1.0, x)))
        return out


@contextmanager
def forward_rules(rules: Sequence[Rule], adapter: Adapter) -> Iterator[None]:
    """Apply the rules that act on operations rather than modules to the forward pass run inside the block.

    - ``ah``: every softmax (attention, and an MoE router's) returns a detached pattern.
    - ``identity`` on a model with tanh soft-caps (Gemma 2's attention scores and final logits): each
      ``cap * tanh(z / cap)`` passes the gradient as its output over its input, like any activation.
    """
    ah = any(isinstance(r, AHRule) for r in rules)
    caps = adapter.softcaps if any(isinstance(r, IdentityRule) for r in rules) else 0
    if not ah and not caps:
        yield
        return
    mode = _ForwardRules(ah, bool(caps))
    with mode:
        yield
    if ah and mode.softmaxes < adapter.n_layers:
        raise InterpError(f"the AH-rule found {mode.softmaxes} attention softmaxes for {adapter.n_layers} layers; "
                          "it needs eager attention (load the model with attn_implementation='eager')")
    if caps and mode.tanhs < caps:
        raise InterpError(f"the identity rule found {mode.tanhs} of the model's {caps} tanh soft-caps; "
                          "it needs eager attention (load the model with attn_implementation='eager')")
