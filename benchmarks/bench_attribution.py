"""Attribution speed: AtP and RelP for every component vs one forward+backward vs the activation sweep.

In one process, on the same model, prompts and metric, prints:
  - one plain forward+backward of the base run (the unit of cost);
  - interp's AtP and RelP for resid_pre, attn_out, mlp_out and head_out together, with and
    without the source run's forward that they need, in units of that forward+backward;
  - the same AtP through TransformerLens (run_with_cache, then forward and backward hooks on the
    bridge: the usual recipe), with the max difference from ours;
  - the activation-patching sweep they approximate (interp's batched engine; with --tl-sweep also
    TransformerLens's `transformer_lens.patching`, which takes minutes), and the ratios.

    .venv/bin/python benchmarks/bench_attribution.py [--model smollm2-135m] [--n-prompts 8] [--tl-sweep]
"""

from __future__ import annotations

import argparse
import time
from typing import Callable

import torch
from transformer_lens import patching as tl_patching

import interp
from interp.ioi import generate_ioi
from interp.metrics import MetricContext, logit_diff
from interp.patching.activation import COMPONENTS, BatchedEngine, sweep
from interp.patching.attribution import attribution_patching

COMPS = ["resid_pre", "attn_out", "mlp_out", "head_out"]
TL_HOOK = {"resid_pre": "blocks.{L}.hook_resid_pre", "attn_out": "blocks.{L}.hook_attn_out",
           "mlp_out": "blocks.{L}.hook_mlp_out", "head_out": "blocks.{L}.attn.hook_z"}
TL_SWEEP = {"resid_pre": tl_patching.get_act_patch_resid_pre, "attn_out": tl_patching.get_act_patch_attn_out,
            "mlp_out": tl_patching.get_act_patch_mlp_out, "head_out": tl_patching.get_act_patch_attn_head_out_all_pos}


def best_of(fn: Callable[[], object], repeats: int) -> tuple[float, object]:
    """Fastest of ``repeats`` timed calls (after one warm-up call), and the last result."""
    result = fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return min(times), result


