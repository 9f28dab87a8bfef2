"""Run folders for ``interp steer generate``, ``build`` and ``eval``.

- `generate_run`: continuations with and without a vector set added, in the manifest.
- `build_run`: a control-vector set from a task's contrast prompts, its norm per layer and
  ``vectors.safetensors/json`` beside the report.
- `eval_run`: a coefficient sweep of one layer's vector on a task's held-out prompts:
  ``sweep/coefficient``, ``sweep/kl``, ``sweep/entropy``, ``sweep/accuracy`` and more.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import torch

from interp.chat import chat_prompt
from interp.errors import InterpError
from interp.metrics import check_finite
from interp.model import Model
from interp.outdir import Checkpoint
from interp.results import RunResult, describe_tensor, run_header
from interp.steering.generate import generate
from interp.limits import check_memory
from interp.steering.limits import TEXT_BYTES, check_prompt_count
from interp.steering.puzzles import PuzzleSet, load_puzzles
from interp.steering.reasoning import vectors_from_puzzles
from interp.steering.sweep import DEFAULT_COEFFICIENTS, coefficient_sweep
from interp.steering.vectors import VectorSet, build_vectors, load_vector_set

if TYPE_CHECKING:
    from interp.ray_workers import RayWorkers

PUZZLE_TASKS = ("deduction", "ioi")
BEHAVIOUR_TASKS = ("truthfulness", "refusal")
TASK_HELP = "deduction, ioi, truthfulness, refusal, or a JSONL file"
DEFAULT_N = 64  # prompts of a generated puzzle set or a built-in behaviour set; a JSONL file: every line


def generate_run(model: Model, prompts: list[str], vector_file: str | None = None, layers: Sequence[int] = (), coeff: float = 1.0,
                 where: str | int = "all", keep_norm: bool = False, chat: bool = False, max_new_tokens: int = 40,
                 temperature: float = 0.0, seed: int = 0, command: str = "steer generate",
                 progress: Callable[[str, int, int], None] | None = None, max_memory: int | None = None) -> RunResult:
    """Generate for ``prompts`` unsteered and (with a vector file) steered; texts go into the manifest.

    ``max_memory`` (bytes; None: a share of the device's free memory) sizes the batches; the texts do not depend on it.
    """
    t0 = time.perf_counter()
    if layers and not vector_file:
        raise InterpError("--layers picks layers of a vector set: give --vectors too (or leave --layers out)")
    for i, prompt in enumerate(prompts):
        if not isinstance(prompt, str) or not prompt.strip():
            raise InterpError(f"prompt {i + 1} is empty: give some text to continue with --prompt/-p")
    texts = [chat_prompt(model, p) if chat else p for p in prompts]
    options = {"max_new_tokens": max_new_tokens, "temperature": temperature, "seed": seed}
    budget = {"max_memory": max_memory}
    steer = None
    if vector_file:  # loaded (and checked) before any generation
        vectors = load_vector_set(model, vector_file, layers)
        steer = {f"{vectors.kind}.{layer}": vectors.vector(layer) for layer in vectors.layers}
    plain = generate(model, texts, **options, **budget, progress=progress, stage="unsteered")
    rows = [{"prompt": p, "unsteered": u} for p, u in zip(prompts, plain)]
    if steer:
        for row, text in zip(rows, generate(model, texts, steer, coeff, where, keep_norm, **options, **budget, progress=progress,
                                            stage="steered")):
            row["steered"] = text
    notes = [{"title": f"Prompt {i + 1}", "text": "\n".join(f"{key}: {value}" for key, value in row.items())} for i, row in enumerate(rows)]
    manifest = {**run_header(model, command, seed, backend="torch (KV cache)"), "method": "generate",
                "parameters": {"vector_file": vector_file, "sites": sorted(steer or {}), "coeff": coeff, "where": where,
                               "keep_norm": keep_norm, "chat": chat, **options},
                "generations": rows, "notes": notes, "tensors": {},
                "timings": {"run_s": round(time.perf_counter() - t0, 3)}}
    return RunResult(manifest=manifest, scores={})


MAX_JSONL_BYTES = 512 * 1024 * 1024  # a task file larger than this is refused before it is read


def _jsonl(path: str, fields: tuple[str, ...], optional: tuple[str, ...] = (),
           kinds: dict[str, str] | None = None) -> list[dict]:
    """The rows of a JSONL task file; each a JSON object with ``fields`` (and maybe ``optional``) of the right type.

    ``kinds`` names each field's type: "text" (a non-empty string) or "texts" (a list of non-empty strings).
    Missing files, binary or non-UTF-8 files, bad JSON and wrongly typed fields are one-line errors.
    """
    file = Path(path)
    if not file.is_file():
        raise InterpError(f"task {path!r} is not one of {TASK_HELP}, and no such file exists")
    size = file.stat().st_size
    if size > MAX_JSONL_BYTES:
        raise InterpError(f"{file.name} is {size / 2**20:.0f} MB; a task file is at most {MAX_JSONL_BYTES // 2**20} MB")
    data = file.read_bytes()
    if b"\0" in data:
        raise InterpError(f"{file.name} is a binary file, not JSONL text: give one JSON object per line")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise InterpError(f"{file.name} is not UTF-8 text (byte 0x{data[exc.start]:02x} on line {line}): "
                          "save it as UTF-8 JSONL") from None
    kinds = kinds or {}
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InterpError(f"{file.name} line {number} is not valid JSON: {exc.msg}") from None
        except RecursionError:
            raise InterpError(f"{file.name} line {number} is nested too deeply to be a task row") from None
        if not isinstance(row, dict):
            raise InterpError(f"{file.name} line {number} is a JSON {type(row).__name__}, not an object with "
                              f"{', '.join(fields)}")
        missing = [f for f in fields if f not in row]
        if missing:
            raise InterpError(f"{file.name} line {number} lacks {', '.join(missing)}; each line needs "
                              f"{', '.join(fields)}{' (optional: ' + ', '.join(optional) + ')' if optional else ''}")
        for name in (*fields, *optional):
            if name not in row:
                continue
            value, kind = row[name], kinds.get(name, "text")
            if kind == "text" and not (isinstance(value, str) and value):
                raise InterpError(f"{file.name} line {number}: {name} must be a non-empty string, got {_short(value)}")
            if kind == "texts" and not (isinstance(value, list) and value and all(isinstance(v, str) and v for v in value)):
                raise InterpError(f"{file.name} line {number}: {name} must be a list of non-empty strings, got {_short(value)}")
        rows.append(row)
    if not rows:
        raise InterpError(f"{file.name} has no rows")
    return rows


def read_task_file(task: str, command: str) -> list[dict]:
    """The rows of a JSONL task for ``steer build`` (positive, negative) or ``steer eval`` (prompt, candidates, answer)."""
    if command == "build":
        return _jsonl(task, ("positive",), ("negative",))
    rows = _jsonl(task, ("prompt", "candidates", "answer"), kinds={"candidates": "texts"})
    for number, row in enumerate(rows, start=1):
        if row["answer"] not in row["candidates"]:
            raise InterpError(f"{Path(task).name} line {number}: answer {row['answer']!r} is not one of its candidates")
    return rows


def _short(value) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 60 else text[:57] + "..."


def build_run(model: Model, task: str, method: str = "R-C", layers: Sequence[int] | None = None, position: int | str | None = None,
              n: int | None = None, only_correct: bool = True, contrast: str = "wrong_answer", n_rules: int = 2, seed: int = 0,
              backend: str | None = None, command: str = "steer build",
              progress: Callable[[str, int, int], None] | None = None) -> tuple[RunResult, VectorSet]:
    """Control vectors per layer from ``task``'s contrast prompts, and a run describing them.

    Puzzle tasks (deduction, ioi) read prompt + correct answer against the contrast at the last
    token, from rows the model answers right (``only_correct``); behaviour sets (truthfulness,
    refusal) read the attack's contrast pairs at token -2; a JSONL file gives ``positive`` and
    (except for R) ``negative`` texts per line. ``n`` is checked against the machine's memory before
    any prompt is made; ``progress(stage, done, total)`` follows the forward passes.
    """
    t0 = time.perf_counter()
    if n is not None and n < 1:
        raise InterpError(f"n must be at least 1, got {n}")
    if n is None and (task in PUZZLE_TASKS or task in BEHAVIOUR_TASKS):
        n = DEFAULT_N  # a generated or built-in set; a JSONL file's default is every line
    info: dict = {"task": task}
    n_layers = model.n_layers if layers is None else len(layers)
    if task in PUZZLE_TASKS:
        if position not in (None, -1):
            raise InterpError(f"puzzle vectors are read at the last token; --position {position} does not apply to {task}")
        check_prompt_count(model, n, f"--n {n}", "lower --n", n_layers)
        built = vectors_from_puzzles(model, load_puzzles(task, model.tokenizer, n, seed, contrast, n_rules), method, layers,
                                     seed, only_correct, backend, progress)
        vectors = built.vectors
        info |= {"n_generated": built.n_prompts, "n_correct": built.n_correct, "n_used": built.n_used,
                 "baseline_accuracy": round(built.baseline_accuracy, 4)}
    elif task in BEHAVIOUR_TASKS:
        from interp.steering.attack import contrast_pairs, default_set

        rows = default_set(task)
        rows = rows.select(range(min(n, len(rows))))
        pairs = contrast_pairs(model, task, rows, backend=backend, progress=progress)
        vectors = build_vectors(model, pairs.positive, pairs.negative, method, "resid_post", layers,
                                -2 if position is None else position, seed, backend, {"task": task, "aligned": "greedy"},
                                progress)
        info |= {"n_pairs": len(rows)}
    else:
        rows = read_task_file(task, "build")
        rows = rows[:n] if n else rows
        check_prompt_count(model, len(rows), Path(task).name, "use fewer lines", n_layers)
        negatives = [r["negative"] for r in rows if "negative" in r]
        if method != "R" and len(negatives) != len(rows):
            raise InterpError(f"{method} needs a 'negative' text on every line of {Path(task).name}; only R does without")
        vectors = build_vectors(model, [r["positive"] for r in rows], negatives or None, method, "resid_post", layers,
                                -1 if position is None else position, seed, backend, {"task": str(task)}, progress)
        info |= {"n_pairs": len(rows)}
    norms = check_finite(vectors.vectors.norm(dim=-1), "the vectors' norms")
    unit = vectors.vectors / norms[:, None].clamp_min(1e-12)
    labels = {"layer": [str(layer) for layer in vectors.layers]}
    scores = {"vectors/norm": norms, "vectors/cosine": unit @ unit.T}
    tensors = {"vectors/norm": describe_tensor("vectors/norm", norms, ["layer"], labels),
               "vectors/cosine": describe_tensor("vectors/cosine", scores["vectors/cosine"], ["layer", "other_layer"],
                                                 {**labels, "other_layer": labels["layer"]})}
    tensors["vectors/cosine"]["note"] = "cosine similarity of the layers' vectors: neighbouring layers that agree share a direction"
    manifest = {**run_header(model, command, seed, backend), "method": method, "site": f"resid_post.{{{vectors.layers[0]}..{vectors.layers[-1]}}}",
                "parameters": {"task": task, "method": method, "position": vectors.position, "layers": vectors.layers, "n": n,
                               "only_correct": only_correct, "contrast": contrast, "n_rules": n_rules},
                "vectors": info | {"meta": vectors.meta},
                "notes": [{"title": "Vectors", "text": "\n".join(f"{k}: {v}" for k, v in info.items())}],
                "tensors": tensors, "timings": {"run_s": round(time.perf_counter() - t0, 3)}}
    return RunResult(manifest=manifest, scores=scores), vectors


def _eval_prompts(model: Model, task: str, vectors: VectorSet, n: int, seed: int, n_rules: int, k: int = 1) -> PuzzleSet:
    """Held-out rows: a puzzle task continues past the rows the vectors were built from (same seed)."""
    if task in PUZZLE_TASKS:
        meta = vectors.meta
        try:
            start = int(meta.get("n_generated", 0)) if meta.get("task") == task and int(meta.get("seed", -1)) == seed else 0
        except (TypeError, ValueError):
            raise InterpError("the vector set's meta has a malformed n_generated or seed; rebuild it") from None
        check_memory((start + n) * (TEXT_BYTES + 5 * k * 4), f"--n {n} (after the {start} rows the vectors were built on, "
                     f"{start + n} prompts to make)", "cpu", "lower --n")
        everything = load_puzzles(task, model.tokenizer, start + n, seed, "wrong_answer", n_rules)
        return everything.select(range(start, start + n))
    rows = read_task_file(task, "eval")
    rows = rows[:n] if n else rows
    candidates = [[r["answer"]] + [c for c in r["candidates"] if c != r["answer"]] for r in rows]
    if len({len(c) for c in candidates}) > 1:
        raise InterpError(f"every line of {Path(task).name} needs the same number of candidates")
    return PuzzleSet("custom", [r["prompt"] for r in rows], [r["answer"] for r in rows], candidates, [""] * len(rows), "none", seed)


def eval_run(model: Model, vector_file: str, layers: Sequence[int], task: str = "deduction",
             coefficients: Sequence[float] = DEFAULT_COEFFICIENTS, n: int | None = None, keep_norm: bool = False,
             positions: str | int = "all", n_rules: int = 2, seed: int = 0, backend: str | None = None,
             command: str = "steer eval", out: str | Path | None = None, resume: bool = False,
             progress: Callable[[str, int, int], None] | None = None, max_memory: int | None = None,
             workers: RayWorkers | None = None) -> RunResult:
    """A coefficient sweep of the saved vectors at ``layers`` on held-out ``task`` prompts (first answer token).

    With ``out``, every finished group of equal-length prompts is checkpointed there; ``resume=True``
    completes an interrupted sweep with identical results. ``workers`` (`interp.ray_workers.RayWorkers`)
    measures the groups on Ray workers (`interp.steering.ray_steering`), with the same results.
    """
    t0 = time.perf_counter()
    if task in BEHAVIOUR_TASKS:
        raise InterpError(f"{task} is scored by `interp steer attack`, not by a first-token sweep; eval takes {', '.join(PUZZLE_TASKS)} or a JSONL file")
    if n is not None and n < 1:
        raise InterpError(f"n must be at least 1, got {n}")
    if n is None and task in PUZZLE_TASKS:
        n = DEFAULT_N  # generated puzzles; a JSONL file's default is every line
    vectors = load_vector_set(model, vector_file, layers)
    held_out = _eval_prompts(model, task, vectors, n, seed, n_rules, len(coefficients))
    digest = hashlib.sha256(vectors.vectors.detach().float().contiguous().numpy().tobytes()).hexdigest()[:16]
    run_id = {"command": "steer eval", "model": model.name, "vector_file": str(vector_file), "vectors_sha256": digest,
              "layers": list(vectors.layers),
              "task": task, "coefficients": [float(c) for c in coefficients], "n": n, "keep_norm": keep_norm,
              "positions": positions, "n_rules": n_rules, "seed": seed, "backend": backend}
    checkpoint = Checkpoint(Path(out), run_id) if out is not None else None
    saved = checkpoint.load() if checkpoint is not None and resume else None
    state = dict(saved[0]) if saved else {}
    if state:
        state["hits"], state["done"] = state["hits"].bool(), state["done"].bool()

    def keep(current: dict) -> None:
        if checkpoint is not None:
            checkpoint.save({name: value.contiguous() for name, value in current.items()}, int(current["done"].sum()),
                            len(held_out), unit="held-out prompts")

    sweep = coefficient_sweep(model, vectors, None, held_out.prompts, held_out.candidate_ids(model.tokenizer), held_out.correct,
                              coefficients, keep_norm, positions, backend=backend, progress=progress, state=state,
                              on_group=keep, max_memory=max_memory, workers=workers)
    scores = {"sweep/coefficient": torch.tensor(sweep.coefficients), "sweep/accuracy": torch.tensor(sweep.accuracy),
              "sweep/kl": torch.tensor(sweep.kl_mean), "sweep/kl_std": torch.tensor(sweep.kl_std),
              "sweep/entropy": torch.tensor(sweep.entropy_mean), "sweep/mass_right": torch.tensor(sweep.mass_right),
              "sweep/mass_wrong": torch.tensor(sweep.mass_wrong), "sweep/kl/per_prompt": sweep.kl,
              "sweep/entropy/per_prompt": sweep.entropy}
    labels = {"coefficient": [f"{c:g}" for c in sweep.coefficients]}
    tensors = {name: describe_tensor(name, value, ["coefficient"] if value.ndim == 1 else ["coefficient", "prompt"], labels)
               for name, value in scores.items()}
    lines = [{"title": title, "x": "sweep/coefficient", "ys": ys, "x_title": "coefficient", "y_title": y_title}
             for title, ys, y_title in (("Accuracy and answer mass", ["sweep/accuracy", "sweep/mass_right", "sweep/mass_wrong"], "share / probability"),
                                        ("KL(unsteered || steered) at the first answer token", ["sweep/kl"], "nats"),
                                        ("Entropy of the steered next-token distribution", ["sweep/entropy"], "bits"))]
    manifest = {**run_header(model, command, seed, backend), "metric": "accuracy", "method": vectors.method,
                "site": ", ".join(f"{vectors.kind}.{layer}" for layer in vectors.layers),
                "prompt_set": {"name": task, "n_prompts": len(held_out), "example": held_out.prompts[0] + held_out.answers[0]},
                "parameters": {"vector_file": str(vector_file), "layers": vectors.layers, "coefficients": sweep.coefficients,
                               "keep_norm": keep_norm, "positions": positions, "n": n, "n_rules": n_rules},
                "vectors": {"method": vectors.method, "position": vectors.position, "meta": vectors.meta},
                "sweep": sweep.rows(), "notes": [{"title": "Sweep", "text": sweep.table()}], "lines": lines,
                "tensors": tensors, "timings": {"run_s": round(time.perf_counter() - t0, 3)}}
    if workers is not None:
        manifest["ray"] = workers.info()
    return RunResult(manifest=manifest, scores=scores)
