"""``interp steer build|eval|generate|attack|east``: steering from the shell, each writing a run folder.

Every subcommand checks ``--out`` before the model loads (`interp.outdir.prepare_out`: a finished run is
overwritten only with ``--force``), refuses non-finite numbers and malformed files in one line, and
shows a progress bar. ``eval``, ``attack`` and ``east`` checkpoint their finished units; after Ctrl-C
(or SIGTERM) ``--resume`` completes them with identical results. ``build`` and ``generate`` keep no
partial work and say so when interrupted. ``eval`` and ``east`` take ``--ray [HOST:PORT] --workers N``: their
units (batches of held-out prompts; EAST's settings) run on Ray workers (`interp.steering.ray_steering`) and land
in the same checkpoint, with the local run's numbers.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import typer
from rich.console import Console
from rich.progress import Progress

from interp.cli_support import (
    phase_callback,
    AS_JSON,
    BACKEND,
    DEVICE,
    DEVICE_MAP,
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
)
from interp.errors import InterpError
from interp.outdir import PROGRESS, Checkpoint, prepare_out

app = typer.Typer(help="Steering: build control vectors, sweep them, generate, attack, and EAST.", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False)

RESUME = typer.Option(False, "--resume", help="Complete the interrupted run in --out (started with the same options).")


def _start(out: Path | None, name: str, force: bool, resume: bool = False) -> Path:
    """The checked run folder, before any model loads."""
    if resume and out is None:
        raise InterpError("--resume needs --out DIR: the folder of the interrupted run")
    if resume and force:
        raise InterpError("--resume and --force contradict each other: --resume completes the run in --out, "
                          "--force starts it over")
    return prepare_out(out, name, force, resume)


def _not_inside(path: Path | None, out: Path | None, force: bool, option: str) -> None:
    """Refuse an input file inside the --out folder that --force is about to clear."""
    if path is None or out is None or not force or not Path(out).is_dir():
        return
    try:
        Path(path).resolve().relative_to(Path(out).resolve())
    except ValueError:
        return
    raise InterpError(f"{option} {path} lies inside --out {out}, which --force clears first: copy it elsewhere "
                      "or choose another --out")


def _layers(text: str, option: str) -> list[int]:
    """A comma list of distinct layer indices (a repeated layer would be steered or built twice)."""
    layers = numbers(text, option, int)
    repeated = sorted({layer for layer in layers if layers.count(layer) > 1})
    if repeated:
        raise InterpError(f"{option} repeats layer {', '.join(map(str, repeated))}: give each layer once")
    return layers


def _check_vectors(path: Path | None) -> None:
    """Read a vector set before the model loads: a missing, damaged or non-finite file fails in one line, at once."""
    if path is not None:
        from interp.steering.vectors import VectorSet

        VectorSet.load(path)


def _check_gguf(path: Path | None, layers: list[int] | None) -> None:
    """Check --export-gguf up front: a file path (not a folder) in a writable place, and a layer it can hold."""
    if path is None:
        return
    if not str(path).strip():
        raise InterpError("--export-gguf is empty: give a file name such as vectors.gguf")
    path = Path(path)
    if path.is_dir():
        raise InterpError(f"--export-gguf {path} is a folder: give a file name such as {path / 'vectors.gguf'}")
    if path.exists() and not path.is_file():
        raise InterpError(f"--export-gguf {path} exists and is not a regular file: choose another file name")
    existed = path.exists()
    try:  # a real write, so a read-only place, a missing mount or a pseudo file system fails now, not after the run
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "ab"):
            pass
        if not existed:
            path.unlink()
    except OSError as exc:
        raise InterpError(f"cannot write --export-gguf {path}: {exc.strerror or exc}; choose a writable file path") from None
    if layers is not None and not any(layer >= 1 for layer in layers):
        raise InterpError(f"--export-gguf needs a layer of 1 or more (llama.cpp cannot steer block 0's output); "
                          f"--layers is {','.join(map(str, layers))}")


@contextmanager
def _interruptible(console: Console, out: Path, command: str, nothing_kept: str | None = None) -> Iterator[None]:
    """Ctrl-C or SIGTERM: say what was kept (and how to resume it) or that nothing was, then exit 130."""
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_interrupt) if main else None
    try:
        yield
    except KeyboardInterrupt:
        progress = Path(out) / PROGRESS
        if nothing_kept is None and progress.is_file():
            try:
                info = json.loads(progress.read_text(encoding="utf-8"))
                kept = f"{info['done']} of {info['total']} {info.get('unit', 'units')}"
            except (OSError, ValueError, KeyError, TypeError):
                kept = "the finished units"
            console.print(f"interrupted: {kept} are saved in {out}; complete the run with "
                          f"`interp steer {command} ... --out {out} --resume` (same options)", highlight=False)
        else:
            console.print(f"interrupted: nothing was kept ({nothing_kept or 'no unit had finished'}); "
                          f"run `interp steer {command}` again", highlight=False)
        raise typer.Exit(130) from None
    finally:
        if main and previous is not None:
            signal.signal(signal.SIGTERM, previous)


@contextmanager
def _bars(console: Console) -> Iterator[Progress]:
    """`progress_bar`, cleared when an error stops the run, so the error is the one line left on the screen."""
    with progress_bar(console) as bar:
        try:
            yield bar
        except InterpError:
            for task in list(bar.task_ids):
                bar.remove_task(task)
            raise


def _raise_interrupt(*_) -> None:
    raise KeyboardInterrupt


def _where(text: str) -> str | int:
    if text in ("all", "prompt", "generated"):
        return text
    try:
        return int(text)
    except ValueError:
        raise InterpError(f"--where must be all, prompt, generated or a position index; got '{text}'") from None


def _position(text: str) -> int | str | None:
    if text in ("auto", "mean"):
        return None if text == "auto" else text
    try:
        return int(text)
    except ValueError:
        raise InterpError(f"--position must be auto, mean or a token index such as -1 or -2; got '{text}'") from None


@app.command()
def build(
    task: str = typer.Option("ioi", help="deduction, ioi, truthfulness, refusal, or a JSONL file with positive/negative per line."),
    method: str = typer.Option("R-C", help="R (mean of positives), R-C (mean difference), PCA-C or probe."),
    layers: str = typer.Option("", help="Layers to build, e.g. 10,15,20 (default: all)."),
    position: str = typer.Option("auto", help="Token read: an index such as -1 or -2, or mean; auto: -2 for "
                                              "truthfulness/refusal (the attack's convention), else -1."),
    n: int = typer.Option(None, help="Prompts to generate (puzzles) or to use (behaviour sets): 64 by default; a "
                          "JSONL file: every line, capped by this."),
    only_correct: bool = typer.Option(True, help="Puzzles: read only the rows the model answers right."),
    contrast: str = typer.Option("wrong_answer", help="Puzzle negatives: wrong_answer, shuffled, or corrupt (IOI)."),
    n_rules: int = typer.Option(2, help="Rules per deduction puzzle (1 is trivially copyable)."),
    export_gguf: Path = typer.Option(None, help="Also write a llama.cpp control-vector GGUF here (layers 1 and up)."),
    model: str = MODEL, backend: str = BACKEND, device: str = DEVICE, dtype: str = DTYPE,
    device_map: str = DEVICE_MAP,
    out: Path = typer.Option(None, help="Run folder (default runs/steer-build-<time>); the vectors go to <out>/vectors."),
    force: bool = FORCE, as_json: bool = AS_JSON, seed: int = SEED,
) -> None:
    """Build a control-vector set, one vector per layer, from a task's contrast prompts."""
    from interp.steering.runs import BEHAVIOUR_TASKS, PUZZLE_TASKS, build_run, read_task_file
    from interp.steering.vectors import METHODS

    if method not in METHODS:
        raise InterpError(f"unknown method '{method}': use one of {', '.join(METHODS)}")
    if n is not None and n < 1:
        raise InterpError("--n must be at least 1")
    layer_list = _layers(layers, "--layers") or None
    pos = _position(position)
    if task not in PUZZLE_TASKS + BEHAVIOUR_TASKS:
        read_task_file(task, "build")  # a malformed file fails before the model loads
    _check_gguf(export_gguf, layer_list)
    out = _start(out, "steer-build", force)
    console = Console(stderr=True)
    t0 = time.perf_counter()
    m = load_model(console, model, backend, device, dtype, device_map)
    with _interruptible(console, out, "build", "steer build keeps no partial work"), _bars(console) as bar:
        result, vectors = build_run(m, task, method, layer_list, pos, n, only_correct, contrast, n_rules, seed,
                                    command=command_line(), progress=phase_callback(bar))
    vectors.save(out / "vectors")
    summary = f"{method} vectors for layers {vectors.layers[0]}..{vectors.layers[-1]}: {out / 'vectors'}.safetensors"
    failed = None
    if export_gguf:
        from interp.steering.llamacpp import export_gguf as write_gguf

        try:
            exported = [layer for layer in vectors.layers if layer >= 1]
            if not exported:
                raise InterpError("--export-gguf needs a layer of 1 or more; llama.cpp cannot steer block 0's output")
            write_gguf(vectors.select(exported), export_gguf)
            summary += f"; llama.cpp GGUF: {export_gguf}"
        except InterpError as exc:  # the run is saved first, then the error is reported
            failed = exc
    finish(console, result, out, t0, as_json, summary)
    if failed:
        raise failed


