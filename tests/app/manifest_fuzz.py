"""Malformed run folders, made systematically from good ones: every manifest field (to three levels, the first
item of each list) deleted or replaced by a value of the wrong type, every tensor description's axes, sizes, labels
and extras broken, label lists of the wrong length. `load_run` must reject each with its own one-line error, or
accept it and then `report()` and every app page must show it without raising.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

# Values of the wrong type (or an awkward value of the right one) put in place of a field.
BAD = (None, True, -1, 1.5, "x", [], {}, [None], {"k": None}, "\ud800", "<b>x</b> **y** ![i](http://x/i.png)")
DEPTH = 3


def _paths(obj, prefix: tuple = (), depth: int = DEPTH) -> Iterator[tuple]:
    """Paths to every value of ``obj`` (dict keys; index 0 of lists) down to ``depth`` levels."""
    if depth == 0:
        return
    if isinstance(obj, dict):
        items = list(obj.items())
    elif isinstance(obj, list) and obj:
        items = [(0, obj[0])]
    else:
        return
    for key, value in items:
        yield (*prefix, key)
        yield from _paths(value, (*prefix, key), depth - 1)


def _set(obj, path: tuple, value, delete: bool = False):
    obj = copy.deepcopy(obj)
    parent = obj
    for key in path[:-1]:
        parent = parent[key]
    if delete:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    return obj


def _tensor_mutations(manifest: dict, bad_values: tuple, n_tensors: int | None) -> Iterator[tuple[str, dict]]:
    for name, info in list(manifest["tensors"].items())[:n_tensors]:
        if not isinstance(info, dict):
            continue
        base = ("tensors", name)
        for field in ("axes", "sizes", "labels", "zmid", "plot", "note"):
            for bad in bad_values:
                yield f"tensors.{name}.{field}={bad!r}", _set(manifest, (*base, field), bad)
        axes, sizes = info["axes"], info["sizes"]
        yield f"tensors.{name}.axes[0]=1", _set(manifest, (*base, "axes"), [1, *axes[1:]])
        yield f"tensors.{name}.axes repeated", _set(manifest, (*base, "axes"), [axes[0]] * len(axes))
        yield f"tensors.{name}.sizes[0]='2'", _set(manifest, (*base, "sizes"), [str(sizes[0]), *sizes[1:]])
        yield f"tensors.{name}.sizes[0]=True", _set(manifest, (*base, "sizes"), [True, *sizes[1:]])
        yield f"tensors.{name}.sizes+1", _set(manifest, (*base, "sizes"), [s + 1 for s in sizes])
        yield f"tensors.{name}.sizes float", _set(manifest, (*base, "sizes"), [float(s) for s in sizes])
        yield f"tensors.{name}.labels unknown axis", _set(manifest, (*base, "labels"), {"nope": ["a"]})
        for axis, size in zip(axes, sizes):
            labels = [str(i) for i in range(size)]
            for bad in (None, "x", {}, 3, [None] * size, [[]] * size, [{}] * size, labels[:-1], [*labels, "extra"]):
                yield f"tensors.{name}.labels.{axis}={bad!r}"[:120], _set(manifest, (*base, "labels"), {axis: bad})
        yield f"del tensors.{name}", _set(manifest, base, None, delete=True)
    yield "tensors extra", _set(manifest, ("tensors", "nope/extra"), {"axes": ["a"], "sizes": [1], "labels": {}})


def mutations(manifest: dict, bad_values: tuple = BAD, n_tensors: int | None = None) -> Iterator[tuple[str, dict]]:
    """(what was broken, the broken manifest) for every field of ``manifest`` (the first ``n_tensors`` tensors)."""
    seen = set()
    for path in _paths(manifest):
        if path[0] in ("schema_version", "versions") or (path[0] == "tensors" and len(path) > 1):
            continue
        where = ".".join(map(str, path))
        if where not in seen:
            seen.add(where)
            yield f"del {where}", _set(manifest, path, None, delete=True)
        for bad in bad_values:
            yield f"{where}={bad!r}", _set(manifest, path, bad)
    yield from _tensor_mutations(manifest, bad_values, n_tensors)
    for bad in (None, "1", 1.5, True, 0, -3):
        yield f"schema_version={bad!r}", _set(manifest, ("schema_version",), bad)


def write_folder(folder: Path, source: Path, manifest: dict | str) -> Path:
    """A run folder: ``manifest`` (a dict, or raw text) beside links to the other files of ``source``."""
    folder.mkdir(parents=True)
    text = manifest if isinstance(manifest, str) else json.dumps(manifest, ensure_ascii=True)
    (folder / "manifest.json").write_text(text)
    for path in source.iterdir():
        if path.name not in ("manifest.json", "report.html"):
            os.symlink(path.resolve(), folder / path.name)
    return folder


def copy_folder(folder: Path, source: Path) -> Path:
    shutil.copytree(source, folder)
    return folder


# --- the fields the app's pages read, per fixture folder (dotted paths; 0 is a list's first item) -----------------

MARKUP = "<b>bold</b> **x** [link](http://example.invalid) ![img](http://example.invalid/i.png) $x$ :red[r] # h"
PAGE_BAD = (None, "x", {"k": None})  # null, a scalar of the wrong type, an object where a scalar or list belongs
# Fields every page header reads; broken in three runs only (the header code is the same for all).
_COMMON = ("command", "model", "status", "created", "metric", "notes.0.title", "notes.0.text")
_COMMON_IN = ("patch", "subspace", "steer_eval")
PAGE_FIELDS = {
    "patch": ("baselines", "baselines.clean", "baselines.clean.mean", "baselines.corrupt.mean", "prompt_set",
              "prompt_set.n_prompts", "prompt_set.example_clean", "prompt_set.tokens", "parameters", "parameters.direction",
              "faithfulness", "faithfulness.atp", "faithfulness.atp.resid_pre", "faithfulness.atp.resid_pre.pearson",
              "top_cells", "components", "comparisons.0.stats"),
    "voids": ("parameters", "parameters.prompts", "parameters.prompts.0", "generations", "generations.0"),
    "steer_eval": ("sweep", "sweep.0", "lines.0.title", "lines.0.x", "lines.0.ys", "prompt_set"),
    "attack": ("attack", "attack.before", "attack.after", "attack.random", "lines", "lines.0.ys", "detector"),
    "subspace": ("illusion", "illusion.site", "illusion.base_logit_diff", "illusion.illusion", "illusion.signature",
                 "illusion.verdict", "illusion.direction", "illusion.direction.fldd", "illusion.norms", "site",
                 "histograms.0.title", "histograms.0.tensors"),
    "faithfulness": ("faithfulness", "faithfulness.fraction", "faithfulness.normalized", "faithfulness.n_ablated"),
    "circuit_a": ("parameters", "circuit"),
    "heads": ("prompt_set", "prompt_set.tokens"),
    "retrieval": ("lines", "responses"),
    "neurons": ("lines.0.x", "lines.0.ys", "relations"),
    "east": ("lines.0.title", "vector"),
    "steer_build": ("vectors",),
    "overlap": ("overlap",),
    "latents": ("token_strings", "parameters", "dictionary"),
}


def page_mutations(manifest: dict, folder: str, bad_values: tuple = PAGE_BAD) -> Iterator[tuple[str, dict]]:
    """(what was broken, the broken manifest) for the fields the app's pages read from ``folder``'s manifest."""
    for where in (*(_COMMON if folder in _COMMON_IN else ()), *PAGE_FIELDS.get(folder, ())):
        path = tuple(int(p) if p.isdigit() else p for p in where.split("."))
        parent = manifest
        try:
            for key in path[:-1]:
                parent = parent[key]
            parent[path[-1]]
        except (KeyError, IndexError, TypeError):
            continue  # not in this manifest
        yield f"del {where}", _set(manifest, path, None, delete=True)
        for bad in bad_values:
            yield f"{where}={bad!r}", _set(manifest, path, bad)
