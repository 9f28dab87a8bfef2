"""Step 1 (interp's venv): stream SmolLM2-135M activations at resid_post.L over a corpus into a safetensors file.

    python benchmarks/sae_compare/collect.py WORK [--tokens 61440] [--layer 15] [--corpus bench|builtin|FILE]

Uses interp's own training-data path: `interp.circuits.corpus` splits the documents (10% held out, seed 0) and
packs them into contexts of 128 tokens (`TokenStream`), and `interp.circuits.sae_train.ActivationSource.acts`
computes the activations exactly as `train` does (the forward stops at the site). Position 0 of every context
is dropped, as interp's trainer drops it. Written to WORK/acts.safetensors:

- ``train_acts`` [contexts, 127, d]: the training contexts interp's `train` asks for, in stream order
  (whole shuffle buffers: ``ceil(steps / steps_per_chunk)`` chunks of 64 contexts);
- ``train_order`` [steps * batch]: the rows of ``train_acts`` (flattened) in the order interp's trainer consumes
  them (each chunk shuffled by ``randperm`` seeded ``seed * 1_000_003 + chunk``, its first
  ``steps_per_chunk * batch`` rows used), so SAELens's trainer can be fed the very same batches;
- ``scale_in``: interp's input normalisation, sqrt(d) / mean norm of the first chunk (SAELens's
  ``expected_average_only_in`` computed on the same rows);
- ``eval_tokens`` [n, 128] and ``eval_acts`` [n, 127, d]: held-out contexts and their activations;
- metadata ``run``: the settings (JSON), read by the other steps of both venvs.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import interp  # noqa: E402
from common import ACTS, config  # noqa: E402
from interp.circuits.corpus import TokenStream, load_corpus, split_documents  # noqa: E402
from interp.circuits.sae_train import ActivationSource  # noqa: E402
from interp.dictionary import site_to_hook  # noqa: E402


def corpus_path(name: str, tmp: Path) -> str:
    """``bench``: bench_sae.py's corpus (the built-in English text plus stdlib docstrings, as JSONL); else as given."""
    if name != "bench":
        return name
    from bench_sae import stdlib_docstrings

    docs = list(load_corpus("builtin")["text"]) + stdlib_docstrings()
    path = tmp / "corpus.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in docs), encoding="utf-8")
    return str(path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("work", type=Path)
    p.add_argument("--tokens", type=int, default=61_440)
    p.add_argument("--layer", type=int, default=15)
    p.add_argument("--latents", type=int, default=2304)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--eval-contexts", type=int, default=32)
    p.add_argument("--corpus", default="bench")
    args = p.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)

    t0 = time.perf_counter()
    model = interp.load("smollm2-135m", backend="torch")
    load_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        corpus = corpus_path(args.corpus, Path(tmp))
        cfg = config(args.tokens, args.layer, corpus, args.latents, args.k, args.lr, args.batch_size, args.eval_contexts)
        ds = load_corpus(corpus)
    cfg.corpus = args.corpus  # the temporary file is gone; name the corpus by its option
    site = str(model.site(cfg.site))
    train_docs, eval_docs = split_documents(ds, seed=cfg.seed)
    stream = TokenStream(train_docs, model.tokenizer, cfg.context, cfg.seed)
    eval_stream = TokenStream(eval_docs, model.tokenizer, cfg.context, cfg.seed)
    source = ActivationSource(model, stream, cfg, site, None, "torch")

    per = cfg.buffer * cfg.model_batch
    chunks = -(-cfg.steps // cfg.steps_per_chunk)
    train_tokens = stream.contexts(0, chunks * per)
    t1 = time.perf_counter()
    acts = torch.cat([source.acts(rows)[0][:, 1:] for rows in train_tokens.split(cfg.model_batch)])
    eval_tokens = eval_stream.contexts(0, min(cfg.eval_contexts, eval_stream.per_epoch))
    eval_acts = torch.cat([source.acts(rows)[0][:, 1:] for rows in eval_tokens.split(cfg.model_batch)])
    collect_s = time.perf_counter() - t1

    rows_per_chunk = per * (cfg.context - 1)
    order, done = [], 0
    for c in range(chunks):  # what ActivationSource.chunk does to each chunk, and the rows train() uses of it
        perm = torch.randperm(rows_per_chunk, generator=torch.Generator().manual_seed(cfg.seed * 1_000_003 + c))
        take = min(cfg.steps_per_chunk, cfg.steps - done) * cfg.batch_size
        order.append(c * rows_per_chunk + perm[:take])
        done += take // cfg.batch_size
    order = torch.cat(order)
    flat = acts.reshape(-1, acts.shape[-1])
    first = flat[: rows_per_chunk][torch.randperm(rows_per_chunk, generator=torch.Generator().manual_seed(cfg.seed * 1_000_003))]
    scale_in = (acts.shape[-1] ** 0.5) / first.norm(dim=-1).mean()
    run = {"cfg": asdict(cfg), "model_name": model.name, "site": site, "hook_name": site_to_hook(site),
           "d_in": int(acts.shape[-1]), "steps": cfg.steps, "steps_per_chunk": cfg.steps_per_chunk,
           "dead_tokens": cfg.dead_tokens, "train_contexts": int(len(train_tokens)),
           "train_epochs": cfg.tokens / (stream.per_epoch * (cfg.context - 1)),
           "train_documents": len(train_docs), "eval_documents": len(eval_docs),
           "collect_seconds": collect_s, "model_load_seconds": load_s}
    save_file({"train_acts": acts.float().contiguous(), "train_tokens": train_tokens.contiguous(),
               "train_order": order.contiguous(), "scale_in": scale_in.reshape(1).float(),
               "eval_tokens": eval_tokens.contiguous(), "eval_acts": eval_acts.float().contiguous()},
              str(args.work / ACTS), metadata={"run": json.dumps(run)})
    print(f"collected {flat.shape[0]} training activations ({len(train_tokens)} contexts, {cfg.tokens} used in "
          f"{cfg.steps} batches of {cfg.batch_size}; {run['train_epochs']:.2f} epochs of {len(train_docs)} training "
          f"documents) and {eval_acts.shape[0] * eval_acts.shape[1]} held-out ({len(eval_tokens)} contexts) at {site} "
          f"in {collect_s:.0f} s (model load {load_s:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
