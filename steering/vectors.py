"""Control vectors: one direction per layer, read from the residual stream of contrasting prompts.

For each layer L, activations h_L(p) of a residual site (``resid_post`` by default) are read at
one position of every prompt (the last token, an index such as -2, or the mean over positions):

==========  =====================================================================================
method      vector at layer L
==========  =====================================================================================
R           mean over positives of h_L                       (reading vector; no contrast)
R-C         mean over pairs of h_L(positive) - h_L(negative) (reading-contrast vector)
PCA-C       first principal component of those differences, scaled to the R-C vector's norm and
            signed to agree with it (the reference code leaves the sign arbitrary)
probe       a logistic-regression probe's weights (positives vs negatives), scaled to the R-C norm
==========  =====================================================================================

Prompts may differ in length: they run in groups of equal token length, and each prompt is read at
its own position. A `VectorSet` saves and loads as safetensors + JSON (model, site, method,
position, provenance).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch

from interp.errors import InterpError
from interp.metrics import check_finite
from interp.model import Model
from interp.results import load_vectors, save_vectors
from interp.limits import check_context
from interp.steering.limits import BATCH_ROWS

METHODS = ("R", "R-C", "PCA-C", "probe")
KINDS = ("resid_pre", "resid_mid", "resid_post")


@dataclass
class VectorSet:
    """``vectors[i]`` is the vector for layer ``layers[i]`` at site kind ``kind``."""

    model: str
    kind: str
    layers: list[int]
    vectors: torch.Tensor  # [len(layers), d_model]
    method: str
    position: int | str
    meta: dict = field(default_factory=dict)

    def vector(self, layer: int) -> torch.Tensor:
        if layer not in self.layers:
            raise InterpError(f"this vector set has no layer {layer}; it has {self.layers}")
        return self.vectors[self.layers.index(layer)]

    def select(self, layers: Sequence[int]) -> "VectorSet":
        """The same set restricted to ``layers``."""
        layers = list(layers)
        return VectorSet(self.model, self.kind, layers, torch.stack([self.vector(layer) for layer in layers]),
                         self.method, self.position, dict(self.meta))

    @classmethod
    def from_latent(cls, dictionary, latent: int, model: str | None = None) -> "VectorSet":
        """A sparse dictionary's decoder row for ``latent`` as a steering vector at the site it writes (an SAE's
        own site; a transcoder's output site): adding it with coefficient c adds c units of that latent's output."""
        site = getattr(dictionary, "out_site", None) or dictionary.site
        kind, _, layer = site.rpartition(".")
        kind = {"mlp_out": "resid_post"}.get(kind, kind)  # what the MLP writes is added into resid_post
        if kind not in KINDS:
            raise InterpError(f"a latent of a dictionary at {site} cannot steer: steering adds vectors to the residual "
                              f"stream ({', '.join(KINDS)})")
        if not 0 <= latent < dictionary.W_dec.shape[0]:
            raise InterpError(f"latent {latent} is out of range: the dictionary has latents 0..{dictionary.W_dec.shape[0] - 1}")
        row = dictionary.W_dec[latent].detach().float().clone()
        return cls(model or getattr(dictionary, "model_name", "") or "", kind, [int(layer)], row[None], "sae-latent",
                   "mean", {"latent": int(latent), "dictionary_site": dictionary.site})

    def save(self, path: str | Path) -> Path:
        """Write ``<path>.safetensors`` (the vectors) and ``<path>.json`` (everything else)."""
        return save_vectors(path, self.vectors, {"model": self.model, "kind": self.kind, "layers": self.layers,
                                                 "method": self.method, "position": self.position, "meta": self.meta})

    @classmethod
    def load(cls, path: str | Path) -> "VectorSet":
        """A saved set; a one-line error when the files are damaged, lack a key, or hold a non-finite number."""
        name = Path(path).with_suffix("").name
        try:
            vectors, info = load_vectors(path, "vector set")
        except (ValueError, KeyError) as e:  # not JSON / not UTF-8 / no "vectors" tensor in the safetensors file
            reason = f"no tensor {e}" if isinstance(e, KeyError) else " ".join(str(e).split())[:160]
            raise InterpError(f"{name} is not a readable vector set ({reason}): save it again with VectorSet.save "
                              "or `interp steer build`") from None
        return cls._from_saved(name, vectors, info)

    @classmethod
    def _from_saved(cls, name: str, vectors: torch.Tensor, info) -> "VectorSet":
        if not isinstance(info, dict):
            raise InterpError(f"{name}.json must hold a JSON object, not {type(info).__name__}")
        missing = [key for key in ("model", "kind", "layers", "method", "position") if key not in info]
        if missing:
            raise InterpError(f"{name}.json lacks {', '.join(missing)}: a vector set's JSON needs model, kind, layers, "
                              "method and position (as VectorSet.save writes them)")
        layers = info["layers"]
        if not isinstance(layers, list) or not layers or not all(isinstance(x, int) and not isinstance(x, bool) for x in layers):
            raise InterpError(f"{name}.json: layers must be a non-empty list of layer indices, got {layers!r}"[:300])
        if len(set(layers)) != len(layers):
            raise InterpError(f"{name}.json: layers {layers} repeat a layer")
        if not isinstance(info["model"], str) or info["kind"] not in KINDS or not isinstance(info["method"], str):
            raise InterpError(f"{name}.json: model and method must be strings and kind one of {', '.join(KINDS)}")
        position = info["position"]
        if position != "mean" and (not isinstance(position, int) or isinstance(position, bool)):
            raise InterpError(f"{name}.json: position must be a token index or 'mean', got {position!r}")
        meta = info.get("meta", {})
        if not isinstance(meta, dict):
            raise InterpError(f"{name}.json: meta must be a JSON object")
        if vectors.ndim != 2 or vectors.shape[0] != len(layers):
            raise InterpError(f"{name}: {tuple(vectors.shape)} vectors for {len(layers)} layers; the files do not match")
        bad = ~torch.isfinite(vectors)
        if bad.any():
            row = int(bad.nonzero()[0, 0])
            raise InterpError(f"{name}: the vector for layer {layers[row]} holds a non-finite number "
                              f"({float(vectors[bad][0])}); rebuild the vector set")
        return cls(info["model"], info["kind"], list(layers), vectors, info["method"], position, meta)


def _check_position(position: int | str) -> None:
    if position != "mean" and not isinstance(position, int):
        raise InterpError(f"position must be a token index such as -1 or -2, or 'mean'; got {position!r}")


def read_activations(model: Model, prompts: Sequence[str], kind: str = "resid_post", layers: Sequence[int] | None = None,
                     position: int | str = -1, backend: str | None = None,
                     progress: Callable[[str, int, int], None] | None = None, stage: str = "activations") -> torch.Tensor:
    """Activations ``[len(prompts), len(layers), d_model]`` at one position (or the mean) of every prompt.

    ``progress(stage, prompts done, prompts)`` is called after each group of equal-length prompts.
    """
    if kind not in KINDS:
        raise InterpError(f"control vectors are read from the residual stream: kind must be one of {', '.join(KINDS)}, not {kind!r}")
    _check_position(position)
    if not prompts:
        raise InterpError("no prompts to read activations from")
    layers = list(range(model.n_layers)) if layers is None else list(layers)
    sites = [f"{kind}.{layer}" for layer in layers]
    out = torch.empty(len(prompts), len(layers), model.d_model)
    done = 0
    for rows, tokens in model.length_groups(prompts, BATCH_ROWS):
        length = tokens.shape[1]
        check_context(model, length, f"prompt {rows[0] + 1}", "shorten it")
        if position != "mean" and not -length <= position < length:
            raise InterpError(f"position {position} is outside a prompt of {length} tokens: {prompts[rows[0]]!r}")
        with torch.no_grad():
            acts = model.run(tokens, read=sites, backend=backend).acts
        stacked = torch.stack([acts[s] for s in sites], dim=1)  # [rows, layers, pos, d]
        picked = stacked.mean(2) if position == "mean" else stacked[:, :, position]
        out[rows] = picked.float().cpu()
        done += len(rows)
        if progress:
            progress(stage, done, len(prompts))
    return out


def contrast_vectors(positive: torch.Tensor, negative: torch.Tensor | None, method: str, seed: int = 0) -> torch.Tensor:
    """Vectors ``[layers, d]`` from activations ``[n, layers, d]`` (negatives paired row by row)."""
    if method not in METHODS:
        raise InterpError(f"unknown control-vector method {method!r}: use one of {', '.join(METHODS)}")
    if method == "R":
        return positive.mean(0)
    if negative is None or negative.shape != positive.shape:
        raise InterpError(f"{method} needs as many negative prompts as positive ones (paired); "
                          f"got {positive.shape[0]} and {0 if negative is None else negative.shape[0]}")
    diffs = positive - negative  # [n, layers, d]
    mean_diff = diffs.mean(0)
    if method == "R-C":
        return mean_diff
    norms = mean_diff.norm(dim=-1, keepdim=True)
    if method == "PCA-C":
        if positive.shape[0] < 2:
            raise InterpError("PCA-C needs at least 2 pairs")
        centred = diffs - mean_diff
        pcs = torch.stack([torch.linalg.svd(centred[:, layer], full_matrices=False).Vh[0] for layer in range(diffs.shape[1])])
    else:
        from sklearn.linear_model import LogisticRegression

        pcs = []
        for layer in range(diffs.shape[1]):
            x = torch.cat([positive[:, layer], negative[:, layer]]).double()
            y = torch.cat([torch.ones(len(positive)), torch.zeros(len(negative))]).numpy()
            scale = x.std(0).clamp_min(1e-8)
            clf = LogisticRegression(max_iter=5000, random_state=seed).fit(((x - x.mean(0)) / scale).numpy(), y)
            w = torch.from_numpy(clf.coef_[0]) / scale
            pcs.append((w / w.norm()).float())
        pcs = torch.stack(pcs)
    sign = torch.sign((pcs * mean_diff).sum(-1, keepdim=True))
    sign[sign == 0] = 1.0
    return pcs * sign * norms


def build_vectors(model: Model, positive: Sequence[str], negative: Sequence[str] | None = None, method: str = "R-C",
                  kind: str = "resid_post", layers: Sequence[int] | None = None, position: int | str = -1,
                  seed: int = 0, backend: str | None = None, provenance: dict | None = None,
                  progress: Callable[[str, int, int], None] | None = None) -> VectorSet:
    """A control-vector set, one vector per layer, from positive (and paired negative) prompts.

    ``progress(stage, done, total)`` follows the reading of the positives and the negatives.
    A vector with a NaN or infinite number (an overflowing model) is a one-line error naming its layer.
    """
    if method not in METHODS:
        raise InterpError(f"unknown control-vector method {method!r}: use one of {', '.join(METHODS)}")
    layers = list(range(model.n_layers)) if layers is None else [int(model.site(f"{kind}.{layer}").layer) for layer in layers]
    pos = read_activations(model, positive, kind, layers, position, backend, progress, "positives")
    neg = read_activations(model, negative, kind, layers, position, backend, progress, "negatives") \
        if negative and method != "R" else None
    vectors = contrast_vectors(pos, neg, method, seed)
    for layer, vector in zip(layers, vectors):
        check_finite(vector, f"the {method} vector of {kind}.{layer}")
    meta = {"n_positive": len(positive), "n_negative": len(negative or []), **(provenance or {})}
    return VectorSet(model.name, kind, layers, vectors, method, position, meta)


def load_vector_set(model: Model, path: str, layers: Sequence[int] = ()) -> VectorSet:
    """A saved vector set built on ``model``, restricted to ``layers`` (empty: all of its layers)."""
    vectors = VectorSet.load(path)
    if vectors.model != model.name:
        raise InterpError(f"{path} was built on {vectors.model}, not {model.name}; build a vector set on this model")
    if vectors.vectors.shape[1] != model.d_model:
        raise InterpError(f"{path} holds {vectors.vectors.shape[1]}-wide vectors; {model.name} is {model.d_model} wide")
    for layer in vectors.layers:
        model.site(f"{vectors.kind}.{layer}")  # one clear error for a layer the model does not have
    return vectors.select(layers) if layers else vectors
