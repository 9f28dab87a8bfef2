"""A subspace-patching run: find a direction at a site, patch along it, check for the illusion, save.

`subspace_run` is what ``interp subspace`` calls. It splits the prompt set into train and test
halves (deterministic by seed), finds the direction on the train half, and on the test half
patches along it, along its readable and unreadable parts and the whole activation
(`interp.patching.illusion`). The run folder holds ``subspace/direction`` [k, d], the projections of
base and source activations on each part (histograms in report.html) and, in ``manifest.json``,
the ``illusion`` object with the verdict in plain words.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Callable, Sequence

import torch

from interp.errors import InterpError
from interp.metrics import check_finite
from interp.model import Model
from interp.prompts import PromptSet
from interp.results import RunResult, describe_tensor, run_header
from interp.patching.das import split, train_das
from interp.patching.illusion import illusion_check, readable_basis
from interp.patching.illusion import split as readable_split
from interp.patching.subspace import METHODS, Direction, PatchPairs, gradient, mean_diff, patch_pairs, probe

PARTS = ("direction", "readable", "unreadable")


TRAIN_ONLY_NOTE = ("--test-fraction 0 holds no prompts out: the direction is found and checked on the same "
                   "prompts, so the check says little about whether it generalises")


def check_subspace_options(method: str, k: int, test_fraction: float, direction_file: str | None,
                           das_options: dict | None = None) -> None:
    """Validate options before any model work."""
    if method not in METHODS:
        raise InterpError(f"unknown method '{method}': use one of {', '.join(METHODS)}")
    if k < 1:
        raise InterpError(f"--k must be at least 1, got {k}")
    if k > 1 and method not in ("das", "given"):
        raise InterpError(f"--k {k} needs --method das (mean_diff, probe and gradient give one direction)")
    if not 0 <= test_fraction < 1:
        raise InterpError(f"--test-fraction must be in [0, 1), got {test_fraction}")
    if (method == "given") != bool(direction_file):
        raise InterpError("--method given needs --direction-file PATH (a saved direction), and only it takes one")
    options = das_options or {}
    lr = options.get("lr", 0.01)
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise InterpError(f"--lr must be a positive finite number, got {lr}")
    for name in ("epochs", "batch_size"):
        if name in options and (not isinstance(options[name], int) or options[name] < 1):
            raise InterpError(f"--{name.replace('_', '-')} must be at least 1, got {options[name]}")


def find_direction(model: Model, train: PatchPairs, method: str, k: int = 1, direction_file: str | None = None,
                   seed: int = 0, das_options: dict | None = None, progress: Callable | None = None,
                   checkpoint=None) -> Direction:
    """The direction(s) [k, d] at ``train.site`` by ``method`` (see `interp.patching.subspace`)."""
    if method == "given":
        found = Direction.load(direction_file)
        if found.site != train.site or found.vectors.shape[-1] != train.source.shape[-1]:
            raise InterpError(f"{direction_file} holds a direction for {found.site} of size {found.vectors.shape[-1]}, "
                              f"not for {train.site} of size {train.source.shape[-1]}")
        return found
    if method == "das":
        found, report = train_das(model, train, k=k, test_fraction=0.0, seed=seed, progress=progress,
                                  checkpoint=checkpoint, **(das_options or {}))
        found.meta["loss"] = report["loss"]  # the scores are in meta already
        return found
    vector = {"mean_diff": lambda: mean_diff(train), "probe": lambda: probe(train, seed),
              "gradient": lambda: gradient(model, train)}[method]()
    return Direction(train.site, vector[None], method, {"n_train": len(train)})


def subspace_run(model: Model, prompts: PromptSet, site: str, method: str = "das", k: int = 1,
                 positions: Sequence[int] | None = (-1,), heads: Sequence[tuple[int, int]] = (),
                 direction_file: str | None = None, test_fraction: float = 0.5, seed: int = 0,
                 das_options: dict | None = None, out: str | Path | None = None, command: str = "python",
                 progress: Callable | None = None, resume: bool = False) -> RunResult:
    """Find a direction at ``site``, run the illusion check on held-out prompts, return (and save) the run.

    With ``out``, DAS saves its training state there after every epoch (`interp.outdir.Checkpoint`) and
    ``resume=True`` completes an interrupted run with identical results.
    """
    from interp.outdir import Checkpoint

    check_subspace_options(method, k, test_fraction, direction_file, das_options)
    if resume and out is None:
        raise InterpError("--resume needs --out DIR: the folder of the interrupted run")
    t0 = time.perf_counter()
    basis = readable_basis(model, site, heads)  # also fails early on a wrong site kind or missing heads
    pairs = patch_pairs(model, prompts, site, positions)
    train_rows, test_rows = split(len(pairs), test_fraction, seed)
    train = pairs.subset(train_rows)
    test = pairs.subset(test_rows) if len(test_rows) else train
    checkpoint = None
    if out is not None and method == "das":
        run_id = {"command": "subspace", "model": model.name, "backend": model.backend_name,
                  "dtype": str(next(model.hf.parameters()).dtype).replace("torch.", ""), "prompt_set": prompts.name,
                  "fingerprint": prompts.fingerprint(), "site": site, "method": method, "k": k,
                  "positions": None if pairs.positions is None else list(pairs.positions),
                  "test_fraction": test_fraction, "seed": seed, **(das_options or {})}
        checkpoint = Checkpoint(Path(out), run_id)
        if resume and checkpoint.load() is None:
            raise InterpError(f"nothing to resume in {out}: no interrupted DAS run there (run without --resume)")
        if not resume and (Path(out) / "progress.json").is_file():
            raise InterpError(f"{out} holds an interrupted run: add --resume to complete it, or choose another --out")
    found = find_direction(model, train, method, k, direction_file, seed, das_options, progress, checkpoint)
    t_find = time.perf_counter() - t0
    vectors = check_finite(found.vectors.float(), f"the {method} direction at {site}")
    check = illusion_check(model, test, vectors[0] if len(vectors) == 1 else vectors, heads, basis=basis)
    _check_finite_scores(check, site)
    readable, unreadable = readable_split(vectors, basis)
    scores = {"subspace/direction": vectors}
    tensors = {"subspace/direction": describe_tensor("subspace/direction", vectors, ["k", "d"]) | {"plot": False}}
    histograms = []
    for part, v in zip(PARTS, (vectors, readable, unreadable)):
        if v.norm() == 0:
            continue
        unit = v[0] / v[0].norm()
        for side, acts in (("base", test.base_act), ("source", test.source)):
            name = f"subspace/projection/{part}/{side}"
            values = (acts if test.positions is None else acts[:, list(test.positions)]).reshape(-1, acts.shape[-1]) @ unit
            scores[name] = values
            tensors[name] = describe_tensor(name, values, ["row"])
        histograms.append({"title": f"projections on the {part} part", "x_title": f"activation . unit {part} vector",
                           "tensors": [f"subspace/projection/{part}/base", f"subspace/projection/{part}/source"]})
    table = [f"{name}: " + ", ".join(f"{key} {value}" for key, value in check[name].items())
             for name in ("direction", "readable", "unreadable", "full") if check[name]]
    text = "\n".join([check["verdict"], *table, f"base logit diff: {check['base_logit_diff']}",
                      f"norms: readable {check['norms']['readable']}, unreadable {check['norms']['unreadable']}"])
    notes = [{"title": "Illusion check", "text": text}]
    if not len(test_rows):
        notes.append({"title": "Tested on the training prompts", "text": TRAIN_ONLY_NOTE})
    tokens = prompts.tokenize(model.tokenizer)
    manifest = {
        **run_header(model, command, seed),
        "prompt_set": {"name": prompts.name, "fingerprint": prompts.fingerprint(), "n_prompts": len(pairs),
                       "n_tokens": tokens.clean.shape[1], "tokens": tokens.str_tokens, "example_clean": prompts.clean[0],
                       "example_corrupt": prompts.corrupt[0]},
        "metric": "logit_diff", "site": site, "method": method,
        "parameters": {"k": k, "positions": None if positions is None else list(positions), "heads": [list(h) for h in heads],
                       "test_fraction": test_fraction, "n_train": len(train), "n_test": len(test), "seed": seed,
                       "tested_on": "test" if len(test_rows) else "train", **(das_options or {})},
        "direction_meta": found.meta,
        "illusion": check,
        "notes": notes,
        "histograms": histograms,
        "tensors": tensors,
        "timings": {"find_s": round(t_find, 3), "run_s": round(time.perf_counter() - t0, 3)},
    }
    result = RunResult(manifest=manifest, scores=scores)
    if out is not None:
        result.save(out)
        found.save(Path(out) / "direction")
        if checkpoint is not None:
            checkpoint.clear()
    return result


def _check_finite_scores(check: dict, site: str) -> None:
    """A one-line error naming the entry when the illusion check's numbers are NaN or infinite."""
    numbers = {"base_logit_diff": check["base_logit_diff"], **{f"norms.{k}": v for k, v in check["norms"].items()}}
    for name in ("direction", "readable", "unreadable", "full"):
        numbers |= {f"{name}.{k}": v for k, v in (check.get(name) or {}).items()}
    for where, value in numbers.items():
        check_finite(torch.tensor([float(value)]), f"the illusion check at {site} ({where})")
