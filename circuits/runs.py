"""Run folders for ``interp heads``, ``interp voids`` and ``interp circuit``.

- `heads_run`: induction, previous-token and duplicate-token scores [layer, head] on repeated random
  tokens, and (with a task) direct logit attribution per head and MLP.
- `voids_run`: LAC layer usage in prompt processing and response generation, token x layer maps,
  and multiple-choice accuracy with and without skipping voids.
- `circuit_build_run`, `circuit_overlap_run`, `circuit_faithfulness_run`: a circuit from a patching
  run folder (thresholded node scores, optional path-patching edges), the overlap of two circuits,
  and a circuit's faithfulness on a task.
"""

from __future__ import annotations

import time
from typing import Sequence

import torch

from interp.circuits.graph import (Circuit, Faithfulness, check_nodes, faithfulness, node_scores, overlap, parse_node,
                                   threshold)
from interp.circuits.heads import DETECTORS, detect_heads, direct_logit_attribution
from interp.circuits.units import Units, run_units
from interp.errors import InterpError
from interp.limits import check_context, check_memory, memory_budget
from interp.metrics import MetricContext, check_finite
from interp.model import Model
from interp.prompts import PromptSet
from interp.results import RunResult, describe_tensor, load_run, run_header


def heads_run(model: Model, prompts: PromptSet | None = None, n_random: int = 4, period: int = 20, seed: int = 0,
              backend: str | None = None, command: str = "heads detect") -> RunResult:
    """Head-detector scores, and DLA on ``prompts`` when given."""
    t0 = time.perf_counter()
    check_context(model, 2 * period, f"--period {period} (each random sequence is repeated once)", "lower --period")
    check_memory(n_random * (model.n_layers * model.n_heads * 2 * period + model.d_vocab) * 2 * period * 4,
                 f"the attention patterns and logits of {n_random} sequences of {2 * period} tokens", model.device,
                 "lower --period or --n-random")
    found = detect_heads(model, backend=backend, n_prompts=n_random, period=period, seed=seed)
    scores = {name: check_finite(value, name) for name, value in found.tensors().items()}
    tensors = {name: describe_tensor(name, value, ["layer", "head"]) for name, value in scores.items()}
    lines = [f"{d}: " + ", ".join(f"L{layer}H{head} {score:.2f}" for layer, head, score in found.top(d, 5)) for d in DETECTORS]
    manifest = {**run_header(model, command, seed, backend), "method": "head detectors",
                "parameters": {"n_random": n_random, "period": period}}
    if prompts is not None:
        tokens = prompts.tokenize(model.tokenizer)
        dla = direct_logit_attribution(model, tokens.clean, tokens.answer, tokens.wrong, backend=backend)
        for name, value in dla.tensors().items():
            scores[name] = check_finite(value, name)
            axes = (["prompt"] if name.endswith("/per_prompt") else []) + (["layer", "head"] if "head" in name else ["layer"])
            tensors[name] = describe_tensor(name, value, axes)
        grid = dla.heads.mean(0)
        top = grid.flatten().abs().topk(5).indices.tolist()
        lines.append("DLA (logit diff " + f"{float(dla.logit_diff.mean()):.3f}): "
                     + ", ".join(f"L{i // grid.shape[1]}H{i % grid.shape[1]} {float(grid.flatten()[i]):+.3f}" for i in top))
        manifest |= {"metric": "logit_diff", "prompt_set": {"name": prompts.name, "n_prompts": len(prompts),
                                                           "fingerprint": prompts.fingerprint(), "tokens": tokens.str_tokens}}
    manifest |= {"notes": [{"title": "Top heads", "text": "\n".join(lines)}], "tensors": tensors,
                 "timings": {"run_s": round(time.perf_counter() - t0, 3)}}
    return RunResult(manifest=manifest, scores=scores)


