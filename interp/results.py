"""The run-folder format: what every command that produces numbers writes, and how it is read back.

A run folder holds
  manifest.json       what ran (command, model, prompts, metric, parameters, versions, seed, status)
                      and, under "tensors", the axis names, sizes and optional labels of every tensor;
  scores.safetensors  the named score tensors, e.g. "activation/resid_pre" [layer, pos];
  report.html         the 2-D scores as plotly heatmaps, readable offline.
Every file is written atomically (a temporary file in the same folder, then os.replace), the manifest
last, so a folder with a manifest is complete. `load_run` rejects a malformed folder, or one written
by a newer schema, with a one-line `RunFolderError`. The Python API returns the same `RunResult`
objects the folders hold. No pickle: JSON and safetensors only.
"""

from __future__ import annotations

import json
import math
import os
import platform
import stat
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from itertools import product
from pathlib import Path
from typing import TYPE_CHECKING

import safetensors.torch
import torch

from interp.errors import InterpError, RunFolderError
from interp.manifest_check import consistency_problem, manifest_problem

if TYPE_CHECKING:
    import plotly.graph_objects as go

SCHEMA_VERSION = 1

MANIFEST = "manifest.json"
SCORES = "scores.safetensors"
REPORT = "report.html"
_DAMAGED = "the file is damaged; rerun the command"

_VERSIONED_PACKAGES = ("interp", "torch", "transformers", "transformer-lens", "nnsight", "safetensors")
# Manifest keys shown, in this order, in the report's summary table.
_SUMMARY_KEYS = (
    "command", "model", "backend", "dtype", "prompt_set", "metric", "methods", "components",
    "parameters", "baselines", "seed", "status", "created", "timings",
)


def package_versions() -> dict[str, str]:
    """Installed versions of interp and the libraries whose behaviour shapes the numbers."""
    versions = {}
    for name in _VERSIONED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    versions["python"] = platform.python_version()
    return versions


# --- atomic writes -------------------------------------------------------------------------------


def run_header(model, command: str, seed: int, backend: str | None = None) -> dict:
    """The manifest fields every run starts with: schema, status, command, model, backend, dtype, versions, seed."""
    return {"schema_version": SCHEMA_VERSION, "status": "complete", "command": command, "model": model.name,
            "backend": backend or model.backend_name, "dtype": str(next(model.hf.parameters()).dtype).replace("torch.", ""),
            "versions": package_versions(), "seed": seed}


def _write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to a temporary file beside `path`, then rename it over `path` in one step."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        # os.open honours the umask, so the final file gets ordinary permissions.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _json_default(obj):
    """JSON for the few non-JSON values a manifest tends to collect (paths, tensors, numpy scalars)."""
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu().tolist()
    if hasattr(obj, "tolist"):  # numpy arrays and scalars
        return obj.tolist()
    if isinstance(obj, (set, frozenset)):
        return sorted(obj, key=str)
    if isinstance(obj, torch.dtype):
        return str(obj).removeprefix("torch.")
    raise TypeError(f"cannot store a {type(obj).__name__} in JSON: convert it to a string or number first")


def _nonfinite_path(obj, path: str = "") -> str | None:
    """Where in ``obj`` a NaN or infinite float sits (``"faithfulness.atp.resid_pre.pearson"``), or None."""
    if isinstance(obj, float):
        return None if math.isfinite(obj) else path or "(top level)"
    if isinstance(obj, dict):
        items = obj.items()
    elif isinstance(obj, (list, tuple)):
        items = enumerate(obj)
    else:
        return None
    for key, value in items:
        found = _nonfinite_path(value, f"{path}.{key}" if path else str(key))
        if found:
            return found
    return None


def _json_text(obj: dict) -> str:
    """Strict JSON (no bare NaN or Infinity, which JSON readers reject); a non-finite number is a one-line error."""
    try:
        return json.dumps(obj, indent=2, ensure_ascii=False, default=_json_default, allow_nan=False) + "\n"
    except ValueError:
        plain = json.loads(json.dumps(obj, default=_json_default))  # tensors and numpy values as Python floats
        where = _nonfinite_path(plain) or "a value"
        raise InterpError(f"the result holds a non-finite number (NaN or infinity) at {where}: the computation "
                          "diverged or an input was not finite; check the options and inputs") from None


