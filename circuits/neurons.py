"""Relation-specific neurons: AP expertise, top-k selection, deactivation (methods.md section 6).

1. Prompt sets (`relation_prompt_sets`): per relation, identification prompts (neurons are selected
   on them) and test prompts of held-out facts, kept only where the unedited model answers right.
2. Responses (`pooled_responses`): each unit's activation (site kind ``mlp_act`` by default: the
   MLP neurons; any per-layer site works, its trailing dims flattened) mean-pooled over the prompt's
   token positions.
3. Expertise (`neuron_expertise`): per relation r and unit, the average precision of the pooled
   response as a score for "prompt is of relation r" against the other relations' prompts
   (`average_precision`: sklearn's ``average_precision_score``, vectorised over units).
4. Deactivation (`deactivate`): the selected units are set to 0 at every position. `top_units`
   takes the k units of highest AP over all layers together; `random_units` draws an equal-sized
   control that excludes them.
5. Effects: accuracy = share of test prompts whose next-token argmax is the first token of an
   accepted answer (`accuracy_by_relation`). `deactivation_matrix` gives the
   [relation deactivated, relation evaluated] accuracy change (``neurons/acc_change``) and its
   random-k control; `k_sweep` the curves over k (cumulativity); `topk_overlap` the Jaccard overlap of
   the relations' top-k sets.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from interp.circuits.relations import Relation, RelationPrompt, get_relations, split_relation
from interp.circuits.units import Units
from interp.errors import InterpError
from interp.interventions import Ablate, Intervention
from interp.metrics import check_finite
from interp.model import Model

BATCH = 64


# ------------------------------------------------------------------ prompts and accuracy
def answer_first_tokens(model: Model, prompt: RelationPrompt) -> list[int]:
    """Token id of the first token of each accepted answer, as it continues ``prompt.text`` after a space."""
    base = model.tokenizer(prompt.text)["input_ids"]
    firsts = []
    for answer in prompt.answers:
        full = model.tokenizer(f"{prompt.text} {answer}")["input_ids"]
        if full[:len(base)] != base or len(full) == len(base):
            raise InterpError(f"answer {answer!r} does not tokenize as a continuation of {prompt.text!r}")
        firsts.append(full[len(base)])
    return firsts


def correct_mask(model: Model, prompts: Sequence[RelationPrompt], interventions: Sequence[Intervention] = (),
                 backend: str | None = None) -> torch.Tensor:
    """Bool ``[n]``: whether the next-token argmax is the first token of an accepted answer."""
    if not prompts:
        raise InterpError("no prompts to score: give at least one")
    hits = torch.zeros(len(prompts), dtype=torch.bool)
    with torch.no_grad():
        for rows, tokens in model.length_groups([p.text for p in prompts], BATCH):
            logits = model.run(tokens, list(interventions), backend=backend).logits[:, -1]
            pred = check_finite(logits, "the next-token logits of the relation prompts").argmax(-1).cpu()
            for row, p in zip(rows, pred.tolist()):
                hits[row] = p in answer_first_tokens(model, prompts[row])
    return hits


def accuracy_by_relation(model: Model, prompts: Sequence[RelationPrompt], relations: Sequence[str],
                         interventions: Sequence[Intervention] = (), backend: str | None = None) -> torch.Tensor:
    """Float ``[len(relations)]``: accuracy on each relation's prompts under ``interventions``."""
    hits = correct_mask(model, prompts, interventions, backend).float()
    names = [p.relation for p in prompts]
    out = torch.zeros(len(relations))
    for i, r in enumerate(relations):
        rows = [j for j, n in enumerate(names) if n == r]
        if not rows:
            raise InterpError(f"relation {r} has no test prompts; lower n_identification or check the facts")
        out[i] = hits[rows].mean()
    return out


@dataclass
class RelationPromptSets:
    """Identification and (filtered) test prompts of several relations.

    ``n_test_facts`` [relation]: held-out facts before the filter; ``n_test`` [relation]: test prompts
    kept (answered right by the unedited model; all of them when the filter is off).
    """

    relations: list[str]
    identification: list[RelationPrompt]
    test: list[RelationPrompt]
    n_test_facts: torch.Tensor
    n_test: torch.Tensor


