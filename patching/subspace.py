"""Subspace activation patching: patch only the coordinates of an activation along some directions.

Patching a whole activation tells *where* the model carries a difference; patching a subspace tells
*which feature*. A `Direction` is k directions ``[k, d]`` at one site, found from data by one of:

=============  ====================================================================================
method         direction
=============  ====================================================================================
mean_diff      difference of two classes' mean activations (at the patched positions): prompts whose
               answer is named before the wrong name vs after (IOI: ABBA vs BABA), else base vs source
probe          a logistic-regression probe separating the same two classes (scikit-learn, fitted on
               standardised features, returned in raw coordinates)
gradient       the mean gradient of the base logit difference with respect to the activation
das            distributed alignment search: trained to make the patch produce the target answer
given          a tensor you pass
=============  ====================================================================================

`PatchPairs` holds the experiment: base prompts, the source run's activation at the site, the
token the patch should produce (``target``) and the base run's own answer (``other``). With an
IOI prompt set the base is the clean prompt, the source the corrupt one and the target the clean
``wrong`` name: with ``swap`` corruption that tests the S2 name, with ``order`` the name position.

`evaluate` patches along a basis and reports the base logit difference ``other - target`` after
the patch, the fractional logit-difference decrease ``FLDD = 100 (1 - LD_patched / LD_base)``
(100 % erases the preference, more flips it) and the interchange accuracy (how often the patched
run's top token is the target). Directions save and load as safetensors plus JSON.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch

from interp.limits import check_context, check_memory
from interp.errors import InterpError
from interp.interventions import Replace, SubspaceReplace
from interp.model import Model
from interp.prompts import PromptSet
from interp.results import load_vectors, save_vectors

METHODS = ("das", "mean_diff", "probe", "gradient", "given")


@dataclass
class PatchPairs:
    """Base tokens [n, pos], the source activation at ``site`` [n, pos, d], target and other tokens [n]."""

    site: str
    base: torch.Tensor
    source: torch.Tensor
    base_act: torch.Tensor
    target: torch.Tensor
    other: torch.Tensor
    positions: Sequence[int] | None = None  # patched positions (None: all)
    source_tokens: torch.Tensor | None = None  # the source prompts [n, pos], for feature classes

    def subset(self, rows: torch.Tensor) -> "PatchPairs":
        return PatchPairs(self.site, self.base[rows], self.source[rows], self.base_act[rows], self.target[rows],
                          self.other[rows], self.positions, None if self.source_tokens is None else self.source_tokens[rows])

    def __len__(self) -> int:
        return self.base.shape[0]


def check_pairs_size(model: Model, n: int, n_pos: int) -> None:
    """Refuse, before anything is allocated, prompts longer than the model's context or more than memory holds."""
    check_context(model, n_pos, "each prompt", "use shorter prompts")
    item = next(model.hf.parameters()).element_size()
    width = max(model.d_model, model.d_mlp)
    need = int(n) * n_pos * item * (2 * model.d_vocab + 4 * width + model.n_layers * model.d_model)
    check_memory(need, f"subspace patching on {n} prompts of {n_pos} tokens", str(model.device), "use fewer --n-prompts")


def check_positions(positions: Sequence[int] | None, n_pos: int) -> list[int] | None:
    """``positions`` as indices into prompts of ``n_pos`` tokens; a one-line error for one outside them."""
    if positions is None:
        return None
    if not len(positions):
        raise InterpError("--positions is empty: give positions such as -1 or 3,-1, or 'all'")
    for p in positions:
        if not -n_pos <= int(p) < n_pos:
            raise InterpError(f"--positions {p} is outside the prompts, which are {n_pos} tokens: use 0..{n_pos - 1} "
                              f"(or -{n_pos}..-1 from the end)")
    return [int(p) % n_pos for p in positions]


