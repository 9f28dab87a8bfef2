"""Exact edge patching: a forward pass in which chosen edges of the computational graph carry the source run's value.

Patching the edge from sender s to receiver r changes only what r reads: r's input residual becomes

    x_r = x - sum over patched senders s of (a_s - a_s^source)

with ``a_s`` what s writes in *this* run (so earlier patches propagate) and ``a_s^source`` what it wrote in the
source run. The other receivers of the same layer read the unpatched residual. Receivers are rebuilt from ``x_r``
through their own read (`interp.residual_io`): a query, key or value head adds ``(norm(x_r) - norm(x)) @ W`` to its
projection's output (``q.L``, ``k.L``, ``v.L``), an MLP reads ``norm(x_r)`` (``mlp_in.L``), and the logits read
``x_r`` at the last layer's ``resid_post``. With no edge patched the forward is the model's own, bit for bit; with
every edge patched it is the source run's (tested).

`edge_patched_logits` runs several edge sets at once, one copy of the prompts per set, in one forward.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from interp.circuits.edge_graph import EdgeGraph, sender_sites
from interp.errors import InterpError
from interp.interventions import Intervention
from interp.model import Model
from interp.residual_io import attention_bias, attention_writer, heads_write_additively, sublayer_input


@dataclass(frozen=True, eq=False)
class _Step(Intervention):
    """An edit of one site by a function of this run's state (built by `edge_patched_logits`, not by users)."""

    fn: Callable[[torch.Tensor], torch.Tensor] = None

    def apply(self, act: torch.Tensor) -> torch.Tensor:
        return self.fn(act)


class _EdgePatch:
    """The state of one edge-patched forward: what each sender wrote so far, minus the source's."""

    def __init__(self, model: Model, graph: EdgeGraph, masks: torch.Tensor, source: dict[str, torch.Tensor], n: int,
                 fraction: float):
        self.model, self.graph, self.k, self.n, self.fraction = model, graph, masks.shape[0], n, fraction
        masks = masks & graph.valid
        # A set patching most edges is summed as its complement: the senders upstream of a receiver write, together,
        # its input residual, so sum over patched s = (x - x^source) - sum over unpatched s (tested against direct sums).
        self.writers = {layer: attention_writer(model, layer) for layer in range(model.n_layers)}
        self.additive = heads_write_additively(model)
        # (only where heads write additively; behind a norm after attention each layer's heads are recomputed)
        self.complement = (masks.flatten(1).sum(1) * 2 > graph.n_edges) & self.additive  # [k]
        valid = graph.valid.to(torch.get_default_dtype())
        patched = masks.to(valid.dtype)
        self.weights = torch.where(self.complement[:, None, None], patched - valid, patched) * fraction  # [k, S, R]
        self.used = self.weights.abs().sum((0, 2)) > 0  # senders whose (this run - source) is needed
        self.source, self.diffs = source, {}  # sender row -> [k*n, p, d], for used senders only
        self.w_o = {layer: model.W_O(layer) for layer in range(model.n_layers)}
        self.x: dict[str, torch.Tensor] = {}
        self.touched = masks.any(1)  # [k, R]: receivers with a patched edge in, per set
        self.heads: dict[int, tuple[range, torch.Tensor, torch.Tensor]] = {}  # layer -> (rows, u, per-head dW)

    def _record(self, rows: range, now: torch.Tensor, src: torch.Tensor) -> None:
        for i, row in enumerate(rows):
            if self.used[row]:
                self.diffs[row] = now[i] - src[i].repeat(self.k, 1, 1)

    def _heads(self, layer: int, z: torch.Tensor) -> None:
        rows = self.graph.sender_rows(layer)
        heads = range(rows.start, rows.stop - 1)
        if not any(self.used[row] for row in heads):
            return
        W_O = self.w_o[layer].to(z.dtype)
        src = self.source[f"head_out.{layer}"]
        if self.additive:
            self._record(heads, torch.einsum("bphe,hed->hbpd", z, W_O), torch.einsum("bphe,hed->hbpd", src, W_O))
            return
        # behind a norm: keep the heads' summed output u and each head's change of it, for `_head_delta`
        bias = attention_bias(self.model, layer)
        u = torch.einsum("bphe,hed->bpd", z, W_O) + (0 if bias is None else bias.to(z.dtype))
        self.heads[layer] = (heads, u, torch.einsum("bphe,hed->hbpd", z - src.repeat(self.k, 1, 1, 1), W_O))

    def _head_delta(self, weights: torch.Tensor) -> torch.Tensor | None:
        """Behind a norm after attention: per receiver, ``write(u) - write(u - sum over patched heads of dW)`` of
        every earlier attention layer, [n_r, k, n, p, d] (None: no patched head)."""
        out = None
        for layer, (rows, u, dw) in self.heads.items():
            w = weights[:, rows.start:rows.stop]  # [k, H, n_r]
            if not bool(w.any()):
                continue
            moved = torch.einsum("ghr,hgnpd->rgnpd", w.to(dw.dtype), dw.unflatten(1, (self.k, self.n)))
            u = u.unflatten(0, (self.k, self.n))[None]
            write = self.writers[layer]
            part = (write(u.expand_as(moved)) - write(u - moved))
            out = part if out is None else out + part
        return out

    def _mlp_out(self, layer: int, out: torch.Tensor) -> None:
        row = self.graph.sender_rows(layer).stop - 1
        self._record(range(row, row + 1), out[None], self.source[f"mlp_out.{layer}"][None])

    def delta(self, columns: slice, site: str) -> torch.Tensor | None:
        """``sum over patched s of fraction * (a_s - a_s^source)`` for the receivers in ``columns`` (reading residual
        ``site``): [n_r, k*n, p, d]; None when no set patches an edge into them."""
        if not bool(self.touched[:, columns].any()):
            return None
        weights = self.weights[:, :, columns]  # [k, S, n_r]
        rows = [row for row in self.diffs if bool(weights[:, row].any())]
        x = self.x[site]
        out = x.new_zeros(weights.shape[2], self.k, self.n, *x.shape[1:])
        if rows:
            diffs = torch.stack([self.diffs[row] for row in rows]).unflatten(1, (self.k, self.n))  # [s, k, n, p, d]
            out = torch.einsum("gsr,sgnpd->rgnpd", weights[:, rows].to(diffs.dtype), diffs)
        if not self.additive:
            heads = self._head_delta(weights)
            if heads is not None:
                out = out + heads
        if bool(self.complement.any()):
            total = (x - self.source[site].repeat(self.k, 1, 1)).unflatten(0, (self.k, self.n))  # [k, n, p, d]
            out = out + (self.fraction * self.complement.to(x.dtype))[None, :, None, None, None] * total[None]
        return out.flatten(1, 2)

    def interventions(self) -> list[Intervention]:
        model, graph, steps = self.model, self.graph, []
        rec = lambda site, layer=None, kind=None: _Step(site, fn=self._recorder(site, layer, kind))
        steps.append(rec("resid_pre.0", -1, "input"))
        for layer in range(model.n_layers):
            attn, mlp = sublayer_input(model, "attn", layer), sublayer_input(model, "mlp", layer)
            if layer > 0:
                steps.append(rec(attn.site))
            columns = graph.receiver_columns(layer)
            for part, offset, count in (("q", 0, graph.n_heads), ("k", graph.n_heads, graph.n_kv_heads),
                                        ("v", graph.n_heads + graph.n_kv_heads, graph.n_kv_heads)):
                cols = slice(columns.start + offset, columns.start + offset + count)
                steps.append(_Step(f"{part}.{layer}", fn=self._qkv(attn, layer, part, cols)))
            steps.append(rec(f"head_out.{layer}", layer, "heads"))
            if mlp.site != attn.site:
                steps.append(rec(mlp.site))
            steps.append(_Step(f"mlp_in.{layer}", fn=self._mlp(mlp, slice(columns.stop - 1, columns.stop))))
            steps.append(rec(f"mlp_out.{layer}", layer, "mlp"))
        logits = sublayer_input(model, "logits")
        steps.append(_Step(logits.site, fn=self._logits(graph.receiver_columns(model.n_layers))))
        return steps

    def _recorder(self, site: str, layer: int | None, kind: str | None):
        def fn(act: torch.Tensor) -> torch.Tensor:
            self.x[site] = act
            if kind == "input":
                self._record(range(0, 1), act[None], self.source["resid_pre.0"][None])
            elif kind == "heads":
                self._heads(layer, act)
            elif kind == "mlp":
                self._mlp_out(layer, act)
            return act
        return fn

    def _qkv(self, read, layer: int, part: str, cols: slice):
        def fn(act: torch.Tensor) -> torch.Tensor:
            delta = self.delta(cols, read.site)
            if delta is None:
                return act
            x = self.x[read.site]
            W = {"q": self.model.W_Q, "k": self.model.W_K, "v": self.model.W_V}[part](layer).to(act.dtype)
            moved = read(x[None] - delta) - read(x)[None]  # [heads, rows, p, d_in]
            return act + torch.einsum("hbpd,hde->bphe", moved, W)
        return fn

    def _mlp(self, read, cols: slice):
        def fn(act: torch.Tensor) -> torch.Tensor:
            delta = self.delta(cols, read.site)
            return act if delta is None else read(self.x[read.site] - delta[0])
        return fn

    def _logits(self, cols: slice):
        def fn(act: torch.Tensor) -> torch.Tensor:
            self.x[sublayer_input(self.model, "logits").site] = act
            delta = self.delta(cols, sublayer_input(self.model, "logits").site)
            return act if delta is None else act - delta[0]
        return fn


