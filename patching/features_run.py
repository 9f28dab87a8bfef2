"""A feature-effects run: which latents of sparse dictionaries carry a task's behaviour, as a run folder.

`feature_run` is what ``interp features effects`` calls. It attaches the dictionaries, scores every latent and
error term with AtP (and RelP when asked) from one backward, patches the ``top_k`` latents per dictionary by
|AtP| exactly (``top_k=0``: every latent), and returns a `RunResult` holding, per dictionary site:

- ``atp/sae.<site>.latents`` [latent]: the estimated metric after patching each latent (mean over prompts);
- ``activation/sae.<site>.top`` and ``atp/sae.<site>.top`` [latent]: exact and estimated values for the patched
  latents (labelled by latent id), compared in the manifest's ``faithfulness``;
- ``<method>/sae.<site>.error`` [prompt]: the metric after patching the whole error term.
"""

from __future__ import annotations

import torch

from interp.errors import InterpError
from interp.metrics import MetricContext, check_finite, get_metric
from interp.model import Model
from interp.prompts import PromptSet
from interp.results import RunResult, describe_tensor, run_header
from interp.patching.faithfulness import faithfulness
from interp.patching.features import feature_effects


def feature_run(model: Model, prompts: PromptSet, dictionaries: list, methods: tuple[str, ...] = ("atp", "activation"),
                metric: str = "logit_diff", top_k: int = 32, command: str = "python", seed: int = 0,
                max_memory: int | None = None, sources: list[str] | None = None) -> RunResult:
    """Score the latents of ``dictionaries`` (`interp.dictionary.Dictionary`, attached here and detached after) on
    ``prompts`` (denoising: clean into corrupt). ``sources`` names where each dictionary came from, for the
    manifest."""
    if top_k < 0:
        raise InterpError(f"--top-k must be 0 (every latent) or more, got {top_k}")
    if not dictionaries:
        raise InterpError("no dictionaries given: pass --dictionary FOLDER (a SAELens-layout folder)")
    metric_fn = get_metric(metric)
    sites = []
    try:
        for d in dictionaries:
            sites.append(model.attach(d)[len("sae."):])
        if len(set(sites)) != len(sites):
            raise InterpError("two dictionaries are attached at the same site: give one per site")
        return _run(model, prompts, dictionaries, sites, tuple(methods), metric, metric_fn, top_k, command, seed,
                    max_memory, sources)
    finally:
        for site in sites:
            model.dictionaries.pop(site, None)


def _run(model, prompts, dictionaries, sites, methods, metric, metric_fn, top_k, command, seed, max_memory, sources):
    tokens = prompts.tokenize(model.tokenizer)
    with torch.no_grad():  # the clean run is also the source of every patch
        clean_run = model.run(tokens.clean, read=[f"sae.{s}.{p}" for s in sites for p in ("latents", "error")])
        clean, corrupt = clean_run.logits[:, -1], model.run(tokens.corrupt).logits[:, -1]
    ctx = MetricContext(tokens.answer, tokens.wrong, clean, corrupt)
    baselines = {"clean": metric_fn(clean, ctx), "corrupt": metric_fn(corrupt, ctx)}
    estimators = tuple(m for m in ("atp", "relp") if m in methods or (m == "atp" and "activation" in methods))
    effects = feature_effects(model, tokens.corrupt, sites, tokens.clean, metric_fn, ctx, methods=estimators,
                              max_memory=max_memory, source_acts=clean_run.acts)
    chosen = {}
    for site in sites:
        estimate = effects[estimators[0]][f"sae.{site}.latents"].mean(0)  # AtP (RelP when only it was asked)
        k = len(estimate) if top_k == 0 else min(top_k, len(estimate))
        chosen[site] = sorted((estimate - baselines["corrupt"].mean()).abs().topk(k).indices.tolist())
    if "activation" in methods:
        effects |= feature_effects(model, tokens.corrupt, sites, tokens.clean, metric_fn, ctx, methods=("activation",),
                                   latents=chosen, max_memory=max_memory, source_acts=clean_run.acts)
    base = float(baselines["corrupt"].mean())
    scores, tensors, top, errors, faithful, comparisons = {}, {}, {}, {}, {}, []
    for method, per_name in effects.items():
        for site in sites:
            lat, err = per_name[f"sae.{site}.latents"], per_name[f"sae.{site}.error"]
            check_finite(err, f"{method}/sae.{site}.error")
            if method != "activation":
                scores[f"{method}/sae.{site}.latents"] = lat.mean(0)
                tensors[f"{method}/sae.{site}.latents"] = describe_tensor(f"{method}/sae.{site}.latents", lat.mean(0),
                                                                           ["latent"]) | {"plot": False, "zmid": base}
            name = f"{method}/sae.{site}.top"
            scores[name] = check_finite(lat[:, chosen[site]].mean(0), name)
            tensors[name] = describe_tensor(name, scores[name], ["latent"], {"latent": [str(u) for u in chosen[site]]})
            tensors[name] |= {"plot": method == "activation" or "activation" not in methods, "zmid": base}
            scores[f"{method}/sae.{site}.error"] = err
            tensors[f"{method}/sae.{site}.error"] = describe_tensor(f"{method}/sae.{site}.error", err, ["prompt"])
            errors.setdefault(site, {})[method] = round(float(err.mean()), 6)
    for site in sites:
        truth = scores.get(f"activation/sae.{site}.top")
        ranking = scores[f"{'activation' if truth is not None else estimators[0]}/sae.{site}.top"]
        order = (ranking - base).abs().argsort(descending=True).tolist()[:10]
        top[site] = [{"latent": chosen[site][i], **{m: round(float(scores[f"{m}/sae.{site}.top"][i]), 5)
                                                      for m in effects}} for i in order]
        for method in (m for m in estimators if truth is not None):
            stats = faithfulness(truth, scores[f"{method}/sae.{site}.top"], base)
            faithful.setdefault(method, {})[site] = stats
            comparisons.append({"x": f"activation/sae.{site}.top", "y": f"{method}/sae.{site}.top", "stats": stats})
    manifest = run_header(model, command, seed) | {
        "method": "feature effects",
        "prompt_set": {"name": prompts.name, "fingerprint": prompts.fingerprint(), "n_prompts": int(tokens.clean.shape[0]),
                       "n_tokens": int(tokens.clean.shape[1]), "example_clean": prompts.clean[0],
                       "example_corrupt": prompts.corrupt[0]},
        "metric": metric,
        "methods": list(effects),
        "dictionaries": [{"site": s, "source": (sources or [None] * len(sites))[i], "arch": getattr(d, "arch", None),
                          "d_sae": int(d.W_enc.shape[1]), "transcoder_out": getattr(d, "out_site", None)}
                         for i, (s, d) in enumerate(zip(sites, dictionaries))],
        "parameters": {"top_k": top_k, "direction": "denoise"},
        "baselines": {k: {"mean": round(float(v.mean()), 6)} for k, v in baselines.items()},
        "top_latents": top,
        "error_effects": errors,
        "faithfulness": faithful,
        "comparisons": comparisons,
        "tensors": tensors,
    }
    return RunResult(manifest=manifest, scores=scores)
