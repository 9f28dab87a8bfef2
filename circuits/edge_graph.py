"""The full computational graph of a decoder for edge-level circuits: senders, receivers and the edges between them.

Senders write into the residual stream: ``input`` (the embeddings, ``resid_pre.0``), every head ``head.L.H`` (its
``z_h @ W_O[h]``) and every MLP ``mlp.L`` (``mlp_out.L``). Receivers read it: every query head ``head.L.H.q``,
every key and value head ``kv.L.G.k`` / ``kv.L.G.v`` (G indexes the KV heads, so grouped- and multi-query
attention have one key and one value receiver per KV head, shared by the query heads of its group), every MLP
``mlp.L`` and the ``logits``. An edge runs from a sender to every receiver after it: a layer's heads reach the
same layer's MLP unless attention and MLP run in parallel.

`EdgeGraph` lists them in forward order with their sites; `sender_writes` computes what each sender writes on
given runs (what edge patching swaps and edge attribution multiplies). Where a norm follows attention (sandwich and
post-norm blocks), a head's write is not one term of a sum: edge patching recomputes that norm for what each
receiver reads, and edge attribution linearizes it (`interp.circuits.eap`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch

from interp.errors import InterpError
from interp.model import Model
from interp.residual_io import mlp_sees_attention


@dataclass(frozen=True)
class EdgeGraph:
    """Senders and receivers of a model with ``n_layers`` layers of ``n_heads`` query and ``n_kv_heads`` KV heads."""

    n_layers: int
    n_heads: int
    n_kv_heads: int
    mlp_sees_attention: bool = True

    @cached_property
    def senders(self) -> list[str]:
        out = ["input"]
        for layer in range(self.n_layers):
            out += [f"head.{layer}.{h}" for h in range(self.n_heads)] + [f"mlp.{layer}"]
        return out

    @cached_property
    def receivers(self) -> list[str]:
        out = []
        for layer in range(self.n_layers):
            out += [f"head.{layer}.{h}.q" for h in range(self.n_heads)]
            out += [f"kv.{layer}.{g}.{part}" for part in ("k", "v") for g in range(self.n_kv_heads)]
            out.append(f"mlp.{layer}")
        return out + ["logits"]

    def _sender_key(self, name: str) -> int:
        if name == "input":
            return -1
        kind, layer = name.split(".")[:2]
        return 2 * int(layer) + (kind == "mlp")

    def _receiver_key(self, name: str) -> int:
        if name == "logits":
            return 2 * self.n_layers
        kind, layer = name.split(".")[:2]
        return 2 * int(layer) + (kind == "mlp" and self.mlp_sees_attention)

    @cached_property
    def valid(self) -> torch.Tensor:
        """[n_senders, n_receivers] bool: which sender reaches which receiver directly."""
        s = torch.tensor([self._sender_key(n) for n in self.senders])
        r = torch.tensor([self._receiver_key(n) for n in self.receivers])
        return s[:, None] < r[None, :]

    @property
    def n_edges(self) -> int:
        return int(self.valid.sum())

    def receiver_columns(self, layer: int) -> slice:
        """The receivers of ``layer``'s attention and MLP (``layer == n_layers``: the logits)."""
        per = self.n_heads + 2 * self.n_kv_heads + 1
        return slice(layer * per, min((layer + 1) * per, len(self.receivers)))

    def sender_rows(self, layer: int) -> slice:
        """The heads and MLP of ``layer`` (``layer == -1``: the input)."""
        if layer < 0:
            return slice(0, 1)
        per = self.n_heads + 1
        return slice(1 + layer * per, 1 + (layer + 1) * per)

    def edges(self, mask: torch.Tensor) -> list[tuple[str, str]]:
        """(sender, receiver) names of the edges set in ``mask`` [n_senders, n_receivers]."""
        return [(self.senders[i], self.receivers[j]) for i, j in (mask & self.valid).nonzero().tolist()]

    def mask(self, edges: list[tuple[str, str]]) -> torch.Tensor:
        """The [n_senders, n_receivers] mask of named edges; a one-line error for an edge the graph lacks."""
        s_index = {n: i for i, n in enumerate(self.senders)}
        r_index = {n: j for j, n in enumerate(self.receivers)}
        out = torch.zeros(len(self.senders), len(self.receivers), dtype=torch.bool)
        for sender, receiver in edges:
            if sender not in s_index or receiver not in r_index or not self.valid[s_index[sender], r_index[receiver]]:
                raise InterpError(f"no edge {sender} -> {receiver} in this graph: senders are input, head.L.H and "
                                  "mlp.L; receivers head.L.H.q, kv.L.G.k, kv.L.G.v, mlp.L and logits, later in the forward")
            out[s_index[sender], r_index[receiver]] = True
        return out


def edge_graph(model: Model) -> EdgeGraph:
    """The graph of ``model``."""
    return EdgeGraph(model.n_layers, model.n_heads, model.adapter.n_kv_heads, mlp_sees_attention(model))


def sender_sites(model: Model) -> list[str]:
    """The sites `sender_writes` reads."""
    return ["resid_pre.0"] + [f"{kind}.{layer}" for layer in range(model.n_layers) for kind in ("head_out", "mlp_out")]


def sender_writes(model: Model, acts: dict[str, torch.Tensor], layer: int | None = None,
                  w_o: dict[int, torch.Tensor] | None = None) -> torch.Tensor:
    """What each sender wrote into the residual stream, ``[n_senders, batch, pos, d_model]``, from a run's
    `sender_sites` (``layer``: only that layer's heads and MLP; -1: the input). ``w_o`` caches ``model.W_O``."""
    def one(layer: int) -> torch.Tensor:
        if layer < 0:
            return acts["resid_pre.0"][None]
        W_O = w_o[layer] if w_o is not None and layer in w_o else model.W_O(layer)
        heads = torch.einsum("bphe,hed->hbpd", acts[f"head_out.{layer}"], W_O.to(acts[f"head_out.{layer}"].dtype))
        return torch.cat([heads, acts[f"mlp_out.{layer}"][None]])

    if layer is not None:
        return one(layer)
    return torch.cat([one(layer) for layer in range(-1, model.n_layers)])
