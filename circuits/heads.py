"""Head detectors (induction, previous-token, duplicate-token) and direct logit attribution per head.

A detector scores every head by how much attention it puts where a known mechanism would put it.
Each detector is a *target mask* over (query, key) pairs, built from the tokens alone:

==================  ===========================================================================
detector            query q attends to key k when
==================  ===========================================================================
previous_token      k == q - 1
duplicate_token     k < q and tokens[k] == tokens[q]       (an earlier copy of the current token)
induction           k < q and tokens[k - 1] == tokens[q]   (the token after an earlier copy)
==================  ===========================================================================

A head's score is the attention mass it puts on the target keys, averaged over the queries that
have at least one target (and over prompts). On repeated random tokens ``x x`` with period T
(`repeated_random_tokens`) this is the usual definition: in the second half, the induction target
of query i is i - T + 1 and its duplicate is i - T.

Direct logit attribution (`direct_logit_attribution`) splits the final residual at one position
into what each head, MLP and the embedding wrote, and projects each part through the final norm
(with the run's own cached RMS scale, as TransformerLens does) onto W_U[answer] - W_U[wrong]. The
parts sum exactly to the logit difference on architectures whose sublayer outputs enter the
residual unnormalised through an RMSNorm with linear logits (Llama, Mistral, Qwen...); post-norms (Gemma,
OLMo-2), LayerNorm, soft-capped or scaled logits make the terms non-additive, so those are refused.

>>> pattern = torch.eye(3)[None, None].roll(-1, dims=-1).tril()  # every query on its predecessor
>>> float(previous_token_scores(pattern)[0])
1.0
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from interp.errors import InterpError
from interp.model import Model

DETECTORS = ("induction", "previous_token", "duplicate_token")


# --------------------------------------------------------------------------- target masks
def previous_token_mask(tokens: torch.Tensor) -> torch.Tensor:
    """[batch, q, k] bool: True where k == q - 1."""
    b, n = tokens.shape
    return torch.ones(n, n, dtype=torch.bool, device=tokens.device).tril(-1).triu(-1)[None].expand(b, n, n)


def duplicate_token_mask(tokens: torch.Tensor) -> torch.Tensor:
    """[batch, q, k] bool: True where k < q and tokens[k] == tokens[q]."""
    same = tokens[:, :, None] == tokens[:, None, :]
    return same & torch.ones_like(same[0]).tril(-1)


def induction_mask(tokens: torch.Tensor) -> torch.Tensor:
    """[batch, q, k] bool: True where k < q and tokens[k - 1] == tokens[q] (k >= 1)."""
    dup = duplicate_token_mask(tokens)  # [b, q, j]: j an earlier copy of q
    out = torch.zeros_like(dup)
    out[:, :, 1:] = dup[:, :, :-1]  # target k = j + 1
    return out & torch.ones_like(dup[0]).tril(-1)


MASKS = {"induction": induction_mask, "previous_token": previous_token_mask, "duplicate_token": duplicate_token_mask}


def masked_attention_score(pattern: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per head: attention mass on ``mask``'s keys, averaged over queries with a target.

    ``pattern`` is [batch, head, q, k] (one layer), ``mask`` [batch, q, k] bool. Returns [head]
    (nan when no query has a target).
    """
    if pattern.ndim != 4 or mask.shape != (pattern.shape[0], pattern.shape[2], pattern.shape[3]):
        raise InterpError(f"attention pattern {tuple(pattern.shape)} and target mask {tuple(mask.shape)} do not fit: "
                          "use [batch, head, q, k] and [batch, q, k]")
    m = mask.to(pattern.dtype)
    mass = (pattern * m[:, None]).sum(-1)  # [b, head, q]
    has_target = mask.any(-1)  # [b, q]
    n = has_target.sum()
    return (mass * has_target[:, None].to(pattern.dtype)).sum((0, 2)) / n


