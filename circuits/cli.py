"""``interp heads``, ``interp voids`` and ``interp circuit``: circuit discovery from the shell, each writing a run folder."""

from __future__ import annotations

import shlex
import signal
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import typer
from rich.console import Console

from interp.cli_support import (
    check_outside_out,
    phase_callback,
    AS_JSON,
    BACKEND,
    DEVICE,
    DTYPE,
    FORCE,
    MAX_MEMORY,
    MODEL,
    RAY,
    SEED,
    WORKERS,
    check_ray,
    command_line,
    finish,
    finite,
    load_model,
    numbers,
    parse_size,
    progress_bar,
    ray_workers,
    split,
)
from interp.errors import InterpError
from interp.outdir import PROGRESS, prepare_out

RESUME = typer.Option(False, help="Complete the interrupted run in --out (same options).")

heads = typer.Typer(help="Head scores: induction, previous-token and duplicate-token detectors, direct logit attribution.",
                    no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
neurons = typer.Typer(help="Relation-specific neurons: which MLP neurons carry a relation's facts?", no_args_is_help=True,
                      pretty_exceptions_enable=False, add_completion=False)
circuit = typer.Typer(help="Circuits: build one from a patching run, compare two, measure faithfulness.",
                      no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
_CREATED: set[Path] = set()  # run folders this process created (removed again if the run fails while empty)


def _out(out: Path | str | None, name: str, force: bool, resume: bool = False, **inputs) -> Path:
    """The run folder, checked (and created) before any model loads; ``inputs`` (option -> path) must lie outside it."""
    if resume and out is None:
        raise InterpError("--resume needs --out DIR: the folder of the interrupted run")
    check_outside_out(out, force, **inputs)
    existed = out is not None and Path(out).exists()
    folder = prepare_out(out, name, force, resume)
    if not existed:
        _CREATED.add(folder)
    return folder


def _resume_command() -> str:
    parts = [p for p in shlex.split(command_line()) if p != "--force"]
    return shlex.join(parts + ([] if "--resume" in parts else ["--resume"]))


def _interrupt(*_):
    raise KeyboardInterrupt


@contextmanager
def _guard(console: Console, out: Path, units=None, what: str = "units"):
    """Run the work with SIGTERM treated as Ctrl-C; on an interruption say what was kept and exit 130.

    ``units`` (a `interp.circuits.units.Units`) holds the finished units of a resumable run; without it, or
    before any unit finished, the message says plainly that nothing was kept. An empty run folder left by a
    failed or interrupted run is removed.
    """
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _interrupt) if in_main else None
    try:
        yield
    except KeyboardInterrupt:
        if units is not None and units.n_done:
            console.print(f"interrupted: {units.n_done} finished {what} are saved in {out}; complete the run with "
                          f"`{_resume_command()}`", highlight=False, soft_wrap=True)
        elif (Path(out) / PROGRESS).is_file():
            console.print(f"interrupted: the checkpoint in {out} is unchanged; complete the run with "
                          f"`{_resume_command()}`", highlight=False, soft_wrap=True)
        else:
            _remove_if_empty(out)
            console.print("interrupted: nothing was kept" + (" (no unit had finished yet)" if units is not None else "")
                          + "; run the command again", highlight=False, soft_wrap=True)
        raise typer.Exit(130) from None
    except InterpError:
        _remove_if_empty(out)
        raise
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, previous)


def _remove_if_empty(out: Path) -> None:
    """Remove the run folder if this process created it and it is still empty (a user's own folder stays)."""
    if Path(out) not in _CREATED:
        return
    try:
        Path(out).rmdir()  # only an empty folder; a folder with a checkpoint or anything else stays
    except OSError:
        pass


def _prompts(model, task: str, n: int | None, seed: int, default: int = 8):
    """``n`` prompts of ``task`` (default: ``default`` for a generated task, every row of a JSONL file)."""
    from interp.tasks import TASKS, check_task, load_prompt_set

    check_task(task)
    return load_prompt_set(task, model.tokenizer, n=n or (default if task in TASKS else None), seed=seed)