def source_sites(model: Model) -> list[str]:
    """What `edge_patched_logits` needs of the source run: the senders' sites and the receivers' residual reads."""
    sites = sender_sites(model)
    reads = [sublayer_input(model, part, layer).site for layer in range(model.n_layers) for part in ("attn", "mlp")]
    return sites + [s for s in dict.fromkeys(reads + [sublayer_input(model, "logits").site]) if s not in sites]


def source_writes(model: Model, source: torch.Tensor, backend: str | None = None) -> dict[str, torch.Tensor]:
    """The source run's `source_sites`, as `edge_patched_logits` takes them."""
    with torch.no_grad():
        return model.run(source, read=source_sites(model), backend=backend).acts


def edge_patched_logits(model: Model, graph: EdgeGraph, base: torch.Tensor, source: dict[str, torch.Tensor],
                        masks: torch.Tensor, fraction: float = 1.0, backend: str | None = None) -> torch.Tensor:
    """Last-position logits ``[k * n, vocab]`` of the ``base`` prompts [n, pos] with the edges of each of ``masks``
    [k, n_senders, n_receivers] patched from ``source`` (`source_writes`; row r uses mask r // n). ``fraction``
    moves each patched edge that part of the way (1: the source's value), for derivative checks."""
    if masks.ndim == 2:
        masks = masks[None]
    if masks.shape[1:] != graph.valid.shape:
        raise InterpError(f"edge masks must be [k, {len(graph.senders)}, {len(graph.receivers)}] for this graph, "
                          f"got {tuple(masks.shape)}")
    state = _EdgePatch(model, graph, masks.bool(), source, base.shape[0], fraction)
    with torch.no_grad():
        return model.run(base.repeat(masks.shape[0], 1), state.interventions(), backend=backend).logits[:, -1]
