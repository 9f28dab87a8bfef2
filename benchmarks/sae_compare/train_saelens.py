"""Step 3 (SAELens's venv, never interp's): train SAELens's own TopK SAE on the same activations and settings.

    /tmp/saelens-venv/bin/python benchmarks/sae_compare/train_saelens.py WORK

SAELens's `SAETrainer` takes any iterator of activation batches as its ``data_provider`` (what
`LanguageModelSAETrainingRunner` builds from its `ActivationsStore`); here it is fed WORK/acts.safetensors's
training rows in ``train_order``, batch for batch what interp's trainer saw. The SAE is SAELens's
`TopKTrainingSAE`; `SAETrainer.fit` trains it (its Adam, LR scheduler, aux-k loss, dead-latent counter, gradient
clipping) and folds the activation scale into the weights; `save_inference_model` writes it in SAELens's layout.
The input scale is SAELens's ``expected_average_only_in`` with the factor set to interp's (sqrt(d) / mean norm of
the first shuffle buffer) instead of estimated from ``n_batches_for_norm_estimate`` batches of the provider, which
would consume training batches and make the two streams differ. ``fit`` is timed with the activations already
in memory, in training order.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")

import torch  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

import sae_lens  # noqa: E402
from sae_lens import SAETrainer  # noqa: E402
from sae_lens.config import SAETrainerConfig  # noqa: E402
from sae_lens.saes.sae import SAEMetadata  # noqa: E402
from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig  # noqa: E402


def interp_lr_factors(steps: int, warmup: float, decay: float) -> list[float]:
    """interp's schedule (circuits/sae_train.py `_lr`), to check SAELens's matches it step for step."""
    warm, dec = max(1, round(warmup * steps)), max(1, round(decay * steps))
    return [max(min(1.0, (s + 1) / warm, (steps - s) / dec), 0.0) for s in range(steps)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("work", type=Path)
    args = p.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    with safe_open(str(args.work / "acts.safetensors"), "pt") as f:
        meta = json.loads(f.metadata()["run"])
    cfg = meta["cfg"]
    t = load_file(str(args.work / "acts.safetensors"))
    d_in = meta["d_in"]
    batches = t["train_acts"].reshape(-1, d_in)[t["train_order"]]  # interp's training order, [steps * batch, d]
    del t["train_acts"]
    steps, batch = meta["steps"], cfg["batch_size"]
    assert batches.shape[0] == steps * batch

    torch.manual_seed(cfg["seed"])
    sae_cfg = TopKTrainingSAEConfig(
        d_in=d_in, d_sae=cfg["d_sae"], k=cfg["k"], dtype="float32", device="cpu",
        apply_b_dec_to_input=True, normalize_activations="expected_average_only_in",
        aux_loss_coefficient=cfg["aux_coeff"],          # interp's 1/32 (SAELens's default is 1.0)
        decoder_init_norm=1.0,                          # interp's unit-norm decoder rows (SAELens's default 0.1)
        rescale_acts_by_decoder_norm=True,              # SAELens's default: its way of keeping decoder norms out of TopK
        metadata=SAEMetadata(model_name=meta["model_name"], hook_name=meta["hook_name"], context_size=cfg["context"],
                             prepend_bos=False, dataset_path=cfg["corpus"], seqpos_slice=(1, None),
                             trained_by="SAELens SAETrainer (benchmarks/sae_compare)", training_tokens=steps * batch))
    sae = TopKTrainingSAE(sae_cfg)
    trainer_cfg = SAETrainerConfig(
        total_training_samples=steps * batch, train_batch_size_samples=batch, lr=cfg["lr"],
        lr_scheduler_name="constant", lr_warm_up_steps=max(1, round(cfg["warmup"] * steps)),
        lr_decay_steps=max(1, round(cfg["decay"] * steps)), lr_end=cfg["lr"], adam_beta1=0.9, adam_beta2=0.999,
        device="cpu", autocast=False,
        # interp: dead when no activation in the last dead_tokens tokens (>=); SAELens: more than this many steps (>)
        dead_feature_window=-(-meta["dead_tokens"] // batch) - 1,
        feature_sampling_window=steps, n_checkpoints=0, checkpoint_path=None, save_final_checkpoint=False)

    # SAELens's schedule, stepped on a throwaway optimizer, against interp's
    from sae_lens.training.optim import get_lr_scheduler

    probe = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=cfg["lr"])
    sched = get_lr_scheduler("constant", optimizer=probe, training_steps=steps, lr=cfg["lr"],
                             warm_up_steps=trainer_cfg.lr_warm_up_steps, decay_steps=trainer_cfg.lr_decay_steps,
                             lr_end=cfg["lr"], num_cycles=1)
    ours = []
    for _ in range(steps):
        ours.append(probe.param_groups[0]["lr"] / cfg["lr"])
        probe.step()
        sched.step()
    lr_diff = max(abs(a - b) for a, b in zip(ours, interp_lr_factors(steps, cfg["warmup"], cfg["decay"])))

    trainer = SAETrainer(cfg=trainer_cfg, sae=sae, data_provider=iter(batches.split(batch)))
    trainer.activation_scaler.scaling_factor = float(t["scale_in"][0])  # interp's factor, not re-estimated
    t0 = time.perf_counter()
    trainer.fit()
    seconds = time.perf_counter() - t0
    dead = trainer.dead_neurons
    sae.save_inference_model(args.work / "saelens_sae")
    stats = {"train_seconds": seconds, "tokens": trainer.n_training_samples,
             "tokens_per_second": trainer.n_training_samples / seconds, "dead_fraction": float(dead.float().mean()),
             "dead_feature_window_steps": trainer_cfg.dead_feature_window, "steps": trainer.n_training_steps,
             "lr_schedule_max_abs_diff_vs_interp": lr_diff, "sae_lens": sae_lens.__version__,
             "torch": torch.__version__}
    (args.work / "saelens_train.json").write_text(json.dumps(stats, indent=1))
    print(f"SAELens {sae_lens.__version__}: {stats['tokens']} tokens in {seconds:.1f} s "
          f"({stats['tokens_per_second']:.0f} tok/s), dead {stats['dead_fraction']:.1%}; "
          f"LR schedule vs interp's: max |diff| {lr_diff:.2e} of lr", flush=True)


if __name__ == "__main__":
    main()