def voids_run(model: Model, prompts: Sequence[str], max_new_tokens: int = 16, alpha: float = 0.8, chat: bool = True,
              mc: bool = True, seed: int = 0, command: str = "voids", progress=None) -> RunResult:
    """Layer usage of LAC in both phases on ``prompts``, and the multiple-choice set with and without skipping.

    ``progress(phase, done, total)`` reports the generations and the multiple-choice questions.
    """
    from interp.circuits.mc_set import evaluate_mc
    from interp.circuits.voids import void_usage

    t0 = time.perf_counter()
    usage = void_usage(model, list(prompts), max_new_tokens, alpha, chat, progress)
    scores = usage.tensors()
    tensors = {}
    for name, value in scores.items():
        if name.startswith("voids/usage"):
            tensors[name] = describe_tensor(name, value, ["layer"]) | {"plot": True}
        else:
            i = int(name.rsplit(".", 1)[1])
            phase = usage.generations[i].prompt if "prompt_map" in name else usage.generations[i].response
            labels = {"token": [f"{j} {t}" for j, t in enumerate(phase.tokens)]} if len(phase.tokens) == value.shape[0] else {}
            tensors[name] = describe_tensor(name, value, ["token", "layer"], labels)
    text = [f"alpha {alpha}; share of layers activated: prompt {float(usage.usage_prompt.mean()):.3f}, "
            f"response {float(usage.usage_response.mean()):.3f}"]
    manifest = {**run_header(model, command, seed), "method": "LAC (L2 adaptive computation)",
                "parameters": {"alpha": alpha, "max_new_tokens": max_new_tokens, "chat": chat, "prompts": list(prompts)},
                "generations": [g.text for g in usage.generations]}
    if mc:
        result = evaluate_mc(model, alpha=alpha, progress=progress)
        scores["voids/mc_accuracy"] = torch.tensor([result.accuracy, result.accuracy_skip])
        tensors["voids/mc_accuracy"] = describe_tensor("voids/mc_accuracy", scores["voids/mc_accuracy"], ["skipping"],
                                                       {"skipping": ["off", "on"]}) | {"plot": True}
        text.append(f"multiple choice ({len(result.answers)} questions, letter logits): accuracy {result.accuracy:.3f} "
                    f"without skipping, {result.accuracy_skip:.3f} with")
        manifest["mc"] = {"accuracy": result.accuracy, "accuracy_skip": result.accuracy_skip, "n": len(result.answers)}
    manifest |= {"notes": [{"title": "Voids", "text": "\n".join(text)}], "tensors": tensors,
                 "timings": {"run_s": round(time.perf_counter() - t0, 3)}}
    return RunResult(manifest=manifest, scores=scores)


def _defined(x: float) -> float | None:
    """``x``, or None (null in the manifest) when it is undefined (NaN)."""
    return None if x is None or x != x else x


def _fmt(x: float | None) -> str:
    return "undefined" if x is None else f"{x:.3f}"


def circuit_build_run(run_folder: str, method: str = "activation", components: Sequence[str] | None = None,
                      top_k: int | None = 10, min_abs: float | None = None, command: str = "circuit build") -> tuple[RunResult, Circuit]:
    """Threshold a patching run's node scores into a circuit; the run lists its nodes by score."""
    source = load_run(run_folder)
    scores = node_scores(source, method, components)
    circuit = threshold(scores, top_k, min_abs, {"run": str(run_folder), "method": method, "components": components})
    names = list(circuit.nodes)
    values = torch.tensor([circuit.nodes[n] for n in names])
    manifest = {"schema_version": 1, "status": "complete", "command": command, "method": "circuit",
                "model": source.manifest.get("model", ""), "metric": source.manifest.get("metric", ""),
                "parameters": {"run": str(run_folder), "method": method, "components": components, "top_k": top_k,
                               "min_abs": min_abs},
                "circuit": circuit.to_json(),
                "notes": [{"title": "Circuit", "text": "\n".join(f"{n}: {circuit.nodes[n]:+.4f}" for n in names)
                           or f"no node kept: no node of {run_folder} has |effect| >= {min_abs}"}],
                "tensors": {"circuit/node_score": describe_tensor("circuit/node_score", values, ["node"], {"node": names})
                            | {"plot": True}}}
    return RunResult(manifest=manifest, scores={"circuit/node_score": values}), circuit