@app.command("eval")
def evaluate(
    vectors: Path = typer.Option(..., help="A saved vector set (<path> of .safetensors/.json), e.g. runs/x/vectors."),
    layers: str = typer.Option(..., help="Layer(s) to steer at together, e.g. 15."),
    task: str = typer.Option("ioi", help="deduction, ioi, or a JSONL file with prompt/candidates/answer per line."),
    coefficients: str = typer.Option("-1,-0.75,-0.5,-0.25,0,0.25,0.5,0.75,1", help="Coefficients to sweep."),
    n: int = typer.Option(None, help="Held-out prompts (puzzles continue past the rows the vectors were built on): 64 "
                          "by default; a JSONL file: every line, capped by this."),
    keep_norm: bool = typer.Option(False, help="Rescale each steered token back to its norm."),
    positions: str = typer.Option("all", help="Steered positions: all, last, or from a position index."),
    n_rules: int = typer.Option(2, help="Rules per deduction puzzle."),
    model: str = MODEL, backend: str = BACKEND, device: str = DEVICE, dtype: str = DTYPE,
    device_map: str = DEVICE_MAP,
    out: Path = typer.Option(None, help="Run folder (default runs/steer-eval-<time>)."),
    force: bool = FORCE, resume: bool = RESUME, as_json: bool = AS_JSON, seed: int = SEED, max_memory: str = MAX_MEMORY,
    ray: str = RAY, workers: int = WORKERS,
) -> None:
    """Sweep a vector's coefficient: accuracy, KL (nats) and entropy (bits) at the first answer token."""
    from interp.steering.runs import BEHAVIOUR_TASKS, PUZZLE_TASKS, eval_run, read_task_file

    coeffs = numbers(coefficients, "--coefficients")
    budget = None if max_memory is None else parse_size(max_memory, "--max-memory")
    layer_list = _layers(layers, "--layers")
    if not coeffs or not layer_list:
        raise InterpError("give at least one coefficient and one layer")
    if n is not None and n < 1:
        raise InterpError("--n must be at least 1")
    where = positions if positions in ("all", "last") else _where(positions)
    if task not in PUZZLE_TASKS + BEHAVIOUR_TASKS:
        read_task_file(task, "eval")  # a malformed file fails before the model loads
    _check_vectors(vectors)
    _not_inside(vectors, out, force, "--vectors")
    check_ray(ray, workers)
    out = _start(out, "steer-eval", force, resume)
    console = Console(stderr=True)
    t0 = time.perf_counter()
    m = load_model(console, model, backend, device, dtype, device_map)
    with _interruptible(console, out, "eval"), ray_workers(console, m, ray, workers) as pool, _bars(console) as bar:
        result = eval_run(m, str(vectors), layer_list, task, coeffs, n, keep_norm, where, n_rules, seed,
                          command=command_line(), out=out, resume=resume, progress=phase_callback(bar), max_memory=budget,
                          workers=pool)
    finish(console, result, out, t0, as_json, result.manifest["notes"][0]["text"])
    Checkpoint(out, {}).clear()


