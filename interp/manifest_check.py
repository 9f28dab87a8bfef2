"""What a run folder's manifest must hold: tensor entries that match the scores, and fields of the types the report
and the app read. `interp.results` checks a run with these before saving it and after reading it, so a folder
that `load_run` accepts never makes the report or an app page raise.
"""

from __future__ import annotations

import math

import torch


def _one_line(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_size(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_label(value) -> bool:
    return isinstance(value, str) or _is_number(value)


def consistency_problem(manifest: dict, scores: dict[str, torch.Tensor]) -> str | None:
    """What is wrong between a manifest's "tensors" entry and the scores, or None if they agree.

    Never raises, whatever the manifest holds: every entry needs a list of distinct axis names, one
    non-negative integer size per axis equal to the tensor's shape, and labels (if any) that map axes to
    one label (a string or number) per index.
    """
    described = manifest.get("tensors")
    if not isinstance(described, dict):
        return "manifest.json has no 'tensors' object describing the scores"
    for name, info in described.items():
        if not (isinstance(info, dict) and isinstance(info.get("axes"), (list, tuple))
                and isinstance(info.get("sizes"), (list, tuple))):
            return f"manifest.json entry for tensor {name!r} lacks 'axes' and 'sizes' lists"
        axes, sizes = list(info["axes"]), list(info["sizes"])
        if not all(isinstance(axis, str) for axis in axes):
            return f"manifest.json entry for tensor {name!r} has axis names that are not strings: {_short(axes)}"
        if len(set(axes)) != len(axes):
            return f"manifest.json entry for tensor {name!r} repeats an axis name: {_short(axes)}"
        if not all(_is_size(size) for size in sizes):
            return f"manifest.json entry for tensor {name!r} has sizes that are not non-negative integers: {_short(sizes)}"
        if len(axes) != len(sizes):
            return f"manifest.json entry for tensor {name!r} has {len(axes)} axes but {len(sizes)} sizes"
        if name not in scores:
            return f"manifest.json describes tensor {name!r} but scores.safetensors has no such tensor"
        shape = list(scores[name].shape)
        if shape != sizes:
            return f"tensor {name!r} has shape {shape} in scores.safetensors but manifest.json says {_short(sizes)}"
        labels = info.get("labels")
        if labels is None:
            continue
        if not isinstance(labels, dict):
            return f"manifest.json 'labels' of tensor {name!r} is not an object mapping axis names to label lists"
        for axis, axis_labels in labels.items():
            if axis not in axes:
                return f"manifest.json has labels for axis {axis!r} of tensor {name!r}, which is not one of its axes {axes}"
            if not isinstance(axis_labels, (list, tuple)) or not all(_is_label(label) for label in axis_labels):
                return f"manifest.json labels for axis {axis!r} of tensor {name!r} are not a list of strings"
            if len(axis_labels) != shape[axes.index(axis)]:
                return f"manifest.json labels for axis {axis!r} of tensor {name!r} do not match its size"
    for name in scores:
        if name not in described:
            return f"scores.safetensors holds tensor {name!r} that manifest.json does not describe"
    return None


def _short(value, limit: int = 80) -> str:
    return _one_line(repr(value), limit)


# What a read manifest may hold where the format gives a field a meaning: top-level types, the extras of a
# tensor entry, and the objects in the lists the report draws (key -> the types allowed, None: any).
_STR = (str,)
_FIELD_TYPES = {
    "command": _STR, "model": _STR, "status": _STR, "created": _STR, "backend": _STR, "dtype": _STR,
    "metric": (str, dict), "methods": (list,), "components": (list,), "parameters": (dict,),
    "prompt_set": (dict,), "baselines": (dict,), "timings": (dict,), "versions": (dict,),
    "notes": (list,), "histograms": (list,), "lines": (list,), "comparisons": (list,),
}
_LIST_ITEMS = {  # list field -> {key: allowed types} of each of its objects; "*list" a list of strings
    "notes": {"title": _STR, "text": _STR},
    "histograms": {"title": _STR, "x_title": _STR, "tensors": "*list"},
    "lines": {"title": _STR, "text": _STR, "x": _STR, "ys": "*list", "x_title": _STR, "y_title": _STR},
    "comparisons": {"x": _STR, "y": _STR, "stats": (dict,)},
}


def _type_name(value) -> str:
    return "null" if value is None else {dict: "object", list: "list", str: "string", bool: "boolean"}.get(
        type(value), "number" if _is_number(value) else type(value).__name__)


def manifest_problem(manifest: dict, scores: dict[str, torch.Tensor]) -> str | None:
    """What is wrong with the fields of a read manifest that the report and the app rely on, or None."""
    for key, types in _FIELD_TYPES.items():
        if key in manifest and not isinstance(manifest[key], types):
            return f"manifest.json field {key!r} is a {_type_name(manifest[key])}, not a {' or '.join(_type_name(t()) for t in types)}"
    for key in ("methods", "components"):
        if not all(isinstance(item, str) for item in manifest.get(key, [])):
            return f"manifest.json field {key!r} holds items that are not strings"
    if isinstance(manifest.get("metric"), dict) and not isinstance(manifest["metric"].get("name", ""), str):
        return "manifest.json field 'metric' has a 'name' that is not a string"
    for key, fields in _LIST_ITEMS.items():
        for i, item in enumerate(manifest.get(key, [])):
            if not isinstance(item, dict):
                return f"manifest.json {key}[{i}] is a {_type_name(item)}, not an object"
            for field, types in fields.items():
                if field not in item:
                    continue
                value = item[field]
                ok = (isinstance(value, list) and all(isinstance(v, str) for v in value)) if types == "*list" \
                    else isinstance(value, types)
                if not ok:
                    wanted = "a list of strings" if types == "*list" else f"a {_type_name(types[0]())}"
                    return f"manifest.json {key}[{i}].{field} is a {_type_name(value)}, not {wanted}"
    for i, comparison in enumerate(manifest.get("comparisons", [])):
        x, y = comparison.get("x"), comparison.get("y")
        if x in scores and y in scores and scores[x].shape != scores[y].shape:
            return f"manifest.json comparisons[{i}] compares {x!r} and {y!r}, which differ in shape"
    for name, info in manifest["tensors"].items():
        zmid = info.get("zmid")
        if "zmid" in info and not (_is_number(zmid) and math.isfinite(zmid)):
            return f"manifest.json 'zmid' of tensor {name!r} is not a finite number"
        if "plot" in info and not isinstance(info["plot"], bool):
            return f"manifest.json 'plot' of tensor {name!r} is not true or false"
        if "note" in info and not isinstance(info["note"], str):
            return f"manifest.json 'note' of tensor {name!r} is not a string"
    return None
