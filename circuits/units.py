"""Finished units of a long circuit-discovery run, kept so an interrupted run resumes where it stopped.

A *unit* is a piece of work whose result does not depend on which other units ran before it in the same
process: a decoded needle prompt, a masking setting on one prompt, the deactivation of one relation's neurons.
`Units.put` records a unit's result (tensors, and JSON values such as a response text); with a
`interp.outdir.Checkpoint` behind it, `Units.save` writes every finished unit to the run folder
(``partial.safetensors`` + ``progress.json``), and a `Units` opened with ``resume=True`` hands them back, so the
resumed run computes only the rest and ends with the same numbers as an uninterrupted one. Without a
checkpoint it is a plain in-memory store, which is how the library functions use it by default.
"""

from __future__ import annotations

from pathlib import Path

import torch

from interp.outdir import Checkpoint


class Units:
    """Named unit results; ``checkpoint`` (optional) keeps them on disk, ``resume`` loads the saved ones."""

    def __init__(self, checkpoint: Checkpoint | None = None, resume: bool = False):
        self.checkpoint = checkpoint
        self.tensors: dict[str, torch.Tensor] = {}
        self.data: dict[str, dict] = {}
        self.done: list[str] = []
        self.total = 0
        if checkpoint is not None and resume:
            loaded = checkpoint.load()
            if loaded is not None:
                tensors, info = loaded
                self.done = [str(u) for u in info.get("units", [])]
                self.data = {str(k): dict(v) for k, v in (info.get("data") or {}).items()}
                self.tensors = dict(tensors)
        self.resumed = len(self.done)  # units found in the checkpoint
        self._done = set(self.done)

    def __contains__(self, name: str) -> bool:
        return name in self._done

    @property
    def n_done(self) -> int:
        return len(self.done)

    def get(self, name: str) -> dict:
        """The saved result of unit ``name`` (tensors and JSON values by key)."""
        prefix = f"{name}/"
        out: dict = {k[len(prefix):]: v for k, v in self.tensors.items() if k.startswith(prefix)}
        return out | self.data.get(name, {})

    def put(self, name: str, result: dict, save: bool = True) -> dict:
        """Record unit ``name``'s ``result`` (tensors are kept on the CPU); write the checkpoint when ``save``."""
        for key, value in result.items():
            if isinstance(value, torch.Tensor):
                self.tensors[f"{name}/{key}"] = value.detach().cpu().contiguous()
            else:
                self.data.setdefault(name, {})[key] = value
        if name not in self._done:
            self.done.append(name)
            self._done.add(name)
        if save:
            self.save()
        return result

    def run(self, name: str, compute) -> dict:
        """The saved result of ``name``, or ``compute()`` recorded (and checkpointed) as that unit."""
        return self.get(name) if name in self else self.put(name, compute())

    def save(self) -> None:
        """Write every finished unit to the checkpoint (nothing without one)."""
        if self.checkpoint is not None and self.done:
            self.checkpoint.save(self.tensors, len(self.done), max(self.total, len(self.done)), units=self.done,
                                 data=self.data)

    def clear(self) -> None:
        """Remove the checkpoint once the finished run is saved."""
        if self.checkpoint is not None:
            self.checkpoint.clear()


def run_units(model, out: Path | str | None, command: str, params: dict, resume: bool = False) -> Units:
    """`Units` checkpointed in ``out`` for ``command`` on ``model`` with ``params`` (which a resume must match)."""
    if out is None:
        return Units()
    run = {"command": command, "model": model.name,
           "dtype": str(next(model.hf.parameters()).dtype).replace("torch.", ""), **params}
    return Units(Checkpoint(Path(out), run), resume)
