"""``interp subspace``: find a direction at a site, patch along it and check it for the subspace illusion."""

from __future__ import annotations

import json
import shlex
import sys
import time
from datetime import datetime
from pathlib import Path

import typer
from rich.console import Console

from interp.errors import InterpError
from interp.cli_support import split as _split
from interp.patching.cli import load_model_and_prompts


def _heads(text: str) -> list[tuple[int, int]]:
    try:
        return [(int(layer), int(head)) for layer, head in (item.split(".") for item in _split(text))]
    except ValueError:
        raise InterpError(f"--heads takes LAYER.HEAD items separated by commas, e.g. 20.3,22.1; got '{text}'") from None


def subspace(
    site: str = typer.Option(..., help="Site to patch, e.g. mlp_act.15 or resid_post.20."),
    method: str = typer.Option("das", help="das, mean_diff, probe, gradient, or given (with --direction-file)."),
    k: int = typer.Option(1, help="Subspace dimension (das and given only)."),
    model: str = typer.Option("smollm2-135m", help="Model name (see `interp models`), HF id or local path."),
    backend: str = typer.Option("torch", help="lens, nnsight or torch."),
    task: str = typer.Option("ioi", help="ioi, or a JSONL file with clean/corrupt/answer/wrong per line."),
    n_prompts: int = typer.Option(64, help="Number of prompts (split into train and test)."),
    corruption: str = typer.Option("order", help="IOI corruption: order (name position), swap (S2 name) or three_names."),
    positions: str = typer.Option("-1", help="Patched positions, comma list (negative counts from the end), or 'all'."),
    heads: str = typer.Option("", help="Downstream heads LAYER.HEAD that read a residual site, e.g. 20.3,22.1."),
    direction_file: str = typer.Option(None, help="A saved direction (for --method given), e.g. runs/x/direction."),
    epochs: int = typer.Option(30, help="DAS epochs."),
    batch_size: int = typer.Option(20, help="DAS batch size."),
    lr: float = typer.Option(0.01, help="DAS learning rate (Adam)."),
    test_fraction: float = typer.Option(0.5, help="Fraction of prompts held out for the check."),
    device: str = typer.Option("cpu", help="cpu, cuda, cuda:1, mps."),
    dtype: str = typer.Option("float32", help="float32, bfloat16 or float16."),
    out: Path = typer.Option(None, help="Run folder (default runs/subspace-<time>)."),
    as_json: bool = typer.Option(False, "--json", help="Print the manifest as JSON on stdout."),
    seed: int = typer.Option(0, help="Seed for prompts, the split and DAS."),
) -> None:
    """Subspace patching: which direction carries the feature, and is it an illusion?"""
    from interp.tasks import check_task
    from interp.patching.subspace_run import check_subspace_options

    check_subspace_options(method, k, test_fraction, direction_file)
    try:
        pos = None if positions.strip() == "all" else [int(p) for p in _split(positions)]
    except ValueError:
        raise InterpError(f"--positions takes integers separated by commas, or 'all'; got '{positions}'") from None
    head_list = _heads(heads)
    check_task(task)
    out = out or Path("runs") / f"subspace-{datetime.now():%Y%m%d-%H%M%S}"

    from interp.patching.subspace_run import subspace_run

    console = Console(stderr=True)
    t0 = time.perf_counter()
    m, prompts = load_model_and_prompts(console, model, backend, device, dtype, task, n_prompts, seed, corruption)
    with console.status(f"{method} direction at {site}") as status:
        def progress(epoch: int, total: int, loss: float) -> None:
            status.update(f"DAS at {site}: epoch {epoch}/{total}, loss {loss:.4f}")

        result = subspace_run(m, prompts, site, method, k, pos, head_list, direction_file, test_fraction, seed,
                              {"epochs": epochs, "batch_size": batch_size, "lr": lr} if method == "das" else None,
                              out=out, command="interp " + shlex.join(sys.argv[1:]), progress=progress)
    result.manifest["timings"]["total_s"] = round(time.perf_counter() - t0, 3)
    result.save(out)
    if as_json:
        print(json.dumps(result.manifest, indent=2))
    else:
        check = result.manifest["illusion"]
        console.print(check["verdict"])
        for name in ("direction", "readable", "unreadable", "full"):
            if check[name]:
                console.print(f"  {name:<10} FLDD {check[name]['fldd']:>7.1f}%  logit diff {check[name]['logit_diff']:>7.3f}  "
                              f"interchange acc {check[name]['interchange_acc']:.2f}")
        console.print(f"report: {(Path(out) / 'report.html').resolve()}")
