"""The runs directory as the app sees it: one `RunEntry` per folder, with what ran and what kind of view fits.

Nothing here imports Streamlit, so the listing is plain Python and tested on its own. A folder that
cannot be read becomes an entry with ``error`` set (the reader's one-line message), never an exception:
the app shows that message in place of the run and goes on with the others.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from interp.errors import RunFolderError
from interp.outdir import PROGRESS  # written by every resumable command while it runs
from interp.results import MANIFEST, RunResult, load_run, read_regular_file

CIRCUIT_FILE = "circuit.json"
MAX_PROGRESS_BYTES = 4 * 2**20
# `interp patch` sweeps each component over a grid; components of one family share its size.
_PATCH_GRID_FAMILY = {"resid_pre": "layer-pos", "resid_mid": "layer-pos", "resid_post": "layer-pos", "attn_out": "layer-pos",
                      "mlp_out": "layer-pos", "head_out": "head_out", "head_out_pos": "head_out_pos", "mlp_act": "mlp_act"}

# Which view shows a run, decided from its tensors (prefix -> kind), so runs made from the Python API
# with any command string are shown too. The first matching prefix wins.
_KINDS_BY_TENSOR = (
    ("circuit/overlap", "overlap"), ("circuit/faithfulness", "faithfulness"), ("circuit/", "circuit"), ("subspace/", "subspace"),
    ("retrieval/", "retrieval"), ("heads/", "heads"), ("dla/", "heads"), ("neurons/", "neurons"),
    ("voids/", "voids"), ("latents/", "latents"), ("sweep/", "sweep"), ("east/", "east"), ("attack/", "attack"), ("vectors/", "vectors"),
)
_PATCHING_METHODS = ("activation", "atp", "relp", "ig")

KIND_TITLES = {
    "patching": "Patching", "circuit": "Circuit", "overlap": "Circuit overlap", "subspace": "Subspace patching",
    "retrieval": "Retrieval heads", "heads": "Head detectors", "neurons": "Relation neurons", "voids": "Void layers",
    "sweep": "Steering sweep", "east": "EAST", "attack": "Backdoor attack", "vectors": "Steering vectors",
    "faithfulness": "Circuit faithfulness", "latents": "Latent pages", "other": "Run", "running": "Running", "broken": "Unreadable",
}


@dataclass(frozen=True)
class RunEntry:
    """One folder of the runs directory: what ran, when, its status and kind; ``error`` when unreadable."""

    path: Path
    name: str
    command: str = ""
    model: str = ""
    created: str = ""
    status: str = ""
    kind: str = "other"
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.kind != "running"


def run_kind(run: RunResult) -> str:
    """The view that fits a run: "patching" for <method>/<component> tensors, else by tensor prefix."""
    names = list(run.scores)
    if any(n.split("/", 1)[0] in _PATCHING_METHODS and "/" in n for n in names):
        return "patching"
    for prefix, kind in _KINDS_BY_TENSOR:
        if any(n.startswith(prefix) for n in names):
            return kind
    return "other"


def _created(manifest: dict, folder: Path) -> str:
    """The manifest's ``created`` time, else the manifest file's modification time (older runs)."""
    created = manifest.get("created")
    if isinstance(created, str) and created:
        return created.replace("T", " ").replace("+00:00", " UTC")
    stamp = datetime.fromtimestamp((folder / MANIFEST).stat().st_mtime, tz=UTC)
    return stamp.strftime("%Y-%m-%d %H:%M:%S UTC")


def read_progress(folder: Path) -> dict | None:
    """A run folder's progress.json (an interrupted or running command's checkpoint), or None if there is none or
    it cannot be read: only a regular file of at most 4 MiB is read (a FIFO there must not block the app)."""
    try:
        progress = json.loads(read_regular_file(Path(folder) / PROGRESS, MAX_PROGRESS_BYTES).decode("utf-8"))
    except (RunFolderError, ValueError, RecursionError):
        return None
    return progress if isinstance(progress, dict) else None


def _count(value) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


@dataclass(frozen=True)
class Progress:
    """How far an unfinished run got: ``done`` of ``total`` units; ``exact`` False when part of the total is not
    known yet (components not started), then ``fraction`` weighs each component equally."""

    command: str
    model: str
    done: int
    total: int
    unit: str
    exact: bool
    fraction: float
    parts: str = ""  # "1 of 3 components started" when the total is not fully known

    @property
    def status(self) -> str:
        if self.exact:
            return f"unfinished: {self.done}/{self.total} {self.unit}"
        return f"unfinished: {self.done}/{self.total}+ {self.unit} ({self.parts})"


def _patch_totals(run: dict, done: dict, total: dict) -> tuple[dict[str, int | None], list[str]]:
    """Every component's number of patches as far as known: from progress.json, else from a started component of
    the same grid (resid_pre and attn_out share [layer, pos]); None where unknown. The components come from the
    run's identity (``components``, when it patches activations), else those progress.json lists."""
    components = [c for c in run.get("components", []) if isinstance(c, str)] if isinstance(run.get("components"), list) else []
    methods = run.get("methods")
    if isinstance(methods, list) and "activation" not in methods:
        components = []
    elif not components:
        components = list(total)
    components += [c for c in total if c not in components]
    family_size = {_PATCH_GRID_FAMILY.get(c, c): total[c] for c in total}
    return {c: total[c] if c in total else family_size.get(_PATCH_GRID_FAMILY.get(c, c)) for c in components}, components


