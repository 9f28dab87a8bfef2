"""Void layers: L2 Adaptive Computation (LAC), which layers a token actually uses.

LAC (Shemiranifar 2025, "Void in Language Models") watches the L2 norm of the residual stream
per token. With ``n_{-1}`` the norm of the embedding (the input of layer 0) and ``n_l`` the norm
of the residual leaving layer l:

    delta_l = n_l - n_{l-1}                                 (signed change)
    tau_l   = alpha * (max_{j<l} delta_j - min_{j<l} delta_j)   (tau_0 = 0)
    layer l is a VOID for the token  <=>  delta_l < tau_l   (strict), else ACTIVATED

`lac_activated` is that rule as a pure function of a norm matrix. The reference code resets its
state at every forward call, so decisions are taken once for the whole prompt (prompt processing,
PP: each prompt token gets its own decisions) and once per generated token (response generation,
RG, with a KV cache); `void_map` and `generate_with_voids` do the same.

*Skipping voids* follows the reference code (``skip_layers=True``): every intermediate layer still
returns its normal output (so the residual stream and the KV cache downstream are unchanged); only
the last layer's output is replaced, per token, by the residual leaving the **last activated layer**
(the embedding if none is activated), which the final norm and the LM head then read. The paper
words it as "halting" without saying this; the original LAC (JAX) merged halted states inside the
recurrence instead. We implement the code's version and flag the ambiguity. Because the decisions
read the unchanged stream, the mask is the same with and without skipping. Skipping is done in the
same forward pass by a small observing intervention at ``resid_pre.0`` and every ``resid_post.L``,
so it works on every backend and inside KV-cached generation.

Quirk of the reference code not copied: for layer 0 it takes the range of ``delta_0`` over the
*batch* axis (0 at batch size 1, which is how the paper runs); here ``tau_0 = 0`` always, so
decisions never depend on the other prompts of a batch.

>>> import torch
>>> norms = torch.tensor([0.0, 3.0, 4.0, 4.5, 6.5])   # deltas 3, 1, 0.5, 2
>>> lac_activated(norms).int()
tensor([1, 1, 0, 1], dtype=torch.int32)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from interp.chat import chat_prompt
from interp.limits import check_context, check_memory, kv_bytes_per_token
from interp.errors import InterpError
from interp.interventions import Intervention
from interp.metrics import check_finite
from interp.model import Model


def lac_activated(norms: torch.Tensor, alpha: float = 0.8) -> torch.Tensor:
    """Activated layers [..., n_layers] (bool) from residual norms [..., n_layers + 1], embedding first."""
    if not isinstance(norms, torch.Tensor) or norms.ndim < 1 or norms.shape[-1] < 2:
        shape = tuple(norms.shape) if isinstance(norms, torch.Tensor) else type(norms).__name__
        raise InterpError(f"norms must be a tensor [..., n_layers + 1] with the embedding norm first; got {shape}")
    delta = norms[..., 1:].float() - norms[..., :-1].float()
    hi = torch.cummax(delta, dim=-1).values
    lo = torch.cummin(delta, dim=-1).values
    tau = torch.zeros_like(delta)
    tau[..., 1:] = alpha * (hi[..., :-1] - lo[..., :-1])  # range over the earlier layers j < l
    return ~(delta < tau)


def last_activated_state(states: torch.Tensor, activated: torch.Tensor) -> torch.Tensor:
    """Per token, the residual leaving its last activated layer: states [..., n_layers + 1, d] -> [..., d].

    ``states[..., 0, :]`` is the embedding (taken when no layer is activated), ``states[..., l + 1, :]``
    the residual leaving layer l; ``activated`` is [..., n_layers].
    """
    if states.shape[:-1] != activated.shape[:-1] + (activated.shape[-1] + 1,):
        raise InterpError(f"states {tuple(states.shape)} do not fit the mask {tuple(activated.shape)}: "
                          "need [..., n_layers + 1, d] for a mask [..., n_layers]")
    slots = torch.arange(1, activated.shape[-1] + 1, device=activated.device)
    last = (activated.long() * slots).amax(-1)  # 0 when no layer is activated
    return torch.gather(states, -2, last[..., None, None].expand(*last.shape, 1, states.shape[-1]))[..., 0, :]


def norm_sites(model: Model) -> list[str]:
    """The sites LAC reads: ``resid_pre.0`` (embedding), then ``resid_post.L`` for every layer."""
    return ["resid_pre.0"] + [f"resid_post.{layer}" for layer in range(model.n_layers)]


def read_norms(model: Model, tokens: torch.Tensor | str, backend: str | None = None) -> torch.Tensor:
    """Residual L2 norms [batch, pos, n_layers + 1] (embedding first), read through the hook layer."""
    out = model.run(tokens, read=norm_sites(model), backend=backend)
    return torch.stack([out.acts[s].float().norm(dim=-1) for s in norm_sites(model)], dim=-1)


class _Tracker:
    """Collects norms (and states when skipping) of one forward pass; shared by its `_Observe` edits."""

    def __init__(self, n_layers: int, alpha: float, skip: bool, forced: torch.Tensor | None):
        self.n_layers, self.alpha, self.skip, self.forced = n_layers, alpha, skip, forced
        self.norms: list[torch.Tensor | None] = [None] * (n_layers + 1)
        self.states: list[torch.Tensor | None] = [None] * (n_layers + 1)

    def see(self, slot: int, act: torch.Tensor) -> torch.Tensor:
        self.norms[slot] = act.detach().float().norm(dim=-1)
        if not self.skip:
            return act
        self.states[slot] = act.detach()
        if slot < self.n_layers:
            return act
        mask = self.activated()
        return last_activated_state(torch.stack(self.states, dim=-2), mask.to(act.device)).to(act.dtype)

    def activated(self) -> torch.Tensor:
        if any(n is None for n in self.norms):
            raise InterpError("the LAC observer did not see every layer; the backend skipped a resid site")
        if self.forced is not None:
            return self.forced.bool()
        return lac_activated(check_finite(torch.stack(self.norms, dim=-1), "the residual norms"), self.alpha)


@dataclass(frozen=True, eq=False)
class _Observe(Intervention):
    """Reports the activation to the tracker (slot 0: embedding, l + 1: layer l); may replace the last."""

    tracker: _Tracker = None
    slot: int = 0

    def apply(self, act: torch.Tensor) -> torch.Tensor:
        return self.tracker.see(self.slot, act)


def _observers(model: Model, tracker: _Tracker) -> list[Intervention]:
    return [_Observe(site, tracker, slot) for slot, site in enumerate(norm_sites(model))]


def _check_alpha(alpha: float) -> None:
    if not isinstance(alpha, (int, float)) or math.isnan(alpha):
        raise InterpError(f"alpha must be a number (the paper uses 0.8); got {alpha!r}")


@dataclass
class VoidMap:
    """LAC decisions of one forward call (one phase): ``activated`` [token, layer], ``norms`` [token, layer + 1]."""

    tokens: list[str]
    activated: torch.Tensor
    norms: torch.Tensor

    @property
    def usage(self) -> torch.Tensor:
        """Fraction of tokens for which each layer is activated [layer]."""
        return self.activated.float().mean(0)

    @property
    def layer_fraction(self) -> float:
        """Fraction of (token, layer) pairs activated: the paper's "layers used"."""
        return float(self.activated.float().mean())