@app.command()
def attack(
    behaviour: str = typer.Option("truthfulness", help="truthfulness or refusal (built-in sets)."),
    n: int = typer.Option(0, help="Rows of the set to use (0: all)."),
    test_fraction: float = typer.Option(0.5, help="Share of rows held out to measure the attack."),
    search: str = typer.Option("half", help="Layers searched: half (0..n_layers/2, as the reference), all, or a comma list."),
    js_variant: str = typer.Option("js", help="js (Jensen-Shannon divergence) or reference (the reference code's formula)."),
    layer: int = typer.Option(None, help="Attack this searched layer instead of the JS choice."),
    multiplier: float = typer.Option(-0.8, help="Coefficient of the aligned-minus-misaligned vector (negative: misalign)."),
    reference_doubling: bool = typer.Option(False, help="Add the vector twice, as the reference code does (2 x multiplier)."),
    system: str = typer.Option("auto", help="System prompt: auto (default for truthfulness, safe for refusal), default, safe, or the text."),
    pair_tokens: int = typer.Option(32, help="Length of the model's own aligned answers in the contrast pairs."),
    max_new_tokens: int = typer.Option(24, help="Reply length for refusal scoring."),
    fpr: float = typer.Option(0.05, help="Detector's false-positive target on clean calibration prompts."),
    model: str = MODEL, backend: str = BACKEND, device: str = DEVICE, dtype: str = DTYPE,
    device_map: str = DEVICE_MAP,
    out: Path = typer.Option(None, help="Run folder (default runs/steer-attack-<time>); the vectors go to <out>/vectors."),
    force: bool = FORCE, resume: bool = RESUME, as_json: bool = AS_JSON, seed: int = SEED,
) -> None:
    """Backdoor activation attack (TA2): steer an aligned chat model off its behaviour; compare with a random vector; detect it."""
    from interp.steering.attack import BEHAVIOURS, JS_VARIANTS
    from interp.steering.attack_run import attack_run, save_attack

    if behaviour not in BEHAVIOURS:
        raise InterpError(f"unknown behaviour '{behaviour}': use one of {', '.join(BEHAVIOURS)}")
    if js_variant not in JS_VARIANTS:
        raise InterpError(f"unknown --js-variant '{js_variant}': use one of {', '.join(JS_VARIANTS)}")
    finite(multiplier, "--multiplier")
    if not 0 < fpr < 1 or not 0 < test_fraction < 1:
        raise InterpError(f"--fpr and --test-fraction must be between 0 and 1 (exclusive), got {fpr} and {test_fraction}")
    if n < 0:
        raise InterpError("--n must be 0 (every row) or a positive number of rows")
    if pair_tokens < 1 or max_new_tokens < 1:
        raise InterpError("--pair-tokens and --max-new-tokens must be at least 1")
    layers = search if search in ("half", "all") else _layers(search, "--search")
    if not layers:
        raise InterpError("--search needs half, all or a comma list of layers")
    out = _start(out, "steer-attack", force, resume)
    console = Console(stderr=True)
    t0 = time.perf_counter()
    m = load_model(console, model, backend, device, dtype, device_map)
    with _interruptible(console, out, "attack"), _bars(console) as bar:
        result, vectors = attack_run(m, behaviour, n, test_fraction, layers, js_variant, layer, multiplier, reference_doubling,
                                     system, pair_tokens, max_new_tokens, fpr, seed, command=command_line(), out=out,
                                     resume=resume, progress=phase_callback(bar))
    save_attack(result, vectors, out)
    finish(console, result, out, t0, as_json, result.manifest["notes"][0]["text"])