def circuit_overlap_run(a: str, b: str, command: str = "circuit overlap") -> RunResult:
    """The overlap of two saved circuits."""
    ca, cb = Circuit.load(a), Circuit.load(b)
    result = overlap(ca, cb)
    values = torch.tensor([result.iou, result.over_a, result.over_b])
    ratios = {name: _defined(getattr(result, name)) for name in ("iou", "over_a", "over_b")}
    text = [", ".join(f"{label} {_fmt(ratios[name])}" for label, name in (("intersection over union", "iou"),
                                                                         ("over a", "over_a"), ("over b", "over_b"))),
            f"shared ({len(result.shared)}): {', '.join(result.shared)}", f"only a: {', '.join(result.only_a)}",
            f"only b: {', '.join(result.only_b)}"]
    manifest = {"schema_version": 1, "status": "complete", "command": command, "method": "circuit overlap",
                "parameters": {"a": str(a), "b": str(b)},
                "overlap": {"shared": result.shared, "only_a": result.only_a, "only_b": result.only_b, **ratios},
                "notes": [{"title": "Overlap", "text": "\n".join(text)}],
                "tensors": {"circuit/overlap": describe_tensor("circuit/overlap", values, ["ratio"],
                                                              {"ratio": ["iou", "over_a", "over_b"]}) | {"plot": True}}}
    return RunResult(manifest=manifest, scores={"circuit/overlap": values})


def circuit_faithfulness_run(model: Model, circuit_path: str, prompts: PromptSet, metric: str = "logit_diff",
                             reference: str = "clean", keep_mlps: bool = False, seed: int = 0, backend: str | None = None,
                             command: str = "circuit faithfulness") -> RunResult:
    """The metric with everything outside the circuit mean-ablated, against the full and the empty model.

    ``keep_mlps`` adds every MLP to the circuit (a head circuit with the MLPs left intact, as in the IOI paper).
    """
    from interp.circuits.edge_circuit import is_edge_circuit, measure_edge_circuit
    from interp.circuits.edge_graph import edge_graph
    from interp.circuits.feature_circuit import dictionaries_attached, feature_faithfulness, is_feature_circuit

    circuit = Circuit.load(circuit_path)
    features = is_feature_circuit(circuit)
    if keep_mlps and features:
        raise InterpError("--keep-mlps is for circuits of heads: a feature circuit leaves every head and MLP as it is")
    if keep_mlps:
        circuit = Circuit(circuit.nodes | {f"mlp.{layer}": 0.0 for layer in range(model.n_layers)}, circuit.edges, circuit.provenance)
    t0 = time.perf_counter()
    edges = is_edge_circuit(circuit)
    if features:
        with dictionaries_attached(model, circuit):
            result = feature_faithfulness(model, circuit, prompts, metric, reference, backend)
    elif edges:
        if keep_mlps:
            raise InterpError("--keep-mlps is for circuits of heads: an edge circuit keeps the edges it lists")
        tokens = prompts.tokenize(model.tokenizer)
        with torch.no_grad():
            ctx = MetricContext(tokens.answer, tokens.wrong, model.run(tokens.clean, backend=backend).logits[:, -1],
                                model.run(tokens.corrupt, backend=backend).logits[:, -1])
        measured = measure_edge_circuit(model, circuit, tokens.clean, tokens.corrupt, metric, ctx, backend=backend)
        result = Faithfulness(measured.full, measured.values[0], measured.empty,
                              n_ablated=int(edge_graph(model).n_edges - len(circuit.edges)))
    else:
        result = faithfulness(model, circuit, prompts, metric, reference, backend)
    per_prompt = torch.stack([result.full, result.circuit, result.empty], dim=1).float()
    means = per_prompt.mean(0)
    labels = {"model": ["full", "circuit", "empty"]}
    text = (f"{metric}: full {float(means[0]):.4f}, circuit {float(means[1]):.4f}, empty {float(means[2]):.4f}; "
            f"fraction {_fmt(result.fraction)}, normalized {_fmt(result.normalized)} ({result.n_ablated} "
            + ("mean-ablations of latents and error terms)" if features else
               f"edges outside the circuit {'mean-ablated' if circuit.provenance.get('ablation') == 'mean' else 'patched from the corrupt run'})"
               if edges else "components mean-ablated)"))
    if result.fraction is None or result.normalized is None:
        text += "; a ratio is undefined (null) where its denominator, the full model's metric or full - empty, is 0"
    if result.ignored:
        text += (f"; {len(result.ignored)} nodes are not heads, MLPs or neurons and were not used: "
                 + ", ".join(result.ignored))
    kinds = sorted({parse_node(n).kind for n in circuit.nodes})
    manifest = {**run_header(model, command, seed, backend), "metric": metric, "method": "circuit faithfulness",
                "prompt_set": {"name": prompts.name, "n_prompts": len(prompts), "fingerprint": prompts.fingerprint()},
                "parameters": {"circuit": str(circuit_path), "reference": reference, "keep_mlps": keep_mlps, "node_kinds": kinds,
                               "n_nodes": len(circuit)},
                "faithfulness": {"full": float(means[0]), "circuit": float(means[1]), "empty": float(means[2]),
                                 "fraction": result.fraction, "normalized": result.normalized, "n_ablated": result.n_ablated},
                "notes": [{"title": "Faithfulness", "text": text}],
                "tensors": {"circuit/faithfulness": describe_tensor("circuit/faithfulness", means, ["model"], labels) | {"plot": True},
                            "circuit/faithfulness/per_prompt": describe_tensor("circuit/faithfulness/per_prompt", per_prompt,
                                                                               ["prompt", "model"], labels)},
                "timings": {"run_s": round(time.perf_counter() - t0, 3)}}
    return RunResult(manifest=manifest, scores={"circuit/faithfulness": means, "circuit/faithfulness/per_prompt": per_prompt})



