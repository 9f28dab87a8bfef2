"""Models split across devices: device maps parsed and checked, then applied with accelerate's hooks.

`interp.load(..., device_map=...)` takes None, "auto", "balanced", a {module name: device} dict or a JSON file of
one. A bad map is a one-line error before any weights load; the model then loads as usual and accelerate's
`dispatch_model` places each module, moving each module's inputs to its device (offloaded modules to "disk").
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path

import torch

from interp.errors import InterpError


def _one_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else ''}".strip()


def check_device(device: object) -> None:
    """A one-line error unless torch can compute on ``device`` and copy the result back (``meta`` holds no data)."""
    try:  # before spending seconds on loading: a number computed there and read back
        (torch.ones(1, device=device) * 2).cpu().item()
    except Exception as e:  # RuntimeError, AssertionError (not compiled with CUDA), NotImplementedError (meta, mps)
        raise InterpError(f"cannot use device {device!r}: {_one_line(e)}; use cpu, or cuda / cuda:N / mps where "
                          "this machine has one") from None


def parse_device_map(device_map: object) -> str | dict[str, str] | None:
    """None, "auto", "balanced", or a {module name: device} dict (read from a JSON file when given a path).

    Devices are normalized to strings ("cpu", "cuda:0", "disk"; an integer N means cuda:N). A
    one-line error for a malformed map, before any weights load.
    """
    if device_map is None or (isinstance(device_map, str) and not device_map.strip()):
        return None
    if isinstance(device_map, (str, os.PathLike)) and str(device_map).strip() in ("auto", "balanced"):
        return str(device_map).strip()
    if isinstance(device_map, (str, os.PathLike)):
        path = Path(device_map).expanduser()
        if not path.is_file():
            raise InterpError(f"device map {str(device_map)!r} is neither auto, balanced nor a JSON file")
        try:
            device_map = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise InterpError(f"device map file {path} is not valid JSON: {_one_line(e)}") from None
    if not isinstance(device_map, dict) or not device_map:
        raise InterpError(f"a device map must be a non-empty object of module name -> device, got {device_map!r:.80}")
    out: dict[str, str] = {}
    for module, dev in device_map.items():
        if not isinstance(module, str):
            raise InterpError(f"device map key {module!r} is not a module name")
        if isinstance(dev, bool) or not isinstance(dev, (str, int, torch.device)):
            raise InterpError(f"device map entry {module!r}: {dev!r} is not a device (cpu, cuda:N, N, mps, disk)")
        dev = f"cuda:{dev}" if isinstance(dev, int) else str(dev)
        if dev != "disk":
            check_device(dev)
        out[module] = dev
    return out


def _dispatch(model: torch.nn.Module, spec: str | dict[str, str], dtype: torch.dtype,
              offload_folder: str | os.PathLike | None) -> None:
    """Place ``model``'s modules by ``spec`` with accelerate's hooks (which move each module's inputs to its device)."""
    from accelerate import dispatch_model, infer_auto_device_map
    from accelerate.utils import get_balanced_memory

    if isinstance(spec, str):
        no_split = list(getattr(model, "_no_split_modules", None) or [])
        memory = get_balanced_memory(model, no_split_module_classes=no_split, dtype=dtype) if spec == "balanced" else None
        device_map = infer_auto_device_map(model, max_memory=memory, no_split_module_classes=no_split, dtype=dtype)
    else:
        device_map = dict(spec)
        _check_map_covers(model, device_map)
    if "disk" in device_map.values() and offload_folder is None:
        folder = tempfile.TemporaryDirectory(prefix="interp-offload-")
        model._interp_offload_tmp = folder  # removed with the model
        offload_folder = folder.name
    quiet = logging.getLogger("accelerate.big_modeling")  # "some parameters are on the meta device": by design
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        dispatch_model(model, device_map=device_map, offload_dir=offload_folder, force_hooks=True)
    finally:
        quiet.setLevel(level)


def _check_map_covers(model: torch.nn.Module, device_map: dict[str, str]) -> None:
    """Every key names a module (or "" for the whole model) and every parameter falls under exactly one key."""
    modules = dict(model.named_modules())
    unknown = [k for k in device_map if k not in modules]
    if unknown:
        tops = ", ".join(n for n, _ in model.named_children())
        raise InterpError(f"device map names unknown module(s) {', '.join(map(repr, unknown[:3]))}: keys are module "
                          f"names such as {tops} or model.layers.0 (\"\" for the whole model)")

    for param, _ in model.named_parameters():  # tied weights appear once
        if not any(k == "" or param == k or param.startswith(k + ".") for k in device_map):
            raise InterpError(f"device map places no module holding {param!r}: add it (or a parent) to the map")