def tl_atp(bridge, clean: torch.Tensor, corrupt: torch.Tensor, ctx: MetricContext, n_layers: int) -> dict[str, torch.Tensor]:
    """AtP the TransformerLens way: cache clean, then cache corrupt activations and gradients with hooks."""
    names = [TL_HOOK[c].format(L=layer) for c in COMPS for layer in range(n_layers)]
    with torch.no_grad():
        _, clean_cache = bridge.run_with_cache(clean, names_filter=lambda name: name in names)
    acts, grads = {}, {}

    def save_act(name):
        return lambda x, hook: acts.__setitem__(name, x.detach())

    def save_grad(name):  # keyed by the name asked for: hook.name is the bridge's canonical alias
        return lambda g, hook: grads.__setitem__(name, g.detach())

    def start_graph(x, hook):  # interp loads weights frozen, so the graph starts at the residual
        return x.detach().requires_grad_(True)

    bridge.add_hook(names[0], start_graph, "fwd")
    for name in names:
        bridge.add_hook(name, save_act(name), "fwd")
        bridge.add_hook(name, save_grad(name), "bwd")
    try:
        with torch.enable_grad():
            logits = bridge(corrupt)
            logit_diff(logits[:, -1], ctx).sum().backward()
    finally:
        bridge.reset_hooks()
    out = {}
    for comp in COMPS:
        rows = []
        for layer in range(n_layers):
            name = TL_HOOK[comp].format(L=layer)
            contrib = (clean_cache[name] - acts[name]) * grads[name]
            rows.append(contrib.sum((1, 3)) if comp == "head_out" else contrib.sum(-1))
        out[comp] = torch.stack(rows, 1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--n-prompts", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tl-sweep", action="store_true", help="also time TransformerLens's activation-patching sweep")
    args = parser.parse_args()

    model = interp.load(args.model, backend="torch")
    bridge = model.backend("lens").bridge
    prompts = generate_ioi(model.tokenizer, args.n_prompts, seed=0).tokenize(model.tokenizer)
    clean, corrupt = prompts.clean, prompts.corrupt
    n_layers, n_pos = model.n_layers, clean.shape[1]
    sites = [f"{COMPONENTS[c][0]}.{layer}" for c in COMPS for layer in range(n_layers)]
    print(f"model {args.model}: {n_layers} layers; {args.n_prompts} IOI prompts of {n_pos} tokens; "
          f"torch threads {torch.get_num_threads()}; best of {args.repeats}")

    with torch.no_grad():
        clean_run = model.run(clean, read=sites)
        corrupt_logits = model.run(corrupt).logits[:, -1]
    ctx = MetricContext(prompts.answer, prompts.wrong, clean_run.logits[:, -1], corrupt_logits)

    def fwd_bwd():
        out = model.run(corrupt, read=["resid_pre.0"], grad=True)
        torch.autograd.grad(logit_diff(out.logits[:, -1], ctx).sum(), [out.acts["resid_pre.0"]])

    def source_forward():
        with torch.no_grad():
            return model.run(clean, read=sites).acts

    unit, _ = best_of(fwd_bwd, args.repeats)
    t_source, _ = best_of(source_forward, args.repeats)
    t_atp, atp = best_of(lambda: attribution_patching(model, COMPS, corrupt, clean_run.acts, logit_diff, ctx), args.repeats)
    t_relp, _ = best_of(lambda: attribution_patching(model, COMPS, corrupt, clean_run.acts, logit_diff, ctx,
                                                     rules="ln,identity,half"), args.repeats)
    t_tl_atp, theirs = best_of(lambda: tl_atp(bridge, clean, corrupt, ctx, n_layers), args.repeats)
    base = logit_diff(corrupt_logits, ctx)[:, None, None]
    tl_diff = max(((atp[c] - base) - theirs[c]).abs().max().item() for c in COMPS)

    t0 = time.perf_counter()
    engine = BatchedEngine(model, corrupt)
    for comp in COMPS:
        with torch.no_grad():
            sweep(model, comp, corrupt, clean_run.acts, logit_diff, ctx, batched=engine)
    t_sweep = time.perf_counter() - t0
    n_patches = len(COMPS[:3]) * n_layers * n_pos + n_layers * model.n_heads

    print(f"\n{'what (all of ' + ','.join(COMPS) + ')':<52} {'seconds':>9} {'x fwd+bwd':>10}")
    rows = [("one plain forward+backward", unit),
            ("source run forward (cache, shared by every method)", t_source),
            ("AtP (one forward+backward on the base run)", t_atp),
            ("RelP (ln,identity,half)", t_relp),
            ("AtP incl. source forward", t_atp + t_source),
            ("RelP incl. source forward", t_relp + t_source),
            ("AtP via TransformerLens hooks (incl. its clean cache)", t_tl_atp),
            (f"activation sweep, interp batched ({n_patches} patches)", t_sweep)]
    for what, seconds in rows:
        print(f"{what:<52} {seconds:>9.3f} {seconds / unit:>10.1f}")
    print(f"\nRelP (incl. source forward) is {t_sweep / (t_relp + t_source):.0f}x cheaper than interp's activation sweep; "
          f"AtP {t_sweep / (t_atp + t_source):.0f}x")
    print(f"interp AtP vs TransformerLens AtP, both with their clean forward: {t_tl_atp / (t_atp + t_source):.1f}x, "
          f"max |diff| {tl_diff:.2e}")
    if args.tl_sweep:
        def tl_metric(logits):
            return logit_diff(logits[:, -1], ctx).mean()

        with torch.no_grad():
            _, cache = bridge.run_with_cache(clean)
            t0 = time.perf_counter()
            for comp in COMPS:
                TL_SWEEP[comp](bridge, corrupt, cache, tl_metric)
            t_tl_sweep = time.perf_counter() - t0
        print(f"activation sweep, TransformerLens: {t_tl_sweep:.1f}s = {t_tl_sweep / unit:.0f} x fwd+bwd; "
              f"RelP is {t_tl_sweep / (t_relp + t_source):.0f}x cheaper")


if __name__ == "__main__":
    main()
