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
from interp.results import MANIFEST, RunResult, load_run

PROGRESS = "progress.json"  # written by `interp patch --out` while it runs (patching.run)
CIRCUIT_FILE = "circuit.json"

# Which view shows a run, decided from its tensors (prefix -> kind), so runs made from the Python API
# with any command string are shown too. The first matching prefix wins.
_KINDS_BY_TENSOR = (
    ("circuit/overlap", "overlap"), ("circuit/faithfulness", "faithfulness"), ("circuit/", "circuit"), ("subspace/", "subspace"),
    ("retrieval/", "retrieval"), ("heads/", "heads"), ("dla/", "heads"), ("neurons/", "neurons"),
    ("voids/", "voids"), ("sweep/", "sweep"), ("east/", "east"), ("attack/", "attack"), ("vectors/", "vectors"),
)
_PATCHING_METHODS = ("activation", "atp", "relp", "ig")

KIND_TITLES = {
    "patching": "Patching", "circuit": "Circuit", "overlap": "Circuit overlap", "subspace": "Subspace patching",
    "retrieval": "Retrieval heads", "heads": "Head detectors", "neurons": "Relation neurons", "voids": "Void layers",
    "sweep": "Steering sweep", "east": "EAST", "attack": "Backdoor attack", "vectors": "Steering vectors",
    "faithfulness": "Circuit faithfulness", "other": "Run", "running": "Running", "broken": "Unreadable",
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


def _running_entry(folder: Path) -> RunEntry | None:
    """An unfinished `interp patch` run (progress.json, no manifest yet), or None."""
    try:
        progress = json.loads((folder / PROGRESS).read_text(encoding="utf-8"))
        done, total = sum(progress["done"].values()), sum(progress["total"].values())
        model = str(progress.get("run", {}).get("model", ""))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return RunEntry(folder, folder.name, "interp patch", model, "", f"unfinished: {done}/{total} patches", "running")


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
        nested = sorted(p for p in child.iterdir() if p.is_dir() and ((p / MANIFEST).exists() or (p / PROGRESS).exists()))
        if nested:
            entries.extend(read_entry(p) for p in nested)
        elif any(child.iterdir()):  # a non-empty folder that is not a run: say so rather than hide it
            entries.append(RunEntry(child, child.name, kind="broken",
                                    error=f"run folder {child} has no {MANIFEST}: the run did not finish, or this is not a run folder"))
    for entry in entries:
        object.__setattr__(entry, "name", str(entry.path.relative_to(root)) if entry.path != root else root.name)
    return sorted(entries, key=lambda e: (e.created or "9999", e.name), reverse=True)
