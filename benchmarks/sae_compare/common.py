"""Settings shared by the interp side of the comparison (collect.py, train_interp.py, evaluate.py).

The SAELens side (train_saelens.py, run in SAELens's own venv) cannot import interp, so it reads the same
settings from the activation file's metadata, written here by collect.py.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch

from interp.circuits.sae_train import TrainConfig

ACTS = "acts.safetensors"        # in the work folder: activations, token ids, training order, scale
INTERP_SAE = "interp_sae"         # interp's dictionary (SAELens layout, save_dictionary)
SAELENS_SAE = "saelens_sae"       # SAELens's dictionary (its own save_inference_model)
INTERP_STATS = "interp_train.json"
SAELENS_STATS = "saelens_train.json"


def config(tokens: int, layer: int, corpus: str, latents: int = 2304, k: int = 32, lr: float = 1e-3,
           batch_size: int = 512, eval_contexts: int = 32) -> TrainConfig:
    """interp's TrainConfig for the run: bench_sae.py's settings (context 128, 8 contexts a forward, 8 forwards a
    shuffle buffer) with the token count rounded to whole training batches (SAELens trains whole batches only)."""
    tokens = max(batch_size, tokens // batch_size * batch_size)
    return TrainConfig(site=f"resid_post.{layer}", d_sae=latents, tokens=tokens, arch="topk", k=k, lr=lr,
                       batch_size=batch_size, context=128, model_batch=8, buffer=8, corpus=corpus,
                       eval_contexts=eval_contexts, seed=0).check()


def read_meta(work: Path) -> dict:
    from safetensors import safe_open

    with safe_open(str(work / ACTS), "pt") as f:
        return json.loads(f.metadata()["run"])


def stored_run(description: str) -> tuple[Path, dict, dict[str, torch.Tensor]]:
    """Parse the work folder from the command line, set torch's threads from OMP_NUM_THREADS, and return the folder,
    the run's settings and the stored tensors (what train_interp.py and evaluate.py start from)."""
    from interp.results import read_tensors

    p = argparse.ArgumentParser(description=description)
    p.add_argument("work", type=Path)
    work = p.parse_args().work
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    return work, read_meta(work), read_tensors(work / ACTS)