def patch_pairs(model: Model, prompts: PromptSet, site: str, positions: Sequence[int] | None = (-1,)) -> PatchPairs:
    """Base = clean prompts, source = corrupt prompts, target = ``wrong``, other = ``answer``."""
    model.site(site)
    tokens = prompts.tokenize(model.tokenizer)
    n_pos = tokens.clean.shape[1]
    positions = check_positions(positions, n_pos)
    check_pairs_size(model, len(prompts), n_pos)
    with torch.no_grad():
        source = model.run(tokens.corrupt, read=[site]).acts[site]
        base_act = model.run(tokens.clean, read=[site]).acts[site]
    if source.ndim != 3:
        raise InterpError(f"subspace patching needs a [batch, pos, d] site such as resid_pre, attn_out or mlp_act; {site} is {tuple(source.shape)}")
    return PatchPairs(site, tokens.clean, source, base_act, tokens.wrong, tokens.answer, positions, tokens.corrupt)


@dataclass
class Direction:
    """``vectors`` [k, d] at ``site``, with how they were found."""

    site: str
    vectors: torch.Tensor
    method: str
    meta: dict = field(default_factory=dict)

    def save(self, path: str | Path) -> Path:
        """Write ``<path>.safetensors`` and ``<path>.json``; returns the safetensors path."""
        return save_vectors(path, self.vectors, {"site": self.site, "method": self.method, "k": self.vectors.shape[0],
                                                 "d": self.vectors.shape[1], "meta": self.meta})

    @classmethod
    def load(cls, path: str | Path) -> "Direction":
        """A saved direction; a one-line error for a file that is damaged, lacks a key or holds non-finite numbers."""
        try:
            vectors, info = load_vectors(path, "direction")
        except InterpError:
            raise
        except (KeyError, ValueError, TypeError, OSError) as e:  # no "vectors" tensor, JSON that does not parse
            what = f"no {e}" if isinstance(e, KeyError) else f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            raise InterpError(f"{path} is not a saved direction ({what}); give the path a subspace run wrote, "
                              "e.g. runs/x/direction") from None
        if not isinstance(info, dict):
            raise InterpError(f"{Path(path).with_suffix('.json')} is not a direction's JSON object")
        missing = [key for key in ("site", "method") if not isinstance(info.get(key), str)]
        if missing:
            raise InterpError(f"{Path(path).with_suffix('.json')} lacks {', '.join(repr(m) for m in missing)}: "
                              "give a direction a subspace run wrote (with its .json), e.g. runs/x/direction")
        if not isinstance(vectors, torch.Tensor) or vectors.ndim != 2 or not vectors.is_floating_point() \
                or 0 in vectors.shape:
            shape = tuple(vectors.shape) if isinstance(vectors, torch.Tensor) else type(vectors).__name__
            raise InterpError(f"{path}: the direction must be float vectors [k, d], got {shape}")
        if not torch.isfinite(vectors).all():
            raise InterpError(f"{path}: the direction holds NaN or infinite values; find it again or fix the file")
        meta = info.get("meta", {})
        return cls(info["site"], vectors, info["method"], meta if isinstance(meta, dict) else {})


def _at_positions(x: torch.Tensor, positions: Sequence[int] | None) -> torch.Tensor:
    """Activations at the patched positions, flattened to [rows, d]."""
    return (x if positions is None else x[:, list(positions)]).reshape(-1, x.shape[-1])


def feature_classes(pairs: PatchPairs) -> tuple[torch.Tensor, torch.Tensor]:
    """Activations [2n, d] of base and source prompts, and their classes [2n] (1: the base's answer is named first).

    In IOI that is ABBA against BABA, the name-position feature the ``order`` corruption flips. When
    every prompt falls in one class (or the source prompts are unknown), the classes are base (0)
    against source (1) instead.
    """
    x = torch.cat([_at_positions(pairs.base_act, pairs.positions), _at_positions(pairs.source, pairs.positions)])
    per_row = x.shape[0] // (2 * len(pairs))  # activations per prompt (patched positions)
    labels = torch.cat([torch.zeros(len(pairs)), torch.ones(len(pairs))])
    if pairs.source_tokens is not None:
        def first(tokens: torch.Tensor, token: torch.Tensor) -> torch.Tensor:
            hits = tokens == token[:, None]
            return torch.where(hits.any(1), hits.float().argmax(1), torch.full_like(token, tokens.shape[1]))

        named_first = torch.cat([first(t, pairs.other) < first(t, pairs.target) for t in (pairs.base, pairs.source_tokens)])
        if 0 < int(named_first.sum()) < len(named_first):
            labels = named_first.float()
    return x, labels.repeat_interleave(per_row)