def write_json_atomic(path: str | os.PathLike, obj: dict) -> None:
    """Write `obj` as indented UTF-8 JSON, atomically."""
    write_text_atomic(path, _json_text(obj))


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write `text` as UTF-8, atomically."""
    _write_bytes_atomic(path, text.encode("utf-8"))


def write_tensors_atomic(path: str | os.PathLike, tensors: dict[str, torch.Tensor]) -> None:
    """Write named tensors as safetensors, atomically (copied to contiguous CPU tensors first)."""
    # A fresh contiguous copy per tensor: safetensors refuses tensors that share memory.
    plain = {name: t.detach().to("cpu").clone(memory_format=torch.contiguous_format) for name, t in tensors.items()}
    _write_bytes_atomic(path, safetensors.torch.save(plain))


def read_tensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a safetensors file; a missing or unreadable file raises `RunFolderError`."""
    path = Path(path)
    if not path.is_file():
        raise RunFolderError(f"{path} does not exist: the run did not finish writing; rerun the command")
    try:
        return safetensors.torch.load(path.read_bytes())
    except Exception as e:  # safetensors raises its own error types for damaged files
        reason = _one_line(str(e)) or type(e).__name__
        raise RunFolderError(f"{path} cannot be read as safetensors ({reason}): {_DAMAGED}") from e


def save_vectors(path: str | os.PathLike, vectors: torch.Tensor, info: dict) -> Path:
    """Write ``<path>.safetensors`` (``vectors``, float32) and ``<path>.json`` (``info``); returns the first."""
    path = Path(path).with_suffix("")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_tensors_atomic(path.with_suffix(".safetensors"), {"vectors": vectors.detach().float().contiguous()})
    write_json_atomic(path.with_suffix(".json"), info)
    return path.with_suffix(".safetensors")


def load_vectors(path: str | os.PathLike, what: str) -> tuple[torch.Tensor, dict]:
    """The vectors and info written by `save_vectors`; a one-line error naming ``what`` if either file is missing."""
    path = Path(path).with_suffix("")
    if not path.with_suffix(".json").is_file() or not path.with_suffix(".safetensors").is_file():
        raise RunFolderError(f"no {what} at {path}: expected {path.name}.safetensors and {path.name}.json")
    return read_tensors(path.with_suffix(".safetensors"))["vectors"], json.loads(path.with_suffix(".json").read_text())


