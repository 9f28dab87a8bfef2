"""``interp heads``, ``interp voids`` and ``interp circuit``: circuit discovery from the shell, each writing a run folder."""

from __future__ import annotations

import time
from pathlib import Path

import typer
from rich.console import Console

from interp.cli_support import (
    AS_JSON,
    BACKEND,
    DEVICE,
    DTYPE,
    MODEL,
    SEED,
    command_line,
    default_out,
    finish,
    load_model,
    numbers,
    split,
)
from interp.errors import InterpError

heads = typer.Typer(help="Head scores: induction, previous-token and duplicate-token detectors, direct logit attribution.",
                    no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
neurons = typer.Typer(help="Relation-specific neurons: which MLP neurons carry a relation's facts?", no_args_is_help=True,
                      pretty_exceptions_enable=False, add_completion=False)
circuit = typer.Typer(help="Circuits: build one from a patching run, compare two, measure faithfulness.",
                      no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)

def _prompts(model, task: str, n: int, seed: int):
    from interp.tasks import check_task, load_prompt_set

    check_task(task)
    return load_prompt_set(task, model.tokenizer, n=n, seed=seed)


@heads.command("detect")
def heads_detect(
    task: str = typer.Option("ioi", help="Task for direct logit attribution (ioi, colored_objects or a JSONL file); 'none' skips it."),
    n_prompts: int = typer.Option(8, help="Prompts for direct logit attribution."),
    n_random: int = typer.Option(4, help="Repeated random-token sequences for the detectors."),
    period: int = typer.Option(20, help="Length of each random sequence (it is repeated once)."),
    model: str = MODEL, backend: str = BACKEND, device: str = DEVICE, dtype: str = DTYPE,
    out: Path = typer.Option(None, help="Run folder (default runs/heads-<time>)."),
    as_json: bool = AS_JSON, seed: int = SEED,
) -> None:
    """Induction, previous-token and duplicate-token scores per head, and direct logit attribution on a task."""
    from interp.circuits.runs import heads_run

    if n_random < 1 or period < 2 or n_prompts < 1:
        raise InterpError("--n-random and --n-prompts must be at least 1, --period at least 2")
    out = default_out(out, "heads")
    console = Console(stderr=True)
    t0 = time.perf_counter()
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
    model: str = MODEL, device: str = DEVICE, dtype: str = DTYPE,
    out: Path = typer.Option(None, help="Run folder (default runs/retrieval-<time>)."),
    as_json: bool = AS_JSON, seed: int = SEED,
) -> None:
    """Retrieval heads: which heads copy the needle while the model answers, and does masking them break recall?"""
    from interp.circuits.runs import retrieval_run

    length_list, depth_list, k_list = numbers(lengths, "--lengths", int), numbers(depths, "--depths"), numbers(ks, "--ks", int)
    if not length_list or not depth_list or any(x < 1 for x in length_list) or any(not 0 <= d <= 100 for d in depth_list):
        raise InterpError("--lengths must be positive token counts and --depths percentages from 0 to 100")
    out = default_out(out, "retrieval")
    console = Console(stderr=True)
    t0 = time.perf_counter()
    m = load_model(console, model, "torch", device, dtype)
    with console.status("decoding needle-in-a-haystack prompts"):
        result = retrieval_run(m, length_list, depth_list, k_list, n_random, max_new_tokens, seed, command_line())
    finish(console, result, out, t0, as_json)


@neurons.command("relation")
def neurons_relation(
    relations: str = typer.Option("", help="Relations to use (default: all built-in), e.g. capital_of,plural_of."),
    k: int = typer.Option(100, help="Neurons zeroed per relation (its top-k by average precision)."),
    sweep: str = typer.Option(None, help="Also sweep k for this relation (cumulativity)."),
    ks: str = typer.Option("10,30,100,300", help="The k values of the sweep."),
    n_identification: int = typer.Option(12, help="Facts per relation used to score neurons; the rest are test facts."),
    keep_correct: bool = typer.Option(True, help="Test only on facts the unedited model gets right."),
    model: str = MODEL, backend: str = BACKEND, device: str = DEVICE, dtype: str = DTYPE,
    out: Path = typer.Option(None, help="Run folder (default runs/neurons-<time>)."),
    as_json: bool = AS_JSON, seed: int = SEED,
) -> None:
    """Score every MLP neuron per relation (AP), zero each relation's top-k, and measure every relation's accuracy."""
    from interp.circuits.relations import RELATIONS
    from interp.circuits.runs import neurons_run

    names = split(relations) or None
    unknown = [r for r in (names or []) + ([sweep] if sweep else []) if r not in RELATIONS]
    if unknown:
        raise InterpError(f"unknown relation {unknown[0]!r}: use one of {', '.join(RELATIONS)}")
    if sweep and names and sweep not in names:
        raise InterpError(f"--sweep {sweep} is not among --relations {relations}")
    k_list = numbers(ks, "--ks", int)
    if k < 1 or any(x < 1 for x in k_list):
        raise InterpError("--k and every --ks value must be at least 1")
    out = default_out(out, "neurons")
    console = Console(stderr=True)
    t0 = time.perf_counter()
    m = load_model(console, model, backend, device, dtype)
    with console.status("scoring neurons and zeroing them"):
        result = neurons_run(m, names, k, sweep, k_list, n_identification, keep_correct, seed, command=command_line())
    finish(console, result, out, t0, as_json)


