"""Distributed alignment search (DAS): learn the subspace whose patch carries the source's answer.

DAS (Geiger et al. 2023, in the form Makelov et al. 2024 use) learns an orthogonal rotation of
a site's activation space and patches only its first k rotated coordinates from the source run
into the base run. Only the span of those k rows matters, so it is enough to learn k orthonormal
directions ``[k, d]``: the patched activation is ``base + (source - base) Q Q^T`` along their span
(`interp.interventions.SubspaceReplace`). The rows are kept orthonormal by
``torch.nn.utils.parametrizations.orthogonal`` on a bias-free ``Linear(d, k)`` and trained with
Adam to minimise the cross-entropy of the patched last-position logits against the target token
(the answer the source run would give). The model's own weights stay frozen.

>>> direction, report = train_das(model, pairs, k=1)         # doctest: +SKIP
>>> report["test"]["interchange_acc"]                       # doctest: +SKIP

Because DAS is trained to make the patch work, a high score on its own training pairs says
little; judge it on the held-out ``test`` pairs (``test_fraction``), and beware that a
high-dimensional subspace can produce the target even where the model does not use it
(Makelov et al.'s "interpretability illusion").
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Callable

import torch
import torch.nn.functional as F
from torch.nn.utils.parametrizations import orthogonal

from interp.errors import InterpError
from interp.model import Model
from interp.patching.subspace import Direction, PatchPairs, base_logit_diff, evaluate, patched_logits

if TYPE_CHECKING:
    from interp.outdir import Checkpoint

Progress = Callable[[int, int, float], None]


def _check(pairs: PatchPairs, d: int, k: int, epochs: int, batch_size: int, lr: float, test_fraction: float) -> None:
    if len(pairs) < 2:
        raise InterpError(f"DAS needs at least 2 patch pairs (got {len(pairs)}); use more prompts")
    if not isinstance(k, int) or not 1 <= k <= d:
        raise InterpError(f"DAS subspace dimension k={k} must be an integer between 1 and the site's dimension {d}")
    if not isinstance(epochs, int) or epochs < 1:
        raise InterpError(f"DAS epochs={epochs} must be a positive integer")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise InterpError(f"DAS batch_size={batch_size} must be a positive integer")
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise InterpError(f"DAS learning rate lr={lr} must be a positive finite number")
    if not 0 <= test_fraction < 1:
        raise InterpError(f"DAS test_fraction={test_fraction} must be in [0, 1): the share of pairs held out for testing")


def split(n: int, test_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic train / test row indices: a seeded permutation, ``round(n * test_fraction)`` held out.

    With ``test_fraction > 0`` at least one pair is held out, and at least one is always trained on.
    """
    n_test = round(n * test_fraction)
    if test_fraction > 0:
        n_test = max(n_test, 1)
    n_test = min(n_test, n - 1)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[n_test:].sort().values, perm[:n_test].sort().values


