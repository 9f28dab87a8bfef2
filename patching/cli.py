"""``interp patch``: run activation patching from the shell and write a run folder."""

from __future__ import annotations

import json
import shlex
import signal
import sys
import time
from pathlib import Path
from typing import Callable

import typer
from rich.console import Console

from interp.cli_support import (DEVICE_MAP, FORCE, MAX_MEMORY, RAY, REMOTE, WORKERS, check_ray, ray_workers, check_outside_out, load_model, parse_size, progress_bar,
                                removed_if_failed_empty, split as _split)
from interp.errors import InterpError
from interp.outdir import PROGRESS, prepare_out

N_PROMPTS_HELP = "Number of prompts: IOI and colored_objects generate N (default {default}); a JSONL file: its first N rows (default every row)."


def load_model_and_prompts(console: Console, model: str, backend: str, device: str, dtype: str, task: str,
                           n_prompts: int | None, seed: int, corruption: str | None,
                           check_size: Callable[[object, int, int], None] | None = None, device_map: str | None = None,
                           remote: bool = False):
    """Load the model (booting its backend, so that counts as load time) and the prompt set.

    ``check_size(model, n, n_tokens)`` runs before a generated set is made (on a two-row sample, for its token
    length), so a huge ``n_prompts`` is refused before anything of its size is built.
    """
    from interp.tasks import TASKS, load_prompt_set

    m = load_model(console, model, backend, device, dtype, device_map, remote)
    if check_size is not None and task in TASKS and n_prompts:
        sample = load_prompt_set(task, m.tokenizer, n=min(n_prompts, 2), seed=seed, corruption=corruption)
        check_size(m, n_prompts, sample.tokenize(m.tokenizer).clean.shape[1])
    prompts = load_prompt_set(task, m.tokenizer, n=n_prompts, seed=seed, corruption=corruption)
    if n_prompts and len(prompts) < n_prompts:
        console.print(f"note: {task} has {len(prompts)} rows; using all of them (--n-prompts {n_prompts} caps a "
                      "task file, it does not repeat rows)", highlight=False)
    return m, prompts


def patch(
    model: str = typer.Option("smollm2-135m", help="Model name (see `interp models`), HF id or local path."),
    backend: str = typer.Option("lens", help="lens (TransformerLens bridge), nnsight or torch."),
    task: str = typer.Option("ioi", help="ioi, or a JSONL file with clean/corrupt/answer/wrong per line."),
    n_prompts: int = typer.Option(None, help=N_PROMPTS_HELP.format(default=8)),
    corruption: str = typer.Option(None, help="IOI corruption (ioi only): swap (S2 becomes the IO name; the default), three_names, or order (the first two names trade places)."),
    method: str = typer.Option("activation", help="Comma list: activation (exact), atp (attribution patching), "
                               "relp (relevance patching), ig (integrated gradients)."),
    components: str = typer.Option("resid_pre,attn_out,mlp_out,head_out",
                                   help="Comma list of resid_pre, resid_mid, resid_post, attn_out, mlp_out, head_out, head_out_pos, mlp_act."),
    direction: str = typer.Option("denoise", help="denoise (clean into corrupt) or noise (corrupt into clean)."),
    metric: str = typer.Option("logit_diff", help="logit_diff, norm_logit_diff, answer_prob or kl."),
    mlp_layers: str = typer.Option("", help="Layers for mlp_act, e.g. 15,29."),
    engine: str = typer.Option("batched", help="batched (fast) or hooks (one forward per patch through the backend)."),
    device: str = typer.Option("cpu", help="cpu, cuda, cuda:1, mps."),
    device_map: str = DEVICE_MAP,
    dtype: str = typer.Option("float32", help="float32, bfloat16 or float16."),
    out: str = typer.Option(None, help="Run folder (default runs/patch-<time>)."),
    resume: bool = typer.Option(False, help="Complete the interrupted run in --out."),
    force: bool = FORCE,
    as_json: bool = typer.Option(False, "--json", help="Print the manifest as JSON on stdout."),
    seed: int = typer.Option(0, help="Seed for prompt generation and bootstraps."),
    rules: str = typer.Option("ln,identity,half", help="LRP rules for relp: ln, identity, half, ah (attention pattern constant)."),
    ig_steps: int = typer.Option(10, help="Integrated-gradients steps along the corrupt-to-clean path."),
    max_memory: str = MAX_MEMORY,
    ray: str = RAY,
    workers: int = WORKERS,
    remote: bool = REMOTE,
) -> None:
    """Activation patching (and its estimators AtP, RelP, IG): which components carry the clean behaviour?"""

    from interp.tasks import check_task
    from interp.patching.run import check_options

    comps, methods = check_options(_split(components), _split(method), direction, metric, engine, rules, ig_steps)
    budget = None if max_memory is None else parse_size(max_memory, "--max-memory")
    if n_prompts is not None and n_prompts < 1:
        raise InterpError("--n-prompts must be at least 1")
    try:
        layers = [int(x) for x in _split(mlp_layers)]
    except ValueError:
        raise InterpError(f"--mlp-layers must be comma-separated integers, got '{mlp_layers}'") from None
    if layers and "mlp_act" not in comps:
        raise InterpError("--mlp-layers chooses the layers of component mlp_act, which is not in --components: "
                          "add mlp_act to --components or drop --mlp-layers")
    check_task(task, corruption)
    check_ray(ray, workers)
    if remote:
        engine = _remote_engine(comps, methods, engine, ray)
    if resume and out is None:
        raise InterpError("--resume needs --out DIR: the folder of the interrupted run")
    if resume and force:
        raise InterpError("--resume and --force contradict each other: --resume completes the run in --out, "
                          "--force starts it over")
    check_outside_out(out, force, task=task)
    created = out is None or not Path(out).exists()
    out = prepare_out(out, "patch", force=force, resume=resume)
    with removed_if_failed_empty(out, created):
        _patch(out, model, backend, device, dtype, task, n_prompts, seed, corruption, comps, methods, layers, direction,
               metric, engine, resume, as_json, rules, ig_steps, device_map, budget, ray, workers, remote)