@heads.command("detect")
def heads_detect(
    task: str = typer.Option("ioi", help="Task for direct logit attribution (ioi, colored_objects or a JSONL file); 'none' skips it."),
    n_prompts: int = typer.Option(None, help="Prompts for direct logit attribution (generated tasks: 8; a JSONL file: "
                                  "every row, capped by this)."),
    n_random: int = typer.Option(4, help="Repeated random-token sequences for the detectors."),
    period: int = typer.Option(20, help="Length of each random sequence (it is repeated once)."),
    model: str = MODEL, backend: str = BACKEND, device: str = DEVICE, dtype: str = DTYPE,
    out: str = typer.Option(None, help="Run folder (default runs/heads-<time>)."),
    as_json: bool = AS_JSON, seed: int = SEED, force: bool = FORCE,
) -> None:
    """Induction, previous-token and duplicate-token scores per head, and direct logit attribution on a task."""
    from interp.circuits.runs import heads_run

    if n_random < 1 or period < 2 or (n_prompts is not None and n_prompts < 1):
        raise InterpError("--n-random and --n-prompts must be at least 1, --period at least 2")
    if task != "none":
        from interp.tasks import check_task

        check_task(task)
    out = _out(out, "heads", force, task=task if Path(task).suffix == ".jsonl" else None)
    console = Console(stderr=True)
    t0 = time.perf_counter()
    with _guard(console, out):
        m = load_model(console, model, backend, device, dtype)
        prompts = None if task == "none" else _prompts(m, task, n_prompts, seed)
        with console.status("scoring heads"):
            result = heads_run(m, prompts, n_random, period, seed, command=command_line())
        finish(console, result, out, t0, as_json)


@heads.command("retrieval")
def heads_retrieval(
    lengths: str = typer.Option("600,1200", help="Context lengths in tokens (SmolLM2 reads up to 8k)."),
    depths: str = typer.Option("0,50,100", help="Needle depths, percent of the context."),
    ks: str = typer.Option("5,15", help="Numbers of heads to mask: top-k by score against k random heads."),
    n_random: int = typer.Option(1, help="Random draws per k."),
    max_new_tokens: int = typer.Option(30, help="Greedy answer length (stops at a newline)."),
    batch_size: int = typer.Option(0, help="Prompts decoded together (equal lengths only); 0: as many as fit "
                                           "--max-memory. The numbers do not depend on it."),
    model: str = MODEL, device: str = DEVICE, dtype: str = DTYPE,
    out: str = typer.Option(None, help="Run folder (default runs/retrieval-<time>)."),
    as_json: bool = AS_JSON, seed: int = SEED, force: bool = FORCE, resume: bool = RESUME, max_memory: str = MAX_MEMORY,
    ray: str = RAY, workers: int = WORKERS,
) -> None:
    """Retrieval heads: which heads copy the needle while the model answers, and does masking them break recall?

    Prompts of equal length decode together; every decoded prompt and masking setting is checkpointed in --out,
    so an interrupted run completes with --resume (with or without --ray).
    """
    from interp.circuits.retrieval import check_request
    from interp.circuits.runs import retrieval_run, retrieval_units

    length_list, depth_list, k_list = numbers(lengths, "--lengths", int), numbers(depths, "--depths"), numbers(ks, "--ks", int)
    if not length_list or not depth_list or any(x < 1 for x in length_list) or any(not 0 <= d <= 100 for d in depth_list):
        raise InterpError("--lengths must be positive token counts and --depths percentages from 0 to 100")
    if any(k < 0 for k in k_list):
        raise InterpError(f"--ks must be numbers of heads, 0 or more; got {ks}")
    if n_random < 1 or max_new_tokens < 1 or batch_size < 0:
        raise InterpError("--n-random and --max-new-tokens must be at least 1, --batch-size 0 (automatic) or more")
    budget = None if max_memory is None else parse_size(max_memory, "--max-memory")
    check_ray(ray, workers)
    out = _out(out, "retrieval", force, resume)
    console = Console(stderr=True)
    t0 = time.perf_counter()
    with _guard(console, out):
        m = load_model(console, model, "torch", device, dtype)
        check_request(m, length_list, k_list, n_random, max_new_tokens, depth_list, budget)  # before the detection pass
        units = retrieval_units(m, out, length_list, depth_list, k_list, n_random, max_new_tokens, seed, resume)
    with _guard(console, out, units, "prompts and masking settings"):
        with ray_workers(console, m, ray, workers) as pool, progress_bar(console) as bar:
            result = retrieval_run(m, length_list, depth_list, k_list, n_random, max_new_tokens, seed, command_line(),
                                   batch_size or None, phase_callback(bar), units, budget, pool)
        finish(console, result, out, t0, as_json)
        units.clear()