def previous_token_scores(pattern: torch.Tensor, tokens: torch.Tensor | None = None) -> torch.Tensor:
    """[head] mean attention from q to q - 1 (``tokens`` unused; the mask needs only the length)."""
    b, _, n, _ = pattern.shape
    dummy = torch.zeros(b, n, dtype=torch.long, device=pattern.device) if tokens is None else tokens
    return masked_attention_score(pattern, previous_token_mask(dummy))


def duplicate_token_scores(pattern: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """[head] mean attention from each repeated token to its earlier copies."""
    return masked_attention_score(pattern, duplicate_token_mask(tokens))


def induction_scores(pattern: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """[head] mean attention from each repeated token to the token after its earlier copies."""
    return masked_attention_score(pattern, induction_mask(tokens))


# --------------------------------------------------------------------------- on a model
def repeated_random_tokens(model: Model, n_prompts: int = 4, period: int = 20, seed: int = 0) -> torch.Tensor:
    """[n_prompts, 2 * period] token ids: ``period`` distinct random tokens, then the same again.

    Tokens are drawn without replacement from ids 1000..vocab-1 (ordinary word pieces, no specials),
    so the only repeats are the designed ones.
    """
    if period < 2 or n_prompts < 1:
        raise InterpError(f"repeated_random_tokens needs period >= 2 and n_prompts >= 1, got {period}, {n_prompts}")
    low = min(1000, model.d_vocab // 2)
    if model.d_vocab - low < period:
        raise InterpError(f"period {period} exceeds the {model.d_vocab - low} tokens available; use a shorter period")
    gen = torch.Generator().manual_seed(seed)
    first = torch.stack([torch.randperm(model.d_vocab - low, generator=gen)[:period] + low for _ in range(n_prompts)])
    return torch.cat([first, first], dim=1).to(model.device)


@dataclass
class HeadScores:
    """Detector scores [layer, head]: tensors ``heads/induction``, ``heads/previous_token``, ``heads/duplicate_token``."""

    induction: torch.Tensor
    previous_token: torch.Tensor
    duplicate_token: torch.Tensor
    tokens: torch.Tensor  # [batch, pos] the tokens scored

    def tensors(self) -> dict[str, torch.Tensor]:
        return {f"heads/{name}": getattr(self, name) for name in DETECTORS}

    def top(self, detector: str, k: int = 5) -> list[tuple[int, int, float]]:
        """The ``k`` highest-scoring heads of ``detector`` as (layer, head, score)."""
        if detector not in DETECTORS:
            raise InterpError(f"unknown head detector '{detector}': use one of {', '.join(DETECTORS)}")
        grid = getattr(self, detector)
        flat = grid.flatten().nan_to_num(-1.0).topk(min(k, grid.numel())).indices
        return [(int(i) // grid.shape[1], int(i) % grid.shape[1], float(grid.flatten()[i])) for i in flat]


def detect_heads(model: Model, tokens: torch.Tensor | None = None, backend: str | None = None,
                 n_prompts: int = 4, period: int = 20, seed: int = 0) -> HeadScores:
    """Score every head with every detector on ``tokens`` (default: `repeated_random_tokens`)."""
    if tokens is None:
        tokens = repeated_random_tokens(model, n_prompts, period, seed)
    if tokens.ndim != 2:
        raise InterpError(f"tokens must be [batch, pos], got shape {tuple(tokens.shape)}")
    sites = [f"attn_pattern.{layer}" for layer in range(model.n_layers)]
    with torch.no_grad():
        acts = model.run(tokens, read=sites, backend=backend).acts
    masks = {name: MASKS[name](tokens.to(model.device)) for name in DETECTORS}
    grids = {name: torch.stack([masked_attention_score(acts[s].float(), masks[name]) for s in sites]).cpu()
             for name in DETECTORS}
    return HeadScores(**grids, tokens=tokens.cpu())


# --------------------------------------------------------------------------- direct logit attribution
@dataclass
class DirectLogitAttribution:
    """Each component's direct contribution to logit[answer] - logit[wrong] at one position, per prompt.

    ``heads`` [n, layer, head] (tensor ``dla/head_out``), ``mlps`` [n, layer] (``dla/mlp_out``),
    ``embed`` [n] (the token embedding), ``logit_diff`` [n] (from the model's logits). On Llama
    ``total`` equals ``logit_diff`` up to float error.
    """

    heads: torch.Tensor
    mlps: torch.Tensor
    embed: torch.Tensor
    logit_diff: torch.Tensor

    @property
    def total(self) -> torch.Tensor:
        return self.heads.sum((1, 2)) + self.mlps.sum(1) + self.embed

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"dla/head_out": self.heads.mean(0), "dla/mlp_out": self.mlps.mean(0),
                "dla/head_out/per_prompt": self.heads, "dla/mlp_out/per_prompt": self.mlps}


def logit_diff_directions(model: Model, answer: torch.Tensor, wrong: torch.Tensor) -> torch.Tensor:
    """[n, d_model]: final-norm gain * (W_U[:, answer] - W_U[:, wrong]), the direction DLA projects on."""
    gain = model.final_gain()
    w_u = model.W_U
    return gain * (w_u[:, answer] - w_u[:, wrong]).T


def direct_logit_attribution(model: Model, tokens: torch.Tensor, answer: torch.Tensor, wrong: torch.Tensor,
                             pos: int = -1, backend: str | None = None) -> DirectLogitAttribution:
    """Split the logit difference at ``pos`` into per-head, per-MLP and embedding terms.

    Head h of layer L contributes ``(z_h @ W_O[L][h]) / scale · (gain * (W_U[a] - W_U[w]))`` with
    ``scale`` the final norm's cached RMS divisor of this run.
    """
    adapter = model.adapter
    if not adapter.sublayers_add_linearly():
        raise InterpError(f"direct logit attribution needs sublayer outputs that add to the residual unnormalised; "
                          f"{adapter.family} normalises them first (post-norms of its {adapter.block} blocks)")
    if adapter.norm.kind != "rms":
        raise InterpError(f"direct logit attribution here splits an RMSNorm's output; {adapter.family} uses LayerNorm, "
                          "whose mean and bias terms it does not split yet")
    if adapter.logit_post or adapter.unembed_bias(model.hf) is not None:
        raise InterpError(f"direct logit attribution needs logits linear in the final residual; {adapter.family}'s are "
                          f"{adapter.logit_post or 'shifted by an unembedding bias'}")
    if adapter.attn_out_bias(model.hf, 0) is not None:
        raise InterpError("direct logit attribution per head does not support an attention output bias")
    answer, wrong = torch.as_tensor(answer).reshape(-1), torch.as_tensor(wrong).reshape(-1)
    if len(answer) != tokens.shape[0] or len(wrong) != tokens.shape[0]:
        raise InterpError(f"need one answer and one wrong token per prompt ({tokens.shape[0]}), got {len(answer)} and {len(wrong)}")
    L = model.n_layers
    sites = ([f"head_out.{layer}" for layer in range(L)] + [f"mlp_out.{layer}" for layer in range(L)]
             + ["resid_pre.0", "norm_scale.final"])
    with torch.no_grad():
        out = model.run(tokens, read=sites, backend=backend)
        direction = logit_diff_directions(model, answer.to(model.device), wrong.to(model.device))  # [n, d]
        scale = out.acts["norm_scale.final"][:, pos]  # [n, 1]
        unit = (direction / scale).float()  # [n, d]
        heads = torch.stack([torch.einsum("nhe,hed,nd->nh", out.acts[f"head_out.{layer}"][:, pos].float(),
                                          model.W_O(layer).float(), unit) for layer in range(L)], dim=1)
        mlps = torch.stack([(out.acts[f"mlp_out.{layer}"][:, pos].float() * unit).sum(-1) for layer in range(L)], dim=1)
        embed = (out.acts["resid_pre.0"][:, pos].float() * unit).sum(-1)
        logits = out.logits[:, pos].float()
        diff = logits.gather(-1, answer[:, None].to(logits.device))[:, 0] - logits.gather(-1, wrong[:, None].to(logits.device))[:, 0]
    return DirectLogitAttribution(heads=heads.cpu(), mlps=mlps.cpu(), embed=embed.cpu(), logit_diff=diff.cpu())