def relation_splits(relations: Sequence[str | Relation] | None, n_identification: int, seed: int
                    ) -> tuple[list[Relation], list[RelationPrompt], list[RelationPrompt], list[int]]:
    """The relations, their identification and (unfiltered) test prompts, and each relation's test-fact count."""
    rels = [r if isinstance(r, Relation) else get_relations([r])[0] for r in relations] if relations is not None \
        else get_relations()
    if len(rels) < 2:
        raise InterpError("relation-specific neurons need at least two relations (the others are the negatives)")
    ident, test, n_facts = [], [], []
    for r in rels:
        i, t = split_relation(r, n_identification, seed)
        ident += i
        test += t
        n_facts.append(len(t))
    return rels, ident, test, n_facts


def relation_prompt_sets(model: Model, relations: Sequence[str | Relation] | None = None, n_identification: int = 12,
                         seed: int = 0, keep_correct: bool = True, backend: str | None = None,
                         units: Units | None = None) -> RelationPromptSets:
    """Split each relation's facts (`split_relation`); keep the test prompts the model answers right.

    ``units`` keeps the filter's answers (unit ``filter``) for a resumed run.
    """
    rels, ident, test, n_facts = relation_splits(relations, n_identification, seed)
    if keep_correct:
        units = Units() if units is None else units
        hits = units.run("filter", lambda: {"hits": correct_mask(model, test, backend=backend)})["hits"]
        test = [p for p, h in zip(test, hits.tolist()) if h]
    names = [r.name for r in rels]
    n_test = torch.tensor([sum(p.relation == n for p in test) for n in names])
    empty = [f"{n} (0 of {f})" for n, k, f in zip(names, n_test.tolist(), n_facts) if k == 0]
    if empty:  # fail here, before the expensive expertise pass, rather than when accuracy is first measured
        kept = ",".join(n for n, k in zip(names, n_test.tolist()) if k)
        raise InterpError(f"no test prompts left for {', '.join(empty)}: the model answers none of its held-out facts "
                          f"right; leave it out (--relations {kept}) or keep wrong answers (--no-keep-correct)")
    return RelationPromptSets(names, ident, test, torch.tensor(n_facts), n_test)


# ------------------------------------------------------------------ responses and AP
def pooled_responses(model: Model, texts: Sequence[str], kind: str = "mlp_act", backend: str | None = None) -> torch.Tensor:
    """``[n_prompts, n_layers, n_units]``: each unit's activation at site ``kind.L``, mean over positions."""
    model.site(f"{kind}.0")
    if kind in ("attn_pattern", "norm_scale"):
        raise InterpError(f"{kind} has no units to select; use mlp_act, head_out, mlp_out, attn_out or resid_*")
    sites = [f"{kind}.{layer}" for layer in range(model.n_layers)]
    out: torch.Tensor | None = None
    with torch.no_grad():
        for rows, tokens in model.length_groups(texts, BATCH):
            acts = model.run(tokens, read=sites, backend=backend).acts
            pooled = torch.stack([acts[s].float().mean(1).flatten(1).cpu() for s in sites], 1)
            if out is None:
                out = torch.zeros(len(texts), *pooled.shape[1:])
            out[rows] = pooled
    if out is None:
        raise InterpError("no prompts to read responses from")
    return check_finite(out, f"the pooled {kind} responses")