@neurons.command("relation")
def neurons_relation(
    relations: str = typer.Option("", help="Relations to use (default: all built-in), e.g. capital_of,plural_of."),
    k: int = typer.Option(100, help="Neurons zeroed per relation (its top-k by average precision)."),
    sweep: str = typer.Option(None, help="Also sweep k for this relation (cumulativity)."),
    ks: str = typer.Option("10,30,100,300", help="The k values of the sweep."),
    n_identification: int = typer.Option(12, help="Facts per relation used to score neurons; the rest are test facts."),
    keep_correct: bool = typer.Option(True, help="Test only on facts the unedited model gets right."),
    model: str = MODEL, backend: str = BACKEND, device: str = DEVICE, dtype: str = DTYPE,
    out: str = typer.Option(None, help="Run folder (default runs/neurons-<time>)."),
    as_json: bool = AS_JSON, seed: int = SEED, force: bool = FORCE, resume: bool = RESUME,
    ray: str = RAY, workers: int = WORKERS,
) -> None:
    """Score every MLP neuron per relation (AP), zero each relation's top-k, and measure every relation's accuracy.

    The test-prompt filter, the expertise and every relation's (and k's) accuracies are checkpointed in --out, so
    an interrupted run completes with --resume (with or without --ray).
    """
    from interp.circuits.neurons import check_k
    from interp.circuits.relations import RELATIONS, get_relations
    from interp.circuits.runs import neurons_run, neurons_units

    names = split(relations) or None
    unknown = [r for r in (names or []) + ([sweep] if sweep else []) if r not in RELATIONS]
    if unknown:
        raise InterpError(f"unknown relation {unknown[0]!r}: use one of {', '.join(RELATIONS)}")
    if sweep and names and sweep not in names:
        raise InterpError(f"--sweep {sweep} is not among --relations {relations}")
    if names is not None and len(set(names)) < 2:
        raise InterpError("--relations needs at least two different relations (the others are each one's negatives)")
    k_list = numbers(ks, "--ks", int)
    if k < 1 or any(x < 1 for x in k_list):
        raise InterpError("--k and every --ks value must be at least 1")
    if sweep and not k_list:
        raise InterpError("--sweep needs --ks: the numbers of neurons to zero")
    fewest = min(get_relations(names), key=lambda r: len(r.facts))
    if not 0 < n_identification < len(fewest.facts):
        raise InterpError(f"--n-identification must be in [1, {len(fewest.facts) - 1}]: {fewest.name} has "
                          f"{len(fewest.facts)} facts and needs at least one left to test on")
    check_ray(ray, workers)
    out = _out(out, "neurons", force, resume)
    console = Console(stderr=True)
    t0 = time.perf_counter()
    with _guard(console, out):
        m = load_model(console, model, backend, device, dtype)
        check_k(m, k, k_list if sweep else [])  # before any pass
        units = neurons_units(m, out, names, k, sweep, k_list, n_identification, keep_correct, seed, backend, resume)
    with _guard(console, out, units, "passes (test filter, expertise, relations, k values)"):
        with ray_workers(console, m, ray, workers) as pool, progress_bar(console) as bar:
            result = neurons_run(m, names, k, sweep, k_list, n_identification, keep_correct, seed, backend=backend,
                                 command=command_line(), progress=phase_callback(bar), units=units, workers=pool)
        finish(console, result, out, t0, as_json)
        units.clear()