def train_das(
    model: Model,
    pairs: PatchPairs,
    k: int = 1,
    epochs: int = 30,
    batch_size: int = 20,
    lr: float = 0.01,
    test_fraction: float = 0.5,
    seed: int = 0,
    progress: Progress | None = None,
    checkpoint: Checkpoint | None = None,
) -> tuple[Direction, dict]:
    """Learn k orthonormal directions at ``pairs.site`` whose patch makes the base run answer ``pairs.target``.

    The pairs are split into train and test (``test_fraction`` held out, deterministic by
    ``seed``); training runs ``epochs`` passes of shuffled mini-batches of ``batch_size`` with Adam
    at ``lr``, decayed linearly to ``0.1 lr`` over training. ``progress(epoch, epochs, loss)`` is
    called after each epoch with its mean training loss.

    Returns the `Direction` (``method="das"``, float32 rows ``[k, d]``) and a report:
    ``{"loss": [mean train loss per epoch], "train": scores, "test": scores or None,
    "n_train", "n_test"}``, where the scores are `interp.patching.subspace.evaluate` with each subset's
    own base logit difference.

    With a ``checkpoint`` (`interp.outdir.Checkpoint`), the training state (rotation, Adam, learning-rate
    schedule, shuffling generator, losses) is saved after every epoch and, when the checkpoint holds one,
    training continues from it: an interrupted call completed this way gives bit-identical results.
    """
    d = pairs.source.shape[-1]
    _check(pairs, d, k, epochs, batch_size, lr, test_fraction)
    train_rows, test_rows = split(len(pairs), test_fraction, seed)
    train, test = pairs.subset(train_rows), pairs.subset(test_rows)

    with torch.random.fork_rng(devices=[]):  # a seeded initial rotation, leaving the caller's RNG alone
        torch.manual_seed(seed)
        rotation = orthogonal(torch.nn.Linear(d, k, bias=False)).to(model.device)  # weight [k, d], orthonormal rows
    optimizer = torch.optim.Adam(rotation.parameters(), lr=lr)
    steps_per_epoch = -(-len(train) // batch_size)
    scheduler = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=1.0, end_factor=0.1,
                                                  total_iters=max(epochs * steps_per_epoch - 1, 1))
    shuffle = torch.Generator().manual_seed(seed)
    losses: list[float] = []
    saved = checkpoint.load() if checkpoint is not None else None
    if saved is not None:
        _restore(saved, rotation, optimizer, scheduler, shuffle, losses)
        if progress is not None and losses:
            progress(len(losses), epochs, losses[-1])
    for epoch in range(len(losses), epochs):
        total = 0.0
        for rows in torch.randperm(len(train), generator=shuffle).split(batch_size):
            batch = train.subset(rows)
            logits = patched_logits(model, batch, rotation.weight, grad=True)
            loss = F.cross_entropy(logits.float(), batch.target.to(logits.device))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += float(loss.detach()) * len(rows)
        losses.append(total / len(train))
        if not math.isfinite(losses[-1]):
            raise InterpError(f"DAS loss is not finite ({losses[-1]}) at epoch {epoch + 1}: lower --lr, or check the "
                              "model's numbers at this site (float16 overflow?)")
        if checkpoint is not None:
            _save(checkpoint, rotation, optimizer, scheduler, shuffle, losses, epochs)
        if progress is not None:
            progress(epoch + 1, epochs, losses[-1])

    with torch.no_grad():
        vectors = rotation.weight.detach().float().cpu().clone()

    def score(subset: PatchPairs) -> dict | None:
        if len(subset) == 0:
            return None
        return evaluate(model, subset, vectors, base_logit_diff(model, subset))

    report = {"loss": losses, "train": score(train), "test": score(test), "n_train": len(train), "n_test": len(test)}
    meta = {"k": k, "epochs": epochs, "batch_size": batch_size, "lr": lr, "test_fraction": test_fraction,
            "seed": seed, "n_train": len(train), "n_test": len(test), "final_loss": losses[-1],
            "positions": None if pairs.positions is None else [int(p) for p in pairs.positions],
            "train": report["train"], "test": report["test"]}
    return Direction(site=pairs.site, vectors=vectors, method="das", meta=meta), report


def _save(checkpoint: Checkpoint, rotation: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler,
          shuffle: torch.Generator, losses: list[float], epochs: int) -> None:
    """Everything the next epoch depends on, after ``len(losses)`` finished epochs."""
    tensors = {f"rotation/{k}": v.detach().cpu() for k, v in rotation.state_dict().items()}
    opt = optimizer.state_dict()
    for index, state in opt["state"].items():
        for key, value in state.items():
            tensors[f"adam/{index}/{key}"] = value.detach().cpu() if torch.is_tensor(value) else torch.tensor(value)
    tensors["shuffle"] = shuffle.get_state()
    checkpoint.save(tensors, {"epochs": len(losses)}, {"epochs": epochs}, losses=losses,
                    param_groups=opt["param_groups"], scheduler=scheduler.state_dict())


def _restore(saved: tuple[dict, dict], rotation: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler,
             shuffle: torch.Generator, losses: list[float]) -> None:
    tensors, info = saved
    try:
        device = next(rotation.parameters()).device
        rotation.load_state_dict({k.split("/", 1)[1]: v.to(device) for k, v in tensors.items()
                                  if k.startswith("rotation/")})
        state: dict[int, dict] = {}
        for key, value in tensors.items():
            if key.startswith("adam/"):
                _, index, name = key.split("/")
                state.setdefault(int(index), {})[name] = value if name == "step" else value.to(device)
        optimizer.load_state_dict({"state": state, "param_groups": info["param_groups"]})
        scheduler.load_state_dict(info["scheduler"])
        shuffle.set_state(tensors["shuffle"])
        losses[:] = [float(x) for x in info["losses"]]
    except (KeyError, ValueError, TypeError, RuntimeError) as e:
        raise InterpError(f"the saved DAS training state is damaged ({type(e).__name__}): start over with --force") from None
