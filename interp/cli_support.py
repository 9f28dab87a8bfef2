"""Pieces every ``interp`` subcommand shares: comma lists, dtypes, model loading under a status line, a progress bar."""

from __future__ import annotations

import json
import math
import shlex
import sys
import time
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)

from interp.errors import InterpError

DTYPES = ("float32", "bfloat16", "float16")


def split(text: str) -> list[str]:
    """``"a, b,,c"`` -> ``["a", "b", "c"]``."""
    return [t.strip() for t in text.split(",") if t.strip()]


def numbers(text: str, option: str, kind: type = float) -> list:
    """A comma list of finite numbers, or a one-line error naming ``option``."""
    try:
        values = [kind(t) for t in split(text)]
    except ValueError:
        raise InterpError(f"{option} must be comma-separated {'integers' if kind is int else 'numbers'}, got '{text}'") from None
    for value in values:
        finite(value, option)
    return values


def finite(value: float, option: str) -> float:
    """``value``, or a one-line error naming ``option`` when it is NaN or infinite."""
    if not math.isfinite(value):
        raise InterpError(f"{option} must be a finite number, got {value}")
    return value


def load_model(console: Console, model: str, backend: str, device: str = "cpu", dtype: str = "float32",
               device_map: str | None = None, remote: bool = False):
    """Load the model and boot its backend (so that counts as load time), under a status line.

    ``device_map`` (auto, balanced or a JSON file) splits the model across devices instead of ``device``.
    ``remote`` runs it on NDIF through nnsight (`interp.remote`): needs ``backend="nnsight"``, a hub id and a key.
    """
    import torch

    import interp

    if dtype not in DTYPES:
        raise InterpError(f"unknown dtype '{dtype}': use one of {', '.join(DTYPES)}")
    with console.status(f"loading {model} ({backend}{', remote on NDIF' if remote else ''})"):
        m = interp.load(model, backend=backend, device=device, dtype=getattr(torch, dtype), device_map=device_map or None,
                        remote=remote)
        if backend != "torch":
            m.backend()
    return m