def average_precision(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """AP of each column of ``scores`` [n, units] for binary ``labels`` [n]; sklearn's definition.

    AP = sum over distinct thresholds (descending) of (R_n - R_{n-1}) P_n: tied scores count as one
    threshold, exactly as ``sklearn.metrics.average_precision_score``.
    """
    y = torch.as_tensor(labels).bool()
    if scores.ndim == 1:
        scores = scores[:, None]
    if scores.shape[0] != y.shape[0] or y.ndim != 1:
        raise InterpError(f"scores {tuple(scores.shape)} and labels {tuple(y.shape)} do not match (rows = prompts)")
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == len(y):
        raise InterpError("average precision needs both positive and negative prompts")
    s = scores.double()
    sorted_s, order = s.sort(dim=0, descending=True, stable=True)
    y_sorted = y[order].double()                                    # [n, units]
    tp = y_sorted.cumsum(0)
    n = s.shape[0]
    rank = torch.arange(1, n + 1, dtype=torch.float64)[:, None]
    is_end = torch.ones_like(sorted_s, dtype=torch.bool)
    is_end[:-1] = sorted_s[:-1] != sorted_s[1:]                      # last row of each group of tied scores
    end_at = torch.where(is_end, torch.arange(n)[:, None].expand_as(s), torch.full_like(order, n))
    end_of = end_at.flip(0).cummin(0).values.flip(0)                  # each row's group end
    precision_at_end = (tp / rank).gather(0, end_of)
    return ((y_sorted * precision_at_end).sum(0) / n_pos).float()


@dataclass
class NeuronExpertise:
    """``ap`` [relation, layer, unit]: AP of each unit's pooled response for relation r vs the others;
    ``on_p50`` / ``off_p50`` [relation, layer, unit]: median response on r's prompts / on the others'."""

    relations: list[str]
    kind: str
    ap: torch.Tensor
    on_p50: torch.Tensor
    off_p50: torch.Tensor


def expertise_from_responses(responses: torch.Tensor, prompt_relations: Sequence[str], relations: Sequence[str],
                             kind: str = "mlp_act") -> NeuronExpertise:
    """AP expertise from pooled ``responses`` [n_prompts, layer, unit] and each prompt's relation name."""
    if responses.ndim != 3 or responses.shape[0] != len(prompt_relations):
        raise InterpError(f"responses must be [n_prompts={len(prompt_relations)}, layer, unit], got {tuple(responses.shape)}")
    n, n_layers, n_units = responses.shape
    flat = responses.reshape(n, -1)
    ap, on, off = [], [], []
    for r in relations:
        y = torch.tensor([x == r for x in prompt_relations])
        ap.append(average_precision(flat, y).reshape(n_layers, n_units))
        on.append(flat[y].median(0).values.reshape(n_layers, n_units))
        off.append(flat[~y].median(0).values.reshape(n_layers, n_units))
    return NeuronExpertise(list(relations), kind, torch.stack(ap), torch.stack(on), torch.stack(off))


def expertise_unit(model: Model, identification: Sequence[RelationPrompt], relations: Sequence[str], kind: str = "mlp_act",
                   backend: str | None = None) -> dict[str, torch.Tensor]:
    """The tensors of `NeuronExpertise` (``ap``, ``on_p50``, ``off_p50``) from one pass over the identification prompts."""
    resp = pooled_responses(model, [p.text for p in identification], kind, backend)
    e = expertise_from_responses(resp, [p.relation for p in identification], list(relations), kind)
    return {"ap": e.ap, "on_p50": e.on_p50, "off_p50": e.off_p50}


def neuron_expertise(model: Model, sets: RelationPromptSets, kind: str = "mlp_act",
                     backend: str | None = None, units: Units | None = None) -> NeuronExpertise:
    """AP expertise of every unit of site ``kind`` for every relation, on the identification prompts.

    ``units`` keeps the result (unit ``expertise.<kind>``) for a resumed run.
    """
    got = (Units() if units is None else units).run(
        f"expertise.{kind}", lambda: expertise_unit(model, sets.identification, sets.relations, kind, backend))
    return NeuronExpertise(list(sets.relations), kind, got["ap"], got["on_p50"], got["off_p50"])


# ------------------------------------------------------------------ selection and deactivation
def top_units(ap: torch.Tensor, k: int) -> torch.Tensor:
    """``[k, 2]`` (layer, unit) of the k highest-AP units of ``ap`` [layer, unit], over all layers, best first."""
    if not 0 < k <= ap.numel():
        raise InterpError(f"k must be in [1, {ap.numel()}], got {k}")
    flat = ap.flatten().topk(k).indices
    return torch.stack([flat // ap.shape[1], flat % ap.shape[1]], 1)


def random_units(shape: tuple[int, int], k: int, exclude: torch.Tensor | None = None, seed: int = 0) -> torch.Tensor:
    """``[k, 2]`` (layer, unit): k units drawn uniformly without replacement, none of them in ``exclude``."""
    n_layers, n_units = shape
    allowed = torch.ones(n_layers * n_units, dtype=torch.bool)
    if exclude is not None and len(exclude):
        allowed[exclude[:, 0] * n_units + exclude[:, 1]] = False
    pool = allowed.nonzero().squeeze(1)
    if k > len(pool):
        raise InterpError(f"cannot draw {k} random units from the {len(pool)} not excluded")
    pick = pool[torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed))[:k]]
    return torch.stack([pick // n_units, pick % n_units], 1)


def deactivate(model: Model, units: torch.Tensor, kind: str = "mlp_act") -> list[Intervention]:
    """Zero-ablations setting ``units`` ([k, 2] layer, flat unit index) to 0 at every position."""
    out: list[Intervention] = []
    for layer in units[:, 0].unique().tolist():
        idx = units[units[:, 0] == layer, 1]
        site = f"{kind}.{layer}"
        model.site(site)
        trailing = (model.n_heads, model.d_head) if kind == "head_out" else None
        index = (Ellipsis, idx) if trailing is None else (Ellipsis, idx // trailing[1], idx % trailing[1])
        out.append(Ablate(site, "zero", index=index))
    return out


def check_k(model: Model, k: int, ks: Sequence[int] = (), kind: str = "mlp_act") -> None:
    """Refuse, before any pass, a number of units to zero that the top-k/random-k contrast cannot draw."""
    n_units = model.n_layers * (model.d_mlp if kind == "mlp_act" else model.d_model)
    bad = [x for x in [k, *ks] if not 1 <= x <= n_units // 2]
    if bad:
        raise InterpError(f"k = {bad[0]} is out of range: {model.name} has {n_units} {kind} units, and each k needs its "
                          f"top k plus k other random units, so --k and --ks must be in [1, {n_units // 2}]")


# ------------------------------------------------------------------ experiments
@dataclass
class DeactivationMatrix:
    """Accuracy after zeroing each relation's top-k units (rows) on every relation's test prompts (columns).

    ``baseline`` [relation]; ``acc`` / ``random_acc`` [relation deactivated, relation evaluated];
    ``acc_change`` = acc - baseline (tensor ``neurons/acc_change``); ``random_change`` likewise for the
    random-k control (k random units excluding the relation's top-k).
    """

    relations: list[str]
    k: int
    baseline: torch.Tensor
    acc: torch.Tensor
    acc_change: torch.Tensor
    random_acc: torch.Tensor
    random_change: torch.Tensor


def _baseline(model: Model, sets: RelationPromptSets, backend: str | None, units: Units) -> torch.Tensor:
    return units.run("baseline", lambda: {"acc": accuracy_by_relation(model, sets.test, sets.relations, backend=backend)})["acc"]


def deactivation_row(model: Model, ap: torch.Tensor, kind: str, test: Sequence[RelationPrompt], relations: Sequence[str],
                     k: int, seed: int, random_control: bool = True, backend: str | None = None) -> dict[str, torch.Tensor]:
    """Accuracy on every relation with the top-k units of ``ap`` [layer, unit] zeroed (``acc``) and, with
    ``random_control``, with k random other units zeroed instead (``rnd``, drawn with ``seed``)."""
    top = top_units(ap, k)
    got = {"acc": accuracy_by_relation(model, test, relations, deactivate(model, top, kind), backend)}
    if random_control:
        ctrl = random_units(tuple(ap.shape), k, top, seed)
        got["rnd"] = accuracy_by_relation(model, test, relations, deactivate(model, ctrl, kind), backend)
    return got


def deactivation_matrix(model: Model, expertise: NeuronExpertise, sets: RelationPromptSets, k: int, seed: int = 0,
                        random_control: bool = True, backend: str | None = None, progress=None,
                        units: Units | None = None) -> DeactivationMatrix:
    """For each relation r, zero its top-k units and measure accuracy on every relation (plus random-k).

    ``units`` keeps each relation's row (unit ``zero.<relation>``) for a resumed run; ``progress(phase, done,
    total)`` is called after each.
    """
    rels = sets.relations
    units = Units() if units is None else units
    base = _baseline(model, sets, backend, units)
    acc = torch.zeros(len(rels), len(rels))
    rnd = torch.full((len(rels), len(rels)), float("nan"))
    if progress:
        progress("zeroing", sum(f"zero.{r}" in units for r in rels), len(rels))
    for i, r in enumerate(rels):
        fresh = f"zero.{r}" not in units
        got = units.run(f"zero.{r}", lambda i=i: deactivation_row(model, expertise.ap[i], expertise.kind, sets.test, rels, k,
                                                                  seed + i, random_control, backend))
        acc[i] = got["acc"]
        if random_control:
            rnd[i] = got["rnd"]
        if progress and fresh:
            progress("zeroing", sum(f"zero.{x}" in units for x in rels), len(rels))
    return DeactivationMatrix(list(rels), k, base, acc, acc - base, rnd, rnd - base)


@dataclass
class KSweep:
    """Accuracy on every relation (columns) after zeroing the top-k / random-k units of ``relation``, per k (rows)."""

    relation: str
    relations: list[str]
    ks: list[int]
    baseline: torch.Tensor
    acc: torch.Tensor
    random_acc: torch.Tensor


def k_sweep(model: Model, expertise: NeuronExpertise, sets: RelationPromptSets, relation: str, ks: Sequence[int],
            seed: int = 0, backend: str | None = None, progress=None, units: Units | None = None) -> KSweep:
    """Cumulativity: accuracy vs the number k of deactivated top-AP units of ``relation`` (and random-k).

    ``units`` keeps each k's row (unit ``sweep.<relation>.<j>``) for a resumed run; ``progress(phase, done,
    total)`` is called after each.
    """
    if relation not in sets.relations:
        raise InterpError(f"unknown relation {relation}: use one of {', '.join(sets.relations)}")
    i = sets.relations.index(relation)
    rels = sets.relations
    units = Units() if units is None else units
    base = _baseline(model, sets, backend, units)
    acc, rnd = torch.zeros(len(ks), len(rels)), torch.zeros(len(ks), len(rels))
    names = [f"sweep.{relation}.{j}" for j in range(len(ks))]
    if progress:
        progress("sweep", sum(n in units for n in names), len(ks))
    for j, k in enumerate(ks):
        fresh = names[j] not in units
        got = units.run(names[j], lambda j=j, k=k: deactivation_row(model, expertise.ap[i], expertise.kind, sets.test, rels,
                                                                    k, seed + j, True, backend))
        acc[j], rnd[j] = got["acc"], got["rnd"]
        if progress and fresh:
            progress("sweep", sum(n in units for n in names), len(ks))
    return KSweep(relation, list(rels), list(ks), base, acc, rnd)


def topk_overlap(expertise: NeuronExpertise, k: int) -> torch.Tensor:
    """``[relation, relation]`` Jaccard overlap |A∩B| / |A∪B| of the relations' top-k unit sets."""
    n_units = expertise.ap.shape[2]
    sets = [set((u[:, 0] * n_units + u[:, 1]).tolist()) for u in (top_units(a, k) for a in expertise.ap)]
    n = len(sets)
    return torch.tensor([[len(sets[a] & sets[b]) / len(sets[a] | sets[b]) for b in range(n)] for a in range(n)])


def layer_histogram(expertise: NeuronExpertise, k: int) -> torch.Tensor:
    """``[relation, layer]``: how many of each relation's top-k units lie in each layer."""
    n_layers = expertise.ap.shape[1]
    return torch.stack([torch.bincount(top_units(a, k)[:, 0], minlength=n_layers) for a in expertise.ap])
