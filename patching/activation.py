"""Activation patching: copy one component's activation from a source run into a base run.

Denoising puts clean activations into the corrupt run (which components restore the behaviour?);
noising puts corrupt activations into the clean run (which components break it?). A *component*
names what one patch covers:

=============  =====================  ==========================================
component      grid axes              one patch replaces
=============  =====================  ==========================================
resid_pre      [layer, pos]           the residual entering layer L at position p
resid_mid      [layer, pos]           the residual between attention and MLP
resid_post     [layer, pos]           the residual leaving layer L
attn_out       [layer, pos]           what attention adds at (L, p)
mlp_out        [layer, pos]           what the MLP adds at (L, p)
head_out       [layer, head]          head h's output z at every position
head_out_pos   [layer, head, pos]     head h's output z at position p
mlp_act        [layer, neuron]        neuron n at every position (chosen layers)
=============  =====================  ==========================================

Two engines compute the same numbers (the tests hold them to each other and to TransformerLens):

- ``hooks``: one patched forward per patch through the model's backend, the reference.
- ``batched`` (default): many patches per forward, one batch row each; each forward starts at the
  patched layer from the base run's cached residual instead of at the embeddings, computes only the
  positions from the earliest patched one on (earlier positions cannot change, so their keys and
  values come from the base run's cache), and unembeds the last position only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from interp.backends.steps import plan_steps
from interp.backends.torch_backend import installed_steps
from interp.errors import InterpError
from interp.interventions import Replace
from interp.limits import DEFAULT_MEMORY, memory_budget, row_bytes, rows_that_fit  # noqa: F401 (re-exported)
from interp.metrics import MetricContext
from interp.model import Model
from interp.sites import Site

COMPONENTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "resid_pre": ("resid_pre", ("layer", "pos")),
    "resid_mid": ("resid_mid", ("layer", "pos")),
    "resid_post": ("resid_post", ("layer", "pos")),
    "attn_out": ("attn_out", ("layer", "pos")),
    "mlp_out": ("mlp_out", ("layer", "pos")),
    "head_out": ("head_out", ("layer", "head")),
    "head_out_pos": ("head_out", ("layer", "head", "pos")),
    "mlp_act": ("mlp_act", ("layer", "neuron")),
}
ENGINES = ("batched", "hooks")


def check_component(name: str) -> str:
    if name not in COMPONENTS:
        raise InterpError(f"unknown component '{name}': use one of {', '.join(COMPONENTS)}")
    return name


@dataclass(frozen=True)
class Patch:
    """One patch: a cell of a component's grid. ``pos``/``unit`` are None when not on the grid."""

    cell: tuple[int, ...]  # index into the grid, e.g. (layer, pos) or (layer, head, pos)
    layer: int
    pos: int | None  # patched position, None for every position
    unit: int | None  # head or neuron, None for the whole vector


def grid_shape(model: Model, component: str, n_pos: int, layers: list[int] | None = None) -> tuple[int, ...]:
    """The grid of ``component``: [layer, pos], [layer, head], [layer, head, pos] or [layer, neuron]."""
    n_layers = len(layers) if layers is not None else model.n_layers
    axes = COMPONENTS[check_component(component)][1]
    size = {"layer": n_layers, "pos": n_pos, "head": model.n_heads, "neuron": model.d_mlp}
    return tuple(size[a] for a in axes)


def patches(model: Model, component: str, n_pos: int, layers: list[int] | None = None) -> list[Patch]:
    """Every patch of ``component``, in grid order (``layers`` picks rows, e.g. for mlp_act)."""
    layer_list = list(range(model.n_layers)) if layers is None else layers
    axes = COMPONENTS[check_component(component)][1]
    out = []
    for li, layer in enumerate(layer_list):
        if axes == ("layer", "pos"):
            out += [Patch((li, p), layer, p, None) for p in range(n_pos)]
        elif axes == ("layer", "head"):
            out += [Patch((li, h), layer, None, h) for h in range(model.n_heads)]
        elif axes == ("layer", "head", "pos"):
            out += [Patch((li, h, p), layer, p, h) for h in range(model.n_heads) for p in range(n_pos)]
        else:
            out += [Patch((li, n), layer, None, n) for n in range(model.d_mlp)]
    return out


def _index(patch: Patch, rows):
    """Torch index of ``patch`` in a site activation whose batch rows are ``rows``."""
    pos = patch.pos
    if patch.unit is None:
        return (rows, pos)
    return (rows, slice(None), patch.unit) if pos is None else (rows, pos, patch.unit)


