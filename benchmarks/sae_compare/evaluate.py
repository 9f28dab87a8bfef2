"""Step 4 (interp's venv): evaluate both dictionaries identically with interp and print the comparison table.

    python benchmarks/sae_compare/evaluate.py WORK

Both folders load through `interp.dictionary.load_dictionary(folder, model)` (SAELens's own layout for SAELens's,
checked against the model). On the held-out activations in WORK/acts.safetensors (position 0 dropped): L0,
explained variance (1 - summed squared error / summed variance about the mean, as `sae_train.evaluate`), MSE,
and the fraction of latents that never fire. On the held-out contexts: next-token loss clean, with the
dictionary spliced in (`model.attach` + `Ablate` of ``sae.<site>.error`` at positions 1.., so the site carries
the reconstruction; position 0 kept, as `sae_train.evaluate` keeps it) and with the site zero-ablated at
positions 1..; loss recovered = (zero - spliced) / (zero - clean). Losses are over the predictions of tokens
2.. (as `sae_train.evaluate`). Training throughput and the trainers' own dead-latent counts come from the
training steps' JSON files.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import interp  # noqa: E402
from common import INTERP_SAE, INTERP_STATS, SAELENS_SAE, SAELENS_STATS, stored_run  # noqa: E402
from interp.dictionary import load_dictionary  # noqa: E402
from interp.interventions import Ablate  # noqa: E402


@torch.no_grad()
def activation_metrics(d, x: torch.Tensor) -> dict:
    z = d.encode(x)
    recon = d.decode(z, x)
    err = (recon - x).double().pow(2).sum()
    var = (x.double() - x.double().mean(0)).pow(2).sum()
    return {"l0": float((z > 0).sum(-1).float().mean()), "explained_variance": 1 - float(err / var),
            "mse": float(err / len(x)), "never_fired": float(((z > 0).sum(0) == 0).float().mean())}


def ce(logits: torch.Tensor, rows: torch.Tensor) -> tuple[float, int]:
    pred = logits[:, 1:-1].float().reshape(-1, logits.shape[-1])
    targets = rows[:, 2:].reshape(-1)
    return float(torch.nn.functional.cross_entropy(pred, targets, reduction="sum")), targets.numel()


def main() -> None:
    work, meta, t = stored_run(__doc__.splitlines()[0])
    cfg, site = meta["cfg"], meta["site"]
    eval_tokens, eval_acts = t["eval_tokens"], t["eval_acts"]
    x = eval_acts.reshape(-1, eval_acts.shape[-1])
    model = interp.load("smollm2-135m", backend="torch")
    dicts = {"interp": load_dictionary(work / INTERP_SAE, model),
             "SAELens": load_dictionary(work / SAELENS_SAE, model)}
    stats = {"interp": json.loads((work / INTERP_STATS).read_text()),
             "SAELens": json.loads((work / SAELENS_STATS).read_text())}
    rows_of = {name: activation_metrics(d, x) for name, d in dicts.items()}

    later = (slice(None), slice(1, None))
    sums = {"clean": 0.0, "zero": 0.0, **{name: 0.0 for name in dicts}}
    n_pred, max_act_diff = 0, 0.0
    for i, rows in enumerate(eval_tokens.split(cfg["model_batch"])):
        out = model.run(rows, read=[site])
        stored = eval_acts[i * cfg["model_batch"]: i * cfg["model_batch"] + len(rows)]
        max_act_diff = max(max_act_diff, float((out.acts[site][:, 1:].float() - stored).abs().max()))
        loss, n = ce(out.logits, rows)
        sums["clean"] += loss
        n_pred += n
        sums["zero"] += ce(model.run(rows, [Ablate(site, index=later)]).logits, rows)[0]
        for name, d in dicts.items():
            base = model.attach(d)
            sums[name] += ce(model.run(rows, [Ablate(f"{base}.error", index=later)]).logits, rows)[0]
            model.detach_dictionary(base)
    clean, zero = sums["clean"] / n_pred, sums["zero"] / n_pred
    for name in dicts:
        spliced = sums[name] / n_pred
        rows_of[name] |= {"loss_spliced": spliced, "loss_increase": spliced - clean,
                          "loss_recovered": (zero - spliced) / (zero - clean)}

    tokens = stats["interp"]["tokens"]
    print(f"\nSmolLM2-135M {site}: TopK SAE, {cfg['d_sae']} latents, k={cfg['k']}, {tokens} training tokens "
          f"({meta['steps']} batches of {cfg['batch_size']}, lr {cfg['lr']:g}, corpus '{cfg['corpus']}', "
          f"{meta['train_epochs']:.2f} epochs of {meta['train_documents']} documents); same activations, same batch order")
    print(f"held-out: {len(x)} activations ({len(eval_tokens)} contexts of {cfg['context']}, position 0 skipped) "
          f"from {meta['eval_documents']} held-out documents; {n_pred} next-token predictions; "
          f"threads {torch.get_num_threads()}")
    print(f"next-token loss clean {clean:.4f}, {site} zero-ablated (positions 1..) {zero:.4f}\n")
    w = 30
    print(f"{'':{w}}{'interp':>14}{'SAELens':>14}")
    table = [
        ("L0 (held-out)", "l0", "{:.1f}"),
        ("explained variance", "explained_variance", "{:.4f}"),
        ("MSE per token", "mse", "{:.3f}"),
        ("never fired on held-out", "never_fired", "{:.1%}"),
        ("spliced next-token loss", "loss_spliced", "{:.4f}"),
        ("loss increase (spliced-clean)", "loss_increase", "{:+.4f}"),
        ("loss recovered", "loss_recovered", "{:.3f}"),
    ]
    for label, key, fmt in table:
        print(f"{label:{w}}{fmt.format(rows_of['interp'][key]):>14}{fmt.format(rows_of['SAELens'][key]):>14}")
    print(f"{'dead in training window':{w}}{stats['interp']['dead_fraction']:>14.1%}{stats['SAELens']['dead_fraction']:>14.1%}"
          f"   (no activation in the last {meta['dead_tokens']} training tokens)")
    print(f"{'training tokens/s':{w}}{stats['interp']['tokens_per_second']:>14.0f}{stats['SAELens']['tokens_per_second']:>14.0f}"
          f"   (same stored activations; model forwards excluded)")
    print(f"{'training seconds':{w}}{stats['interp']['train_seconds']:>14.1f}{stats['SAELens']['train_seconds']:>14.1f}")
    print(f"\nactivation collection (not in either throughput): {meta['collect_seconds']:.0f} s; stored held-out "
          f"activations vs a fresh forward: max |diff| {max_act_diff:.1e}; SAELens LR schedule vs interp's: max |diff| "
          f"{stats['SAELens']['lr_schedule_max_abs_diff_vs_interp']:.1e} x lr")


if __name__ == "__main__":
    main()