def retrieval_run(model: Model, context_lengths: Sequence[int], depths: Sequence[float], ks: Sequence[int], n_random: int = 1,
                  max_new_tokens: int = 30, seed: int = 0, command: str = "heads retrieval", batch_size: int | None = None,
                  progress=None, units: Units | None = None, max_memory: int | None = None, workers=None) -> RunResult:
    """Retrieval scores per head on needle-in-a-haystack prompts, and recall with top-k vs random-k heads masked.

    ``units`` (see `retrieval_units`) keeps every decoded prompt and masking setting for a resumed run;
    ``progress(phase, done, total)`` reports the "detect" and "mask" phases. ``max_memory`` (bytes; None: a share
    of the device's free memory) bounds the decode batches and the prefill caches kept between the two passes;
    the numbers do not depend on it. ``workers`` (a `interp.ray_workers.RayWorkers`) decodes on Ray workers, with the
    same numbers.
    """
    from interp.circuits.haystack import niah_prompts
    from interp.circuits.retrieval import (PREFILL_KEEP_BYTES, check_ks, detect_retrieval_heads, masking_curve,
                                           prefill_bytes)

    t0 = time.perf_counter()
    check_ks(model, ks, n_random)
    prompts = niah_prompts(model.tokenizer, context_lengths, depths)
    # keep the prefill caches for the masking pass when they fit in PREFILL_KEEP_BYTES and half the budget (the same
    # caches either way); the decode batches get the rest of the budget
    budget, held = memory_budget(model, max_memory), prefill_bytes(model, prompts)
    kept = {} if held <= min(PREFILL_KEEP_BYTES, budget // 2) and ks else None
    budget -= held if kept is not None else 0
    found = detect_retrieval_heads(model, prompts, max_new_tokens, batch_size=batch_size, progress=progress, units=units,
                                   prefills=kept, max_memory=budget, workers=workers)
    t_detect = time.perf_counter() - t0
    scores = dict(found.tensors())
    tensors = {"retrieval/head_score": describe_tensor("retrieval/head_score", found.head_score, ["layer", "head"]),
               "retrieval/test_recall": describe_tensor("retrieval/test_recall", found.recall, ["test"]),
               "retrieval/test_success": describe_tensor("retrieval/test_success", scores["retrieval/test_success"], ["test"])}
    text = [f"{found.n_success} of {len(prompts)} tests successful (ROUGE-1 recall > 0.5); "
            f"{found.fraction_above(found.threshold):.1%} of heads score above {found.threshold}",
            "top heads: " + ", ".join(f"L{layer}H{head}" for layer, head in found.top(10))]
    lines = []
    if ks and found.n_success:
        curve = masking_curve(model, prompts, found, list(ks), n_random, max_new_tokens, seed, batch_size, progress, units,
                              kept, budget, workers)
        for name, value in curve.tensors().items():
            scores[name] = check_finite(value.float(), name)
            tensors[name] = describe_tensor(name, value, ["k"], {"k": [str(int(k)) for k in curve.k]})
        lines.append({"title": "NIAH recall with heads masked (uniform attention while decoding)", "x": "retrieval/k",
                      "ys": ["retrieval/recall_top", "retrieval/recall_random"], "x_title": "heads masked (k)",
                      "y_title": "ROUGE-1 recall"})
        text.append("recall, top-k vs random-k masked: " + ", ".join(
            f"k={int(k)}: {float(t):.3f} vs {float(r):.3f}" for k, t, r in zip(curve.k, curve.recall_top, curve.recall_random)))
        text += curve.notes
    elif ks:
        text.append(f"masking skipped (--ks {','.join(map(str, ks))}): no test was successful, so no head has a "
                    "retrieval score to rank by; try shorter --lengths, more --max-new-tokens or a larger model")
    manifest = {**run_header(model, command, seed, "torch (KV cache)"), "method": "retrieval heads",
                "metric": "retrieval score (copy events / needle length)",
                "parameters": {"context_lengths": list(context_lengths), "depths": list(depths), "ks": list(ks),
                               "n_random": n_random, "max_new_tokens": max_new_tokens, "n_tests": len(prompts)},
                "responses": found.responses, "notes": [{"title": "Retrieval heads", "text": "\n".join(text)}],
                "lines": lines, "tensors": tensors,
                "timings": {"detect_s": round(t_detect, 3), "run_s": round(time.perf_counter() - t0, 3)}}
    _ray_entry(manifest, workers)
    return RunResult(manifest=manifest, scores=scores)


def retrieval_units(model: Model, out, context_lengths: Sequence[int], depths: Sequence[float], ks: Sequence[int],
                    n_random: int, max_new_tokens: int, seed: int, resume: bool = False) -> Units:
    """The checkpointed units of a ``heads retrieval`` run in ``out`` (a resume must use the same options)."""
    return run_units(model, out, "heads retrieval", {"context_lengths": [int(c) for c in context_lengths],
                                                     "depths": [float(d) for d in depths], "ks": [int(k) for k in ks],
                                                     "n_random": n_random, "max_new_tokens": max_new_tokens, "seed": seed},
                     resume)


def neurons_run(model: Model, relations: Sequence[str] | None = None, k: int = 100, sweep: str | None = None,
                ks: Sequence[int] = (10, 30, 100, 300), n_identification: int = 12, keep_correct: bool = True, seed: int = 0,
                backend: str | None = None, command: str = "neurons relation", progress=None,
                units: Units | None = None, workers=None) -> RunResult:
    """Relation-specific neurons: AP per mlp_act unit, the deactivation matrix with its random control, overlap, a k sweep.

    ``units`` (see `neurons_units`) keeps the filter, the expertise and every row for a resumed run;
    ``progress(phase, done, total)`` reports each phase. ``workers`` (a `interp.ray_workers.RayWorkers`) computes the
    units on Ray workers first (`interp.circuits.ray_circuits.ray_neuron_units`), with the same numbers.
    """
    from interp.circuits.neurons import (check_k, deactivation_matrix, k_sweep, layer_histogram, neuron_expertise,
                                         relation_prompt_sets, topk_overlap)

    t0 = time.perf_counter()
    units = Units() if units is None else units
    check_k(model, k, list(ks) if sweep else [])
    if workers is not None:
        from interp.circuits.ray_circuits import ray_neuron_units

        ray_neuron_units(workers, model, relations, n_identification, seed, keep_correct, backend, k, sweep,
                         list(ks) if sweep else [], units, progress)

    def step(phase: str, unit: str, compute):
        if progress:
            progress(phase, int(unit in units), 1)
        value = compute()
        if progress:
            progress(phase, 1, 1)
        return value

    sets = step("test prompts", "filter", lambda: relation_prompt_sets(model, relations, n_identification, seed,
                                                                          keep_correct, backend, units))
    expertise = step("expertise", "expertise.mlp_act", lambda: neuron_expertise(model, sets, "mlp_act", backend, units))
    matrix = deactivation_matrix(model, expertise, sets, k, seed, True, backend, progress, units)
    names = list(sets.relations)
    pair = {"relation": names, "evaluated": names}
    scores = {"neurons/acc_change": matrix.acc_change, "neurons/random_change": matrix.random_change,
              "neurons/baseline": matrix.baseline, "neurons/overlap": topk_overlap(expertise, k).float(),
              "neurons/layers": layer_histogram(expertise, k).float(), "neurons/best_ap": expertise.ap.flatten(1).max(1).values}
    tensors = {"neurons/acc_change": describe_tensor("neurons/acc_change", matrix.acc_change, ["relation", "evaluated"], pair)
               | {"note": f"accuracy change on each evaluated relation after zeroing the deactivated relation's top-{k} neurons"},
               "neurons/random_change": describe_tensor("neurons/random_change", matrix.random_change, ["relation", "evaluated"], pair),
               "neurons/baseline": describe_tensor("neurons/baseline", matrix.baseline, ["relation"], {"relation": names}),
               "neurons/overlap": describe_tensor("neurons/overlap", scores["neurons/overlap"], ["relation", "other"],
                                                  {"relation": names, "other": names}),
               "neurons/layers": describe_tensor("neurons/layers", scores["neurons/layers"], ["relation", "layer"], {"relation": names}),
               "neurons/best_ap": describe_tensor("neurons/best_ap", scores["neurons/best_ap"], ["relation"], {"relation": names})}
    own = matrix.acc_change.diagonal()
    others = (matrix.acc_change.sum() - own.sum()) / max(len(names) * (len(names) - 1), 1)
    text = [f"top-{k} neurons zeroed: mean change on the relation itself {float(own.mean()):+.3f}, on the others "
            f"{float(others):+.3f}; random-{k} on the relation itself {float(matrix.random_change.diagonal().mean()):+.3f}",
            *(f"{name}: {int(n)} test prompts, own change {float(c):+.3f}" for name, n, c in zip(names, sets.n_test, own))]
    lines = []
    if sweep:
        curve = k_sweep(model, expertise, sets, sweep, list(ks), seed, backend, progress, units)
        i = names.index(sweep)
        rest = [j for j in range(len(names)) if j != i]
        scores |= {"neurons/k": torch.tensor(curve.ks, dtype=torch.float32), "neurons/sweep_own": curve.acc[:, i],
                   "neurons/sweep_own_random": curve.random_acc[:, i], "neurons/sweep_others": curve.acc[:, rest].mean(1),
                   "neurons/sweep_others_random": curve.random_acc[:, rest].mean(1)}
        for name in ("neurons/k", "neurons/sweep_own", "neurons/sweep_own_random", "neurons/sweep_others", "neurons/sweep_others_random"):
            tensors[name] = describe_tensor(name, scores[name], ["k"], {"k": [str(x) for x in curve.ks]})
        lines.append({"title": f"Accuracy against k: {sweep}'s top-k neurons zeroed (random-k for contrast)", "x": "neurons/k",
                      "ys": ["neurons/sweep_own", "neurons/sweep_own_random", "neurons/sweep_others", "neurons/sweep_others_random"],
                      "x_title": "k", "y_title": "accuracy"})
    manifest = {**run_header(model, command, seed, backend), "method": "relation-specific neurons (AP expertise)",
                "metric": "accuracy (first answer token is the argmax)", "relations": names,
                "parameters": {"k": k, "sweep": sweep, "ks": list(ks), "n_identification": n_identification,
                               "keep_correct": keep_correct, "n_test": [int(n) for n in sets.n_test]},
                "notes": [{"title": "Relation neurons", "text": "\n".join(text)}], "lines": lines, "tensors": tensors,
                "timings": {"run_s": round(time.perf_counter() - t0, 3)}}
    _ray_entry(manifest, workers)
    return RunResult(manifest=manifest, scores=scores)


def neurons_units(model: Model, out, relations: Sequence[str] | None, k: int, sweep: str | None, ks: Sequence[int],
                  n_identification: int, keep_correct: bool, seed: int, backend: str | None = None,
                  resume: bool = False) -> Units:
    """The checkpointed units of a ``neurons relation`` run in ``out`` (a resume must use the same options)."""
    return run_units(model, out, "neurons relation", {
        "relations": list(relations) if relations else None, "k": k, "sweep": sweep, "ks": [int(x) for x in ks],
        "n_identification": n_identification, "keep_correct": keep_correct, "seed": seed,
        "backend": backend or model.backend_name}, resume)


def add_path_edges(model: Model, circuit: Circuit, result: RunResult, run_folder: str, progress=None,
                   workers=None) -> None:
    """Path-patching edges among the circuit's heads, on the prompts the patching run used (regenerated and checked).

    ``progress(phase, done, total)`` is called after each receiver's path-patching pass; ``workers`` (a
    `interp.ray_workers.RayWorkers`) runs the passes on Ray workers, with the same edges.
    """
    from interp.circuits.path_patching import circuit_edges
    from interp.results import load_run
    from interp.tasks import load_prompt_set

    check_nodes(model, circuit)
    if not circuit.heads():
        raise InterpError("--edges connects the circuit's heads, and this circuit has none: keep head_out nodes "
                          "(--components head_out) or leave out --edges")
    manifest = load_run(run_folder).manifest
    if manifest.get("model") != model.name:
        raise InterpError(f"{run_folder} was run on {manifest.get('model')}, not {model.name}; pass --model {manifest.get('model')}")
    info = manifest.get("prompt_set", {})
    if info.get("name") not in ("ioi", "colored_objects"):
        raise InterpError(f"edges need the run's prompts, and {run_folder} used '{info.get('name')}', which is not a built-in task")
    for corruption in ("swap", "three_names", "order"):  # the manifest keeps the prompts' fingerprint, not the corruption
        prompts = load_prompt_set(info["name"], model.tokenizer, n=info.get("n_prompts"), seed=manifest.get("seed", 0),
                                  corruption=corruption)
        if prompts.fingerprint() == info.get("fingerprint"):
            break
    else:
        raise InterpError(f"could not regenerate the prompts of {run_folder} (no fingerprint matches); edges need the same prompts")
    edges = circuit_edges(model, circuit.heads(), prompts, manifest.get("metric", "logit_diff")
                          if isinstance(manifest.get("metric"), str) else "logit_diff", progress=progress,
                          workers=workers)
    check_finite(torch.tensor([score for _, _, score in edges]), "the path-patching edges")
    circuit.add_edges(edges)
    result.manifest["circuit"] = circuit.to_json()
    _ray_entry(result.manifest, workers)
    result.manifest["notes"].append({"title": "Edges (path patching: change in the metric)",
                                     "text": "\n".join(f"{e.sender} -> {e.receiver}: {e.score:+.4f}" for e in circuit.edges)})


def _ray_entry(manifest: dict, workers) -> None:
    """Record in ``manifest`` the Ray workers a run used (nothing for a local run)."""
    if workers is not None:
        manifest["ray"] = workers.info()
