"""An activation-patching run: baselines, sweeps, checkpoints and the run folder.

`activation_patching` is what ``interp patch`` calls and what notebooks call. It runs the clean and
corrupt baselines, sweeps every requested component and returns a `RunResult` holding
``activation/<component>`` (mean over prompts) and ``activation/<component>/per_prompt`` tensors.
With ``out`` set, finished patches are checkpointed to ``out/partial.safetensors`` as they complete,
so an interrupted run loses nothing and ``resume=True`` completes it with identical numbers.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import torch

from interp.limits import check_context, check_memory
from interp.errors import InterpError
from interp.metrics import MetricContext, check_finite, get_metric
from interp.model import Model
from interp.plots import position_labels
from interp.prompts import PromptSet
from interp.results import (RunResult, SCHEMA_VERSION, describe_tensor, package_versions, read_tensors,
                            write_json_atomic, write_tensors_atomic)
from interp.stats import bootstrap_ci
from interp.patching.activation import (COMPONENTS, ENGINES, BatchedEngine, check_component, grid_shape, memory_budget,
                                       row_bytes, rows_that_fit, sweep)
from interp.rules import RELP_RULES, parse_rules
from interp.patching.attribution import attribution_patching, prompts_per_pass
from interp.patching.faithfulness import faithfulness
from interp.patching.integrated_gradients import integrated_gradients
from interp.patching.ray_patching import ray_ig_passes, ray_sweep, shared_state

if TYPE_CHECKING:
    from interp.ray_workers import RayWorkers

DIRECTIONS = ("denoise", "noise")
METHODS = ("activation", "atp", "relp", "ig")
ESTIMATORS = ("atp", "relp", "ig")  # methods that estimate activation patching
PARTIAL = "partial.safetensors"
PROGRESS = "progress.json"
CHECKPOINT_EVERY_S = 5.0


def _axis_labels(model: Model, axes: tuple[str, ...], layers: list[int], str_tokens: list[str]) -> dict[str, list[str]]:
    labels = {"layer": [str(layer) for layer in layers], "pos": position_labels(str_tokens),
              "head": [f"H{h}" for h in range(model.n_heads)], "neuron": [str(i) for i in range(model.d_mlp)]}
    return {a: labels[a] for a in axes}


def memory_needed(model: Model, n: int, n_pos: int, components: list[str], methods: list[str],
                  mlp_layers: list[int] | None = None, ig_steps: int = 10) -> int:
    """A lower bound on the bytes a run holds at once: the two baseline runs' logits and read sites, the
    batched engine's cached residuals, the patch grids, and IG's ``ig_steps`` copies of a site."""
    item = next(model.hf.parameters()).element_size()
    layers_of = {c: (list(mlp_layers or []) if c == "mlp_act" else list(range(model.n_layers))) for c in components}
    sites = sum(len(layers_of[c]) * (model.d_mlp if c == "mlp_act" else model.d_model) for c in components)
    per_prompt = item * n_pos * (2 * model.d_vocab + 2 * sites + model.n_layers * model.d_model)
    cells = sum(math.prod(grid_shape(model, c, n_pos, layers_of[c])) for c in components)
    per_prompt += 4 * cells * len(methods)  # float32 values per method
    if "ig" in methods:
        per_prompt += item * ig_steps * n_pos * (model.d_vocab + max(model.d_model, model.d_mlp))
    return int(n) * per_prompt


def check_size(model: Model, n: int, n_pos: int, components: list[str], methods: list[str],
               mlp_layers: list[int] | None = None, ig_steps: int = 10) -> None:
    """Refuse, before anything is allocated, prompts longer than the model's context or a run larger than memory."""
    check_context(model, n_pos, "each prompt", "use shorter prompts")
    need = memory_needed(model, n, n_pos, components, methods, mlp_layers, ig_steps)
    check_memory(need, f"patching {n} prompts of {n_pos} tokens" + (f" with {ig_steps} IG steps" if "ig" in methods else ""),
                 str(model.device), "use fewer --n-prompts" + (", fewer --ig-steps" if "ig" in methods else "")
                 + " or fewer --components")


