"""``interp features``: which latents of sparse dictionaries carry a behaviour (``effects``) and the sparse feature
circuit they form (``circuit``), as run folders.

A latent's decoder row as a steering vector is ``interp steer latent``."""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import typer
from rich.console import Console

from interp.cli_support import (AS_JSON, BACKEND, DEVICE, DEVICE_MAP, DTYPE, FORCE, MAX_MEMORY, MODEL, SEED,
                                check_outside_out, command_line, finish, parse_size, removed_if_failed_empty,
                                split as _split)
from interp.errors import InterpError
from interp.outdir import prepare_out
from interp.patching.cli import N_PROMPTS_HELP, load_model_and_prompts
from interp.tasks import check_task

app = typer.Typer(help="Sparse dictionary features (SAEs, transcoders in SAELens's layout): effects and feature circuits.",
                  no_args_is_help=True)

DICTIONARY = typer.Option(..., "--dictionary", help="Folder of a dictionary in SAELens's layout (cfg.json + "
                          "sae_weights.safetensors); a comma list for several sites.")


def _load_dictionaries(text: str, model) -> tuple[list, list[str]]:
    from interp.dictionary import load_dictionary

    folders = _split(text)
    if not folders:
        raise InterpError("--dictionary is empty: give the folder of a dictionary in SAELens's layout")
    return [load_dictionary(folder, model=model) for folder in folders], folders


@dataclass
class _Started:
    """What both commands start from: the model, prompts and dictionaries loaded, the run folder ready."""

    model: object
    prompts: object
    dictionaries: list
    sources: list[str]  # the dictionary folders, resolved, for the manifest
    budget: int | None
    out: Path
    console: Console
    t0: float


@contextmanager
def _started(dictionary: str, out: Path | None, name: str, force: bool, task: str, corruption: str | None,
             n_prompts: int | None, max_memory: str | None, model: str, backend: str, device: str, dtype: str,
             device_map: str | None, seed: int):
    """Check the shared options, prepare ``--out`` (removed again if the run fails while empty), load the model, the
    prompts and the dictionaries."""
    if n_prompts is not None and n_prompts < 1:
        raise InterpError("--n-prompts must be at least 1")
    budget = None if max_memory is None else parse_size(max_memory, "--max-memory")
    check_task(task, corruption)
    check_outside_out(out, force, task=task, dictionary=dictionary if "," not in dictionary else None)
    created = out is None or not Path(out).exists()
    out = prepare_out(out, name, force=force)
    console = Console(stderr=True)
    t0 = time.perf_counter()
    with removed_if_failed_empty(out, created):
        m, prompts = load_model_and_prompts(console, model, backend, device, dtype, task, n_prompts or 8, seed,
                                            corruption, device_map=device_map)
        dictionaries, folders = _load_dictionaries(dictionary, m)
        yield _Started(m, prompts, dictionaries, [str(Path(f).resolve()) for f in folders], budget, out, console, t0)


@app.command()
def effects(
    dictionary: str = DICTIONARY,
    model: str = MODEL, backend: str = BACKEND, device: str = DEVICE, dtype: str = DTYPE,
    device_map: str = DEVICE_MAP,
    task: str = typer.Option("ioi", help="ioi, or a JSONL file with clean/corrupt/answer/wrong per line."),
    n_prompts: int = typer.Option(None, help=N_PROMPTS_HELP.format(default=8)),
    corruption: str = typer.Option(None, help="IOI corruption (ioi only): swap, three_names or order."),
    method: str = typer.Option("atp,activation", help="Comma list: atp, relp (estimates for every latent), "
                               "activation (exact patching of the --top-k latents)."),
    metric: str = typer.Option("logit_diff", help="logit_diff, norm_logit_diff, answer_prob or kl."),
    top_k: int = typer.Option(32, help="Latents per dictionary patched exactly, the largest by |AtP| (0: every one)."),
    out: Path = typer.Option(None, help="Run folder (default runs/features-<time>)."),
    force: bool = FORCE, as_json: bool = AS_JSON, seed: int = SEED, max_memory: str = MAX_MEMORY,
) -> None:
    """Which latents of the dictionaries (and which error terms) carry the task's behaviour (Marks et al.'s node
    effects): AtP/RelP for every latent, exact activation patching for the top ones, and how well they agree."""
    from interp.metrics import get_metric
    from interp.patching.features import METHODS
    from interp.patching.features_run import feature_run

    methods = tuple(_split(method))
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise InterpError(f"unknown method '{','.join(unknown) or '(none)'}': use one or more of {', '.join(METHODS)}")
    get_metric(metric)
    if top_k < 0:
        raise InterpError(f"--top-k must be 0 (every latent) or more, got {top_k}")
    with _started(dictionary, out, "features", force, task, corruption, n_prompts, max_memory, model, backend, device,
                  dtype, device_map, seed) as run:
        with run.console.status("scoring latents"):
            result = feature_run(run.model, run.prompts, run.dictionaries, methods, metric, top_k, command_line(), seed,
                                 run.budget, run.sources)
        lines = [f"{site}: top latents " + ", ".join(f"{t['latent']}" for t in tops[:5])
                 for site, tops in result.manifest["top_latents"].items()]
        finish(run.console, result, run.out, run.t0, as_json, "\n".join(lines))