def voids(
    prompt: list[str] = typer.Option(["What is the capital of France?", "Name three colours of the rainbow."], "--prompt", "-p",
                                     help="A prompt to generate from; repeat for several."),
    alpha: float = typer.Option(0.8, help="LAC threshold factor: void if the norm change < alpha x (range of earlier changes)."),
    max_new_tokens: int = typer.Option(16, help="Tokens generated per prompt (the response phase)."),
    chat: bool = typer.Option(True, help="Wrap prompts in the chat template."),
    mc: bool = typer.Option(True, help="Also score the built-in multiple-choice set with and without skipping voids."),
    model: str = MODEL, device: str = DEVICE, dtype: str = DTYPE,
    out: str = typer.Option(None, help="Run folder (default runs/voids-<time>)."),
    as_json: bool = AS_JSON, force: bool = FORCE,
) -> None:
    """Void layers (LAC): which layers each token uses while reading the prompt and while answering."""
    from interp.circuits.runs import voids_run
    from interp.circuits.voids import check_generation

    if not 0 < finite(alpha, "--alpha") <= 1:
        raise InterpError(f"--alpha must be in (0, 1], got {alpha}")
    if max_new_tokens < 1:
        raise InterpError("--max-new-tokens must be at least 1")
    empty = [i + 1 for i, p in enumerate(prompt) if not p.strip()]
    if empty:
        raise InterpError(f"prompt {empty[0]} is empty: give each --prompt some text")
    out = _out(out, "voids", force)
    console = Console(stderr=True)
    t0 = time.perf_counter()
    with _guard(console, out):
        m = load_model(console, model, "torch", device, dtype)
        check_generation(m, list(prompt), max_new_tokens, chat)  # context and memory, before generating
        with progress_bar(console) as bar:
            result = voids_run(m, list(prompt), max_new_tokens, alpha, chat, mc, command=command_line(),
                               progress=phase_callback(bar))
        finish(console, result, out, t0, as_json)


@circuit.command("build")
def circuit_build(
    run: Path = typer.Option(..., help="A patching run folder (interp patch ... --out RUN)."),
    method: str = typer.Option("activation", help="Which scores: activation, atp, relp or ig."),
    components: str = typer.Option("", help="Components to take nodes from, e.g. head_out,mlp_out (default: all in the run)."),
    top_k: int = typer.Option(10, help="Keep the k nodes with the largest |effect| (0: no limit)."),
    min_abs: float = typer.Option(None, help="Keep only nodes with |effect| at least this."),
    edges: bool = typer.Option(False, help="Add edges between the circuit's heads (and to the logits) by path patching, "
                                           "on the run's own prompts."),
    model: str = MODEL, backend: str = BACKEND, device: str = DEVICE, dtype: str = DTYPE,
    out: str = typer.Option(None, help="Folder for circuit.json and its report (default runs/circuit-<time>)."),
    as_json: bool = AS_JSON, force: bool = FORCE, ray: str = RAY, workers: int = WORKERS,
) -> None:
    """Build a circuit by thresholding a patching run's node scores; writes circuit.json. With --edges, --ray shards
    the receivers' path-patching passes over Ray workers."""
    from interp.circuits.runs import add_path_edges, circuit_build_run

    if top_k < 0:
        raise InterpError("--top-k must be 0 (no limit) or more")
    if min_abs is not None:
        finite(min_abs, "--min-abs")
    check_outside_out(out, force, run=run)  # before the build, not after it
    if ray is not None and not edges:
        raise InterpError("--ray shards the path patching of --edges: add --edges or drop --ray")
    check_ray(ray, workers)
    t0 = time.perf_counter()
    result, built = circuit_build_run(str(run), method, split(components) or None, top_k or None, min_abs, command_line())
    if edges and not built.heads():
        raise InterpError("--edges connects the circuit's heads, and this circuit has none: keep head_out nodes "
                          "(--components head_out) or leave out --edges")
    out = _out(out, "circuit", force, run=run)
    console = Console(stderr=True)
    with _guard(console, out):
        if edges:
            m = load_model(console, model, backend, device, dtype)
            with ray_workers(console, m, ray, workers) as pool, progress_bar(console) as bar:
                add_path_edges(m, built, result, str(run), progress=phase_callback(bar), workers=pool)
        built.save(out)
        finish(console, result, out, t0, as_json)


