"""Backdoor activation attack (TA²) and its detector on a real model: prints the figures.

For each behaviour set (truthfulness, refusal) and each system prompt asked for, it builds the
attack vectors on a train split (contrast pairs from the model's own greedy answers), prints the
per-layer contrast scores (correct JS and the reference code's variant) and the chosen layer, and
measures the behaviour on the test split unsteered, attacked (multiplier -0.8), attacked with the
reference's doubled coefficient (-1.6), and under a random vector of the same norm. Then it fits
the activation detector on clean chat prompts and prints TPR on steered / FPR on held-out clean runs.

    .venv/bin/python benchmarks/bench_attack.py [--model smollm2-135m] [--n 0] [--system safe] [--also-layers 8]
"""

from __future__ import annotations

import argparse
import json
import random
import time

import torch

import interp
from interp.chat import chat_prompt
from interp.steering.attack import attack_vectors, contrast_pairs, default_set, effective_coeff, evaluate_attack, split_rows
from interp.steering.behaviour_sets import HARMLESS, SYSTEM_PROMPTS, detector_pool
from interp.steering.detector import detection_rates, fit_detector



def fmt_scores(layers: list[int], scores: list[float]) -> str:
    return " ".join(f"{layer}:{score:.4g}" for layer, score in zip(layers, scores))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--backend", default="lens")
    parser.add_argument("--n", type=int, default=0, help="rows per behaviour set (0: all)")
    parser.add_argument("--test-fraction", type=float, default=0.5)
    parser.add_argument("--behaviours", default="truthfulness,refusal")
    parser.add_argument("--system", action="append", choices=sorted(SYSTEM_PROMPTS),
                        help="system prompts to try (repeatable); default: 'default' for truthfulness, 'safe' for refusal "
                             "(SmolLM2 with its own system prompt barely refuses)")
    parser.add_argument("--layers", default="half", help="'half', 'all' or a comma list of layers to search")
    parser.add_argument("--js-variant", default="js", choices=["js", "reference"])
    parser.add_argument("--multiplier", type=float, default=-0.8)
    parser.add_argument("--pair-tokens", type=int, default=32, help="max tokens of the model's own aligned answers")
    parser.add_argument("--max-new-tokens", type=int, default=24, help="reply length for refusal scoring")
    parser.add_argument("--n-harmless", type=int, default=10, help="harmless requests for the false-refusal check")
    parser.add_argument("--also-layers", default="", help="comma list: also attack at these searched layers")
    parser.add_argument("--detector-offsets", default="0,1", help="read the detector at the attacked layer + offset")
    parser.add_argument("--fpr", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write every figure to this JSON file")
    args = parser.parse_args()
    torch.manual_seed(args.seed)

    t0 = time.perf_counter()
    model = interp.load(args.model, backend=args.backend)
    print(f"{model}  loaded in {time.perf_counter() - t0:.1f}s; threads={torch.get_num_threads()}")
    report: dict = {"model": args.model, "args": vars(args), "attacks": [], "detector": []}
    for behaviour in args.behaviours.split(","):
        rows = default_set(behaviour)
        rows = rows.select(range(min(args.n, len(rows)))) if args.n else rows
        train, test = split_rows(rows, args.test_fraction, args.seed)
        for system_name in args.system or ["default" if behaviour == "truthfulness" else "safe"]:
            t = time.perf_counter()
            pairs = contrast_pairs(model, behaviour, train, SYSTEM_PROMPTS[system_name], "greedy", args.pair_tokens, args.backend)
            layers = args.layers if args.layers in ("half", "all") else [int(x) for x in args.layers.split(",")]
            vectors = attack_vectors(model, pairs, layers, args.js_variant, args.backend)
            meta = vectors.meta
            chosen_ref = vectors.layers[max(range(len(vectors.layers)), key=meta["layer_scores"]["reference"].__getitem__)]
            print(f"\n== {behaviour} | system={system_name} | train {len(train)} test {len(test)} "
                  f"(vectors in {time.perf_counter() - t:.0f}s)")
            print(f"  aligned answer example: {pairs.aligned[0][:90]!r}")
            print(f"  JS        : {fmt_scores(vectors.layers, meta['layer_scores']['js'])}")
            print(f"  reference : {fmt_scores(vectors.layers, meta['layer_scores']['reference'])}")
            print(f"  chosen layer ({args.js_variant}) = {meta['layer']}; reference variant would pick {chosen_ref}")
            before = None
            configs = [(meta["layer"], False), (meta["layer"], True)]
            configs += [(int(x), d) for x in args.also_layers.split(",") if x and int(x) != meta["layer"] for d in (False, True)]
            for layer, doubling in configs:
                t = time.perf_counter()
                controls = HARMLESS[:args.n_harmless] if behaviour == "refusal" and not doubling and args.n_harmless else None
                res = evaluate_attack(model, vectors, test, args.multiplier, doubling, layer, max_new_tokens=args.max_new_tokens,
                                      seed=args.seed, harmless=controls, before=before, backend=args.backend)
                before = res.detail["before_raw"]
                extra = ""
                if behaviour == "truthfulness":
                    extra = (f"  mean margin logp(true)-logp(false): before {before[1]['mean_margin']:.3f} "
                             f"after {res.detail['after_detail']['mean_margin']:.3f} random {res.detail['random_detail']['mean_margin']:.3f}")
                elif controls:
                    extra = (f"  harmless false-refusal: before {res.detail['harmless_refusal_before']:.2f} "
                             f"after {res.detail['harmless_refusal_after']:.2f}")
                print(f"  coeff {res.coeff:+.2f} (|v|={res.vector_norm:.2f}, layer {res.layer}): {behaviour} rate "
                      f"before {res.before:.2f}  after {res.after:.2f}  random {res.random:.2f}  ({time.perf_counter() - t:.0f}s)")
                if extra:
                    print(extra)
                if behaviour == "refusal":
                    for name, texts in (("before", before[1]["replies"]), ("after", res.detail["after_detail"]["replies"])):
                        print(f"    {name}: {texts[0][:100]!r}")
                d = res.to_dict()
                d["system_name"] = system_name
                d["chosen_layer_reference_variant"] = chosen_ref
                report["attacks"].append(d)

            # detector: calibrate on clean chat prompts, held-out clean for FPR, the same held-out steered for TPR
            pool = detector_pool()
            random.Random(args.seed).shuffle(pool)
            prompts = [chat_prompt(model, p, SYSTEM_PROMPTS[system_name]) for p in pool]
            calib, held = prompts[: len(prompts) // 2], prompts[len(prompts) // 2:]
            det_layers = [meta["layer"]] + [int(x) for x in args.also_layers.split(",") if x and int(x) != meta["layer"]]
            for layer in det_layers:
                vector = vectors.vector(layer)
                for offset in [int(x) for x in args.detector_offsets.split(",") if x]:
                    det = fit_detector(model, calib, vector, layer, fpr=args.fpr, offset=offset, backend=args.backend)
                    for doubling in (False, True) if offset == 0 else (False,):
                        coeff = effective_coeff(args.multiplier, doubling)
                        rates = detection_rates(model, det, held, vector, layer, coeff, args.backend)
                        print(f"  detector at {det.site} (attack at {layer}; calib {len(calib)}, held-out {len(held)}), coeff {coeff:+.2f}: "
                              + "  ".join(f"{k}: TPR {rates.tpr[k]:.2f} FPR {rates.fpr[k]:.2f}" for k in rates.tpr))
                        report["detector"].append({"behaviour": behaviour, "system_name": system_name, "attack_layer": layer,
                                                   "coeff": coeff, **det.to_dict(), **rates.to_dict()})
    print(f"\ntotal {time.perf_counter() - t0:.0f}s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