def run_hooks_engine(model: Model, component: str, base: torch.Tensor, source_acts: dict[str, torch.Tensor],
                     todo: list[Patch], metric, ctx: MetricContext) -> Iterator[tuple[list[Patch], torch.Tensor]]:
    """Reference engine: one forward per patch through the model's backend.

    Yields ``([patch], values [n_prompts])`` per patch.
    """
    kind = COMPONENTS[component][0]
    for patch in todo:
        site = f"{kind}.{patch.layer}"
        index = _index(patch, slice(None))
        value = source_acts[site][index]
        logits = model.run(base, [Replace(site, value, index=index)]).logits[:, -1]
        yield [patch], metric(logits, ctx)


class BatchedEngine:
    """Runs many patches per forward, starting at the patched layer, from the base run's caches.

    Layers before the patched one are swapped for stand-ins that return the base run's cached
    residual, so the HF model computes everything else itself (embedding scale, position
    embeddings, masks per layer type, ALiBi, routing, logit soft-capping and scaling): whatever the
    family, a patched forward is the model's own forward with the patch applied.

    Forwards are sized from ``max_memory`` (bytes; None: `MEMORY_SHARE` of the device's free memory
    once the base run is cached) with `row_bytes`; ``max_rows`` optionally caps the patches per forward.
    Patches of one forward share their layer and first computed position, so each patch's numbers do
    not depend on which others share its forward: results are the same for any budget.
    """

    def __init__(self, model: Model, base: torch.Tensor, max_rows: int | None = None, skip_noops: bool = True,
                 max_memory: int | None = None):
        self.model, self.base, self.max_rows, self.skip_noops = model, base, max_rows, skip_noops
        self.max_memory = max_memory
        hf, adapter = model.hf, model.adapter
        n_layers = model.n_layers
        sites = [f"resid_pre.{layer}" for layer in range(n_layers)] + [f"resid_post.{n_layers - 1}"]
        self._base_acts: dict[str, torch.Tensor] = {}
        self.skipped = 0  # patches found to change nothing (source == base activation), not run
        # Prefix reuse needs every layer to see the whole past: true unless a sliding window is
        # shorter than the prompt; then patched runs recompute from position 0.
        window = adapter.max_window()
        self.reuse_prefix = window is None or base.shape[1] <= window
        acts: dict[str, torch.Tensor] = {}
        steps = plan_steps(adapter, {}, [model.site(s) for s in sites], acts, False)
        outputs: list[object] = []
        first = adapter.layer_list(hf)[0].register_forward_hook(lambda m, a, out: outputs.append(out))
        try:
            with torch.no_grad(), installed_steps(hf, adapter, steps):
                out = hf(input_ids=base, use_cache=self.reuse_prefix)  # one base forward: residuals and keys/values
        finally:
            first.remove()
        self._layer_returns_tuple = isinstance(outputs[0], tuple)
        self.resid = [acts[f"resid_pre.{layer}"] for layer in range(n_layers)] + [acts[sites[-1]]]
        self.base_logits = out.logits[:, -1]
        self.kv = None
        if self.reuse_prefix:
            self.kv = [(out.cache.layers[i].keys, out.cache.layers[i].values) for i in range(n_layers)]
        del out
        self.budget = memory_budget(model, max_memory)
        self.check_budget()

    def check_budget(self, grad: bool = False) -> None:
        """A one-line error when the budget cannot hold one patch of the costliest kind (layer 0, every position)."""
        n, n_pos = self.base.shape
        rows_that_fit(self.budget, n * row_bytes(self.model, 0, 0, n_pos, grad), f"one patch of {n} prompts of {n_pos} tokens")

    def patches_per_forward(self, start: int, a: int, grad: bool = False) -> int:
        """How many patches (``n_prompts`` rows each) one forward from layer ``start`` at position ``a`` may carry."""
        n, n_pos = self.base.shape
        k = rows_that_fit(self.budget, n * row_bytes(self.model, start, a, n_pos, grad),
                          f"one patch of {n} prompts of {n_pos} tokens")
        return max(1, min(k, self.max_rows) if self.max_rows else k)

    def _prefix_cache(self, start: int, a: int, reps: int):
        from transformers import DynamicCache

        cache = DynamicCache()
        for i in range(self.model.n_layers):
            k, v = self.kv[i]
            k, v = k[:, :, :a], v[:, :, :a]
            if i >= start:  # layers before `start` do not run; HF only reads the past length from them
                k, v = k.repeat(reps, 1, 1, 1), v.repeat(reps, 1, 1, 1)
            cache.update(k, v, i)
        return cache

    def forward_from(self, start: int, a: int, reps: int, steps) -> torch.Tensor:
        """Last-position logits of layers ``start..`` on the base residual (positions ``a..``), ``reps`` copies."""
        hf = self.model.hf
        tokens = self.base[:, a:].repeat(reps, 1)
        resid = self.resid[start][:, a:].repeat(reps, 1, 1)
        kwargs = {"cache": self._prefix_cache(start, a, reps), "use_cache": True} if a > 0 else {"use_cache": False}
        layers = self.model.adapter.layer_list(hf)
        with installed_steps(hf, self.model.adapter, steps), _start_at(layers, start, resid, self._layer_returns_tuple):
            return hf(input_ids=tokens, logits_to_keep=1, **kwargs).logits[:, -1]

    def run(self, component: str, source_acts: dict[str, torch.Tensor], todo: list[Patch], metric,
            ctx: MetricContext) -> Iterator[tuple[list[Patch], torch.Tensor]]:
        """Yields ``(patches, values [len(patches) * n_prompts])`` chunk by chunk, patch-major rows."""
        kind = COMPONENTS[component][0]
        starts = {p: self._first_change(kind, p, source_acts) for p in todo}
        self._site_first = {layer: self._site_change(kind, layer, source_acts) for layer in {p.layer for p in todo}}
        if not self.skip_noops:  # compute every patch (from its first changed position, or 0)
            starts = {p: (p.pos if p.pos is not None else 0) if s is None else s for p, s in starts.items()}
        noop = [p for p in todo if starts[p] is None]
        if noop:  # exactly the base run: no forward needed
            self.skipped += len(noop)
            yield noop, metric(self.base_logits, ctx).repeat(len(noop))
        groups: dict[int, list[Patch]] = {}
        for patch in todo:
            if starts[patch] is not None:
                groups.setdefault(patch.layer, []).append(patch)
        for layer, group in groups.items():
            for a, chunk in self._chunks(layer, group, starts):
                yield chunk, self._run_chunk(kind, layer, chunk, a, source_acts, metric, ctx)

    def _site_change(self, kind: str, layer: int, source_acts: dict[str, torch.Tensor]) -> int | None:
        """First position where the source differs from the base anywhere at ``kind.layer``, None if nowhere."""
        site = f"{kind}.{layer}"
        differs = source_acts[site] != self._base_acts[site]
        changed = torch.nonzero(differs.reshape(*differs.shape[:2], -1).any(-1).any(0))
        return int(changed[0]) if len(changed) else None

    def _first_change(self, kind: str, patch: Patch, source_acts: dict[str, torch.Tensor]) -> int | None:
        """First position the patch changes (source differs from base there), None if it changes nothing.

        Positions before the first token where clean and corrupt prompts differ are bit-identical in
        both runs (attention is causal): patching them changes nothing, and a patch's effect can
        only start at its first changed position.
        """
        site = f"{kind}.{patch.layer}"
        if site not in self._base_acts:
            kinds = [f"{kind}.{layer}" for layer in range(self.model.n_layers)]
            with torch.no_grad():
                self._base_acts.update(self.model.run(self.base, read=kinds, backend="torch").acts)
        index = _index(patch, slice(None))
        differs = source_acts[site][index] != self._base_acts[site][index]
        if patch.pos is not None:
            return patch.pos if bool(differs.any()) else None
        changed = differs.flatten(2).any(-1).any(0) if differs.ndim > 2 else differs.any(0)  # [pos]
        first = torch.nonzero(changed)
        return int(first[0]) if len(first) else None

    def _chunks(self, layer: int, group: list[Patch], starts: dict[Patch, int]) -> Iterator[tuple[int, list[Patch]]]:
        """Split one layer's patches into forwards that fit the memory budget: ``(first position, patches)``.

        A forward computes only positions from its first on. Each patch's first position is fixed by
        the site, not by the forward it lands in: the first position where source and base differ
        anywhere at the site (at most the patch's own first change). So every patch is computed over
        the same positions whatever the budget, and one layer's patches share forwards.
        """
        site_first = self._site_first.get(layer)
        by_start: dict[int, list[Patch]] = {}
        for patch in group:
            a = 0
            if self.reuse_prefix:
                a = starts[patch] if site_first is None else min(site_first, starts[patch])
            by_start.setdefault(a, []).append(patch)
        for a in sorted(by_start, reverse=True):
            same = by_start[a]
            k = self.patches_per_forward(layer, a)
            for i in range(0, len(same), k):
                yield a, same[i : i + k]

    def _run_chunk(self, kind, layer, chunk, a, source_acts, metric, ctx):
        n, reps = self.base.shape[0], len(chunk)
        dst, src = _chunk_index(chunk, n, a)
        site = f"{kind}.{layer}"
        value = source_acts[site][src]
        if chunk[0].pos is None:  # whole-sequence patches: only positions a.. are in the run
            value = value[:, a:]
        replace = Replace(site, value, index=dst)
        steps = plan_steps(self.model.adapter, {Site(kind, layer): [replace]}, [], {}, False)
        with torch.no_grad():
            logits = self.forward_from(layer, a, reps, steps)
        return metric(logits, ctx.rows(n * reps))