@circuit.command("discover")
def circuit_discover(
    method: str = typer.Option("eap-ig", help="Edge scores: eap, eap-ig (integrated along the input path) or relp."),
    task: str = typer.Option("ioi", help="ioi, colored_objects or a JSONL file with clean/corrupt/answer/wrong."),
    n_prompts: int = typer.Option(None, help="Prompts (generated tasks: 16; a JSONL file: every row, capped by this)."),
    edges: int = typer.Option(100, help="Edges of the circuit written to circuit.json (pruned to paths from the input "
                                        "to the logits)."),
    curve: bool = typer.Option(False, help="Also measure the faithfulness curve over --fractions of the edges."),
    fractions: str = typer.Option(",".join(f"{f:g}" for f in (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)),
                                  help="Circuit sizes of the curve, as increasing fractions of the graph's edges."),
    selection: str = typer.Option("top", help="top (the largest |score|) or greedy (grown from the logits)."),
    ablation: str = typer.Option("corrupt", help="Edges outside the circuit: patched from the corrupt run, or mean "
                                                 "(the senders' mean writes over both prompt sets)."),
    ig_steps: int = typer.Option(5, help="eap-ig: points on the path between the corrupt and clean inputs."),
    direction: str = typer.Option("noising", help="noising (gradients at the clean run) or denoising."),
    metric: str = typer.Option("logit_diff", help="logit_diff, norm_logit_diff, answer_prob or kl."),
    model: str = MODEL, backend: str = BACKEND, device: str = DEVICE, dtype: str = DTYPE,
    out: str = typer.Option(None, help="Folder for circuit.json and its report (default runs/discover-<time>)."),
    as_json: bool = AS_JSON, seed: int = SEED, force: bool = FORCE, max_memory: str = MAX_MEMORY,
    ray: str = RAY, workers: int = WORKERS,
) -> None:
    """Discover an edge-level circuit over the full graph (input, heads with their q/k/v inputs, MLPs, logits) with
    EAP, EAP-IG or RelP edge scores; measure it exactly, and with --curve the faithfulness curve; writes circuit.json.
    With --curve, --ray measures the curve's circuits on Ray workers."""
    from interp.circuits.discover_run import discover_run
    from interp.circuits.eap import DIRECTIONS, METHODS
    from interp.circuits.edge_circuit import ABLATIONS, SELECTIONS
    from interp.metrics import get_metric
    from interp.tasks import check_task

    for value, allowed, option in ((method, METHODS, "--method"), (selection, SELECTIONS, "--selection"),
                                   (ablation, ABLATIONS, "--ablation"), (direction, DIRECTIONS, "--direction")):
        if value not in allowed:
            raise InterpError(f"unknown {option} '{value}': use one of {', '.join(allowed)}")
    if edges < 1:
        raise InterpError(f"--edges must be at least 1, got {edges}")
    if ig_steps < 1:
        raise InterpError(f"--ig-steps must be at least 1, got {ig_steps}")
    if n_prompts is not None and n_prompts < 1:
        raise InterpError("--n-prompts must be at least 1")
    sizes = numbers(fractions, "--fractions", float)
    if not sizes or any(not 0 < f <= 1 for f in sizes) or sizes != sorted(set(sizes)):
        raise InterpError("--fractions must be increasing fractions of the edges in (0, 1], e.g. 0.01,0.1,1")
    get_metric(metric)
    check_task(task)
    if ray is not None and not curve:
        raise InterpError("--ray shards the circuits of --curve: add --curve or drop --ray")
    check_ray(ray, workers)
    budget = None if max_memory is None else parse_size(max_memory, "--max-memory")
    out = _out(out, "discover", force, task=task)
    console = Console(stderr=True)
    t0 = time.perf_counter()
    with _guard(console, out):
        m = load_model(console, model, backend, device, dtype)
        prompts = _prompts(m, task, n_prompts, seed, default=16)
        with ray_workers(console, m, ray, workers) as pool, progress_bar(console) as bar:
            result, built = discover_run(m, prompts, method, edges, curve, sizes, selection, ablation, ig_steps,
                                         direction, metric, seed, budget, command_line(), phase_callback(bar), pool)
        built.save(out)
        f = result.manifest["faithfulness"]
        norm = "undefined" if f["normalized"] is None else f"{f['normalized']:.3f}"
        finish(console, result, out, t0, as_json, f"{f['edges']} edges, {len(built)} nodes; faithfulness (normalized) {norm}")