def mean_diff(pairs: PatchPairs) -> torch.Tensor:
    """Difference of the two classes' mean activations [d] (see `feature_classes`)."""
    x, y = feature_classes(pairs)
    return x[y == 1].mean(0) - x[y == 0].mean(0)


def probe(pairs: PatchPairs, seed: int = 0) -> torch.Tensor:
    """The weight vector [d] of a logistic regression telling the two classes apart (see `feature_classes`)."""
    from sklearn.linear_model import LogisticRegression

    x, y = feature_classes(pairs)
    x = x.double()
    scale = x.std(0).clamp_min(1e-8)  # fit on standardised features, so the penalty treats dimensions alike
    clf = LogisticRegression(max_iter=5000, random_state=seed).fit(((x - x.mean(0)) / scale).numpy(), y.numpy())
    return (torch.from_numpy(clf.coef_[0]) / scale).float()  # the same direction in raw coordinates


def gradient(model: Model, pairs: PatchPairs) -> torch.Tensor:
    """Mean gradient [d] of the base logit difference (other - target) at the patched positions."""
    out = model.run(pairs.base, read=[pairs.site], grad=True)
    logits = out.logits[:, -1]
    ld = logits.gather(-1, pairs.other[:, None]) - logits.gather(-1, pairs.target[:, None])
    (grad,) = torch.autograd.grad(ld.sum(), [out.acts[pairs.site]])
    return _at_positions(grad, pairs.positions).mean(0)


def patched_logits(model: Model, pairs: PatchPairs, basis: torch.Tensor | None, grad: bool = False,
                   backend: str | None = None) -> torch.Tensor:
    """Last-position logits of the base run with the source patched along ``basis`` (None: the whole activation)."""
    if basis is None:
        pos = slice(None) if pairs.positions is None else list(pairs.positions)
        index = (slice(None), pos)
        iv = Replace(pairs.site, pairs.source[index], index=index)
    else:
        iv = SubspaceReplace(pairs.site, basis, pairs.source, None if pairs.positions is None else list(pairs.positions))
    with torch.set_grad_enabled(grad):
        return model.run(pairs.base, [iv], grad=grad, backend=backend).logits[:, -1]


def scores(logits: torch.Tensor, pairs: PatchPairs, base_ld: float) -> dict:
    """Logit difference (other - target), FLDD in % of ``base_ld``, interchange accuracy."""
    ld = (logits.gather(-1, pairs.other[:, None]) - logits.gather(-1, pairs.target[:, None]))[:, 0]
    acc = (logits.argmax(-1) == pairs.target).float().mean()
    mean_ld = float(ld.mean())
    return {"logit_diff": round(mean_ld, 4), "fldd": round(100 * (1 - mean_ld / base_ld), 2),
            "interchange_acc": round(float(acc), 4)}


def base_logit_diff(model: Model, pairs: PatchPairs, backend: str | None = None) -> float:
    """Mean logit difference (other - target) of the unpatched base run."""
    with torch.no_grad():
        logits = model.run(pairs.base, backend=backend).logits[:, -1]
    return float((logits.gather(-1, pairs.other[:, None]) - logits.gather(-1, pairs.target[:, None])).mean())


def evaluate(model: Model, pairs: PatchPairs, basis: torch.Tensor | None, base_ld: float | None = None,
             backend: str | None = None) -> dict:
    """`scores` of patching along ``basis`` (None: the whole activation at the patched positions)."""
    base_ld = base_logit_diff(model, pairs, backend) if base_ld is None else base_ld
    return scores(patched_logits(model, pairs, basis, backend=backend), pairs, base_ld)
