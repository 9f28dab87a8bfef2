"""Edge circuits on IOI: EAP, EAP-IG and RelP faithfulness curves against node circuits, time against exact edge
patching, and peak memory, in one run.

    .venv/bin/python benchmarks/bench_edges.py [--model smollm2-135m] [--n-prompts 16] [--exact-sample 400]

For each method: the time to score every edge, the process's peak resident memory while doing it, and the
faithfulness curve (every edge outside the circuit patched from the corrupt run, exactly; top-|score| circuits over
the standard fractions of the edges, pruned). Node circuits of the same size: the heads and MLPs ranked by their
node attribution (a sender's EAP edges sum to its AtP score), k of them with every edge among them, for the largest
k whose edge count fits each edge circuit's. Exact edge patching: a random sample of edges patched one at a time
(batched), timed and extrapolated to every edge, and each method's scores correlated with it on that sample.
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

import torch
from scipy.stats import pearsonr, spearmanr

import interp
from interp.circuits.eap import METHODS, edge_scores
from interp.circuits.edge_circuit import FRACTIONS, _feeds, edge_faithfulness, faithfulness_curve, prune
from interp.circuits.edge_patching import edge_patched_logits, source_writes
from interp.circuits.graph import receiver_node
from interp.metrics import MetricContext, logit_diff
from interp.tasks import load_prompt_set


def reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # Linux: the peak resident size starts again from now


def peak_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def node_masks(graph, node_scores: dict[str, float], budgets: list[int]) -> tuple[list[int], torch.Tensor]:
    """For each edge budget, the largest k such that the top-k nodes' induced (pruned) circuit fits it."""
    ranked = sorted(node_scores, key=lambda n: -abs(node_scores[n]))
    receivers = [receiver_node(r) for r in graph.receivers]
    induced = []
    for k in range(len(ranked) + 1):
        kept = set(ranked[:k])
        fed = {"logits"} | {n for s in kept for n in _feeds(graph, s)}
        senders = torch.tensor([s == "input" or s in kept for s in graph.senders])
        into = torch.tensor([r in fed for r in receivers])
        induced.append(prune(graph, graph.valid & senders[:, None] & into[None, :]))
    counts = [int(m.sum()) for m in induced]
    ks = [max((k for k in range(len(counts)) if counts[k] <= budget), default=0) for budget in budgets]
    return ks, torch.stack([induced[k] for k in ks])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--n-prompts", type=int, default=16)
    parser.add_argument("--ig-steps", type=int, default=5)
    parser.add_argument("--exact-sample", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    model = interp.load(args.model, backend="torch")
    tokens = load_prompt_set("ioi", model.tokenizer, n=args.n_prompts, seed=args.seed).tokenize(model.tokenizer)
    with torch.no_grad():
        ctx = MetricContext(tokens.answer, tokens.wrong, model.run(tokens.clean).logits[:, -1],
                            model.run(tokens.corrupt).logits[:, -1])
    print(f"{args.model}: IOI, {args.n_prompts} prompts of {tokens.clean.shape[1]} tokens, torch "
          f"{torch.get_num_threads()} threads")
    results = {}
    for method in METHODS:
        reset_peak()
        t0 = time.perf_counter()
        scores = edge_scores(model, tokens.clean, tokens.corrupt, logit_diff, ctx, method, args.ig_steps)
        seconds, peak = time.perf_counter() - t0, peak_mb()
        t0 = time.perf_counter()
        curve = faithfulness_curve(model, scores, tokens.clean, tokens.corrupt, logit_diff, ctx)
        results[method] = (scores, seconds, peak, curve, time.perf_counter() - t0)
        print(f"{method}: scores {seconds:.1f} s (peak RSS {peak:.0f} MB), curve {results[method][4]:.1f} s, "
              f"area {curve['area']:.3f}, area |1-f| {curve['area_abs_error']:.3f}")
    graph = results["eap"][0].graph
    print(f"graph: {len(graph.senders)} senders, {len(graph.receivers)} receivers, {graph.n_edges} edges")

    eap = results["eap"][0]
    node_scores = {s: float(eap.scores[i].sum()) for i, s in enumerate(graph.senders) if s != "input"}
    budgets = results["eap-ig"][3]["kept"]
    ks, masks = node_masks(graph, node_scores, budgets)
    nodes = edge_faithfulness(model, graph, tokens.clean, tokens.corrupt, masks, logit_diff, ctx).normalized
    print("\n| fraction | edges (EAP-IG) | EAP | EAP-IG | RelP | node circuit (nodes, edges) |\n|---|---|---|---|---|---|")
    for i, fraction in enumerate(FRACTIONS):
        row = [f"{results[m][3]['normalized'][i]:.3f}" for m in METHODS]
        print(f"| {fraction:g} | {budgets[i]} | {' | '.join(row)} | {nodes[i]:.3f} ({ks[i]}, {int(masks[i].sum())}) |")

    edges = graph.valid.nonzero().tolist()
    random.Random(args.seed).shuffle(edges)
    sample = edges[: args.exact_sample]
    source = source_writes(model, tokens.corrupt)
    n = args.n_prompts
    base = logit_diff(ctx.clean_logits, ctx)
    reset_peak()
    t0 = time.perf_counter()
    exact = []
    for start in range(0, len(sample), 8):
        chunk = sample[start:start + 8]
        batch = torch.zeros(len(chunk), *graph.valid.shape, dtype=torch.bool)
        for k, (i, j) in enumerate(chunk):
            batch[k, i, j] = True
        metric = logit_diff(edge_patched_logits(model, graph, tokens.clean, source, batch), ctx.rows(len(chunk) * n))
        exact.append((metric.view(len(chunk), n) - base).mean(1))
    seconds, peak = time.perf_counter() - t0, peak_mb()
    exact = torch.cat(exact)
    every = seconds * graph.n_edges / len(sample)
    print(f"\nexact edge patching: {len(sample)} edges in {seconds:.1f} s (peak RSS {peak:.0f} MB); every edge would "
          f"take about {every / 60:.0f} min")
    for method in METHODS:
        scores, took = results[method][0], results[method][1]
        estimate = torch.tensor([float(scores.scores[i, j]) for i, j in sample])
        print(f"{method}: Pearson {pearsonr(estimate, exact)[0]:.3f}, Spearman {spearmanr(estimate, exact)[0]:.3f} "
              f"against exact on the sample; {every / took:.0f}x faster than exact patching of every edge")


if __name__ == "__main__":
    main()
