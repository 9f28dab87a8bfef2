"""Train a TopK SAE on SmolLM2-135M's middle residual stream on this CPU and print its quality and throughput.

    .venv/bin/python benchmarks/bench_sae.py [--tokens 60000] [--latents 2304] [--k 32] [--layer 15]

The corpus is the built-in English text plus the docstrings of Python's standard library (read from this
machine's own stdlib sources, written to a temporary JSONL file, so the run also exercises the JSONL path);
10% of the documents are held out for the evaluation. Prints L0, explained variance, the dead-latent fraction,
the next-token loss increase when the SAE is spliced into resid_post (and the fraction of the zero-ablation loss
it recovers), and training tokens per second (model forwards included). The comparison with SAELens's own
trainer runs in its separate environment (benchmarks/saelens_env.sh) and is not part of this script.
"""

from __future__ import annotations

import argparse
import ast
import json
import sysconfig
import tempfile
import time
from pathlib import Path

import interp
from interp.circuits.corpus import load_corpus
from interp.circuits.sae_cli import train_run
from interp.circuits.sae_train import TrainConfig


def stdlib_docstrings(limit: int = 4000, min_chars: int = 300) -> list[str]:
    """Long docstrings of the standard library's modules, classes and functions (plain English prose)."""
    texts = []
    for path in sorted(Path(sysconfig.get_path("stdlib")).rglob("*.py")):
        if "test" in path.parts or "idlelib" in path.parts or "site-packages" in path.parts:
            continue
        try:
            tree = ast.parse(path.read_text("utf-8"))
        except (SyntaxError, UnicodeDecodeError, OSError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc and len(doc) >= min_chars:
                    texts.append(" ".join(doc.split()))
                    if len(texts) >= limit:
                        return texts
    return texts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=60_000)
    parser.add_argument("--latents", type=int, default=2304)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--layer", type=int, default=15)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--backend", default="torch")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.jsonl"
        docs = list(load_corpus("builtin")["text"]) + stdlib_docstrings()
        corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in docs), encoding="utf-8")
        t0 = time.perf_counter()
        model = interp.load("smollm2-135m")
        load_s = time.perf_counter() - t0
        cfg = TrainConfig(site=f"resid_post.{args.layer}", d_sae=args.latents, tokens=args.tokens, arch="topk", k=args.k,
                          lr=args.lr, batch_size=512, context=128, model_batch=8, buffer=8, corpus=str(corpus),
                          eval_contexts=16)
        last = [time.perf_counter()]

        def progress(done: int, total: int) -> None:
            if time.perf_counter() - last[0] > 30:
                print(f"  {done}/{total} tokens, {time.perf_counter() - t0 - load_s:.0f} s", flush=True)
                last[0] = time.perf_counter()

        result = train_run(model, cfg, Path(tmp) / "sae", backend=args.backend, progress=progress)
        m = result.manifest["metrics"]
        print(f"SmolLM2-135M resid_post.{args.layer}: TopK SAE, {args.latents} latents, k={args.k}, "
              f"{m['eval_tokens']} held-out tokens evaluated; corpus {len(docs)} documents")
        print(f"  trained tokens      {args.tokens} ({m['epochs']:.2f} epochs of the training documents)")
        print(f"  L0                  {m['l0']:.1f}")
        print(f"  explained variance  {m['explained_variance']:.3f}")
        print(f"  dead latents        {m['dead_fraction']:.1%} (none fired in the last {m['dead_window_tokens']} "
              f"training tokens); never fired on held-out text {m['never_fired_on_eval']:.1%}")
        print(f"  next-token loss     clean {m['loss_clean']:.3f}, spliced {m['loss_spliced']:.3f} "
              f"(+{m['loss_increase']:.3f}), zero-ablated {m['loss_zero_ablated']:.3f}; "
              f"loss recovered {m['loss_recovered']:.3f}")
        print(f"  throughput          {m['tokens_per_second']:.0f} training tokens/s (model forwards included); "
              f"train {result.manifest['timings']['train_s']:.0f} s, eval {result.manifest['timings']['eval_s']:.0f} s, "
              f"model load {load_s:.0f} s")


if __name__ == "__main__":
    main()
