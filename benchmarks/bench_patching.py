"""Activation-patching speed: interp's batched sweep vs TransformerLens's `transformer_lens.patching`.

Runs both on the same model, prompts and metric in one process and prints, per component, both
times, the speed ratio and the max abs difference of the [layer, pos] results.

    .venv/bin/python benchmarks/bench_patching.py [--model smollm2-135m] [--n-prompts 4]
"""

from __future__ import annotations

import argparse
import time

import torch
from transformer_lens import patching as tl_patching

import interp
from interp.ioi import generate_ioi
from interp.metrics import MetricContext, logit_diff
from interp.patching.activation import BatchedEngine, sweep

TL_FUNCTIONS = {
    "resid_pre": tl_patching.get_act_patch_resid_pre,
    "attn_out": tl_patching.get_act_patch_attn_out,
    "mlp_out": tl_patching.get_act_patch_mlp_out,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--n-prompts", type=int, default=4)
    parser.add_argument("--components", default="resid_pre,attn_out,mlp_out")
    parser.add_argument("--compute-noops", action="store_true",
                        help="also run the patches that provably change nothing (no skipping), for a like-for-like count")
    args = parser.parse_args()
    torch.set_grad_enabled(False)

    model = interp.load(args.model, backend="lens")
    prompts = generate_ioi(model.tokenizer, args.n_prompts, seed=0).tokenize(model.tokenizer)
    clean, corrupt = prompts.clean, prompts.corrupt
    bridge = model.backend("lens").bridge
    n_layers, n_pos = model.n_layers, clean.shape[1]
    print(f"model {args.model}: {n_layers} layers; {args.n_prompts} IOI prompts of {n_pos} tokens; "
          f"torch threads {torch.get_num_threads()}")

    clean_logits, clean_cache = bridge.run_with_cache(clean)
    corrupt_logits = bridge(corrupt)
    ctx = MetricContext(prompts.answer, prompts.wrong, clean_logits[:, -1], corrupt_logits[:, -1])

    def tl_metric(logits: torch.Tensor) -> torch.Tensor:
        return logit_diff(logits[:, -1], ctx).mean()

    kinds = args.components.split(",")
    parser_skip = not args.compute_noops
    ours_cache = model.run(clean, read=[f"{k}.{layer}" for k in kinds for layer in range(n_layers)], backend="torch").acts

    t0, c0 = time.perf_counter(), time.process_time()
    engine = BatchedEngine(model, corrupt, skip_noops=parser_skip)
    setup = time.perf_counter() - t0
    total_ours, total_tl = setup, 0.0
    cpu_ours, cpu_tl = time.process_time() - c0, 0.0  # CPU seconds: less sensitive to other jobs on the machine
    print(f"{'component':<10} {'patches':>7} {'TL s':>8} {'interp s':>9} {'ratio':>7} {'max |diff|':>11}")
    for kind in kinds:
        t0, c0 = time.perf_counter(), time.process_time()
        ours, _ = sweep(model, kind, corrupt, ours_cache, logit_diff, ctx, batched=engine)
        t_ours = time.perf_counter() - t0
        cpu_ours += time.process_time() - c0
        t0, c0 = time.perf_counter(), time.process_time()
        theirs = TL_FUNCTIONS[kind](bridge, corrupt, clean_cache, tl_metric)
        t_tl = time.perf_counter() - t0
        cpu_tl += time.process_time() - c0
        diff = (ours.mean(0) - theirs).abs().max().item()
        total_ours += t_ours
        total_tl += t_tl
        print(f"{kind:<10} {n_layers * n_pos:>7} {t_tl:>8.2f} {t_ours:>9.2f} {t_tl / t_ours:>6.1f}x {diff:>11.2e}")
    print(f"{'total':<10} {len(kinds) * n_layers * n_pos:>7} {total_tl:>8.2f} {total_ours:>9.2f} "
          f"{total_tl / total_ours:>6.1f}x   (interp total includes {setup:.2f}s of base-run caching)")
    print(f"TransformerLens: {total_tl / (len(kinds) * n_layers * n_pos):.3f} s per patch; interp skipped "
          f"{engine.skipped} patches that change nothing (source == base activation, bit for bit)")
    print(f"process CPU time (all threads): TransformerLens {cpu_tl:.1f} s, interp {cpu_ours:.1f} s, "
          f"ratio {cpu_tl / cpu_ours:.1f}x (less sensitive than wall time to other jobs on the machine)")


if __name__ == "__main__":
    main()