@app.command()
def circuit(
    dictionary: str = DICTIONARY,
    model: str = MODEL, backend: str = BACKEND, device: str = DEVICE, dtype: str = DTYPE,
    device_map: str = DEVICE_MAP,
    task: str = typer.Option("ioi", help="ioi, or a JSONL file with clean/corrupt/answer/wrong per line."),
    n_prompts: int = typer.Option(None, help=N_PROMPTS_HELP.format(default=8)),
    corruption: str = typer.Option(None, help="IOI corruption (ioi only): swap, three_names or order."),
    method: str = typer.Option("atp", help="atp or relp: the estimate that ranks every latent."),
    exact: bool = typer.Option(True, help="Patch the --top-k latents per dictionary exactly and score nodes by that."),
    metric: str = typer.Option("logit_diff", help="logit_diff, norm_logit_diff, answer_prob or kl."),
    nodes: int = typer.Option(8, help="Nodes per dictionary: the latents (and error term) with the largest |effect|."),
    top_k: int = typer.Option(32, help="Candidate latents per dictionary, the largest by |estimate| (0: every one)."),
    min_abs: float = typer.Option(None, help="Keep only nodes with |effect| at least this."),
    edges: bool = typer.Option(True, help="Edges between the nodes of consecutive dictionaries, by attribution."),
    reference: str = typer.Option("clean", help="Mean-ablation means (faithfulness) from the clean, corrupt or both sets."),
    out: Path = typer.Option(None, help="Run folder for circuit.json and its report (default runs/features-circuit-<time>)."),
    force: bool = FORCE, as_json: bool = AS_JSON, seed: int = SEED, max_memory: str = MAX_MEMORY,
) -> None:
    """A sparse feature circuit (Marks et al.): the latents and error terms that carry the task's behaviour, the
    edges between consecutive dictionaries, and its faithfulness by circuit size; writes circuit.json."""
    from interp.circuits.feature_circuit import feature_circuit_run
    from interp.cli_support import finite, phase_callback, progress_bar
    from interp.metrics import get_metric

    if method not in ("atp", "relp"):
        raise InterpError(f"unknown --method '{method}': use atp or relp")
    if reference not in ("clean", "corrupt", "both"):
        raise InterpError(f"unknown --reference '{reference}': use clean, corrupt or both")
    get_metric(metric)
    if nodes < 1 or top_k < 0 or (top_k and top_k < nodes):
        raise InterpError(f"--nodes must be at least 1 and at most --top-k (0: every latent), got --nodes {nodes} "
                          f"--top-k {top_k}")
    if min_abs is not None:
        finite(min_abs, "--min-abs")
    with _started(dictionary, out, "features-circuit", force, task, corruption, n_prompts, max_memory, model, backend,
                  device, dtype, device_map, seed) as run:
        with progress_bar(run.console) as bar:
            result, built = feature_circuit_run(run.model, run.prompts, run.dictionaries, metric, nodes, top_k, method,
                                                exact, edges, min_abs, reference, command_line(), seed, run.budget,
                                                run.sources, progress=phase_callback(bar))
        built.save(run.out)
        f = result.manifest["faithfulness"]
        norm = "undefined" if f["normalized"] is None else f"{f['normalized']:.3f}"
        finish(run.console, result, run.out, run.t0, as_json,
               f"{len(built)} nodes, {len(built.edges)} edges; faithfulness (normalized) {norm}")
