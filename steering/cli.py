"""``interp steer build|eval|generate|attack|east``: steering from the shell, each writing a run folder."""

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
    progress_bar,
)
from interp.errors import InterpError

app = typer.Typer(help="Steering: build control vectors, sweep them, generate, attack, and EAST.", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False)

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
    n: int = typer.Option(64, help="Prompts to generate (puzzles) or to use (behaviour sets)."),
    only_correct: bool = typer.Option(True, help="Puzzles: read only the rows the model answers right."),
    contrast: str = typer.Option("wrong_answer", help="Puzzle negatives: wrong_answer, shuffled, or corrupt (IOI)."),
    n_rules: int = typer.Option(2, help="Rules per deduction puzzle (1 is trivially copyable)."),
    export_gguf: Path = typer.Option(None, help="Also write a llama.cpp control-vector GGUF here (layers 1 and up)."),
    model: str = MODEL, backend: str = BACKEND, device: str = DEVICE, dtype: str = DTYPE,
    out: Path = typer.Option(None, help="Run folder (default runs/steer-build-<time>); the vectors go to <out>/vectors."),
    as_json: bool = AS_JSON, seed: int = SEED,
) -> None:
    """Build a control-vector set, one vector per layer, from a task's contrast prompts."""
    from interp.steering.runs import build_run
    from interp.steering.vectors import METHODS

    if method not in METHODS:
        raise InterpError(f"unknown method '{method}': use one of {', '.join(METHODS)}")
    if n < 1:
        raise InterpError("--n must be at least 1")
    layer_list = numbers(layers, "--layers", int) or None
    pos = _position(position)
    out = default_out(out, "steer-build")
    console = Console(stderr=True)
    t0 = time.perf_counter()
    m = load_model(console, model, backend, device, dtype)
    with console.status(f"building {method} vectors from {task}"):
        result, vectors = build_run(m, task, method, layer_list, pos, n, only_correct, contrast, n_rules, seed,
                                    command=command_line())
    vectors.save(out / "vectors")
    summary = f"{method} vectors for layers {vectors.layers[0]}..{vectors.layers[-1]}: {out / 'vectors'}.safetensors"
    if export_gguf:
        from interp.steering.llamacpp import export_gguf as write_gguf

        write_gguf(vectors.select([layer for layer in vectors.layers if layer >= 1]), export_gguf)
        summary += f"; llama.cpp GGUF: {export_gguf}"
    finish(console, result, out, t0, as_json, summary)


@app.command("eval")
def evaluate(
    vectors: Path = typer.Option(..., help="A saved vector set (<path> of .safetensors/.json), e.g. runs/x/vectors."),
    layers: str = typer.Option(..., help="Layer(s) to steer at together, e.g. 15."),
    task: str = typer.Option("ioi", help="deduction, ioi, or a JSONL file with prompt/candidates/answer per line."),
    coefficients: str = typer.Option("-1,-0.75,-0.5,-0.25,0,0.25,0.5,0.75,1", help="Coefficients to sweep."),
    n: int = typer.Option(64, help="Held-out prompts (puzzles continue past the rows the vectors were built on)."),
    keep_norm: bool = typer.Option(False, help="Rescale each steered token back to its norm."),
    positions: str = typer.Option("all", help="Steered positions: all, last, or from a position index."),
    n_rules: int = typer.Option(2, help="Rules per deduction puzzle."),
    model: str = MODEL, backend: str = BACKEND, device: str = DEVICE, dtype: str = DTYPE,
    out: Path = typer.Option(None, help="Run folder (default runs/steer-eval-<time>)."),
    as_json: bool = AS_JSON, seed: int = SEED,
) -> None:
    """Sweep a vector's coefficient: accuracy, KL (nats) and entropy (bits) at the first answer token."""
    from interp.steering.runs import eval_run

    coeffs = numbers(coefficients, "--coefficients")
    layer_list = numbers(layers, "--layers", int)
    if not coeffs or not layer_list:
        raise InterpError("give at least one coefficient and one layer")
    if n < 1:
        raise InterpError("--n must be at least 1")
    where = positions if positions in ("all", "last") else _where(positions)
    out = default_out(out, "steer-eval")
    console = Console(stderr=True)
    t0 = time.perf_counter()
    m = load_model(console, model, backend, device, dtype)
    with console.status(f"sweeping {len(coeffs)} coefficients"):
        result = eval_run(m, str(vectors), layer_list, task, coeffs, n, keep_norm, where, n_rules, seed, command=command_line())
    finish(console, result, out, t0, as_json, result.manifest["notes"][0]["text"])


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
    out: Path = typer.Option(None, help="Run folder (default runs/steer-attack-<time>); the vectors go to <out>/vectors."),
    as_json: bool = AS_JSON, seed: int = SEED,
) -> None:
    """Backdoor activation attack (TA2): steer an aligned chat model off its behaviour; compare with a random vector; detect it."""
    from interp.steering.attack import BEHAVIOURS, JS_VARIANTS
    from interp.steering.attack_run import attack_run, save_attack

    if behaviour not in BEHAVIOURS:
        raise InterpError(f"unknown behaviour '{behaviour}': use one of {', '.join(BEHAVIOURS)}")
    if js_variant not in JS_VARIANTS:
        raise InterpError(f"unknown --js-variant '{js_variant}': use one of {', '.join(JS_VARIANTS)}")
    if not 0 < fpr < 1 or not 0 < test_fraction < 1:
        raise InterpError("--fpr and --test-fraction must be between 0 and 1")
    layers = search if search in ("half", "all") else numbers(search, "--search", int)
    out = default_out(out, "steer-attack")
    console = Console(stderr=True)
    t0 = time.perf_counter()
    m = load_model(console, model, backend, device, dtype)
    with console.status(f"attacking {behaviour}"):
        result, vectors = attack_run(m, behaviour, n, test_fraction, layers, js_variant, layer, multiplier, reference_doubling,
                                     system, pair_tokens, max_new_tokens, fpr, seed, command=command_line())
    save_attack(result, vectors, out)
    finish(console, result, out, t0, as_json, result.manifest["notes"][0]["text"])