@circuit.command("overlap")
def circuit_overlap(
    a: Path = typer.Argument(..., help="circuit.json (or its folder) of the first circuit."),
    b: Path = typer.Argument(..., help="circuit.json (or its folder) of the second circuit."),
    out: str = typer.Option(None, help="Run folder (default runs/overlap-<time>)."),
    as_json: bool = AS_JSON, force: bool = FORCE,
) -> None:
    """Shared nodes of two circuits: intersection over union and over each."""
    from interp.circuits.runs import circuit_overlap_run

    check_outside_out(out, force, circuit=a, other_circuit=b)
    t0 = time.perf_counter()
    result = circuit_overlap_run(str(a), str(b), command_line())
    out = _out(out, "overlap", force, circuit=a, other_circuit=b)
    console = Console(stderr=True)
    with _guard(console, out):
        finish(console, result, out, t0, as_json)


@circuit.command("faithfulness")
def circuit_faithfulness(
    circuit_path: Path = typer.Argument(..., help="circuit.json (or its folder)."),
    task: str = typer.Option("ioi", help="ioi, colored_objects or a JSONL file."),
    n_prompts: int = typer.Option(None, help="Prompts to measure on (generated tasks: 16; a JSONL file: every row, "
                                  "capped by this)."),
    metric: str = typer.Option("logit_diff", help="logit_diff, norm_logit_diff, answer_prob or kl."),
    reference: str = typer.Option("clean", help="Mean-ablation means from the clean, corrupt or both prompt sets."),
    keep_mlps: bool = typer.Option(False, help="Keep every MLP (a head circuit with MLPs intact, as in the IOI paper)."),
    model: str = MODEL, backend: str = BACKEND, device: str = DEVICE, dtype: str = DTYPE,
    out: str = typer.Option(None, help="Run folder (default runs/faithfulness-<time>)."),
    as_json: bool = AS_JSON, seed: int = SEED, force: bool = FORCE,
) -> None:
    """The metric with every head and MLP outside the circuit mean-ablated, as a fraction of the full model's. A
    feature circuit (interp features circuit) mean-ablates the latents and error terms of its dictionaries instead."""
    from interp.circuits.graph import Circuit
    from interp.circuits.runs import circuit_faithfulness_run
    from interp.metrics import get_metric
    from interp.tasks import check_task

    if reference not in ("clean", "corrupt", "both"):
        raise InterpError(f"unknown --reference '{reference}': use clean, corrupt or both")
    if n_prompts is not None and n_prompts < 1:
        raise InterpError("--n-prompts must be at least 1")
    get_metric(metric)
    check_task(task)
    Circuit.load(circuit_path)  # a missing or malformed circuit fails here, before the model loads
    out = _out(out, "faithfulness", force, circuit=circuit_path)
    console = Console(stderr=True)
    t0 = time.perf_counter()
    with _guard(console, out):
        m = load_model(console, model, backend, device, dtype)
        prompts = _prompts(m, task, n_prompts, seed, default=16)
        with console.status("ablating outside the circuit"):
            result = circuit_faithfulness_run(m, str(circuit_path), prompts, metric, reference, keep_mlps, seed,
                                              command=command_line())
        finish(console, result, out, t0, as_json)
