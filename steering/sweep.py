"""The coefficient sweep: add alpha * vector at chosen layers and measure the first answer token.

For every coefficient alpha the steered next-token distribution at the last prompt position is
compared with the unsteered one (the metrics of the reference's ``max_new_tokens=1`` evaluation):

- accuracy: share of prompts whose highest-logit candidate is the right one;
- KL(unsteered || steered) over the whole vocabulary, in nats: mean and population std over prompts;
- entropy of the steered distribution, in bits (mean);
- probability mass (whole-vocabulary softmax) on the right candidate and on the wrong ones (mean).

The vector is added with `interp.Add` at ``positions`` of every prompt, on the residual site of
each layer, through `interp.Model.run`, so no hook outlives a run. Prompts of different token
lengths run in groups of equal length (no padding). Coefficient 0 is the unsteered run itself,
so its logits are bit-identical to it and its KL is exactly 0, also with ``keep_norm``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING

import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from interp.errors import InterpError
from interp.interventions import Add
from interp.metrics import check_finite
from interp.model import Model
from interp.steering.effects import entropy_bits, kl_nats
from interp.limits import check_context
from interp.steering.limits import budget_groups, forward_row_bytes
from interp.steering.puzzles import single_token_id
from interp.steering.vectors import KINDS, VectorSet

if TYPE_CHECKING:
    from interp.ray_workers import RayWorkers

DEFAULT_COEFFICIENTS: tuple[float, ...] = (-1.0, -0.75, -0.5, -0.25, 0.0, 0.25, 0.5, 0.75, 1.0)


@dataclass
class SweepResult:
    """Per-coefficient summaries (lists aligned with ``coefficients``) and per-prompt values ``[k, n]``."""

    coefficients: list[float]
    layers: list[int]
    kind: str
    positions: str | int
    keep_norm: bool
    accuracy: list[float]
    kl_mean: list[float]
    kl_std: list[float]
    entropy_mean: list[float]
    mass_right: list[float]
    mass_wrong: list[float]
    kl: torch.Tensor  # [k, n] nats
    entropy: torch.Tensor  # [k, n] bits
    hits: torch.Tensor  # [k, n] bool: the right candidate has the highest logit
    meta: dict = field(default_factory=dict)

    @property
    def n_prompts(self) -> int:
        return int(self.kl.shape[1])

    def at(self, coeff: float) -> dict[str, float]:
        """The summary row for one coefficient."""
        if coeff not in self.coefficients:
            raise InterpError(f"coefficient {coeff} was not swept; the sweep has {self.coefficients}")
        return self.rows()[self.coefficients.index(coeff)]

    def rows(self) -> list[dict[str, float]]:
        """One dict per coefficient: coeff, accuracy, kl_mean, kl_std, entropy_mean, mass_right, mass_wrong."""
        cols = ("accuracy", "kl_mean", "kl_std", "entropy_mean", "mass_right", "mass_wrong")
        return [{"coeff": c, **{name: getattr(self, name)[i] for name in cols}} for i, c in enumerate(self.coefficients)]

    def table(self) -> str:
        """The summaries as a fixed-width text table."""
        lines = [f"{'coeff':>6} {'acc':>6} {'KL nats':>8} {'KL std':>8} {'H bits':>7} {'p right':>8} {'p wrong':>8}"]
        for r in self.rows():
            lines.append(f"{r['coeff']:>6.2f} {r['accuracy']:>6.3f} {r['kl_mean']:>8.4f} {r['kl_std']:>8.4f} "
                         f"{r['entropy_mean']:>7.3f} {r['mass_right']:>8.4f} {r['mass_wrong']:>8.4f}")
        return "\n".join(lines)


def _vectors_by_layer(vectors: VectorSet | torch.Tensor, layers: int | Sequence[int] | None) -> dict[int, torch.Tensor]:
    if isinstance(layers, int):
        layers = [layers]
    if isinstance(vectors, VectorSet):
        return {layer: vectors.vector(layer) for layer in (vectors.layers if layers is None else layers)}
    if not isinstance(vectors, torch.Tensor):
        raise InterpError(f"vectors must be a VectorSet or a tensor, got {type(vectors).__name__}")
    if layers is None or not list(layers):
        raise InterpError("a raw vector needs the layer(s) to steer at")
    layers = list(layers)
    if vectors.ndim == 1:
        return {layer: vectors for layer in layers}
    if vectors.ndim == 2 and vectors.shape[0] == len(layers):
        return dict(zip(layers, vectors))
    raise InterpError(f"vector of shape {tuple(vectors.shape)} does not fit layers {layers}: give [d_model] or [len(layers), d_model]")


def _positions(where: str | int, length: int) -> list[int] | None:
    if where == "all":
        return None
    if where == "last":
        return [length - 1]
    if isinstance(where, int) and not isinstance(where, bool):
        start = where if where >= 0 else length + where
        if not 0 <= start < length:
            raise InterpError(f"steering from position {where} is outside a prompt of {length} tokens")
        return list(range(start, length))
    raise InterpError(f"positions must be 'all', 'last' or a start index; got {where!r}")


def candidate_ids(model: Model, candidates: torch.Tensor | Sequence[Sequence[str]], n: int) -> torch.Tensor:
    """Candidate token ids ``[n, c]``: given as ids, or as strings (each must be one token)."""
    if isinstance(candidates, torch.Tensor):
        ids = candidates.long().cpu()
    else:
        rows = [[single_token_id(model.tokenizer, c) for c in row] for row in candidates]
        if len({len(row) for row in rows}) > 1:
            raise InterpError("every prompt needs the same number of candidates")
        ids = torch.tensor(rows, dtype=torch.long)
    if ids.ndim != 2 or ids.shape[0] != n or ids.shape[1] < 1:
        raise InterpError(f"candidates must be [n_prompts={n}, n_candidates]; got shape {tuple(ids.shape)}")
    if ids.min() < 0 or ids.max() >= model.d_vocab:
        raise InterpError(f"candidate token ids must lie in [0, {model.d_vocab})")
    return ids


def last_logits(model: Model, tokens: torch.Tensor, edits: Sequence[Add] = (), backend: str | None = None) -> torch.Tensor:
    """Float32 logits ``[rows, vocab]`` at the last position (on the CPU)."""
    with torch.no_grad():
        return model.run(tokens, list(edits), backend=backend).logits[:, -1].float().cpu()


def candidate_hits(model: Model, prompts: Sequence[str], candidates: torch.Tensor | Sequence[Sequence[str]],
                   correct: torch.Tensor | Sequence[int] | None = None, backend: str | None = None,
                   progress: Callable[[str, int, int], None] | None = None, max_memory: int | None = None) -> torch.Tensor:
    """Bool ``[n]``: whether the unsteered model ranks the right candidate highest on each prompt.

    Prompts of one length run together, as many per forward as fit ``max_memory`` (bytes; None: a share of
    the device's free memory); the answers do not depend on it.
    """
    cand = candidate_ids(model, candidates, len(prompts))
    right = _correct(correct, cand)
    hits = torch.zeros(len(prompts), dtype=torch.bool)
    done = 0
    for rows, tokens in budget_groups(model, prompts, max_memory, partial(forward_row_bytes, model), "one prompt"):
        logits = last_logits(model, tokens, backend=backend)
        check_finite(logits.gather(-1, cand[rows]), f"the unsteered answer logits of prompt {rows[0] + 1}")
        hits[rows] = logits.gather(-1, cand[rows]).argmax(-1) == right[rows]
        done += len(rows)
        if progress:
            progress("answers", done, len(prompts))
    return hits


def _correct(correct: torch.Tensor | Sequence[int] | None, cand: torch.Tensor) -> torch.Tensor:
    right = torch.zeros(cand.shape[0], dtype=torch.long) if correct is None else torch.as_tensor(correct, dtype=torch.long).cpu()
    if right.shape != (cand.shape[0],) or right.min() < 0 or right.max() >= cand.shape[1]:
        raise InterpError(f"correct must give one candidate index in [0, {cand.shape[1]}) per prompt")
    return right


METRICS = ("kl", "entropy", "p_right", "p_wrong", "hits")  # the per-prompt tensors [k, n] of a sweep's state


@dataclass
class SweepPlan:
    """What every group of a sweep needs: the vectors, the site, the coefficients and the answers.

    `group` measures one group of equal-length prompts; a local sweep and a Ray worker
    (`interp.steering.ray_steering`) run it on the same token batches, so their numbers are equal.
    """

    by_layer: dict[int, torch.Tensor]
    kind: str
    coefficients: list[float]
    cand: torch.Tensor  # [n, c] candidate ids
    right: torch.Tensor  # [n] the right candidate's index
    keep_norm: bool
    positions: str | int
    backend: str | None

    def group(self, model: Model, rows: list[int], tokens: torch.Tensor,
              on_coefficient: Callable[[int], None] | None = None) -> dict[str, torch.Tensor]:
        """The metrics ``[k, len(rows)]`` (`METRICS`) of prompts ``rows``, whose tokens are ``tokens``."""
        check_context(model, tokens.shape[1], f"prompt {rows[0] + 1}", "shorten it")
        where = _positions(self.positions, tokens.shape[1])
        cand, right = self.cand[rows], self.right[rows]
        k = len(self.coefficients)
        out = {name: torch.zeros(k, len(rows)) for name in METRICS[:-1]} | {"hits": torch.zeros(k, len(rows), dtype=torch.bool)}
        plain = last_logits(model, tokens, backend=self.backend)
        check_finite(plain, f"the unsteered logits of prompt {rows[0] + 1}")
        for i, coeff in enumerate(self.coefficients):
            edits = [Add(f"{self.kind}.{layer}", vec, coeff, where, self.keep_norm) for layer, vec in self.by_layer.items()]
            logits = plain if coeff == 0.0 else last_logits(model, tokens, edits, self.backend)
            out["kl"][i] = kl_nats(plain, logits)
            out["entropy"][i] = entropy_bits(logits)
            out["hits"][i] = logits.gather(-1, cand).argmax(-1) == right
            probs = logits.softmax(-1).gather(-1, cand)
            out["p_right"][i] = probs.gather(-1, right[:, None])[:, 0]
            out["p_wrong"][i] = probs.sum(-1) - out["p_right"][i]
            for name, label in (("kl", "KL"), ("entropy", "entropy"), ("p_right", "answer mass"), ("p_wrong", "wrong-answer mass")):
                check_finite(out[name][i], f"coefficient {coeff:g} ({label} of prompts {rows[0] + 1}...)")
            if on_coefficient:
                on_coefficient(i)
        return out


def _tick(progress: Callable[[str, int, int], None], before: int, rows: int, total: int, i: int) -> None:
    progress("sweep", before + (i + 1) * rows, total)


def coefficient_sweep(model: Model, vectors: VectorSet | torch.Tensor, layers: int | Sequence[int] | None,
                      prompts: Sequence[str], candidates: torch.Tensor | Sequence[Sequence[str]],
                      correct: torch.Tensor | Sequence[int] | None = None,
                      coefficients: Sequence[float] = DEFAULT_COEFFICIENTS, keep_norm: bool = False,
                      positions: str | int = "all", kind: str | None = None, backend: str | None = None,
                      progress: Callable[[str, int, int], None] | None = None, state: dict | None = None,
                      on_group: Callable[[dict], None] | None = None, max_memory: int | None = None,
                      workers: RayWorkers | None = None) -> SweepResult:
    """Steer with ``coeff * vector`` at ``layers`` for every coefficient; measure the first answer token.

    ``vectors``: a `VectorSet` (``layers=None``: all its layers) or a tensor ``[d_model]`` (the same
    vector at every layer) or ``[len(layers), d_model]``. ``candidates``: token ids ``[n, c]`` or
    strings; ``correct``: the right candidate's index per prompt (default 0). ``positions``: "all"
    (every prompt token, as the reference does), "last", or a start index. ``kind``: the residual
    site (default: the vector set's, else ``resid_post``).

    Resumable: ``state`` holds the per-prompt tensors (``kl``, ``entropy``, ``p_right``, ``p_wrong``,
    ``hits`` [k, n] and ``done`` [n]) of groups finished earlier, which are skipped; ``on_group(state)``
    is called after each group of equal-length prompts (to checkpoint it). ``progress(stage, done,
    total)`` counts prompt x coefficient runs. ``max_memory`` (bytes; None: a share of the device's free
    memory) sets how many prompts of one length run per forward; the results do not depend on it. A NaN or infinite metric (a non-finite vector or an
    overflowing coefficient) is a one-line error naming the coefficient.

    ``workers`` (`interp.ray_workers.RayWorkers`): the groups still to do are measured on Ray workers, in the
    batches a local run makes (this machine's ``max_memory`` budget), and written into ``state`` as they finish
    (``on_group`` after each shard of groups); the numbers equal the local run's.
    """
    by_layer = _vectors_by_layer(vectors, layers)
    kind = kind or (vectors.kind if isinstance(vectors, VectorSet) else "resid_post")
    if kind not in KINDS:
        raise InterpError(f"steering adds to the residual stream: kind must be one of {', '.join(KINDS)}, not {kind!r}")
    for layer, vec in by_layer.items():
        model.site(f"{kind}.{layer}")
        if vec.shape != (model.d_model,):
            raise InterpError(f"the vector for layer {layer} has shape {tuple(vec.shape)}, not ({model.d_model},)")
        check_finite(vec, f"the vector for layer {layer}")
    coefficients = [float(c) for c in coefficients]
    if not coefficients:
        raise InterpError("give at least one coefficient")
    for coeff in coefficients:
        if not math.isfinite(coeff):
            raise InterpError(f"coefficients must be finite numbers, got {coeff}")
    cand = candidate_ids(model, candidates, len(prompts))
    plan = SweepPlan(by_layer, kind, coefficients, cand, _correct(correct, cand), keep_norm, positions, backend)
    k, n = len(coefficients), len(prompts)
    state = state if state is not None else {}
    for name in METRICS[:-1]:
        state.setdefault(name, torch.zeros(k, n))
    state.setdefault("hits", torch.zeros(k, n, dtype=torch.bool))
    state.setdefault("done", torch.zeros(n, dtype=torch.bool))
    if any(tuple(state[name].shape) != (k, n) for name in METRICS) or tuple(state["done"].shape) != (n,):
        raise InterpError(f"the saved sweep does not match {k} coefficients x {n} prompts; start over")
    done = state["done"]

    def keep(rows: list[int], values: dict[str, torch.Tensor]) -> None:
        for name in METRICS:
            state[name][:, rows] = values[name]
        done[rows] = True

    todo = []
    for rows, tokens in budget_groups(model, prompts, max_memory, partial(forward_row_bytes, model), "one prompt"):
        if not bool(done[rows].all()):
            todo.append((rows, tokens))
        elif progress:
            progress("sweep", int(done.sum()) * k, n * k)
    if workers is not None:
        from interp.steering.ray_steering import ray_sweep_groups

        def keep_shard(groups: list[tuple[list[int], dict]]) -> None:
            for rows, values in groups:
                keep(rows, values)
            if on_group:
                on_group(state)
            if progress:
                progress("sweep", int(done.sum()) * k, n * k)

        ray_sweep_groups(workers, plan, todo, keep_shard)
    else:
        for rows, tokens in todo:
            before = int(done.sum()) * k
            tick = partial(_tick, progress, before, len(rows), n * k) if progress else None
            keep(rows, plan.group(model, rows, tokens, tick))
            if on_group:
                on_group(state)
    kl, entropy, p_right, p_wrong, hits = (state[name] for name in METRICS)
    return SweepResult(
        coefficients=coefficients, layers=list(by_layer), kind=kind, positions=positions, keep_norm=keep_norm,
        accuracy=hits.float().mean(1).tolist(), kl_mean=kl.mean(1).tolist(), kl_std=kl.std(1, correction=0).tolist(),
        entropy_mean=entropy.mean(1).tolist(), mass_right=p_right.mean(1).tolist(), mass_wrong=p_wrong.mean(1).tolist(),
        kl=kl, entropy=entropy, hits=hits,
        meta={"method": vectors.method if isinstance(vectors, VectorSet) else "vector", "n_prompts": n},
    )


PANELS: tuple[tuple[str, str], ...] = (("accuracy", "accuracy"), ("kl_mean", "KL(unsteered‖steered), nats"),
                                       ("entropy_mean", "entropy, bits"))


def sweep_figure(results: SweepResult | dict[str, SweepResult], title: str = "Coefficient sweep") -> go.Figure:
    """Accuracy, KL (± std) and entropy against the coefficient; one line per result (e.g. per method)."""
    named = {"sweep": results} if isinstance(results, SweepResult) else dict(results)
    if not named:
        raise InterpError("no sweep results to plot")
    fig = make_subplots(rows=1, cols=len(PANELS), subplot_titles=[label for _, label in PANELS], horizontal_spacing=0.08)
    colours = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf", "#7f7f7f"]
    for j, (name, result) in enumerate(named.items()):
        colour = colours[j % len(colours)]
        for col, (attr, label) in enumerate(PANELS, start=1):
            error = {"type": "data", "array": result.kl_std, "visible": True} if attr == "kl_mean" else None
            fig.add_trace(go.Scatter(
                x=result.coefficients, y=getattr(result, attr), mode="lines+markers", name=name, legendgroup=name,
                showlegend=col == 1, line={"color": colour}, error_y=error,
                hovertemplate=f"{name}<br>coefficient %{{x}}<br>{label}: %{{y:.4g}}<extra></extra>"), row=1, col=col)
            fig.update_xaxes(title_text="coefficient", row=1, col=col)
    fig.update_yaxes(range=[0, 1.02], row=1, col=1)
    fig.update_layout(title={"text": title}, template="plotly_white", height=420)
    return fig