def _one_line(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --- manifest entries for tensors ----------------------------------------------------------------


def describe_tensor(
    name: str, tensor: torch.Tensor, axes: list[str], labels: dict[str, list[str]] | None = None
) -> dict:
    """The manifest["tensors"][name] entry: {"axes": [...], "sizes": [...], "labels": {axis: [...]}}.

    Raises ValueError unless there is one axis name per dimension and each labels list has one
    label per index of its axis.
    """
    sizes = [int(s) for s in tensor.shape]
    axes = [str(a) for a in axes]
    if len(axes) != len(sizes):
        raise ValueError(f"tensor {name!r} has {len(sizes)} dimensions {sizes} but {len(axes)} axis names {axes}")
    if len(set(axes)) != len(axes):
        raise ValueError(f"tensor {name!r} repeats an axis name: {axes}")
    checked = {}
    for axis, axis_labels in (labels or {}).items():
        if axis not in axes:
            raise ValueError(f"tensor {name!r} has labels for axis {axis!r}, which is not one of its axes {axes}")
        size = sizes[axes.index(axis)]
        if len(axis_labels) != size:
            raise ValueError(f"tensor {name!r} axis {axis!r} has size {size} but {len(axis_labels)} labels")
        checked[axis] = [str(label) for label in axis_labels]
    return {"axes": axes, "sizes": sizes, "labels": checked}


# --- results -------------------------------------------------------------------------------------


@dataclass(eq=False, repr=False)
class RunResult:
    """One run's manifest and score tensors; `path` is the folder it was loaded from or saved to."""

    manifest: dict
    scores: dict[str, torch.Tensor]
    path: Path | None = None

    def __repr__(self) -> str:
        tensors = ", ".join(f"{name} {list(t.shape)}" for name, t in self.scores.items())
        return f"RunResult(command={self.manifest.get('command')!r}, tensors=[{tensors}], path={self.path})"

    def tensor_info(self, name: str) -> dict:
        """The manifest entry for tensor `name`: axes, sizes and labels."""
        described = self.manifest.get("tensors", {})
        if name not in described:
            raise KeyError(f"no tensor {name!r} in this run; it has {sorted(described)}")
        return described[name]

    def axis_labels(self, name: str, axis: str) -> list[str]:
        """Labels for one axis of tensor `name`: the stored ones, else "0", "1", ..."""
        info = self.tensor_info(name)
        stored = (info.get("labels") or {}).get(axis)
        if stored is not None:
            return list(stored)
        return [str(i) for i in range(info["sizes"][info["axes"].index(axis)])]

    def plot(self, name: str) -> go.Figure:
        """A figure of tensor `name`: a heatmap for 2-D (3-D and up: mean over the trailing axes), bars for 1-D."""
        from interp import plots

        if name not in self.scores:
            raise KeyError(f"no tensor {name!r} in this run; it has {sorted(self.scores)}")
        info = self.tensor_info(name)
        values, axes = self.scores[name], list(info["axes"])
        metric = _metric_name(self.manifest)
        if values.ndim == 0:
            raise ValueError(f"tensor {name!r} is a single number ({float(values):.4g}); there is nothing to plot")
        if values.ndim == 1:
            return plots.bar(values, self.axis_labels(name, axes[0]), name, axes[0], metric)
        title = name
        if values.ndim > 2:
            title = f"{name} (mean over {', '.join(axes[2:])})"
            values = values.float().mean(dim=tuple(range(2, values.ndim)))
        return plots.heatmap(
            values,
            x_labels=self.axis_labels(name, axes[1]),
            y_labels=self.axis_labels(name, axes[0]),
            title=title,
            x_title=axes[1],
            y_title=axes[0],
            colorbar_title=metric,
            zmid=info.get("zmid", 0.0),
        )

    def compare(self, x: str, y: str) -> go.Figure:
        """Tensor ``y`` against tensor ``x`` of the same shape, cell by cell, both measured from their ``zmid``."""
        from interp import plots

        for name in (x, y):
            if name not in self.scores:
                raise KeyError(f"no tensor {name!r} in this run; it has {sorted(self.scores)}")
        if self.scores[x].shape != self.scores[y].shape:
            raise ValueError(f"cannot compare {x} {list(self.scores[x].shape)} with {y} {list(self.scores[y].shape)}")
        info = self.tensor_info(x)
        grids = [self.axis_labels(x, axis) for axis in info["axes"]]
        labels = [", ".join(f"{axis} {label}" for axis, label in zip(info["axes"], cell)) for cell in product(*grids)]
        dx, dy = (self.scores[n].float() - self.tensor_info(n).get("zmid", 0.0) for n in (x, y))
        metric = _metric_name(self.manifest) or "value"
        return plots.scatter(dx, dy, f"{x} (change in {metric})", f"{y} (change in {metric})", f"{y} vs {x}", labels)

    def sections(self) -> list[tuple[str, str, list[go.Figure]]]:
        """The report's sections as (title, text, figures): a summary of the manifest, one heatmap per
        2-D tensor (unless its manifest entry says ``"plot": false``) and one bar chart per 1-D tensor
        whose entry says ``"plot": true``, the manifest's ``notes`` as text, its ``histograms``, its
        ``lines`` (series against an x tensor) and its ``comparisons`` (``{"x", "y", "stats"}``) as
        scatter plots. `report` writes them as HTML; the app shows them one by one."""
        from interp import plots

        sections = [("Run", _summary_text(self.manifest), [])]
        for name, values in self.scores.items():
            wanted = self.tensor_info(name).get("plot")  # 2-D and up: unless False; 1-D: only if True (bars)
            if (values.ndim >= 2 and not name.endswith("/per_prompt") and wanted is not False) or (values.ndim == 1 and wanted is True):
                info = self.tensor_info(name)
                text = f"{name}: [{', '.join(info['axes'])}] = {info['sizes']}"
                if info.get("note"):
                    text += f". {info['note']}"
                sections.append((name, text, [self.plot(name)]))
        for note in self.manifest.get("notes", []):  # {"title", "text"}: free text a method wants shown
            sections.append((str(note.get("title", "")), str(note.get("text", "")), []))
        for hist in self.manifest.get("histograms", []):  # {"title", "x_title", "tensors": [names]}
            names = [n for n in hist.get("tensors", []) if n in self.scores]
            if names:
                figure = plots.histogram({n: self.scores[n] for n in names}, str(hist.get("title", "")), str(hist.get("x_title", "")))
                sections.append((str(hist.get("title", "")), "", [figure]))
        for line in self.manifest.get("lines", []):  # {"title", "x", "ys": [names], "x_title", "y_title"}: 1-D tensors
            names = [n for n in line.get("ys", []) if n in self.scores]
            if line.get("x") in self.scores and names:
                figure = plots.lines(self.scores[line["x"]], {n: self.scores[n] for n in names}, str(line.get("title", "")),
                                     str(line.get("x_title", line["x"])), str(line.get("y_title", "")))
                sections.append((str(line.get("title", "")), str(line.get("text", "")), [figure]))
        comparisons = [c for c in self.manifest.get("comparisons", []) if c.get("x") in self.scores and c.get("y") in self.scores]
        if comparisons:
            lines = [f"{c['y']} vs {c['x']}: " + ", ".join(f"{k} {v}" for k, v in (c.get("stats") or {}).items())
                     for c in comparisons]
            sections.append(("Comparisons", "\n".join(lines) + "\n", [self.compare(c["x"], c["y"]) for c in comparisons]))
        return sections

    def report(self) -> str:
        """The report.html text: the `sections` as one offline HTML page."""
        from interp import plots

        command = str(self.manifest.get("command", "run"))
        return plots.report_html(command if command.startswith("interp") else f"interp {command}", self.sections())

    def save(self, folder: str | os.PathLike) -> Path:
        """Write manifest.json, scores.safetensors and report.html into `folder` (created if needed)."""
        folder = Path(folder)
        if "schema_version" not in self.manifest:
            self.manifest = {"schema_version": SCHEMA_VERSION, **self.manifest}
        self.manifest.setdefault("created", datetime.now(timezone.utc).isoformat(timespec="seconds"))
        problem = consistency_problem(self.manifest, self.scores)
        if problem is not None:
            raise ValueError(f"cannot save this run: {problem}; describe every tensor with describe_tensor")
        manifest_text = _json_text(self.manifest)  # fails here, before any file is written
        folder.mkdir(parents=True, exist_ok=True)
        write_tensors_atomic(folder / SCORES, self.scores)
        write_text_atomic(folder / REPORT, self.report())
        write_text_atomic(folder / MANIFEST, manifest_text)  # last: a manifest means the folder is complete
        self.path = folder
        return folder


def _metric_name(manifest: dict) -> str:
    metric = manifest.get("metric")
    if isinstance(metric, dict):
        metric = metric.get("name")
    return metric if isinstance(metric, str) else ""


def _summary_text(manifest: dict) -> str:
    """"key: value" lines for the report's summary table."""
    lines = []
    for key in _SUMMARY_KEYS:
        if key in manifest:
            value = manifest[key]
            if not isinstance(value, str):
                value = json.dumps(value, ensure_ascii=False, default=_json_default)
            lines.append(f"{key}: {_one_line(value, 300)}")
    lines.append(f"schema_version: {manifest.get('schema_version')}")
    return "\n".join(lines)


# --- reading -------------------------------------------------------------------------------------


MAX_MANIFEST_BYTES = 64 * 2**20  # far above any manifest interp writes


def read_regular_file(path: str | os.PathLike, limit: int) -> bytes:
    """The bytes of ``path`` if it is a regular file (a link to one is fine) of at most ``limit`` bytes.

    Raises `RunFolderError` otherwise: a FIFO, device or folder is never opened for reading (a FIFO
    would block the reader forever), and a file over the limit is not read into memory.
    """
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # O_NONBLOCK: opening a FIFO does not wait for a writer
    except OSError as e:
        raise RunFolderError(f"cannot read {path}: {e.strerror or e}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise RunFolderError(f"{path} is not a regular file: {_DAMAGED}")
        if info.st_size > limit:
            raise RunFolderError(f"{path} is {info.st_size / 2**20:.0f} MiB, more than the {limit / 2**20:.0f} MiB "
                                 f"such a file can be: {_DAMAGED}")
        chunks, size = [], 0
        while size <= limit:
            chunk = os.read(fd, min(1 << 20, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > limit:
            raise RunFolderError(f"{path} grew past {limit / 2**20:.0f} MiB while being read: {_DAMAGED}")
        return b"".join(chunks)
    except OSError as e:
        raise RunFolderError(f"cannot read {path}: {e.strerror or e}") from None
    finally:
        os.close(fd)


def _read_manifest(folder: Path) -> dict:
    path = folder / MANIFEST
    if not path.is_file():
        raise RunFolderError(
            f"run folder {folder} has no {MANIFEST}: the run did not finish, or this is not a run folder"
        )
    data = read_regular_file(path, MAX_MANIFEST_BYTES)
    try:
        manifest = json.loads(data.decode("utf-8"))
        json.dumps(manifest, ensure_ascii=False).encode("utf-8")  # lone surrogates ("\ud800") are not text
    except (json.JSONDecodeError, UnicodeError) as e:
        raise RunFolderError(f"{path} is not valid JSON ({_one_line(str(e))}): {_DAMAGED}") from e
    except RecursionError:
        raise RunFolderError(f"{path} nests its JSON too deeply to read: {_DAMAGED}") from None
    if not isinstance(manifest, dict):
        raise RunFolderError(f"{path} holds a JSON {type(manifest).__name__}, not an object: {_DAMAGED}")
    version = manifest.get("schema_version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise RunFolderError(f"{path} has no valid integer schema_version: not an interp run folder, or a damaged one")
    if version > SCHEMA_VERSION:
        raise RunFolderError(
            f"run folder {folder} was written by a newer interp "
            f"(schema {version}, this reader knows {SCHEMA_VERSION}): upgrade interp"
        )
    if "tensors" not in manifest:
        raise RunFolderError(f"{path} has no 'tensors' entry describing the scores: {_DAMAGED}")
    return manifest


def load_run(folder: str | os.PathLike) -> RunResult:
    """Read a run folder, checking that the manifest and the scores agree; raises `RunFolderError`."""
    folder = Path(folder)
    if not folder.exists():
        raise RunFolderError(f"run folder {folder} does not exist: check the path")
    if not folder.is_dir():
        raise RunFolderError(f"{folder} is a file, not a run folder: pass the folder that holds {MANIFEST}")
    manifest = _read_manifest(folder)
    scores_path = folder / SCORES
    if not scores_path.is_file():
        raise RunFolderError(f"run folder {folder} has no {SCORES}: the run did not finish writing; rerun the command")
    scores = read_tensors(scores_path)
    problem = consistency_problem(manifest, scores) or manifest_problem(manifest, scores)
    if problem is not None:
        raise RunFolderError(f"run folder {folder} is inconsistent: {problem}; rerun the command")
    return RunResult(manifest=manifest, scores=scores, path=folder)