def voids(
    prompt: list[str] = typer.Option(["What is the capital of France?", "Name three colours of the rainbow."], "--prompt", "-p",
                                     help="A prompt to generate from; repeat for several."),
    alpha: float = typer.Option(0.8, help="LAC threshold factor: void if the norm change < alpha x (range of earlier changes)."),
    max_new_tokens: int = typer.Option(16, help="Tokens generated per prompt (the response phase)."),
    chat: bool = typer.Option(True, help="Wrap prompts in the chat template."),
    mc: bool = typer.Option(True, help="Also score the built-in multiple-choice set with and without skipping voids."),
    model: str = MODEL, device: str = DEVICE, dtype: str = DTYPE,
    out: Path = typer.Option(None, help="Run folder (default runs/voids-<time>)."),
    as_json: bool = AS_JSON,
) -> None:
    """Void layers (LAC): which layers each token uses while reading the prompt and while answering."""
    from interp.circuits.runs import voids_run

    if not 0 < alpha <= 1:
        raise InterpError(f"--alpha must be in (0, 1], got {alpha}")
    if max_new_tokens < 1:
        raise InterpError("--max-new-tokens must be at least 1")
    out = default_out(out, "voids")
    console = Console(stderr=True)
    t0 = time.perf_counter()
    m = load_model(console, model, "torch", device, dtype)
    with console.status("measuring layer usage"):
        result = voids_run(m, list(prompt), max_new_tokens, alpha, chat, mc, command=command_line())
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
    out: Path = typer.Option(None, help="Folder for circuit.json and its report (default runs/circuit-<time>)."),
    as_json: bool = AS_JSON,
) -> None:
    """Build a circuit by thresholding a patching run's node scores; writes circuit.json."""
    from interp.circuits.runs import add_path_edges, circuit_build_run

    if top_k < 0:
        raise InterpError("--top-k must be 0 (no limit) or more")
    out = default_out(out, "circuit")
    console = Console(stderr=True)
    t0 = time.perf_counter()
    result, built = circuit_build_run(str(run), method, split(components) or None, top_k or None, min_abs, command_line())
    if edges:
        m = load_model(console, model, backend, device, dtype)
        with console.status("path patching between the circuit's heads"):
            add_path_edges(m, built, result, str(run))
    built.save(out)
    finish(console, result, out, t0, as_json)


@circuit.command("overlap")
def circuit_overlap(
    a: Path = typer.Argument(..., help="circuit.json (or its folder) of the first circuit."),
    b: Path = typer.Argument(..., help="circuit.json (or its folder) of the second circuit."),
    out: Path = typer.Option(None, help="Run folder (default runs/overlap-<time>)."),
    as_json: bool = AS_JSON,
) -> None:
    """Shared nodes of two circuits: intersection over union and over each."""
    from interp.circuits.runs import circuit_overlap_run

    out = default_out(out, "overlap")
    t0 = time.perf_counter()
    finish(Console(stderr=True), circuit_overlap_run(str(a), str(b), command_line()), out, t0, as_json)


@circuit.command("faithfulness")
def circuit_faithfulness(
    circuit_path: Path = typer.Argument(..., help="circuit.json (or its folder)."),
    task: str = typer.Option("ioi", help="ioi, colored_objects or a JSONL file."),
    n_prompts: int = typer.Option(16, help="Prompts to measure on."),
    metric: str = typer.Option("logit_diff", help="logit_diff, norm_logit_diff, answer_prob or kl."),
    reference: str = typer.Option("clean", help="Mean-ablation means from the clean, corrupt or both prompt sets."),
    keep_mlps: bool = typer.Option(False, help="Keep every MLP (a head circuit with MLPs intact, as in the IOI paper)."),
    model: str = MODEL, backend: str = BACKEND, device: str = DEVICE, dtype: str = DTYPE,
    out: Path = typer.Option(None, help="Run folder (default runs/faithfulness-<time>)."),
    as_json: bool = AS_JSON, seed: int = SEED,
) -> None:
    """The metric with every head and MLP outside the circuit mean-ablated, as a fraction of the full model's."""
    from interp.circuits.runs import circuit_faithfulness_run

    if reference not in ("clean", "corrupt", "both"):
        raise InterpError(f"unknown --reference '{reference}': use clean, corrupt or both")
    out = default_out(out, "faithfulness")
    console = Console(stderr=True)
    t0 = time.perf_counter()
    m = load_model(console, model, backend, device, dtype)
    prompts = _prompts(m, task, n_prompts, seed)
    with console.status("ablating outside the circuit"):
        result = circuit_faithfulness_run(m, str(circuit_path), prompts, metric, reference, keep_mlps, seed, command=command_line())
    finish(console, result, out, t0, as_json)
