"""EAP / EAP-IG edge scores against the path-patching edges `interp circuit build --edges` gives, on IOI.

    .venv/bin/python benchmarks/bench_edges_vs_path.py [--model smollm2-135m] [--n-prompts 16] [--heads 10]

The circuit: the ``--heads`` heads with the largest node attribution (the sum of a head's EAP edges, its AtP score).
Path patching (`interp.circuits.path_patching.circuit_edges`) gives each circuit head's effect on the logits and on
each later circuit head (the receiver's output z patched, so through its query, key and value inputs and through
MLPs, not through other heads). The edge scores compared: head -> logits directly, and head -> head as the sum of
the edges into the receiver's query and into its KV head's key and value (shared with the other query heads of its
group). Prints Pearson and Spearman correlations over all path edges and per kind, and both methods' times.
"""

from __future__ import annotations

import argparse
import time

import torch
from scipy.stats import pearsonr, spearmanr

import interp
from interp.circuits.eap import edge_scores
from interp.circuits.path_patching import circuit_edges
from interp.metrics import MetricContext, logit_diff
from interp.tasks import load_prompt_set


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--n-prompts", type=int, default=16)
    parser.add_argument("--heads", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    model = interp.load(args.model, backend="torch")
    prompts = load_prompt_set("ioi", model.tokenizer, n=args.n_prompts, seed=args.seed)
    tokens = prompts.tokenize(model.tokenizer)
    with torch.no_grad():
        ctx = MetricContext(tokens.answer, tokens.wrong, model.run(tokens.clean).logits[:, -1],
                            model.run(tokens.corrupt).logits[:, -1])
    scores = {}
    for method in ("eap", "eap-ig"):
        t0 = time.perf_counter()
        scores[method] = edge_scores(model, tokens.clean, tokens.corrupt, logit_diff, ctx, method)
        print(f"{method}: every edge scored in {time.perf_counter() - t0:.1f} s")
    graph = scores["eap"].graph
    index = {name: i for i, name in enumerate(graph.senders)}
    column = {name: j for j, name in enumerate(graph.receivers)}
    heads = [s for s in graph.senders if s.startswith("head.")]
    heads = sorted(heads, key=lambda h: -abs(float(scores["eap"].scores[index[h]].sum())))[: args.heads]
    t0 = time.perf_counter()
    path = circuit_edges(model, [tuple(int(x) for x in h.split(".")[1:]) for h in heads], prompts)
    print(f"path patching: {len(path)} edges among {len(heads)} heads in {time.perf_counter() - t0:.1f} s")
    group = model.n_heads // model.adapter.n_kv_heads
    for method, result in scores.items():
        estimate, kinds = [], []
        for sender, receiver, _ in path:
            if receiver == "logits":
                estimate.append(float(result.scores[index[sender], column["logits"]]))
                kinds.append("logits")
                continue
            layer, head = (int(x) for x in receiver.split(".")[1:])
            names = [f"{receiver}.q", f"kv.{layer}.{head // group}.k", f"kv.{layer}.{head // group}.v"]
            estimate.append(sum(float(result.scores[index[sender], column[n]]) for n in names))
            kinds.append("head")
        exact = [value for _, _, value in path]
        line = [f"all {len(path)}: Pearson {pearsonr(estimate, exact)[0]:.3f}, Spearman {spearmanr(estimate, exact)[0]:.3f}"]
        for kind in ("logits", "head"):
            xs = [e for e, k in zip(estimate, kinds) if k == kind]
            ys = [p for p, k in zip(exact, kinds) if k == kind]
            if len(xs) > 2:
                line.append(f"into {kind} ({len(xs)}): Pearson {pearsonr(xs, ys)[0]:.3f}")
        print(f"{method} against path patching: " + "; ".join(line))


if __name__ == "__main__":
    main()
