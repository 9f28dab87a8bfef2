"""Relation-specific neurons on a real model: AP selection, deactivation matrix, random-k control, k sweep.

Prints the test prompts kept per relation (answered right by the unedited model), the
[relation deactivated x relation evaluated] accuracy change for the top-k MLP neurons and for k
random neurons, the Jaccard overlap of the relations' top-k sets, where those neurons lie, and the
accuracy curves over k for the ``--sweep`` relations.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_neurons.py [--k 100] [--sweep capital_of,plural_of]
        [--ks 10,30,100,300,1000] [--kind mlp_act] [--backend torch]
"""

from __future__ import annotations

import argparse
import time

import torch

import interp
from interp.circuits.neurons import (deactivation_matrix, k_sweep, layer_histogram, neuron_expertise, relation_prompt_sets,
                              topk_overlap)


def _matrix(title: str, names: list[str], values: torch.Tensor, fmt: str = "{:>7.2f}") -> None:
    short = [n[:7] for n in names]
    print(f"\n{title}\n{'':>16}" + "".join(f"{s:>8}" for s in short))
    for name, row in zip(names, values):
        print(f"{name:>16}" + "".join(" " + fmt.format(float(v)) for v in row))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--sweep", default="capital_of,plural_of")
    parser.add_argument("--ks", default="10,30,100,300,1000")
    parser.add_argument("--kind", default="mlp_act")
    parser.add_argument("--n-identification", type=int, default=12)
    parser.add_argument("--backend", default="torch")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    start = time.perf_counter()
    model = interp.load(args.model)
    sets = relation_prompt_sets(model, n_identification=args.n_identification, seed=args.seed, backend=args.backend)
    print(f"model {args.model}; kind {args.kind}; k {args.k}; {len(sets.identification)} identification prompts; "
          f"torch threads {torch.get_num_threads()}")
    print("test prompts kept (right / held-out facts): " + ", ".join(
        f"{r} {int(n)}/{int(f)}" for r, n, f in zip(sets.relations, sets.n_test, sets.n_test_facts)))
    t = time.perf_counter()
    exp = neuron_expertise(model, sets, args.kind, args.backend)
    print(f"expertise of {exp.ap.shape[1]}x{exp.ap.shape[2]} units in {time.perf_counter() - t:.0f} s; "
          "max AP per relation: " + ", ".join(f"{r} {float(a.max()):.3f}" for r, a in zip(sets.relations, exp.ap)))
    t = time.perf_counter()
    mat = deactivation_matrix(model, exp, sets, args.k, args.seed, backend=args.backend)
    print(f"deactivation matrix in {time.perf_counter() - t:.0f} s; baseline accuracy "
          + ", ".join(f"{float(b):.2f}" for b in mat.baseline))
    _matrix(f"neurons/acc_change: top-{args.k} of row relation zeroed, accuracy change on column relation",
            sets.relations, mat.acc_change)
    _matrix(f"random-{args.k} control: accuracy change", sets.relations, mat.random_change)
    diag = mat.acc_change.diagonal()
    off = (mat.acc_change.sum(1) - diag) / (len(sets.relations) - 1)
    print(f"\nmean intra-relation change {float(diag.mean()):+.3f}, mean inter-relation change {float(off.mean()):+.3f}, "
          f"mean random-k change {float(mat.random_change.mean()):+.3f}")
    _matrix(f"Jaccard overlap of top-{args.k} sets", sets.relations, topk_overlap(exp, args.k))
    hist = layer_histogram(exp, args.k)
    print(f"\ntop-{args.k} neurons per layer (layers 0..{hist.shape[1] - 1}):")
    for r, row in zip(sets.relations, hist):
        print(f"{r:>16} " + " ".join(f"{int(v):>2}" for v in row))
    ks = [int(x) for x in args.ks.split(",")]
    for rel in [r for r in args.sweep.split(",") if r]:
        t = time.perf_counter()
        sw = k_sweep(model, exp, sets, rel, ks, args.seed, args.backend)
        i = sets.relations.index(rel)
        others = [j for j in range(len(sets.relations)) if j != i]
        print(f"\nk sweep for {rel} ({time.perf_counter() - t:.0f} s): k, acc on {rel} top/random, "
              "mean acc on others top/random")
        for j, k in enumerate(ks):
            print(f"{k:>6} {float(sw.acc[j, i]):>6.2f} {float(sw.random_acc[j, i]):>6.2f} "
                  f"{float(sw.acc[j, others].mean()):>6.2f} {float(sw.random_acc[j, others].mean()):>6.2f}")
    print(f"\ntotal {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
