"""Scaling a sweep out over Ray: the same activation-patching run locally and on 1 and 2 Ray workers.

Prints, for each setting, the sweep's wall time, the speed-up over the local run, Ray's fixed overhead
(starting the cluster and loading the model in every worker) and whether the results equal the local run's
(``torch.equal`` on every tensor). On a machine with few cores the workers share them with each other and with
the driver: report what you see, not what a cluster would do.

    .venv/bin/python benchmarks/bench_scale.py [--model smollm2-135m] [--n-prompts 8] [--components ...]
"""

from __future__ import annotations

import argparse
import os
import time

import torch

import interp
from interp.patching.run import activation_patching
from interp.ray_workers import ModelSpec, RayWorkers
from interp.tasks import load_prompt_set


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--n-prompts", type=int, default=8)
    parser.add_argument("--components", default="resid_pre,attn_out,mlp_out,head_out")
    parser.add_argument("--methods", default="activation")
    parser.add_argument("--workers", default="1,2", help="worker counts to try")
    args = parser.parse_args()

    model = interp.load(args.model, backend="torch")
    prompts = load_prompt_set("ioi", model.tokenizer, n=args.n_prompts, seed=0)
    components, methods = args.components.split(","), args.methods.split(",")
    print(f"model {args.model}; {args.n_prompts} IOI prompts; components {args.components}; methods {args.methods}; "
          f"{os.cpu_count()} CPU cores, driver torch threads {torch.get_num_threads()}")

    t0 = time.perf_counter()
    local = activation_patching(model, prompts, components, methods=methods)
    local_s = time.perf_counter() - t0
    cells = sum(int(local.scores[f'{methods[0]}/{c}'].numel()) for c in components)
    print(f"{'setting':<12}{'sweep s':>9}{'speed-up':>10}{'start s':>9}{'equal':>7}")
    print(f"{'local':<12}{local_s:>9.1f}{1.0:>10.2f}{0.0:>9.1f}{'-':>7}")
    for n in (int(w) for w in args.workers.split(",")):
        t0 = time.perf_counter()
        with RayWorkers(ModelSpec.of(model), workers=n) as pool:
            start_s = time.perf_counter() - t0
            t1 = time.perf_counter()
            result = activation_patching(model, prompts, components, methods=methods, workers=pool)
            sweep_s = time.perf_counter() - t1
        equal = all(torch.equal(local.scores[k], result.scores[k]) for k in local.scores)
        print(f"{f'ray x{n}':<12}{sweep_s:>9.1f}{local_s / sweep_s:>10.2f}{start_s:>9.1f}{str(equal):>7}")
    print(f"({cells} cells per method; 'sweep s' includes the baselines the driver runs; 'start s' is starting the "
          "local cluster and loading the model in every worker)")


if __name__ == "__main__":
    main()
