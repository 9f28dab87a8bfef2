"""A run's output folder: checked before any work starts, checkpointed while the work runs.

Every command that writes a run folder calls `prepare_out` before it loads a model, so a bad ``--out`` (a file,
an unwritable path, an empty string, a folder holding something else) fails in one line without losing work,
and a finished run is never overwritten without ``--force``.

Long commands keep their finished units (layers, prompts, settings, epochs) in a `Checkpoint`:
``partial.safetensors`` (tensors) and ``progress.json`` (the run's identity, the units done and the total).
``--resume`` reads them back and checks the run was started with the same options; the final save removes them.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import torch

from interp.errors import InterpError
from interp.results import MANIFEST, read_tensors, write_json_atomic, write_tensors_atomic

PARTIAL = "partial.safetensors"
PROGRESS = "progress.json"


def _is_run_folder(folder: Path) -> bool:
    return (folder / MANIFEST).is_file() or (folder / PROGRESS).is_file() or (folder / PARTIAL).is_file()


def _describe(folder: Path) -> str:
    try:
        command = json.loads((folder / MANIFEST).read_text(encoding="utf-8")).get("command")
    except (OSError, ValueError, AttributeError):
        command = None
    return f" ({command})" if isinstance(command, str) else ""


def prepare_out(out: Path | str | None, name: str, force: bool = False, resume: bool = False) -> Path:
    """Check (and create) the run folder ``out`` before any work; ``runs/<name>-<time>`` when ``out`` is None.

    Refuses, in one line: an empty ``--out``; a path that is a file; a folder that is not empty and holds no
    interp run; a finished run (unless ``force``, which clears that run's folder); an interrupted run without
    ``resume``; a folder that cannot be written.
    """
    if out is None:
        out = Path("runs") / f"{name}-{datetime.now():%Y%m%d-%H%M%S}"
    if not str(out).strip():
        raise InterpError("--out is empty: give the folder to write the run into (or leave --out out for runs/...)")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InterpError(f"--out {out} is a file, not a folder: choose a folder for the run")
    if resume:
        if not (out / PARTIAL).is_file() and not (out / PROGRESS).is_file():
            raise InterpError(f"nothing to resume in {out}: no interrupted run there (run without --resume)")
    elif out.is_dir() and any(out.iterdir()):
        if not _is_run_folder(out):
            raise InterpError(f"--out {out} is not empty and holds no interp run: choose a new or empty folder")
        if not force and (out / MANIFEST).is_file():
            raise InterpError(f"{out} holds a finished run{_describe(out)}: add --force to overwrite it, "
                              "or choose another --out")
        if not force:
            raise InterpError(f"{out} holds an interrupted run: add --resume to complete it, --force to start "
                              "over, or choose another --out")
        shutil.rmtree(out)  # --force on a run folder: start from an empty folder, no files of the old run left
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise InterpError(f"cannot write to --out {out}: {e.strerror or e}; choose a writable folder") from None
    return out


@dataclass
class Checkpoint:
    """Finished units of an interrupted run in ``folder``; ``run`` identifies the options they were made with."""

    folder: Path
    run: dict

    def load(self) -> tuple[dict[str, torch.Tensor], dict] | None:
        """The saved tensors and progress info, or None when nothing was saved; refuses another run's checkpoint."""
        partial, progress = self.folder / PARTIAL, self.folder / PROGRESS
        if not progress.is_file():
            return None
        try:
            info = json.loads(progress.read_text(encoding="utf-8"))
            saved = info["run"]
        except (OSError, ValueError, KeyError, TypeError):
            raise InterpError(f"{progress} is damaged: start over with --force") from None
        if saved != json.loads(json.dumps(self.run)):
            changed = sorted(k for k in set(saved) | set(self.run) if saved.get(k) != self.run.get(k))
            raise InterpError(f"cannot resume {self.folder}: it was started with different {', '.join(changed)}; "
                              "use the same options, --force to start over, or another --out")
        tensors = read_tensors(partial) if partial.is_file() else {}
        return tensors, info

    def save(self, tensors: dict[str, torch.Tensor], done: int | dict[str, int], total: int | dict[str, int],
             **info) -> None:
        """Write the finished units atomically (tensors first, then progress.json naming them)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        if tensors:
            write_tensors_atomic(self.folder / PARTIAL, tensors)
        write_json_atomic(self.folder / PROGRESS, {"run": self.run, "done": done, "total": total, **info})

    def clear(self) -> None:
        """Remove the checkpoint once the finished run is saved."""
        for name in (PARTIAL, PROGRESS):
            (self.folder / name).unlink(missing_ok=True)