def check_options(components: list[str], methods: list[str], direction: str, metric: str,
                  engine: str, rules: str = ",".join(RELP_RULES), ig_steps: int = 10) -> tuple[list[str], list[str]]:
    """Validate a run's options before any model work; returns the component and method lists."""
    components = [check_component(c) for c in components]
    if not components:
        raise InterpError("no components given: pass e.g. --components resid_pre,attn_out")
    methods = list(methods)
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise InterpError(f"unknown method '{','.join(unknown) or '(none)'}': use one or more of {', '.join(METHODS)}")
    if direction not in DIRECTIONS:
        raise InterpError(f"unknown direction '{direction}': use denoise or noise")
    if engine not in ENGINES:
        raise InterpError(f"unknown engine '{engine}': use one of {', '.join(ENGINES)}")
    get_metric(metric)
    if not parse_rules(rules) and "relp" in methods:
        raise InterpError("relp needs at least one rule: pass e.g. --rules ln,identity,half")
    if ig_steps < 1:
        raise InterpError(f"--ig-steps must be at least 1, got {ig_steps}")
    return components, methods


def activation_patching(
    model: Model,
    prompts: PromptSet,
    components: list[str] = ("resid_pre", "attn_out", "mlp_out", "head_out"),
    methods: list[str] = ("activation",),
    direction: str = "denoise",
    metric: str = "logit_diff",
    mlp_layers: list[int] | None = None,
    engine: str = "batched",
    out: str | Path | None = None,
    resume: bool = False,
    progress: Callable[[str, int, int], None] | None = None,
    seed: int = 0,
    command: str = "python",
    rules: str = ",".join(RELP_RULES),
    ig_steps: int = 10,
    max_memory: int | None = None,
    workers: "RayWorkers | None" = None,
) -> RunResult:
    """Patch every component of ``components`` and return the run (saved to ``out`` if given).

    ``direction="denoise"`` patches clean activations into the corrupt run; ``"noise"`` the reverse.
    ``methods``: "activation" (exact patching) and any of the estimators "atp" (attribution
    patching), "relp" (relevance patching with LRP ``rules``) and "ig" (integrated gradients with
    ``ig_steps`` steps). With activation and an estimator, the manifest's ``faithfulness`` compares
    each estimator with activation patching per component. ``progress(task, done, total)`` is
    called as patches (or IG layers) finish. ``max_memory`` (bytes; None: a share of the device's free
    memory) sizes the batched forwards of activation patching and IG; results do not depend on it.
    """
    components, methods = check_options(components, methods, direction, metric, engine, rules, ig_steps)
    metric_fn = get_metric(metric)
    if "mlp_act" in components:
        if not mlp_layers:
            raise InterpError("component mlp_act patches every neuron of chosen layers: pass --mlp-layers, e.g. --mlp-layers 15,29")
        for layer in mlp_layers:
            model.site(f"mlp_act.{layer}")
    elif mlp_layers:
        raise InterpError("--mlp-layers chooses the layers of component mlp_act, which is not in --components: "
                          "add mlp_act to --components or drop --mlp-layers")
    t_start = time.perf_counter()
    tokens = prompts.tokenize(model.tokenizer)
    base = tokens.corrupt if direction == "denoise" else tokens.clean
    n, n_pos = base.shape
    check_size(model, n, n_pos, components, methods, mlp_layers, ig_steps)
    if max_memory is not None and {"activation", "ig"} & set(methods):  # refuse a budget too small for one patch
        rows_that_fit(memory_budget(model, max_memory), n * row_bytes(model, 0, 0, n_pos, grad="ig" in methods),
                      f"one patch of {n} prompts of {n_pos} tokens")
    layers_of = {c: (list(mlp_layers) if c == "mlp_act" else list(range(model.n_layers))) for c in components}
    source_sites = sorted({f"{COMPONENTS[c][0]}.{layer}" for c in components for layer in layers_of[c]})
    if max_memory is not None and {"atp", "relp"} & set(methods):  # and too small for one AtP/RelP prompt
        prompts_per_pass(model, base, len(source_sites), max_memory)

    params = {"components": components, "methods": methods, "direction": direction, "metric": metric, "engine": engine,
              "mlp_layers": list(mlp_layers or []), "n_prompts": n, "seed": seed}
    if "relp" in methods:
        params["rules"] = [r.name for r in parse_rules(rules)]
    if "ig" in methods:
        params["ig_steps"] = ig_steps
    run_id = {"model": model.name, "prompt_set": prompts.name, "fingerprint": prompts.fingerprint(),
              "dtype": str(next(model.hf.parameters()).dtype).replace("torch.", ""), **params}
    values, done, estimates, ig_grads = _resume_state(out, run_id, resume)
    totals = {c: int(torch.tensor(grid_shape(model, c, n_pos, layers_of[c])).prod())
              for c in (components if "activation" in methods else [])}
    n_ig = len({(COMPONENTS[c][0], layer) for c in components for layer in layers_of[c]})
    if "ig" in methods and "ig" not in estimates:
        totals["ig"] = n_ig

    def checkpoint() -> None:
        _checkpoint(out, run_id, values, done, estimates, ig_grads, totals)

    needs_base = "ig" in methods
    with torch.no_grad():
        clean_run = model.run(tokens.clean, read=source_sites if direction == "denoise" or needs_base else [])
        corrupt_run = model.run(tokens.corrupt, read=source_sites if direction == "noise" or needs_base else [])
    source_acts = (clean_run if direction == "denoise" else corrupt_run).acts
    base_acts = (corrupt_run if direction == "denoise" else clean_run).acts
    ctx = MetricContext(tokens.answer, tokens.wrong, clean_run.logits[:, -1], corrupt_run.logits[:, -1])
    baselines = {name: check_finite(metric_fn(run.logits[:, -1], ctx), f"the {name} run's {metric}")
                 for name, run in (("clean", clean_run), ("corrupt", corrupt_run))}

    timings: dict[str, float] = {}
    last_save = time.perf_counter()
    shared = None if workers is None else workers.put(  # sent to the workers once, for every component and IG
        shared_state(base, source_acts, metric, ctx, layers_of, engine, max_memory, base_acts, ig_steps))
    try:
        for method in (m for m in ESTIMATORS if m in methods and m not in estimates):
            t0 = time.perf_counter()
            if method == "ig":
                count = 0

                def on_layer(kind: str, layer: int) -> None:
                    nonlocal count, last_save
                    count += 1
                    if progress:
                        progress("ig", count, n_ig)
                    if out is not None and time.perf_counter() - last_save > CHECKPOINT_EVERY_S:
                        checkpoint()
                        last_save = time.perf_counter()

                if workers is not None:  # the passes on the workers, then the estimates from their gradients
                    count = len(ig_grads)
                    sites = list(dict.fromkeys((COMPONENTS[c][0], layer) for c in components for layer in layers_of[c]))
                    ray_ig_passes(workers, sites, shared, ig_grads, on_layer)
                estimates[method] = integrated_gradients(model, components, base, source_acts, base_acts, metric_fn,
                                                         ctx, layers_of, steps=ig_steps, engine=engine,
                                                         on_layer=None if workers is not None else on_layer,
                                                         grads=ig_grads, max_memory=max_memory)
                ig_grads.clear()  # kept in the estimate now
            else:
                estimates[method] = attribution_patching(model, components, base, source_acts, metric_fn, ctx,
                                                         layers_of, rules=rules if method == "relp" else (),
                                                         max_memory=max_memory)
            for comp, estimate in estimates[method].items():
                check_finite(estimate, f"{method}/{comp}")
            timings[f"{method}_s"] = round(time.perf_counter() - t0, 3)
            if out is not None:
                checkpoint()
                last_save = time.perf_counter()
        batched = (BatchedEngine(model, base, max_memory=max_memory)
                   if engine == "batched" and "activation" in methods and workers is None else None)
        for comp in (components if "activation" in methods else []):
            shape = grid_shape(model, comp, n_pos, layers_of[comp])
            total = int(torch.tensor(shape).prod())
            if comp not in done:
                values[comp] = torch.full((n, *shape), float("nan"))
                done[comp] = torch.zeros(shape, dtype=torch.bool)
            finished = int(done[comp].sum())
            if progress:
                progress(comp, finished, total)

            def on_chunk(k: int, comp: str = comp, total: int = total) -> None:
                nonlocal last_save, finished
                finished += k
                if progress:
                    progress(comp, finished, total)
                if out is not None and time.perf_counter() - last_save > CHECKPOINT_EVERY_S:
                    checkpoint()
                    last_save = time.perf_counter()

            t0 = time.perf_counter()
            if workers is not None:
                ray_sweep(workers, model, comp, shared, n_pos, layers_of[comp], done[comp], values[comp], on_chunk)
            else:
                sweep(model, comp, base, source_acts, metric_fn, ctx, layers=layers_of[comp], engine=engine,
                      done=done[comp], values=values[comp], on_chunk=on_chunk, batched=batched)
            timings[f"{comp}_s"] = round(time.perf_counter() - t0, 3)
            check_finite(values[comp], f"activation/{comp}")
    except BaseException:
        if out is not None:
            checkpoint()
        raise
    run_s = time.perf_counter() - t_start

    results = ({"activation": values} if "activation" in methods else {}) | estimates
    base_name = "corrupt" if direction == "denoise" else "clean"
    base_mean, other = float(baselines[base_name].mean()), float(baselines["clean" if direction == "denoise" else "corrupt"].mean())
    scores, tensors = {}, {}
    for method, per_comp in results.items():
        for comp in components:
            axes = COMPONENTS[comp][1]
            labels = _axis_labels(model, axes, layers_of[comp], tokens.str_tokens)
            name, mean = f"{method}/{comp}", per_comp[comp].mean(0)
            scores[name], scores[f"{name}/per_prompt"] = mean, per_comp[comp]
            tensors[name] = describe_tensor(name, mean, list(axes), labels)
            tensors[name]["zmid"] = base_mean
            what = "after patching that cell" if method == "activation" else f"estimated by {method} for patching that cell"
            tensors[name]["note"] = (
                f"Each cell: mean {metric} {what} ({direction}). White = no change from the "
                f"{base_name} run ({base_mean:.3f}); the {'clean' if direction == 'denoise' else 'corrupt'} run gives {other:.3f}.")
            tensors[f"{name}/per_prompt"] = describe_tensor(f"{name}/per_prompt", per_comp[comp], ["prompt", *axes], labels)
    first = next(iter(results.values()))
    faithful = {method: {comp: faithfulness(values[comp].mean(0), est[comp].mean(0), base_mean) for comp in components}
                for method, est in estimates.items() if "activation" in methods}
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "status": "complete",
        "command": command,
        "model": model.name,
        "backend": model.backend_name,
        "dtype": run_id["dtype"],
        "prompt_set": {"name": prompts.name, "fingerprint": prompts.fingerprint(), "n_prompts": n,
                       "n_tokens": n_pos, "tokens": tokens.str_tokens, "example_clean": prompts.clean[0],
                       "example_corrupt": prompts.corrupt[0]},
        "metric": metric,
        "methods": methods,
        "components": components,
        "parameters": params,
        "baselines": {name: _summary(v) for name, v in baselines.items()},
        "top_cells": {comp: _top_cells(first[comp], COMPONENTS[comp][1], layers_of[comp], tokens.str_tokens,
                                       baselines[base_name])
                      for comp in components},
        "faithfulness": faithful,
        "comparisons": [{"x": f"activation/{comp}", "y": f"{method}/{comp}", "stats": stats}
                        for method, per_comp in faithful.items() for comp, stats in per_comp.items()],
        "tensors": tensors,
        "timings": {"run_s": round(run_s, 3), **timings},
        "versions": package_versions(),
        "seed": seed,
    }
    if model.device_map:  # where each module ran (results equal the single-device run's)
        manifest["device_map"] = model.device_map
    if workers is not None:
        manifest["ray"] = workers.info()
    result = RunResult(manifest=manifest, scores=scores)
    if out is not None:
        result.save(out)
        for name in (PARTIAL, PROGRESS):
            (Path(out) / name).unlink(missing_ok=True)
    return result