def progress_of(progress: dict) -> Progress | None:
    """What an unfinished run's progress.json says, or None if it does not hold a count of units done and to do.

    `interp patch` writes ``done`` and ``total`` per component for the components it has started; the others it
    will sweep are named in its run identity, so the total counts them too. Other commands write whole counts.
    """
    run = progress.get("run") if isinstance(progress.get("run"), dict) else {}
    command = run.get("command")
    command = f"interp {command}" if isinstance(command, str) and command else "interp patch"
    model = str(run.get("model", ""))
    done, total = progress.get("done"), progress.get("total")
    if isinstance(done, dict) and isinstance(total, dict):
        if not all(_count(v) is not None for v in (*done.values(), *total.values())):
            return None
        totals, components = _patch_totals(run, done, total)
        known = [t for t in totals.values() if t is not None]
        n_done = sum(done.values())
        exact = len(known) == len(totals)
        fraction = sum(min(1.0, done.get(c, 0) / t) if t else 0.0 for c, t in totals.items()) / max(1, len(totals))
        if exact and sum(known):
            fraction = min(1.0, n_done / sum(known))
        unit = progress.get("unit") if isinstance(progress.get("unit"), str) else "patches"
        parts = f"{sum(c in done for c in components)} of {len(components)} components started"
        return Progress(command, model, n_done, sum(known), unit, exact, fraction, parts)
    if _count(done) is None or _count(total) is None:
        return None
    unit = progress.get("unit") if isinstance(progress.get("unit"), str) else "units"
    return Progress(command, model, done, total, unit, True, min(1.0, done / total) if total else 0.0)


def _running_entry(folder: Path) -> RunEntry | None:
    """An unfinished run (progress.json, no manifest yet), or None."""
    progress = read_progress(folder)
    state = progress_of(progress) if progress is not None else None
    if state is None:
        return None
    return RunEntry(folder, folder.name, state.command, state.model, "", state.status, "running")


def read_entry(folder: Path) -> RunEntry:
    """The `RunEntry` for one folder; never raises for a bad folder (``error`` says what is wrong)."""
    folder = Path(folder)
    if not (folder / MANIFEST).exists() and (folder / PROGRESS).exists():
        running = _running_entry(folder)
        if running is not None:
            return running
    try:
        run = load_run(folder)
    except RunFolderError as exc:
        return RunEntry(folder, folder.name, kind="broken", error=str(exc))
    except Exception as exc:  # noqa: BLE001 (a damaged file of any kind must not break the page)
        return RunEntry(folder, folder.name, kind="broken", error=f"cannot read {folder}: {type(exc).__name__}: {exc}")
    m = run.manifest
    return RunEntry(folder, folder.name, str(m.get("command", "")), str(m.get("model", "")), _created(m, folder),
                    str(m.get("status", "")), run_kind(run))


def scan_runs(root: str | Path) -> list[RunEntry]:
    """Every run folder under ``root`` (its sub-folders, and theirs: ``runs/ioi/circuit``), newest first.

    A folder counts as a run folder when it holds a manifest.json or progress.json; a folder holding
    neither is searched one level deeper. Raises `RunFolderError` only when ``root`` itself is unusable.
    """
    root = Path(root)
    if not root.exists():
        raise RunFolderError(f"runs directory {root} does not exist: pass the folder your runs are in (default ./runs)")
    if not root.is_dir():
        raise RunFolderError(f"{root} is a file, not a runs directory: pass the folder that holds the run folders")
    entries = []
    if (root / MANIFEST).exists():  # the root is itself a run folder
        entries.append(read_entry(root))
    for child in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if (child / MANIFEST).exists() or (child / PROGRESS).exists():
            entries.append(read_entry(child))
            continue
        try:
            inside = list(child.iterdir())
        except OSError as exc:
            entries.append(RunEntry(child, child.name, kind="broken", error=f"cannot read folder {child}: {exc.strerror or exc}"))
            continue
        nested = sorted(p for p in inside if p.is_dir() and ((p / MANIFEST).exists() or (p / PROGRESS).exists()))
        if nested:
            entries.extend(read_entry(p) for p in nested)
        elif inside:  # a non-empty folder that is not a run: say so rather than hide it
            entries.append(RunEntry(child, child.name, kind="broken",
                                    error=f"run folder {child} has no {MANIFEST}: the run did not finish, or this is not a run folder"))
    for entry in entries:
        name = str(entry.path.relative_to(root)) if entry.path != root else root.name
        # a folder name that is not UTF-8 holds lone surrogates in Python, which no page can send: "?" shows instead
        object.__setattr__(entry, "name", name)
        for field in ("name", "command", "model", "status", "error"):
            if getattr(entry, field) is not None:
                object.__setattr__(entry, field, getattr(entry, field).encode("utf-8", "replace").decode("utf-8"))
    return sorted(entries, key=lambda e: (e.created or "9999", e.name), reverse=True)
