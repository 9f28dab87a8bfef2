"""``interp doctor``: run the parity checks of the test suite on the user's own model, and print a table.

`interp.doctor` holds the checks that need only the hook layer (logits against the plain HF forward on
every backend, the residual identities of the block shape, reads and interventions equal across
backends, no hook left behind). This module adds the one that needs patching, batched engine = hooks
engine on a small sweep (resid_pre and head_out on two layers), and the command itself, which
``interp`` finds through the ``interp.commands`` entry point (interp never imports patching).

Exit codes: 0 when every check passes, 1 when one fails, 2 for bad input (one line on stderr).

>>> checks = doctor_checks(interp.load("tiny-llama"))         # doctest: +SKIP
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence

import torch
import typer
from rich.console import Console
from rich.table import Table

from interp.cli_support import DEVICE, DEVICE_MAP, DTYPE, load_model
from interp.doctor import (
    CHANGED,
    N_PROMPTS,
    ORDER,
    SEQ,
    Check,
    Probe,
    compare,
    run_checks,
)
from interp.errors import InterpError
from interp.metrics import MetricContext, logit_diff
from interp.model import Model
from interp.patching.activation import sweep


def engine_check(model: Model, probe: Probe) -> list[Check]:
    """Batched engine = hooks engine (through the model's backend) on resid_pre and head_out of two layers.

    Denoising: clean activations into the corrupt run; the metric is the logit difference between the
    clean run's top two tokens at the last position. To stay fast on real models, the sweep covers the
    positions where the prompts differ and the last one (earlier positions are no-ops), and three heads.
    """
    n = model.n_layers
    layers = sorted({n // 3, n - 1})
    with torch.no_grad():
        clean = model.run(probe.clean, backend="torch").logits[:, -1]
        corrupt = model.run(probe.corrupt, backend="torch").logits[:, -1]
    top = clean.topk(2, dim=-1).indices
    ctx = MetricContext(top[:, 0], top[:, 1], clean, corrupt)
    base = logit_diff(corrupt, ctx).float().cpu()  # sweep values live on the CPU
    cells = {"resid_pre": sorted({*CHANGED, SEQ - 1}), "head_out": sorted({0, model.n_heads // 2, model.n_heads - 1})}
    checks = []
    for component, keep in cells.items():
        acts = model.run(probe.clean, read=[f"{component}.{L}" for L in layers], backend="torch").acts
        done = torch.ones(len(layers), SEQ if component == "resid_pre" else model.n_heads, dtype=torch.bool)
        done[:, keep] = False  # only these cells run
        batched, _ = sweep(model, component, probe.corrupt, acts, logit_diff, ctx, layers=layers, engine="batched",
                           done=done.clone(), max_rows=4)
        hooks, _ = sweep(model, component, probe.corrupt, acts, logit_diff, ctx, layers=layers, engine="hooks",
                         done=done.clone())
        batched, hooks = batched[:, ~done], hooks[:, ~done]
        effect = (hooks - base.view(-1, 1)).abs().max().item()
        unit = "positions" if component == "resid_pre" else "heads"
        what = (f"{hooks.shape[1]} patches (layers {', '.join(map(str, layers))} x {unit} {', '.join(map(str, keep))}); "
                f"largest effect {effect:.3g}")
        checks.append(compare(f"batched = hooks engine ({component})", model.backend_name, "engine", probe,
                              {component: (batched, hooks)}, what, scale=clean.abs().max().item()))
    return checks


def doctor_checks(model: Model, backends: Sequence[str] | None = None) -> list[Check]:
    """Every check of ``interp doctor`` on ``model``: `interp.doctor.run_checks` plus the engine check."""
    return run_checks(model, backends, extra=[engine_check])


def _number(x: float | None, digits: int = 2) -> str:
    if x is None:
        return "-"
    return "0" if x == 0 else f"{x:.{digits}g}"


def print_table(console: Console, title: str, checks: list[Check]) -> None:
    """The checks as a rich table: check, backend, result, largest difference, tolerance, detail."""
    table = Table("check", "backend", "result", "max diff", "tolerance", "detail", title=title, title_justify="left")
    for c in checks:
        result = {"pass": "[green]pass[/]", "FAIL": "[bold red]FAIL[/]", "refused": "[yellow]refused[/]"}[c.status]
        table.add_row(c.name, c.backend, result, _number(c.max_diff), _number(c.tolerance, 1), c.detail)
    console.print(table)


def doctor(
    model: str = typer.Argument(None, help="Model name (see `interp models`), HF id or local path; default smollm2-135m."),
    backend: str = typer.Option("all", help="all, or one of lens, nnsight, torch (compared against torch)."),
    device: str = DEVICE,
    device_map: str = DEVICE_MAP,
    dtype: str = DTYPE,
    as_json: bool = typer.Option(False, "--json", help="Print the checks as JSON on stdout."),
) -> None:
    """Check that interp computes this model's own numbers: logits, residual identities, backends, engines, hooks."""
    from interp.models import DEFAULT_MODEL

    if backend != "all" and backend not in ORDER:
        raise InterpError(f"unknown backend '{backend}': use all, {', '.join(ORDER)}")
    backends = list(ORDER) if backend == "all" else [backend]
    name = DEFAULT_MODEL if model is None else model  # "" is refused by load_model, not taken as the default
    console = Console(stderr=True)
    t0 = time.perf_counter()
    m = load_model(console, name, "torch", device, dtype, device_map)
    if backend != "all":
        try:
            m.backend(backend)  # the engine check's hooks engine runs here; a refusal becomes a table row
            m.backend_name = backend
        except InterpError:
            pass
    load_s = time.perf_counter() - t0
    with console.status(f"checking {name} on {', '.join(backends)}"):
        checks = doctor_checks(m, backends)
    check_s = time.perf_counter() - t0 - load_s
    failed = [c for c in checks if not c.passed]
    a = m.adapter
    if as_json:
        print(json.dumps({"model": name, "family": a.family, "block": a.block, "dtype": dtype, "device": device,
                          "backends": backends, "passed": not failed, "load_s": round(load_s, 3),
                          "check_s": round(check_s, 3), "checks": [c.as_dict() for c in checks]}, indent=2))
    else:
        title = (f"interp doctor: {name} ({a.family}, {a.block} block, {a.n_layers} layers, {dtype}, {device}; "
                 f"{N_PROMPTS} random prompts of {SEQ} tokens)")
        print_table(Console(), title, checks)
        verdict = (f"{len(failed)} of {len(checks)} checks FAILED: {', '.join(sorted({c.name for c in failed}))}"
                   if failed else f"all {len(checks)} checks passed")
        Console().print(f"{verdict} (load {load_s:.1f} s, checks {check_s:.1f} s)", highlight=False)
    if failed:
        raise typer.Exit(1)