def _summary(per_prompt: torch.Tensor) -> dict:
    mean, lo, hi = bootstrap_ci(per_prompt.float())
    return {"mean": round(mean, 6), "ci95": [round(lo, 6), round(hi, 6)], "per_prompt": [round(float(v), 6) for v in per_prompt]}


def _top_cells(per_prompt: torch.Tensor, axes: tuple[str, ...], layers: list[int], str_tokens: list[str],
               base: torch.Tensor, k: int = 5) -> list[dict]:
    """The ``k`` cells whose patch moves the metric most from the base run, with 95% bootstrap CIs."""
    effect = (per_prompt - base.reshape(-1, *([1] * (per_prompt.ndim - 1)))).mean(0)
    top = effect.flatten().abs().topk(min(k, effect.numel())).indices
    cells = []
    for flat in top.tolist():
        cell = torch.unravel_index(torch.tensor(flat), effect.shape)
        where = {a: int(i) for a, i in zip(axes, cell)}
        where["layer"] = layers[where["layer"]]
        if "pos" in where:
            where["token"] = str_tokens[where["pos"]]
        mean, lo, hi = bootstrap_ci(per_prompt[(slice(None), *cell)].float())
        cells.append({**where, "metric": round(mean, 4), "ci95": [round(lo, 4), round(hi, 4)]})
    return cells