class _CachedResidual(torch.nn.Module):
    """Stands in for a decoder layer that need not run: returns ``resid`` (or passes its input on).

    Non-module attributes (``attention_type``...) are read from the layer it replaces, which the
    model's forward may consult.
    """

    def __init__(self, layer: torch.nn.Module, resid: torch.Tensor | None, as_tuple: bool):
        super().__init__()
        object.__setattr__(self, "_layer", layer)  # not a submodule: no parameters, no hooks
        self._resid, self._as_tuple = resid, as_tuple

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(object.__getattribute__(self, "_layer"), name)

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs):
        out = hidden_states if self._resid is None else self._resid
        return (out, None) if self._as_tuple else out


@contextmanager
def _start_at(layers: torch.nn.ModuleList, start: int, resid: torch.Tensor, as_tuple: bool) -> Iterator[None]:
    """Temporarily replace layers ``0..start-1`` so the model's forward enters layer ``start`` with ``resid``."""
    originals = [layers[i] for i in range(start)]
    try:
        for i, layer in enumerate(originals):
            layers[i] = _CachedResidual(layer, resid if i == start - 1 else None, as_tuple)
        yield
    finally:
        for i, layer in enumerate(originals):
            layers[i] = layer


def _chunk_index(chunk: list[Patch], n: int, shift: int):
    """(edit index into the batched run, read index into the source cache) for a chunk of patches.

    Row ``j * n + i`` of the batch carries patch ``j`` on prompt ``i``; positions in the batched run
    start at ``shift``.
    """
    rows = torch.arange(n * len(chunk))
    prompts = torch.arange(n).repeat(len(chunk))
    per_row = lambda xs: torch.tensor(xs).repeat_interleave(n)
    pos = None if chunk[0].pos is None else per_row([p.pos for p in chunk])
    unit = None if chunk[0].unit is None else per_row([p.unit for p in chunk])

    def index(first, offset):
        out = (first, slice(None) if pos is None else pos - offset)
        return out if unit is None else out + (unit,)

    return index(rows, shift), index(prompts, 0)