def void_map(model: Model, tokens: torch.Tensor | str, alpha: float = 0.8, skip: bool = False,
             activated: torch.Tensor | None = None, backend: str | None = None) -> tuple[VoidMap, torch.Tensor]:
    """PP-phase LAC decisions for one prompt and the logits [pos, vocab] of the same forward pass.

    ``skip=True`` makes the LM head read each token's last activated layer. ``activated`` [pos, n_layers]
    forces a mask instead of the LAC rule (only meaningful with ``skip=True``).
    """
    _check_alpha(alpha)
    tokens = model.to_tokens(tokens) if isinstance(tokens, str) else tokens
    if tokens.ndim != 2 or tokens.shape[0] != 1:
        raise InterpError(f"void_map takes one prompt: tokens [1, pos]; got {tuple(tokens.shape)}")
    forced = None
    if activated is not None:
        if tuple(activated.shape) != (tokens.shape[1], model.n_layers):
            raise InterpError(f"a forced mask must be [pos, n_layers] = ({tokens.shape[1]}, {model.n_layers}); "
                              f"got {tuple(activated.shape)}")
        forced = activated[None]
    tracker = _Tracker(model.n_layers, alpha, skip, forced)
    with torch.no_grad():
        out = model.run(tokens, _observers(model, tracker), backend=backend)
    mask = tracker.activated()[0].cpu()
    norms = torch.stack(tracker.norms, dim=-1)[0].cpu()
    words = [model.tokenizer.decode([t]) for t in tokens[0].tolist()]
    return VoidMap(words, mask, norms), out.logits[0].float()


@dataclass
class VoidGeneration:
    """One greedy generation: PP map over the prompt, RG map over the generated tokens, and the text."""

    prompt: VoidMap
    response: VoidMap
    text: str


