"""Retrieval heads on a real model: NIAH success, the head-score map, and recall when masking top-k vs random-k heads.

Detection runs every needle at every ``--lengths`` x ``--depths`` (greedy, <= ``--max-new`` tokens).
Masking (uniform attention while decoding) runs on one prompt per (length, depth), cycling through
the needles, at each ``--ks``; random heads exclude the top-k and every head above 0.1.
Prints the success rate, the top heads with their scores, the fraction of heads above 0.1 (and 0.05),
per-layer maxima, and recall vs k for top and random heads.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_retrieval.py [--lengths 600,1200] [--depths 0,50,100]
        [--ks 5,15] [--n-random 2] [--html retrieval.html]
"""

from __future__ import annotations

import argparse
import time

import interp
from interp.circuits.haystack import niah_prompts
from interp.circuits.retrieval import detect_retrieval_heads, masking_curve


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--lengths", default="600,1200")
    parser.add_argument("--depths", default="0,50,100")
    parser.add_argument("--ks", default="5,15")
    parser.add_argument("--n-random", type=int, default=2)
    parser.add_argument("--max-new", type=int, default=30)
    parser.add_argument("--template", default="auto")
    parser.add_argument("--html", default="", help="write the [layer, head] heatmap here")
    args = parser.parse_args()

    t0 = time.time()
    model = interp.load(args.model)
    lengths, depths = _ints(args.lengths), _ints(args.depths)
    prompts = niah_prompts(model.tokenizer, lengths, depths, template=args.template)
    scores = detect_retrieval_heads(model, prompts, args.max_new)
    t1 = time.time()
    print(f"model {args.model}: {model.n_layers} layers x {model.n_heads} heads; lengths {lengths}, depths {depths}")
    print(f"NIAH success (ROUGE-1 recall > 0.5): {scores.n_success}/{len(prompts)}; mean recall {scores.recall.mean():.3f} "
          f"[{t1 - t0:.0f} s]")
    for p, r, text in zip(prompts, scores.recall.tolist(), scores.responses):
        if r <= 0.5:
            print(f"  failed: len {p.context_len} depth {p.depth:.0f} needle {p.needle_index}: recall {r:.2f} {text[:80]!r}")
    top = scores.top(15)
    print("top heads (layer-head: score): " + ", ".join(f"{l}-{h}: {scores.head_score[l, h]:.2f}" for l, h in top))
    print(f"heads > 0.1: {len(scores.retrieval_heads())}/{scores.head_score.numel()} = {scores.fraction_above():.1%}; "
          f"> 0.05: {scores.fraction_above(0.05):.1%}")
    print("per-layer max: " + " ".join(f"{v:.2f}" for v in scores.head_score.max(1).values.tolist()))

    per_cell = len(lengths) * len(depths)
    subset = [prompts[(i % 3) * per_cell + i] for i in range(per_cell)] if len(prompts) >= 3 * per_cell else prompts
    curve = masking_curve(model, subset, scores, _ints(args.ks), args.n_random, args.max_new)
    print(f"masking on {len(subset)} prompts: clean recall {curve.recall_clean:.3f}  [{time.time() - t1:.0f} s]")
    for k, rt, rr in zip(curve.k.tolist(), curve.recall_top.tolist(), curve.recall_random.tolist()):
        print(f"  k={k:3d}: recall top-k {rt:.3f}   random-k {rr:.3f}")
    if args.html:
        scores.plot().write_html(args.html)
    print(f"total {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