def sweep(model: Model, component: str, base: torch.Tensor, source_acts: dict[str, torch.Tensor],
          metric: Callable, ctx: MetricContext, layers: list[int] | None = None, engine: str = "batched",
          done: torch.Tensor | None = None, values: torch.Tensor | None = None,
          on_chunk: Callable[[int], None] | None = None, max_rows: int | None = None,
          batched: BatchedEngine | None = None, max_memory: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Patch every cell of ``component``'s grid; returns per-prompt values ``[n_prompts, *grid]`` and a done mask.

    ``source_acts`` holds the source run's activations for the component's sites. ``done``/``values``
    resume an interrupted sweep: finished cells are skipped and kept. ``on_chunk(k)`` is called after
    every chunk of ``k`` patches (progress bars, checkpoints). ``max_memory`` (bytes, None: a share of the
    device's free memory) sizes the batched engine's forwards; ``max_rows`` caps its patches per forward.
    """
    if engine not in ENGINES:
        raise InterpError(f"unknown engine '{engine}': use one of {', '.join(ENGINES)}")
    n, n_pos = base.shape
    shape = grid_shape(model, component, n_pos, layers)
    if values is None:
        values = torch.full((n, *shape), float("nan"))
    if done is None:
        done = torch.zeros(shape, dtype=torch.bool)
    todo = [p for p in patches(model, component, n_pos, layers) if not done[p.cell]]
    if engine == "hooks":
        runs = run_hooks_engine(model, component, base, source_acts, todo, metric, ctx)
    else:
        runs = (batched or BatchedEngine(model, base, max_rows, max_memory=max_memory)).run(component, source_acts, todo, metric, ctx)
    with torch.no_grad():
        for chunk, vals in runs:
            for j, patch in enumerate(chunk):
                values[(slice(None), *patch.cell)] = vals[j * n : (j + 1) * n].float()
                done[patch.cell] = True
            if on_chunk is not None:
                on_chunk(len(chunk))
    return values, done