def _checkpoint(out: str | Path, run_id: dict, values: dict, done: dict, estimates: dict,
                ig_grads: dict | None = None, totals: dict | None = None) -> None:
    """Save finished activation patches, finished estimators and IG's finished passes, for ``--resume``.

    progress.json counts finished units against ``totals`` (every component of the run, started or not;
    ``ig``: its passes).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ig_grads = ig_grads or {}
    tensors = {f"values/{c}": v for c, v in values.items()} | {f"done/{c}": d for c, d in done.items()}
    tensors |= {f"estimate/{m}/{c}": v for m, per_comp in estimates.items() for c, v in per_comp.items()}
    tensors |= {f"ig_grad/{site}": g for site, g in ig_grads.items()}
    totals = dict(totals or {c: d.numel() for c, d in done.items()})
    finished = {c: int(done[c].sum()) if c in done else 0 for c in totals}
    if "ig" in totals:
        finished["ig"] = totals["ig"] if "ig" in estimates else len(ig_grads)
    write_tensors_atomic(out / PARTIAL, tensors)
    write_json_atomic(out / PROGRESS, {"run": run_id, "done": finished, "total": totals})


def _resume_state(out: str | Path | None, run_id: dict, resume: bool) -> tuple[dict, dict, dict, dict]:
    """Values, done masks, finished estimators and IG's finished passes from an interrupted run in ``out``
    (empty when starting afresh)."""
    if out is None:
        if resume:
            raise InterpError("--resume needs --out DIR: the folder of the interrupted run")
        return {}, {}, {}, {}
    out = Path(out)
    progress_file, partial_file = out / PROGRESS, out / PARTIAL
    if not resume:
        if partial_file.exists():
            raise InterpError(f"{out} holds an interrupted run: add --resume to complete it, or choose another --out")
        return {}, {}, {}, {}
    if not partial_file.exists() or not progress_file.exists():
        raise InterpError(f"nothing to resume in {out}: no interrupted run there (run without --resume)")
    import json

    saved = json.loads(progress_file.read_text())["run"]
    if saved != run_id:
        changed = sorted(k for k in set(saved) | set(run_id) if saved.get(k) != run_id.get(k))
        raise InterpError(f"cannot resume {out}: it was started with different {', '.join(changed)}; use the same options or another --out")
    tensors = read_tensors(partial_file)
    values = {k.split("/", 1)[1]: v for k, v in tensors.items() if k.startswith("values/")}
    done = {k.split("/", 1)[1]: v.bool() for k, v in tensors.items() if k.startswith("done/")}
    estimates: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("estimate/"):
            _, method, comp = key.split("/")
            estimates.setdefault(method, {})[comp] = value
    ig_grads = {k.split("/", 1)[1]: v for k, v in tensors.items() if k.startswith("ig_grad/")}
    return values, done, estimates, ig_grads
