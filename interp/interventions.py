"""Interventions: edits of one site's activation, as plain data.

Every backend calls `Intervention.apply` on the activation at the intervention's site (in the
site's layout, see `interp.sites`) and lets the result flow on, so each edit is written once and
behaves the same on TransformerLens and nnsight.

``index`` selects part of the activation with ordinary torch indexing, e.g. ``(slice(None), 3)``
for position 3 of every prompt, or ``(rows, positions)`` with two index tensors to edit a
different position in every batch row (how batched patching sweeps put one patch per row).

>>> import torch
>>> act = torch.zeros(2, 4, 3)
>>> Replace("resid_pre.0", torch.ones(3), index=(slice(None), 1)).apply(act)[0, :, 0]
tensor([0., 1., 0., 0.])
>>> Add("resid_pre.0", torch.ones(3), coeff=2.0, positions=[3]).apply(act)[1, 3]
tensor([2., 2., 2.])
>>> SubspaceReplace("resid_pre.0", torch.tensor([1.0, 0, 0]), torch.ones(2, 4, 3)).apply(act)[0, 0]
tensor([1., 0., 0.])
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from interp.errors import InterpError

Index = Any  # anything torch accepts as an index: int, slice, tensor, or a tuple of those


def _edited(act: torch.Tensor, index: Index, value: torch.Tensor) -> torch.Tensor:
    out = act.clone()  # never edit the backend's tensor in place; keeps autograd intact
    try:
        out[index if index is not None else ...] = value.to(device=act.device, dtype=act.dtype)
    except (RuntimeError, IndexError) as exc:
        raise InterpError(f"intervention does not fit the activation of shape {tuple(act.shape)}: {exc}") from None
    return out


@dataclass(frozen=True)
class Intervention:
    """Base class: an edit of the activation at ``site``."""

    site: str

    def apply(self, act: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


@dataclass(frozen=True)
class Replace(Intervention):
    """Set ``act[index]`` to ``value`` (broadcast); ``index=None`` replaces the whole activation."""

    value: torch.Tensor
    index: Index = None

    def apply(self, act: torch.Tensor) -> torch.Tensor:
        return _edited(act, self.index, self.value)


@dataclass(frozen=True)
class Add(Intervention):
    """Add ``coeff * vector`` at ``positions`` (None: every position) of every prompt.

    ``keep_norm=True`` rescales each edited token's vector back to its norm before the addition.
    """

    vector: torch.Tensor
    coeff: float = 1.0
    positions: Index = None
    keep_norm: bool = False

    def apply(self, act: torch.Tensor) -> torch.Tensor:
        pos = slice(None) if self.positions is None else self.positions
        delta = self.coeff * self.vector.to(device=act.device, dtype=act.dtype)
        out = act.clone()
        try:
            edited = out[:, pos] + delta
            if self.keep_norm:
                edited = edited * (out[:, pos].norm(dim=-1, keepdim=True) / edited.norm(dim=-1, keepdim=True).clamp_min(1e-12))
            out[:, pos] = edited
        except (RuntimeError, IndexError) as exc:
            raise InterpError(f"Add on {self.site} does not fit the activation of shape {tuple(act.shape)}: {exc}") from None
        return out


@dataclass(frozen=True)
class Ablate(Intervention):
    """Zero-, mean- or resample-ablate ``act[index]``.

    ``kind="zero"`` sets zeros. ``kind="mean"`` sets ``values.mean(0)`` (``values``: the site's
    activations over a reference set, batch first). ``kind="resample"`` sets ``values`` row for row
    (the caller draws them from other prompts).
    """

    kind: str = "zero"
    index: Index = None
    values: torch.Tensor | None = None

    def apply(self, act: torch.Tensor) -> torch.Tensor:
        if self.kind == "zero":
            return _edited(act, self.index, torch.zeros((), dtype=act.dtype))
        if self.values is None:
            raise InterpError(f"{self.kind}-ablation of {self.site} needs `values` (the site's activations on reference prompts)")
        if self.kind == "mean":
            ref = self.values.mean(0)
            return _edited(act, self.index, ref if self.index is None else ref[(self.index[1:] if isinstance(self.index, tuple) else ())])
        if self.kind == "resample":
            return _edited(act, self.index, self.values if self.index is None else self.values[self.index])
        raise InterpError(f"unknown ablation '{self.kind}': use zero, mean or resample")


@dataclass(frozen=True)
class SubspaceReplace(Intervention):
    """Replace the coordinates of the activation along the span of ``basis`` by those of ``source``.

    ``basis`` holds k directions as rows ``[k, d]`` (or one ``[d]``) in the site's last dimension;
    they need not be orthonormal, only independent. ``source`` is the source run's activation,
    shaped like the edited one. At ``positions`` (None: all) the result is
    ``act + (source - act) Q Q^T`` with Q an orthonormal basis of the span; for one direction v,
    ``w + ((u.v - w.v) / |v|^2) v``. Coordinates outside the span stay the base run's.
    """

    basis: torch.Tensor
    source: torch.Tensor
    positions: Index = None

    def apply(self, act: torch.Tensor) -> torch.Tensor:
        q = orthonormal_basis(self.basis).to(device=act.device, dtype=act.dtype)  # [d, k]
        if q.shape[0] != act.shape[-1]:
            raise InterpError(f"subspace basis has dimension {q.shape[0]}, but {self.site} has {act.shape[-1]}")
        source = self.source.to(device=act.device, dtype=act.dtype)
        pos = slice(None) if self.positions is None else self.positions
        out = act.clone()
        try:
            delta = ((source[:, pos] - act[:, pos]) @ q) @ q.T
            out[:, pos] = act[:, pos] + delta
        except (RuntimeError, IndexError) as exc:
            raise InterpError(f"SubspaceReplace on {self.site} does not fit the activation of shape "
                              f"{tuple(act.shape)} (source {tuple(source.shape)}): {exc}") from None
        return out


def orthonormal_basis(basis: torch.Tensor) -> torch.Tensor:
    """An orthonormal basis ``[d, k]`` of the span of the rows of ``basis`` (``[k, d]`` or ``[d]``)."""
    rows = basis.reshape(1, -1) if basis.ndim == 1 else basis
    q, r = torch.linalg.qr(rows.T.float())
    if (r.diagonal().abs() <= 1e-6 * r.diagonal().abs().max().clamp_min(1e-30)).any() or not rows.abs().sum():
        raise InterpError(f"subspace basis of {rows.shape[0]} directions is not independent (or is zero)")
    return q


def apply_all(interventions: list[Intervention], act: torch.Tensor) -> torch.Tensor:
    """Apply ``interventions`` in order to ``act``."""
    for iv in interventions:
        act = iv.apply(act)
    return act
