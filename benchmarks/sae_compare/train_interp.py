"""Step 2 (interp's venv): train interp's TopK SAE (`interp.circuits.sae_train.train`) on the collected activations.

    python benchmarks/sae_compare/train_interp.py WORK

`train(model, cfg, stream)` takes its activations from ``model.run`` on contexts drawn from ``stream``; nothing in
interp reads a file of precomputed activations, and interp is not changed for this. So the trainer is given an
activation source built from WORK/acts.safetensors: ``stream`` hands out context numbers, and ``model`` is a
stand-in whose ``run`` hands the stored activations of those contexts to the trainer's own intervention (the
``_StopAt`` that `ActivationSource.acts` installs, which keeps the activation and ends the forward). Everything
else is interp's: the chunking and per-chunk shuffle, the normalisation, the geometric-median b_dec, Adam, the
schedule, aux-k, the dead-latent window, the folding of the scale into the saved weights. The chunk order is
checked against ``train_order`` (what SAELens is fed). ``Trained.train_seconds`` times the training loop (the
first chunk is read before the clock starts; later chunks are read from memory inside it).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import INTERP_SAE, INTERP_STATS, stored_run  # noqa: E402
from interp.circuits.sae_cli import dictionary_from  # noqa: E402
from interp.circuits.sae_train import ActivationSource, TrainConfig, train  # noqa: E402
from interp.dictionary import save_dictionary  # noqa: E402


class StoredActivations:
    """Stands in for an `interp.Model` in `train`: ``run`` serves stored activations of the contexts asked for."""

    backend_name = "torch"

    def __init__(self, name: str, acts: torch.Tensor):
        self.name, self.acts = name, acts  # acts [contexts, context - 1, d]: position 0 already dropped

    def site(self, site: str) -> str:
        return site

    def run(self, tokens: torch.Tensor, interventions=(), read=(), backend=None, **_):
        ids = tokens[:, 0]
        act = torch.cat([torch.zeros(len(ids), 1, self.acts.shape[-1]), self.acts[ids]], dim=1)  # position 0: unused
        for intervention in interventions:
            act = intervention.apply(act)  # the trainer's _StopAt keeps it and raises to end the "forward"
        raise RuntimeError("the trainer did not stop the forward at its site")


class ContextNumbers:
    """Stands in for a `TokenStream`: context ``i`` is the token row ``[i]`` (an index into the stored activations)."""

    def __init__(self, n: int):
        self.per_epoch = n

    def contexts(self, start: int, n: int) -> torch.Tensor:
        if start + n > self.per_epoch:
            raise IndexError(f"contexts {start}..{start + n - 1} asked for; {self.per_epoch} were collected")
        return torch.arange(start, start + n)[:, None]


def main() -> None:
    work, meta, tensors = stored_run(__doc__.splitlines()[0])
    cfg = TrainConfig(**meta["cfg"]).check()
    acts, order = tensors["train_acts"], tensors["train_order"]
    model, stream = StoredActivations(meta["model_name"], acts), ContextNumbers(len(acts))

    # the batches interp's trainer will see are the rows train_order names (what SAELens's trainer is fed)
    x0, _ = ActivationSource(model, stream, cfg, meta["site"], None).chunk(0)
    take = min(cfg.steps_per_chunk, cfg.steps) * cfg.batch_size
    assert torch.equal(x0[:take], acts.reshape(-1, acts.shape[-1])[order[:take]]), "chunk order differs from train_order"
    del x0

    trained = train(model, cfg, stream)
    dictionary = dictionary_from(trained, meta["model_name"], cfg.corpus)
    save_dictionary(dictionary, work / INTERP_SAE)
    stats = {"train_seconds": trained.train_seconds, "tokens": trained.tokens_trained,
             "tokens_per_second": trained.tokens_trained / trained.train_seconds,
             "dead_fraction": float(trained.dead.float().mean()), "dead_window_tokens": cfg.dead_tokens,
             "final_loss": float(trained.curve[-1, 1])}
    (work / INTERP_STATS).write_text(json.dumps(stats, indent=1))
    print(f"interp: {stats['tokens']} tokens in {stats['train_seconds']:.1f} s ({stats['tokens_per_second']:.0f} tok/s), "
          f"dead {stats['dead_fraction']:.1%}, final loss {stats['final_loss']:.2f}", flush=True)


if __name__ == "__main__":
    main()