def progress_bar(console: Console) -> Progress:
    """A rich progress bar with a description, bar, count and time remaining."""
    return Progress(TextColumn("{task.description:<13}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    console=console, transient=False)


def phase_callback(bar: Progress):
    """A ``progress(phase, done, total)`` callback for library functions, drawing one row of ``bar`` per phase."""
    tasks: dict[str, int] = {}

    def progress(phase: str, done: int, total: int) -> None:
        if phase not in tasks:
            tasks[phase] = bar.add_task(phase, total=total)
        bar.update(tasks[phase], completed=done, total=total)

    return progress


# Options and helpers of the commands that write one run folder (interp steer ..., heads, neurons, voids, circuit).
MODEL = typer.Option("smollm2-135m", help="Model name (see `interp models`), HF id or local path.")
BACKEND = typer.Option("lens", help="lens (TransformerLens bridge), nnsight or torch.")
DEVICE = typer.Option("cpu", help="cpu, cuda, cuda:1, mps.")
DEVICE_MAP = typer.Option(None, "--device-map", help="Split the model across devices (replaces --device): auto, "
                          "balanced, or a JSON file of module name -> device (cpu, cuda:N, disk). Not with --backend lens.")
DTYPE = typer.Option("float32", help="float32, bfloat16 or float16.")
SEED = typer.Option(0, help="Seed for generated prompts, sampling and splits.")
AS_JSON = typer.Option(False, "--json", help="Print the manifest as JSON on stdout.")
FORCE = typer.Option(False, "--force", help="Overwrite a finished (or interrupted) run in --out.")
MAX_MEMORY = typer.Option(None, "--max-memory", help="Memory budget for batched forwards, e.g. 512MB, 2GB, 1.5GiB "
                          "(default 80% of the device's free memory); results do not depend on it.")
RAY = typer.Option(None, "--ray", help="Shard the work over Ray actors: `--ray` alone starts a local Ray cluster, "
                   "`--ray HOST:PORT` joins a running one (`ray start --head`). Needs `pip install 'interp\\[ray]'`.")
REMOTE = typer.Option(False, "--remote", help="Run the model on NDIF (remote execution through nnsight) instead of "
                      "here: needs --backend nnsight, a Hugging Face hub id that NDIF hosts as --model, and an NDIF API "
                      "key (NDIF_API_KEY or nnsight.CONFIG.set_default_api_key).")
WORKERS = typer.Option(None, "--workers", help="Ray workers (actors), each loading the model once (default: one per "
                       "GPU, else one per 2 CPU cores). Only with --ray.")


_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_size(text: str, option: str = "--max-memory") -> int:
    """Bytes of a size such as ``512MB``, ``2GB``, ``1.5GiB`` or ``1000000`` (KB/MB/GB are powers of 1000)."""
    import re

    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", text or "")
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _UNITS or float(match.group(1)) * _UNITS[unit] < 1:
        raise InterpError(f"{option} must be a size such as 512MB, 2GB or 1.5GiB, got '{text}'")
    return int(float(match.group(1)) * _UNITS[unit])


def check_ray(ray: str | None, workers: int | None) -> None:
    """Refuse ``--workers`` without ``--ray``, and ``--ray`` when Ray is not installed, before any model loads."""
    if workers is not None and ray is None:
        raise InterpError("--workers sets the number of Ray workers: add --ray (or drop --workers)")
    if workers is not None and workers < 1:
        raise InterpError(f"--workers must be at least 1, got {workers}")
    if ray is not None:
        from interp.ray_workers import LOCAL, check_reachable, require_ray

        require_ray()
        if ray != LOCAL:
            check_reachable(ray)


@contextmanager
def ray_workers(console: Console, model, ray: str | None, workers: int | None):
    """Ray workers holding ``model`` (`interp.ray_workers.RayWorkers`) while the block runs; None without ``--ray``."""
    if ray is None:
        yield None
        return
    from interp.ray_workers import ModelSpec, RayWorkers

    pool = RayWorkers(ModelSpec.of(model), workers, ray)
    with console.status(f"starting Ray workers ({'local cluster' if pool.address is None else pool.address})"):
        pool.__enter__()
    try:
        console.print(f"{len(pool.actors)} Ray workers ready", highlight=False)
        yield pool
    finally:
        pool.__exit__(None, None, None)


def check_outside_out(out: Path | str | None, force: bool, **inputs: str | Path | None) -> None:
    """With ``--force`` (which deletes the old run folder), refuse an input file that lies inside ``--out``.

    ``inputs`` maps an option name (``task``, ``direction_file``) to its path; values that are not paths
    (``ioi``) or None are skipped. A saved direction or vector set ``x`` counts as ``x.json``/``x.safetensors``.
    """
    if not force or out is None or not str(out).strip():
        return
    folder = Path(out).resolve()
    for option, value in inputs.items():
        if value is None or not str(value).strip():
            continue
        path = Path(value)
        candidates = [path, path.with_suffix(".json"), path.with_suffix(".safetensors")]
        for candidate in (c for c in candidates if c.exists()):
            where = candidate.resolve()
            if where == folder or folder in where.parents:
                raise InterpError(f"the input --{option.replace('_', '-')} {value} is inside --out {out}, which --force would "
                                  "delete first: copy it elsewhere or choose another --out")


@contextmanager
def removed_if_failed_empty(folder: Path, created: bool):
    """Remove ``folder`` again when the command fails (or is interrupted) leaving it empty, if it created it."""
    try:
        yield
    except BaseException:
        if created:
            try:
                folder.rmdir()  # only an empty folder: one with a checkpoint or anything else stays
            except OSError:
                pass
        raise


def command_line() -> str:
    """The command as typed, for the manifest."""
    return "interp " + shlex.join(sys.argv[1:])


def default_out(out: Path | None, name: str) -> Path:
    """``out``, or ``runs/<name>-<time>``."""
    return out or Path("runs") / f"{name}-{datetime.now():%Y%m%d-%H%M%S}"


def finish(console: Console, result, out: Path, t0: float, as_json: bool, summary: str | None = None) -> None:
    """Save the run (with its total time), then print the manifest as JSON or a summary and the report's path."""
    result.manifest.setdefault("timings", {})["total_s"] = round(time.perf_counter() - t0, 3)
    result.save(out)
    if as_json:
        print(json.dumps(result.manifest, indent=2))
        return
    if summary is None:
        summary = next((note["text"] for note in result.manifest.get("notes", [])), "")
    console.print(summary, highlight=False)
    console.print(f"report: {(Path(out) / 'report.html').resolve()}")
