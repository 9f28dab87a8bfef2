"""Sparse dictionaries spliced into the forward pass: the sites ``sae.<site>.latents|error|recon``.

`Model.attach(dictionary)` splices an SAE (or a transcoder) at the site it was trained on. Runs that read or
edit its sites then compute, at that site's activation ``x``::

    latents = encode(x)                      sae.<site>.latents   [..., d_sae]
    recon   = decode(latents, x)             sae.<site>.recon     [..., d_out]
    error   = x - decode(encode(x), x)       sae.<site>.error     [..., d_out]

(``x`` reaches ``decode`` only where the output depends on it: per-input normalisation, a skip connection.)
    x'      = recon + error

so with nothing edited the forward pass is the model's own (up to float rounding of ``recon + error``; a run
that only reads without gradients lets ``x`` itself flow on, bit for bit). Replace, Add and Ablate work on
latents, the error and the reconstruction like on any site; an edited latent changes ``recon`` through the
decoder while the error term stays the clean run's. A transcoder reads one site (its ``site``, the MLP's
input) and replaces another (its ``out_site``, the MLP's output) with ``decode(latents) + error``, error being
what the MLP really wrote minus the transcoder's clean reconstruction.

Gradients (``grad=True``) follow Marks et al.'s sparse feature circuits: latents and the error are nodes of
their own, so the gradient at a latent is the decoder row times the gradient at the site (the error held
fixed), the gradient at the error is the site's, and what flows back to the site's input is the site's
gradient unchanged (the splice is the identity in ``x``).

Site names: ``sae.resid_post.6.latents`` (the dictionary attached at ``resid_post.6``; for a transcoder the
name of its input site). ``head_out`` dictionaries (SAELens's ``hook_z``) see the heads flattened,
``[..., n_heads * d_head]``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from interp.errors import InterpError
from interp.interventions import Intervention, apply_all

PREFIX = "sae."
PARTS = ("latents", "error", "recon")


def split_name(name: str) -> tuple[str, str] | None:
    """``"sae.resid_post.6.latents"`` -> ``("resid_post.6", "latents")``; None for a site that is not a splice's."""
    if not isinstance(name, str) or not name.startswith(PREFIX):
        return None
    base, _, part = name[len(PREFIX):].rpartition(".")
    if part not in PARTS or not base:
        raise InterpError(f"bad dictionary site '{name}': use sae.<site>.latents, sae.<site>.error or sae.<site>.recon")
    return base, part


def attached_site(dictionaries: dict, name: str) -> str:
    """The base site of the dictionary attached at ``name`` (``"resid_post.6"`` or ``"sae.resid_post.6"``), or a
    one-line error listing what is attached."""
    base = name.removeprefix(PREFIX)
    if base not in dictionaries:
        attached = ", ".join(sorted(dictionaries)) or "none"
        raise InterpError(f"no dictionary is attached at {base} (attached: {attached}): model.attach(...) one first")
    return base


def _flat(x: torch.Tensor, flatten: bool) -> torch.Tensor:
    return x.flatten(-2) if flatten else x


@dataclass(frozen=True, eq=False)
class Splice(Intervention):
    """The splice of one dictionary in one run: built by `Model` for each run that touches its sites (not by users).

    ``edits``/``reads`` are keyed by part; ``acts`` is the run's store of read activations. For a transcoder
    two splices share ``state``: the input one (``role="in"``) encodes, the output one (``role="out"``) decodes.
    """

    name: str = ""  # the dictionary's base site, which names its sites (a transcoder's input site)
    dictionary: object = None
    edits: dict = field(default_factory=dict)
    reads: set = field(default_factory=set)
    acts: dict = field(default_factory=dict)
    grad: bool = False
    role: str = "both"  # "both" (an SAE), "in" / "out" (a transcoder's input and output sites)
    flatten: bool = False  # head_out: [..., n_heads, d_head] seen as [..., n_heads * d_head]
    state: dict = field(default_factory=dict)

    def _keep(self, part: str, value: torch.Tensor) -> torch.Tensor:
        value = apply_all(self.edits.get(part, []), value)
        if self.grad and not value.requires_grad:  # nothing upstream needs a gradient: a leaf of its own
            value = value.detach().requires_grad_(True)
        if part in self.reads:
            self.acts[f"{PREFIX}{self.name}.{part}"] = value if self.grad else value.detach()
        return value

    def apply(self, act: torch.Tensor) -> torch.Tensor:
        if self.role == "in":
            self._encode(act)
            return act
        if self.role == "out":
            return self._decode(act)
        self._encode(act)
        return self._decode(act)

    def _encode(self, act: torch.Tensor) -> None:
        d = self.dictionary
        x = _flat(act, self.flatten)
        latents = d.encode(x)
        if self.grad:  # a node of its own: the splice's gradient reaches x through the error term only
            latents = latents.detach().requires_grad_(True)
        self.state["clean"] = latents.detach()
        self.state["input"] = x.detach()  # what decode needs for per-input normalisation or a skip connection
        self.state["latents"] = self._keep("latents", latents)

    def _decode(self, act: torch.Tensor) -> torch.Tensor:
        d, latents = self.dictionary, self.state.pop("latents")
        clean, x = self.state.pop("clean"), self.state.pop("input")
        y = _flat(act, self.flatten)
        edited = any(self.edits.get(p) for p in PARTS)
        if not edited and not self.reads.intersection(("error", "recon")) and not self.grad:
            return act  # nothing changes what flows on: the model's own activation, bit for bit
        with torch.no_grad():
            recon_clean = d.decode(clean, x)
        error = self._keep("error", y - recon_clean.to(y.dtype))
        same = not self.grad and not self.edits.get("latents")  # the latents are the clean ones: so is their decoding
        recon = self._keep("recon", (recon_clean if same else d.decode(latents, x)).to(y.dtype))
        out = recon + error
        return out.reshape(act.shape) if self.flatten else out


def splices(dictionaries: dict, edits: dict[str, list[Intervention]], reads: set[str], acts: dict, grad: bool,
            n_heads: int) -> list[Splice]:
    """The splices of one run: one per attached dictionary (two per transcoder) whose sites the run touches.

    ``dictionaries`` maps a base site (``"resid_post.6"``) to its dictionary; ``edits``/``reads`` hold the
    run's ``sae.*`` names. Returns interventions to append at the dictionaries' sites.
    """
    touched: dict[str, tuple[dict, set]] = {}
    for name in set(edits) | set(reads):
        base, part = split_name(name)
        attached_site(dictionaries, base)
        part_edits, part_reads = touched.setdefault(base, ({}, set()))
        if name in edits:
            part_edits[part] = edits[name]
        if name in reads:
            part_reads.add(part)
    out = []
    for base, (part_edits, part_reads) in touched.items():
        d = dictionaries[base]
        flatten = base.startswith("head_out.")
        state: dict = {}
        common = dict(name=base, dictionary=d, edits=part_edits, reads=part_reads, acts=acts, grad=grad, flatten=flatten,
                      state=state)
        if getattr(d, "out_site", None):
            out += [Splice(base, role="in", **common), Splice(d.out_site, role="out", **common)]
        else:
            out.append(Splice(base, **common))
    return out
