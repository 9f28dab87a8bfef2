"""Reasoning control vectors on a real model: baseline accuracy and the coefficient sweep per method and layer.

For each task, vectors are built (R, R-C, PCA-C; only correctly answered training rows) on the first
``--n-train`` generated rows and swept on the next ``--n-test`` held-out rows, at each of ``--layers``.
Prints the unsteered accuracy, how many training rows passed the filter, and per (task, layer,
method) the accuracy, mean KL(unsteered||steered) in nats and mean entropy in bits at every coefficient.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_reasoning.py [--n-train 32 --n-test 32]
        [--layers 10,15,20] [--methods R,R-C,PCA-C] [--tasks deduction,ioi] [--html sweep.html]
"""

from __future__ import annotations

import argparse
import time

import torch

import interp
from interp.steering.puzzles import load_puzzles
from interp.steering.reasoning import vectors_from_puzzles
from interp.steering.sweep import candidate_hits, coefficient_sweep, sweep_figure


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--tasks", default="deduction,ioi")
    parser.add_argument("--n-train", "--n", type=int, default=32, help="rows the vectors are built from (before the filter)")
    parser.add_argument("--n-test", type=int, default=32, help="held-out rows the sweep is measured on")
    parser.add_argument("--layers", default="10,15,20")
    parser.add_argument("--methods", default="R,R-C,PCA-C")
    parser.add_argument("--coefficients", default="-1,-0.75,-0.5,-0.25,0,0.25,0.5,0.75,1")
    parser.add_argument("--contrast", default="wrong_answer", help="wrong_answer, shuffled, or (IOI only) corrupt")
    parser.add_argument("--n-rules", type=int, default=2, help="rules per deduction puzzle (1: the copying sanity level)")
    parser.add_argument("--keep-norm", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--html", default="", help="write the sweep figures to this HTML file")
    args = parser.parse_args()
    torch.set_grad_enabled(False)

    model = interp.load(args.model)
    layers = [int(x) for x in args.layers.split(",")]
    methods = args.methods.split(",")
    coefficients = _floats(args.coefficients)
    print(f"model {args.model} ({model.n_layers} layers); train {args.n_train}, held out {args.n_test}, seed {args.seed}, "
          f"contrast {args.contrast}, deduction rules {args.n_rules}, keep_norm {args.keep_norm}; "
          f"torch threads {torch.get_num_threads()}")
    figures: dict[str, dict] = {}  # "task, layer L" -> {method: sweep}
    start = time.perf_counter()
    for task in args.tasks.split(","):
        contrast = args.contrast if task == "ioi" or args.contrast != "corrupt" else "wrong_answer"
        rows = load_puzzles(task, model.tokenizer, args.n_train + args.n_test, args.seed, contrast, args.n_rules)
        train, test = rows.select(range(args.n_train)), rows.select(range(args.n_train, len(rows)))
        test_hits = candidate_hits(model, test.prompts, test.candidate_ids(model.tokenizer))
        print(f"\n== {task}: unsteered accuracy on held-out rows {test_hits.float().mean():.3f} "
              f"({int(test_hits.sum())}/{len(test)}); e.g. {test.prompts[0]!r} -> {test.answers[0]!r}")
        header = f"{'layer':>5} {'method':>6} {'metric':>6} " + " ".join(f"{c:>6.2f}" for c in coefficients)
        print(header)
        by_method = {}
        for method in methods:
            built = vectors_from_puzzles(model, train, method, layers, args.seed)
            by_method[method] = built
            for layer in layers:
                sweep = coefficient_sweep(model, built.vectors, layer, test.prompts, test.candidate_ids(model.tokenizer),
                                          test.correct, coefficients, args.keep_norm)
                for metric, values in (("acc", sweep.accuracy), ("KL", sweep.kl_mean), ("H", sweep.entropy_mean)):
                    print(f"{layer:>5} {method:>6} {metric:>6} " + " ".join(f"{v:>6.3f}" for v in values), flush=True)
                figures.setdefault(f"{task}, layer {layer}", {})[method] = sweep
        filt = by_method[methods[0]]
        print(f"filter: {filt.n_correct}/{filt.n_prompts} training rows answered correctly "
              f"(vectors read from {filt.n_used}); |v| per layer ({methods[0]}): "
              + ", ".join(f"L{layer} {float(filt.vectors.vector(layer).norm()):.2f}" for layer in layers))
    print(f"\ntotal {time.perf_counter() - start:.0f} s")
    if args.html:
        from interp.plots import report_html

        sections = [(name, "", [sweep_figure(sweeps, name)]) for name, sweeps in figures.items()]
        with open(args.html, "w", encoding="utf-8") as fh:
            fh.write(report_html("Reasoning control vectors: coefficient sweeps", sections))
        print(f"wrote {args.html}")


if __name__ == "__main__":
    main()
