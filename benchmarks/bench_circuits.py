"""Worked example: IOI vs colored-objects head circuits on SmolLM2, their overlap and faithfulness.

For each task: score every head by patching head_out (AtP by default, activation patching with
--method activation), keep the top-k heads by |effect| as the circuit, and mean-ablate every head
outside it (MLPs kept: the circuit is a head circuit) to measure faithfulness, metric(circuit) /
metric(full). Then the overlap of the two circuits (IoU and over each), path patching of the IOI
circuit's heads into the logits (direct + via-MLP paths), the head detectors, and DLA of the top heads.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_circuits.py [--n-prompts 16] [--top-k 10] [--method atp]
"""

from __future__ import annotations

import argparse
import time

import interp
from interp.circuits.graph import Circuit, faithfulness, node_scores, overlap, threshold
from interp.circuits.heads import detect_heads, direct_logit_attribution
from interp.circuits.path_patching import path_patching
from interp.colored_objects import generate_colored_objects
from interp.ioi import generate_ioi
from interp.patching.run import activation_patching


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--n-prompts", type=int, default=16)
    ap.add_argument("--top-k", type=int, default=10)
    ap.add_argument("--method", default="atp", choices=["atp", "activation"])
    args = ap.parse_args()
    t0 = time.perf_counter()
    model = interp.load(args.model)
    tasks = {"ioi": generate_ioi(model.tokenizer, args.n_prompts, seed=0),
             "colored_objects": generate_colored_objects(model.tokenizer, args.n_prompts, seed=0)}
    mlps = {f"mlp.{layer}": 0.0 for layer in range(model.n_layers)}
    circuits = {}
    for name, prompts in tasks.items():
        t = time.perf_counter()
        run = activation_patching(model, prompts, components=["head_out"], methods=[args.method])
        heads = threshold(node_scores(run, args.method), top_k=args.top_k, provenance={"task": name, "method": args.method})
        circuits[name] = heads
        base = run.manifest["baselines"]
        faith = faithfulness(model, Circuit(heads.nodes | mlps), prompts)
        print(f"\n[{name}] clean logit_diff {base['clean']['mean']:.3f}, corrupt {base['corrupt']['mean']:.3f} "
              f"({time.perf_counter() - t:.1f}s)")
        print(f"  top-{args.top_k} heads by |{args.method} effect|: "
              + ", ".join(f"L{n.split('.')[1]}H{n.split('.')[2]} {v:+.2f}" for n, v in heads.nodes.items()))
        print(f"  faithfulness (all other {model.n_layers * model.n_heads - len(heads)} heads mean-ablated): "
              f"full {faith.full.mean():.3f}, circuit {faith.circuit.mean():.3f}, all heads ablated {faith.empty.mean():.3f}"
              f" -> fraction {faith.fraction:.3f}, normalized {faith.normalized:.3f}")
    o = overlap(circuits["ioi"], circuits["colored_objects"])
    print(f"\noverlap: {len(o.shared)} shared heads {o.shared}; IoU {o.iou:.3f}, over IOI {o.over_a:.3f}, "
          f"over colored objects {o.over_b:.3f}")
    t = time.perf_counter()
    pp = path_patching(model, tasks["ioi"].head(8), receivers="logits", senders=circuits["ioi"].heads())
    print(f"IOI path patching (sender -> logits, other heads frozen; {time.perf_counter() - t:.1f}s): "
          + ", ".join(f"L{a}H{b} {e:+.2f}" for a, b, e in pp.top(args.top_k)))
    scores = detect_heads(model, n_prompts=4, period=20)
    for det in ("induction", "previous_token", "duplicate_token"):
        print(f"{det}: " + ", ".join(f"L{a}H{b} {s:.2f}" for a, b, s in scores.top(det, 5)))
    tok = tasks["ioi"].tokenize(model.tokenizer)
    dla = direct_logit_attribution(model, tok.clean, tok.answer, tok.wrong)
    flat = dla.heads.mean(0).flatten().abs().topk(5).indices
    print("IOI DLA top heads: " + ", ".join(f"L{int(i) // model.n_heads}H{int(i) % model.n_heads} "
                                            f"{float(dla.heads.mean(0).flatten()[i]):+.2f}" for i in flat)
          + f"; sum of parts {dla.total.mean():.3f} vs logit diff {dla.logit_diff.mean():.3f}")
    print(f"\ntotal {time.perf_counter() - t0:.1f}s")


if __name__ == "__main__":
    main()