@app.command()
def east(
    model: str = MODEL, backend: str = BACKEND, device: str = DEVICE, dtype: str = DTYPE,
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
    as_json: bool = AS_JSON, seed: int = SEED,
) -> None:
    """EAST on a two-armed bandit: does steering with the entropy-weighted vector raise action entropy where temperature does not?"""
    from interp.steering.east_agent import AGENTS
    from interp.steering.east_run import east_run

    if agent not in AGENTS:
        raise InterpError(f"unknown agent '{agent}': use thought (writes a thought, then acts) or token (acts at once)")
    beta_list, temperature_list = numbers(betas, "--betas"), numbers(temperatures, "--temperatures")
    if episodes < 1 or steps < 1 or k < 1:
        raise InterpError("--episodes, --steps and --k must be at least 1")
    if any(t <= 0 for t in temperature_list):
        raise InterpError(f"--temperatures must be positive, got {temperatures}")
    out = default_out(out, "steer-east")
    console = Console(stderr=True)
    t0 = time.perf_counter()
    m = load_model(console, model, backend, device, dtype)
    with progress_bar(console) as bar:
        task = bar.add_task("EAST", total=1 + len(beta_list) + len(temperature_list))
        result = east_run(m, layer, agent, beta_list, temperature_list, episodes, steps, k, center,
                          str(vector_file) if vector_file else None, seed, out, command_line(), lambda: bar.advance(task))
    lines = result.manifest["notes"][0]["text"].replace("\n", "; ")
    finish(console, result, out, t0, as_json, lines + ("" if result.manifest["status"] == "complete" else " (interrupted)"))


@app.command()
def generate(
    prompt: list[str] = typer.Option(..., "--prompt", "-p", help="A prompt; repeat for several."),
    vectors: Path = typer.Option(None, help="A saved vector set (<path> of .safetensors/.json); none: unsteered only."),
    layers: str = typer.Option("", help="Layers of the vector set to add, e.g. 15 or 10,15."),
    coeff: float = typer.Option(1.0, help="Coefficient of the added vectors."),
    where: str = typer.Option("all", help="Steered positions: all, prompt, generated, or from a position index."),
    keep_norm: bool = typer.Option(False, help="Rescale each steered token back to its norm."),
    chat: bool = typer.Option(False, help="Wrap each prompt in the model's chat template."),
    max_new_tokens: int = typer.Option(40, help="Tokens to write per prompt."),
    temperature: float = typer.Option(0.0, help="0: greedy; otherwise the sampling temperature."),
    model: str = MODEL, backend: str = BACKEND, device: str = DEVICE, dtype: str = DTYPE,
    out: Path = typer.Option(None, help="Run folder (default runs/steer-generate-<time>)."),
    as_json: bool = AS_JSON, seed: int = SEED,
) -> None:
    """Write continuations with and without the vectors added, side by side."""
    from interp.steering.runs import generate_run

    where_value = _where(where)
    out = default_out(out, "steer-generate")
    console = Console(stderr=True)
    t0 = time.perf_counter()
    m = load_model(console, model, backend, device, dtype)
    with console.status("generating"):
        result = generate_run(m, list(prompt), str(vectors) if vectors else None, numbers(layers, "--layers", int), coeff,
                              where_value, keep_norm, chat, max_new_tokens, temperature, seed, command_line())
    rows = result.manifest["generations"]
    text = "\n".join(f"{r['prompt']!r}\n  unsteered: {r['unsteered']!r}" + (f"\n  steered:   {r['steered']!r}" if "steered" in r else "")
                     for r in rows)
    finish(console, result, out, t0, as_json, text)