@app.command()
def east(
    model: str = MODEL, backend: str = BACKEND, device: str = DEVICE, dtype: str = DTYPE,
    device_map: str = DEVICE_MAP,
    layer: int = typer.Option(None, help="Residual layer to read and steer (resid_post; default the middle layer)."),
    agent: str = typer.Option("thought", help="thought (writes a thought, then acts) or token (acts at once)."),
    betas: str = typer.Option("0,2,4,8", help="Steering strengths beta, comma-separated."),
    temperatures: str = typer.Option("1,2,4", help="Sampling temperatures for the unsteered baseline."),
    episodes: int = typer.Option(4, help="Episodes per setting (and for building the vector)."),
    steps: int = typer.Option(8, help="Rounds per episode."),
    k: int = typer.Option(8, help="Thoughts sampled per round to estimate the action distribution (thought agent)."),
    center: bool = typer.Option(True, help="Centre the activations before weighting by entropy."),
    vector_file: Path = typer.Option(None, help="Use this saved EAST vector set (<path> of .safetensors/.json) instead of building one."),
    out: Path = typer.Option(None, help="Run folder (default runs/steer-east-<time>)."),
    force: bool = FORCE, resume: bool = RESUME, as_json: bool = AS_JSON, seed: int = SEED,
    ray: str = RAY, workers: int = WORKERS,
) -> None:
    """EAST on a two-armed bandit: does steering with the entropy-weighted vector raise action entropy where temperature does not?"""
    from interp.steering.east_agent import AGENTS
    from interp.steering.east_run import check_east_size, east_run

    if agent not in AGENTS:
        raise InterpError(f"unknown agent '{agent}': use thought (writes a thought, then acts) or token (acts at once)")
    beta_list, temperature_list = numbers(betas, "--betas"), numbers(temperatures, "--temperatures")
    if not beta_list or not temperature_list:
        raise InterpError("give at least one beta (--betas) and one temperature (--temperatures)")
    if episodes < 1 or steps < 1 or k < 1:
        raise InterpError("--episodes, --steps and --k must be at least 1")
    if any(t <= 0 for t in temperature_list):
        raise InterpError(f"--temperatures must be positive, got {temperatures}")
    _check_vectors(vector_file)
    _not_inside(vector_file, out, force, "--vector-file")
    check_ray(ray, workers)
    out = _start(out, "steer-east", force, resume)
    console = Console(stderr=True)
    t0 = time.perf_counter()
    m = load_model(console, model, backend, device, dtype, device_map)
    check_east_size(m, agent, episodes, steps, k)
    with _interruptible(console, out, "east", None), ray_workers(console, m, ray, workers) as pool, _bars(console) as bar:
        task = bar.add_task("EAST", total=1 + len(beta_list) + len(temperature_list))
        result = east_run(m, layer, agent, beta_list, temperature_list, episodes, steps, k, center,
                          str(vector_file) if vector_file else None, seed, out, command_line(), lambda: bar.advance(task),
                          resume=resume, workers=pool)
    lines = result.manifest["notes"][0]["text"].replace("\n", "; ")
    finish(console, result, out, t0, as_json, lines)


