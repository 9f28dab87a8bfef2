"""Void layers (LAC) on SmolLM2: layer usage in the two phases, and MC accuracy with and without skipping.

1. Usage: greedy generation (KV cache) of --max-new-tokens tokens from a few short prompts in the chat
   template; prints, per layer, the fraction of prompt tokens (PP phase) and of generated tokens (RG
   phase) for which LAC marks the layer activated, and the overall fraction of layers used.
2. Accuracy: the 40-question built-in set (`interp.circuits.mc_set.MC_SET`), plain "Answer:" format and chat
   template, scored by the " A".." D" next-token logits, with and without skipping voids (the LM head
   reading each token's last activated layer). Chance is 25 %; the set has 10 answers per letter.
   Third pass: the chat answer is generated (--answer-tokens greedy tokens, skipping in every RG step,
   as in the paper) and the first standalone letter A-D in the reply is taken.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_voids.py [--alpha 0.8] [--max-new-tokens 16]
"""

from __future__ import annotations

import argparse
import time

import torch

import interp
from interp.circuits.mc_set import evaluate_mc
from interp.circuits.voids import void_usage

PROMPTS = [
    "What is the capital of France?",
    "Name three colors of the rainbow.",
    "Why do birds fly south in winter?",
    "Write one sentence about the ocean.",
    "What is 12 plus 7?",
]


def _row(values: torch.Tensor) -> str:
    return " ".join(f"{v:4.2f}" for v in values.tolist())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--alpha", type=float, default=0.8)
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--answer-tokens", type=int, default=8, help="reply length when the MC answer is generated")
    args = ap.parse_args()
    torch.manual_seed(0)
    model = interp.load(args.model)
    print(f"model {model.name}: {model.n_layers} layers, alpha {args.alpha}")

    t0 = time.perf_counter()
    usage = void_usage(model, PROMPTS, max_new_tokens=args.max_new_tokens, alpha=args.alpha, chat=True)
    n_pp = sum(len(g.prompt.tokens) for g in usage.generations)
    n_rg = sum(len(g.response.tokens) for g in usage.generations)
    print(f"\nusage per layer ({len(PROMPTS)} chat prompts, {n_pp} prompt tokens, {n_rg} generated; "
          f"{time.perf_counter() - t0:.1f}s)")
    print("layer  " + " ".join(f"{i:4d}" for i in range(model.n_layers)))
    print("PP     " + _row(usage.usage_prompt))
    print("RG     " + _row(usage.usage_response))
    print(f"layers used: PP {usage.usage_prompt.mean():.3f}, RG {usage.usage_response.mean():.3f}")
    for g in usage.generations[:2]:
        print(f"  e.g. reply {g.text!r}")
        print("    RG map (token x layer, # = activated):")
        for tok, row in zip(g.response.tokens, g.response.activated):
            print(f"    {tok!r:>14} " + "".join("#" if a else "." for a in row.tolist()))

    for chat, n_gen in ((False, 0), (True, 0), (True, args.answer_tokens)):
        t0 = time.perf_counter()
        res = evaluate_mc(model, alpha=args.alpha, chat=chat, generate_tokens=n_gen)
        fmt = ("chat template" if chat else "plain 'Answer:'") + (f", generated {n_gen}-token replies" if n_gen else ", letter logits")
        print(f"\nMC set ({len(res.answers)} questions, {fmt}; {time.perf_counter() - t0:.1f}s): "
              f"accuracy {res.accuracy:.3f} without skipping, {res.accuracy_skip:.3f} skipping voids")
        print(f"  layers used (PP, all prompt tokens) {res.usage.mean():.3f}; last token {res.usage_last.mean():.3f}")
        print(f"  predicted letters plain {_letters(res.predicted)} / skip {_letters(res.predicted_skip)}; "
              f"answers changed by skipping: {int((res.predicted != res.predicted_skip).sum())}")
        if res.replies:
            print(f"  e.g. replies plain {res.replies[:2]!r} / skip {res.replies_skip[:2]!r}")


def _letters(predicted: torch.Tensor) -> str:
    counts = torch.bincount(predicted + 1, minlength=5).tolist()
    return " ".join(f"{letter}:{c}" for letter, c in zip(["none", "A", "B", "C", "D"], counts))


if __name__ == "__main__":
    main()
