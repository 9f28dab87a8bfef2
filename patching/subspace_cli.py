"""``interp subspace``: find a direction at a site, patch along it and check it for the subspace illusion."""

from __future__ import annotations

import json
import shlex
import signal
import sys
import time
from pathlib import Path

import typer
from rich.console import Console

from interp.errors import InterpError
from interp.cli_support import (DEVICE_MAP, FORCE, check_outside_out, finite, progress_bar, removed_if_failed_empty,
                                split as _split)
from interp.outdir import PROGRESS, prepare_out
from interp.patching.cli import N_PROMPTS_HELP, load_model_and_prompts

N_GENERATED = 64  # prompts generated for ioi / colored_objects when --n-prompts is not given


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
    n_prompts: int = typer.Option(None, help=N_PROMPTS_HELP.format(default=N_GENERATED) + " Split into train and test."),
    corruption: str = typer.Option(None, help="IOI corruption (ioi only): order (name position; the default), swap (S2 name) or three_names."),
    positions: str = typer.Option("-1", help="Patched positions, comma list (negative counts from the end), or 'all'."),
    heads: str = typer.Option("", help="Downstream heads LAYER.HEAD that read a residual site, e.g. 20.3,22.1."),
    direction_file: str = typer.Option(None, help="A saved direction (for --method given), e.g. runs/x/direction."),
    epochs: int = typer.Option(30, help="DAS epochs."),
    batch_size: int = typer.Option(20, help="DAS batch size."),
    lr: float = typer.Option(0.01, help="DAS learning rate (Adam)."),
    test_fraction: float = typer.Option(0.5, help="Fraction of prompts held out for the check (0: check on the training prompts)."),
    device: str = typer.Option("cpu", help="cpu, cuda, cuda:1, mps."),
    dtype: str = typer.Option("float32", help="float32, bfloat16 or float16."),
    device_map: str = DEVICE_MAP,
    out: str = typer.Option(None, help="Run folder (default runs/subspace-<time>)."),
    resume: bool = typer.Option(False, help="Complete the interrupted DAS run in --out (its finished epochs are kept)."),
    force: bool = FORCE,
    as_json: bool = typer.Option(False, "--json", help="Print the manifest as JSON on stdout."),
    seed: int = typer.Option(0, help="Seed for prompts, the split and DAS."),
) -> None:
    """Subspace patching: which direction carries the feature, and is it an illusion?"""
    from interp.tasks import TASKS, check_task
    from interp.patching.subspace import Direction
    from interp.patching.subspace_run import TRAIN_ONLY_NOTE, check_subspace_options

    finite(lr, "--lr")
    finite(test_fraction, "--test-fraction")
    das_options = {"epochs": epochs, "batch_size": batch_size, "lr": lr} if method == "das" else None
    check_subspace_options(method, k, test_fraction, direction_file, das_options)
    if n_prompts is not None and n_prompts < 1:
        raise InterpError("--n-prompts must be at least 1")
    try:
        pos = None if positions.strip() == "all" else [int(p) for p in _split(positions)]
    except ValueError:
        raise InterpError(f"--positions takes integers separated by commas, or 'all'; got '{positions}'") from None
    if pos is not None and not pos:
        raise InterpError("--positions is empty: give positions such as -1 or 3,-1, or 'all'")
    head_list = _heads(heads)
    check_task(task, corruption)
    if method == "given":
        Direction.load(direction_file)  # a missing, damaged or non-finite direction fails before the model loads
    if resume and out is None:
        raise InterpError("--resume needs --out DIR: the folder of the interrupted run")
    if resume and method != "das":
        raise InterpError(f"--resume completes an interrupted DAS run; --method {method} takes seconds: run it again")
    if resume and force:
        raise InterpError("--resume and --force contradict each other: --resume completes the run in --out, "
                          "--force starts it over")
    check_outside_out(out, force, task=task, direction_file=direction_file)
    created = out is None or not Path(out).exists()
    out = prepare_out(out, "subspace", force=force, resume=resume)
    if n_prompts is None and task in TASKS:
        n_prompts = N_GENERATED
    if test_fraction == 0:
        Console(stderr=True).print(f"note: {TRAIN_ONLY_NOTE}", highlight=False)
    run = dict(site=site, method=method, k=k, positions=pos, heads=head_list, direction_file=direction_file,
               test_fraction=test_fraction, seed=seed, das_options=das_options, out=out,
               command="interp " + shlex.join(sys.argv[1:]), resume=resume)
    with removed_if_failed_empty(out, created):
        _subspace(out, run, model, backend, device, dtype, task, n_prompts, corruption, epochs, as_json, device_map)


def _subspace(out: Path, run: dict, model: str, backend: str, device: str, dtype: str, task: str,
              n_prompts: int | None, corruption: str | None, epochs: int, as_json: bool,
              device_map: str | None = None) -> None:
    from interp.patching.subspace import check_pairs_size
    from interp.patching.subspace_run import subspace_run

    method, site, seed = run["method"], run["site"], run["seed"]
    console = Console(stderr=True)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    t0 = time.perf_counter()
    try:
        m, prompts = load_model_and_prompts(console, model, backend, device, dtype, task, n_prompts, seed,
                                            corruption or "order", check_size=check_pairs_size, device_map=device_map)
        run |= {"model": m, "prompts": prompts}
        if method == "das":
            with progress_bar(console) as bar:
                tasks: list = []  # the bar's task, added at the first finished epoch (an input error shows no bar)

                def progress(epoch: int, total: int, loss: float) -> None:
                    if not tasks:
                        tasks.append(bar.add_task("DAS epochs", total=total))
                    bar.update(tasks[0], completed=epoch, description=f"DAS loss {loss:.3f}")

                result = subspace_run(**run, progress=progress)
        else:
            with console.status(f"{method} direction at {site}"):
                result = subspace_run(**run)
    except KeyboardInterrupt:
        if (out / PROGRESS).is_file():
            done = json.loads((out / PROGRESS).read_text(encoding="utf-8"))["done"]["epochs"]
            console.print(f"interrupted: {done} of {epochs} DAS epochs are saved in {out}; complete the run with "
                          f"`interp subspace ... --out {out} --resume`", highlight=False)
        else:
            console.print("interrupted before any DAS epoch finished: nothing was kept (run again)"
                          if method == "das" else f"interrupted: nothing was kept ({method} takes seconds: run again)",
                          highlight=False)
        raise typer.Exit(130) from None
    result.manifest["timings"]["total_s"] = round(time.perf_counter() - t0, 3)
    result.save(out)
    if as_json:
        print(json.dumps(result.manifest, indent=2))
    else:
        check = result.manifest["illusion"]
        console.print(check["verdict"], highlight=False)
        for name in ("direction", "readable", "unreadable", "full"):
            if check[name]:
                console.print(f"  {name:<10} FLDD {check[name]['fldd']:>7.1f}%  logit diff {check[name]['logit_diff']:>7.3f}  "
                              f"interchange acc {check[name]['interchange_acc']:.2f}", highlight=False)
        console.print(f"report: {(Path(out) / 'report.html').resolve()}")