def generate_with_voids(model: Model, prompt: str | torch.Tensor, max_new_tokens: int = 16, alpha: float = 0.8,
                        skip: bool = False) -> VoidGeneration:
    """Greedy decoding with a KV cache, recording LAC decisions per forward call.

    The prompt runs in one call (PP phase); then each generated token runs in its own call (RG phase),
    including the last one, so the RG map has one row per generated token (its own decisions). With
    ``skip=True`` the tokens are chosen from the skipped logits.
    """
    _check_alpha(alpha)
    if max_new_tokens < 1:
        raise InterpError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    tokens = model.to_tokens(prompt) if isinstance(prompt, str) else prompt
    if tokens.ndim != 2 or tokens.shape[0] != 1:
        raise InterpError(f"generate_with_voids takes one prompt: tokens [1, pos]; got {tuple(tokens.shape)}")
    past, chunk, maps, generated = None, tokens, [], []
    for step in range(max_new_tokens + 1):
        tracker = _Tracker(model.n_layers, alpha, skip, None)
        out, past = model.run_cached(chunk, _observers(model, tracker), past=past)
        maps.append((tracker.activated()[0].cpu(), torch.stack(tracker.norms, dim=-1)[0].cpu()))
        if step == max_new_tokens:
            break
        nxt = out.logits[:, -1].argmax(-1)
        generated.append(int(nxt))
        chunk = nxt[:, None]
    decode = model.tokenizer.decode
    pp = VoidMap([decode([t]) for t in tokens[0].tolist()], *maps[0])
    rg = VoidMap([decode([t]) for t in generated], torch.cat([m for m, _ in maps[1:]]), torch.cat([n for _, n in maps[1:]]))
    return VoidGeneration(pp, rg, decode(generated))


@dataclass
class VoidUsage:
    """Layer usage over several generations. `tensors` maps to the run-folder names."""

    alpha: float
    usage_prompt: torch.Tensor  # [layer], over every prompt token
    usage_response: torch.Tensor  # [layer], over every generated token
    generations: list[VoidGeneration] = field(default_factory=list)

    def tensors(self) -> dict[str, torch.Tensor]:
        """``voids/usage_prompt``, ``voids/usage_response`` [layer] and token x layer maps per prompt."""
        out = {"voids/usage_prompt": self.usage_prompt, "voids/usage_response": self.usage_response}
        for i, g in enumerate(self.generations):
            out[f"voids/prompt_map.{i}"] = g.prompt.activated.to(torch.uint8)
            out[f"voids/response_map.{i}"] = g.response.activated.to(torch.uint8)
        return out


def check_generation(model: Model, prompts: Sequence[str], max_new_tokens: int, chat: bool = False) -> list[str]:
    """The texts to generate from, after refusing (before any generation) an empty prompt, or a prompt plus
    ``max_new_tokens`` longer than the model's context or than the memory its KV cache would need."""
    if max_new_tokens < 1:
        raise InterpError(f"--max-new-tokens must be at least 1, got {max_new_tokens}")
    texts = []
    for i, p in enumerate(prompts):
        if not str(p).strip():
            raise InterpError(f"prompt {i + 1} is empty: give each --prompt some text")
        text = chat_prompt(model, p) if chat else p
        n = int(model.to_tokens(text).shape[1])
        if n == 0:
            raise InterpError(f"prompt {i + 1} ({p!r}) has no tokens: give it some text")
        check_context(model, n + max_new_tokens, f"prompt {i + 1} ({n} tokens) plus --max-new-tokens {max_new_tokens}",
                      "lower --max-new-tokens or shorten the prompt")
        check_memory((n + max_new_tokens) * kv_bytes_per_token(model),
                     f"generating {max_new_tokens} tokens after prompt {i + 1}", model.device, "lower --max-new-tokens")
        texts.append(text)
    return texts


def void_usage(model: Model, prompts: Sequence[str], max_new_tokens: int = 16, alpha: float = 0.8,
               chat: bool = False, progress=None) -> VoidUsage:
    """Generate from each prompt (optionally in the chat template) and pool PP and RG layer usage.

    ``progress(phase, done, total)`` is called after each prompt.
    """
    if not prompts:
        raise InterpError("void_usage needs at least one prompt")
    gens = []
    texts = check_generation(model, prompts, max_new_tokens, chat)
    for text in texts:
        gens.append(generate_with_voids(model, text, max_new_tokens, alpha))
        if progress:
            progress("generating", len(gens), len(texts))
    usage_pp = torch.cat([g.prompt.activated for g in gens]).float().mean(0)
    usage_rg = torch.cat([g.response.activated for g in gens]).float().mean(0)
    return VoidUsage(alpha, usage_pp, usage_rg, gens)