def _remote_engine(components: list[str], methods: list[str], engine: str, ray: str | None) -> str:
    """The engine for a run on NDIF (hooks: one request per patch), or a one-line refusal of what cannot run there."""
    if ray is not None:
        raise InterpError("--remote runs the model on NDIF and --ray on local workers: choose one")
    local_only = [m for m in methods if m in ("relp", "ig")]
    if local_only:
        raise InterpError(f"--remote cannot run {', '.join(local_only)}: relp's LRP rules and IG's gradients through "
                          "interventions need the model here; use --method activation,atp")
    if engine == "batched" and "activation" in methods:
        Console(stderr=True).print("note: with --remote each patch is its own NDIF request (engine hooks); the "
                                   "batched engine runs the model's layers here", highlight=False)
    return "hooks"


def _patch(out: Path, model: str, backend: str, device: str, dtype: str, task: str, n_prompts: int | None, seed: int,
           corruption: str | None, comps: list[str], methods: list[str], layers: list[int], direction: str,
           metric: str, engine: str, resume: bool, as_json: bool, rules: str, ig_steps: int,
           device_map: str | None = None, max_memory: int | None = None, ray: str | None = None,
           workers: int | None = None, remote: bool = False) -> None:
    from interp.patching.run import activation_patching, check_size

    console = Console(stderr=True)
    # SIGTERM behaves like Ctrl-C: finished patches are checkpointed before exiting
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    t0 = time.perf_counter()
    try:
        m, prompts = load_model_and_prompts(
            console, model, backend, device, dtype, task, n_prompts, seed, corruption,
            check_size=lambda m, n, n_pos: check_size(m, n, n_pos, comps, methods, layers, ig_steps),
            device_map=device_map, remote=remote)
    except KeyboardInterrupt:
        console.print("interrupted while loading the model: no patch was run, nothing new was kept", highlight=False)
        raise typer.Exit(130) from None
    load_s = time.perf_counter() - t0
    with progress_bar(console) as bar:
        tasks: dict[str, int] = {}

        def progress(comp: str, done: int, total: int) -> None:
            if comp not in tasks:
                tasks[comp] = bar.add_task(comp, total=total)
            bar.update(tasks[comp], completed=done)

        try:
            with ray_workers(console, m, ray, workers) as pool:
                result = activation_patching(
                    m, prompts, comps, methods=methods, direction=direction, metric=metric, mlp_layers=layers,
                    engine=engine, out=out, resume=resume, progress=progress, seed=seed,
                    command="interp " + shlex.join(sys.argv[1:]), rules=rules, ig_steps=ig_steps,
                    max_memory=max_memory, workers=pool,
                )
        except KeyboardInterrupt:
            bar.stop()
            if (out / PROGRESS).is_file():
                console.print(f"interrupted: finished work is saved in {out}; complete it with "
                              f"`interp patch ... --out {out} --resume`", highlight=False)
            else:
                console.print("interrupted before any patch finished: nothing was kept (run the command again)",
                              highlight=False)
            raise typer.Exit(130)
    result.manifest["timings"]["load_s"] = round(load_s, 3)
    result.manifest["timings"]["total_s"] = round(time.perf_counter() - t0, 3)
    result.save(out)
    if as_json:
        print(json.dumps(result.manifest, indent=2))
    else:
        base = result.manifest["baselines"]
        console.print(f"clean {metric} {base['clean']['mean']:.3f}, corrupt {base['corrupt']['mean']:.3f}; "
                      f"{result.manifest['timings']['run_s']:.1f}s")
        console.print(f"report: {(Path(out) / 'report.html').resolve()}")