@app.command()
def generate(
    prompt: list[str] = typer.Option(..., "--prompt", "-p", help="A prompt; repeat for several."),
    vectors: Path = typer.Option(None, help="A saved vector set (<path> of .safetensors/.json); none: unsteered only."),
    layers: str = typer.Option("", help="Layers of the vector set to add, e.g. 15 or 10,15 (needs --vectors)."),
    coeff: float = typer.Option(1.0, help="Coefficient of the added vectors."),
    where: str = typer.Option("all", help="Steered positions: all, prompt, generated, or from a position index."),
    keep_norm: bool = typer.Option(False, help="Rescale each steered token back to its norm."),
    chat: bool = typer.Option(False, help="Wrap each prompt in the model's chat template."),
    max_new_tokens: int = typer.Option(40, help="Tokens to write per prompt."),
    temperature: float = typer.Option(0.0, help="0: greedy; otherwise the sampling temperature."),
    model: str = MODEL, backend: str = BACKEND, device: str = DEVICE, dtype: str = DTYPE,
    device_map: str = DEVICE_MAP,
    out: Path = typer.Option(None, help="Run folder (default runs/steer-generate-<time>)."),
    force: bool = FORCE, as_json: bool = AS_JSON, seed: int = SEED, max_memory: str = MAX_MEMORY,
) -> None:
    """Write continuations with and without the vectors added, side by side."""
    from interp.steering.runs import generate_run

    where_value = _where(where)
    budget = None if max_memory is None else parse_size(max_memory, "--max-memory")
    for i, text in enumerate(prompt):
        if not text.strip():
            raise InterpError(f"--prompt {i + 1} is empty: give some text to continue, e.g. -p \"The capital of France is\"")
    layer_list = _layers(layers, "--layers")
    if layer_list and vectors is None:
        raise InterpError("--layers picks layers of a vector set: give --vectors too (or leave --layers out)")
    finite(coeff, "--coeff")
    finite(temperature, "--temperature")
    if temperature < 0:
        raise InterpError(f"--temperature must be 0 (greedy) or positive, got {temperature}")
    if max_new_tokens < 1:
        raise InterpError("--max-new-tokens must be at least 1")
    _check_vectors(vectors)
    _not_inside(vectors, out, force, "--vectors")
    out = _start(out, "steer-generate", force)
    console = Console(stderr=True)
    t0 = time.perf_counter()
    m = load_model(console, model, backend, device, dtype, device_map)
    with _interruptible(console, out, "generate", "steer generate keeps no partial work"), _bars(console) as bar:
        result = generate_run(m, list(prompt), str(vectors) if vectors else None, layer_list, coeff,
                              where_value, keep_norm, chat, max_new_tokens, temperature, seed, command_line(), phase_callback(bar),
                              max_memory=budget)
    rows = result.manifest["generations"]
    text = "\n".join(f"{r['prompt']!r}\n  unsteered: {r['unsteered']!r}" + (f"\n  steered:   {r['steered']!r}" if "steered" in r else "")
                     for r in rows)
    finish(console, result, out, t0, as_json, text)


@app.command()
def latent(
    dictionary: Path = typer.Option(..., "--dictionary", help="Folder of a sparse dictionary in SAELens's layout "
                                    "(cfg.json + sae_weights.safetensors)."),
    index: int = typer.Option(..., "--latent", help="The latent whose decoder row becomes the vector."),
    out: Path = typer.Option(..., help="Where to write the vector set (<out>.safetensors and <out>.json), for "
                             "`interp steer eval/generate --vectors`."),
    model: str = typer.Option(None, help="The model name to record (default: the dictionary's model name)."),
) -> None:
    """A dictionary latent's decoder row as a steering vector: a one-layer vector set at the residual site the
    latent writes to (adding it with coefficient c adds c units of the latent's output)."""
    from interp.dictionary import load_dictionary
    from interp.steering.vectors import VectorSet

    path = VectorSet.from_latent(load_dictionary(dictionary), index, model).save(out)
    Console(stderr=True).print(f"vector set: {path}", highlight=False)
