"""Sweeps sharded over Ray actors: each worker loads the model once and takes shards of the work.

A command whose cost is many independent forwards (activation patching's cells, IG's passes, retrieval's
prompts) splits its remaining work into shards and hands them to `RayWorkers.run`. The driver keeps doing
what a local run does with each finished shard (write it into the run's checkpoint, advance the progress
bar), so Ctrl-C keeps the finished shards and ``--resume``, with or without Ray, completes the run. A shard
whose worker dies is given to another worker (a replacement is started in the dead one's place); a shard that
fails with an error stops the run with that error.

Ray does the scheduling, transport and process management; this module only says what a worker holds (a
loaded `Model`, from a `ModelSpec`) and streams results back in the order they finish. Shard functions are
plain module-level functions ``fn(model, shared, shard, cache) -> result``: ``shared`` is put into Ray's object
store once per run (tokens, the source run's activations), ``cache`` is a dict the worker keeps for the run
(e.g. a batched engine built once per worker rather than once per shard).

Workers run torch with the driver's number of threads: with a different count, torch's CPU kernels may split a
reduction (a softmax over the vocabulary) differently, and results would differ from the local run's by float
rounding.

Without Ray installed, `require_ray` says what to install. ``address=None`` starts a local cluster;
``address="HOST:PORT"`` joins one started with ``ray start --head`` (every node must have interp and the
model's files at the same path).
"""

from __future__ import annotations

import logging
import os
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from interp.errors import InterpError

LOCAL = "local"  # the value of ``--ray`` without an address: start a local cluster
SHARDS_PER_WORKER = 4  # enough shards that workers finishing early take more; few enough to keep overhead low


def require_ray():
    """The ``ray`` module, or a one-line error saying how to install it."""
    try:
        import ray
    except ImportError:
        raise InterpError("--ray needs Ray, which is not installed: pip install 'interp[ray]' "
                          "(or run without --ray)") from None
    return ray


@dataclass(frozen=True)
class ModelSpec:
    """How a worker loads the driver's model: the arguments of `interp.load`."""

    name: str
    backend: str = "torch"
    device: str = "cpu"
    dtype: str = "float32"
    device_map: str | None = None
    threads: int = 1  # torch threads: the driver's, so CPU kernels split their reductions the same way

    @classmethod
    def of(cls, model) -> "ModelSpec":
        """The spec of a loaded `Model` (a local path is made absolute so workers in other folders find it)."""
        name = model.name
        if Path(name).exists():
            name = str(Path(name).resolve())
        dtype = str(next(model.hf.parameters()).dtype).replace("torch.", "")
        device_map = getattr(model, "device_map", None)
        if device_map:
            raise InterpError("--ray with --device-map is not supported: each Ray worker loads the whole model on "
                              "its own device; drop --device-map or run without --ray")
        device = str(model.device)
        return cls(name, model.backend_name, "cuda" if device.startswith("cuda") else device, dtype,
                   threads=torch.get_num_threads())

    def load(self):
        import interp

        model = interp.load(self.name, backend=self.backend, device=self.device, dtype=getattr(torch, self.dtype),
                            device_map=self.device_map)
        if self.backend != "torch":
            model.backend()
        return model


class _Worker:
    """A Ray actor's state: the loaded model and the current run's cache."""

    def __init__(self, spec: ModelSpec):
        torch.set_num_threads(max(1, spec.threads))
        self.model = spec.load()
        self.run_key, self.cache = None, {}

    def pid(self) -> int:
        return os.getpid()

    def run(self, fn: Callable, shared: Any, shard: Any, run_key: str) -> Any:
        if run_key != self.run_key:
            self.run_key, self.cache = run_key, {}
        return fn(self.model, shared, shard, self.cache)


def check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """A one-line error when nothing listens at ``address`` (``HOST:PORT``), instead of Ray retrying for minutes."""
    import socket

    host, _, port = address.rpartition(":")
    if address.startswith(("ray://", "auto")):  # Ray client addresses and ``auto`` are Ray's to resolve
        return
    if not host or not port.isdigit():
        raise InterpError(f"--ray {address}: give the head node's address as HOST:PORT (the one `ray start --head` "
                          "prints), or --ray alone for a local cluster")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as e:
        raise InterpError(f"no Ray cluster answers at {address} ({e.strerror or e}): start one there with "
                          "`ray start --head`, or use --ray alone for a local cluster") from None


def default_workers(ray) -> int:
    """One worker per GPU of the cluster, else one per 2 CPU cores."""
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    return gpus if gpus else max(1, int(resources.get("CPU", 1)) // 2)


class RayWorkers:
    """A pool of Ray actors holding the model; use as a context manager (actors stop on exit, even on Ctrl-C).

    >>> with RayWorkers(ModelSpec("tiny-llama"), workers=2) as pool:      # doctest: +SKIP
    ...     pool.run(fn, shared, shards, on_result)
    """

    def __init__(self, spec: ModelSpec, workers: int | None = None, address: str | None = None):
        if workers is not None and workers < 1:
            raise InterpError(f"--workers must be at least 1, got {workers}")
        self.spec, self.requested, self.address = spec, workers, None if address in (None, LOCAL) else address
        self.actors: list = []
        self.retried = 0  # shards given to another worker after theirs died
        self.replaced = 0
        self._started_ray = False

    def __enter__(self) -> "RayWorkers":
        ray = require_ray()
        if self.address is not None:
            check_reachable(self.address)
        try:
            if not ray.is_initialized():
                if self.address is None:
                    ray.init(address="local", include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING,
                             num_cpus=max(os.cpu_count() or 1, self.requested or 1))
                else:
                    ray.init(address=self.address, log_to_driver=False, logging_level=logging.WARNING)
                self._started_ray = True
        except (ConnectionError, RuntimeError, ValueError) as e:
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            if self.address is None:
                raise InterpError(f"cannot start a local Ray cluster: {reason}") from None
            hint = ("; a cluster started by `ray start --head` uses token authentication: set RAY_AUTH_MODE=token "
                    "(with the head's ~/.ray/auth_token, or RAY_AUTH_TOKEN) to join it"
                    if "RAY_AUTH_MODE" not in os.environ else "")
            raise InterpError(f"cannot join the Ray cluster at {self.address}: {reason}{hint}") from None
        try:
            self.n = self.requested or default_workers(ray)
            self._resources = self._per_worker(ray)
            for _ in range(self.n):
                self.actors.append(self._start(ray))
            ray.get([a.pid.remote() for a in self.actors])  # every model loaded before the work starts
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _per_worker(self, ray) -> dict:
        total = ray.cluster_resources()
        if self.spec.device.startswith("cuda"):
            if total.get("GPU", 0) < self.n:
                raise InterpError(f"{self.n} Ray workers need {self.n} GPUs; the cluster has {int(total.get('GPU', 0))}: "
                                  "use fewer --workers")
            return {"num_gpus": 1, "num_cpus": 1}
        cpus = total.get("CPU", 0)
        if cpus < self.n:
            raise InterpError(f"{self.n} Ray workers need at least {self.n} CPUs; the cluster has {int(cpus)}: "
                              "use fewer --workers")
        return {"num_cpus": max(1, int(cpus) // self.n)}

    def _start(self, ray):
        actor = ray.remote(max_restarts=0)(_Worker).options(**self._resources)
        return actor.remote(self.spec)

    def shards(self, items: Sequence) -> list[list]:
        """``items`` cut into contiguous shards, `SHARDS_PER_WORKER` per worker (fewer when there are few items)."""
        return split_even(items, SHARDS_PER_WORKER * len(self.actors))

    def info(self) -> dict:
        """The manifest's ``ray`` entry: how many workers, where, and how many shards were retried."""
        return {"workers": len(self.actors), "address": self.address or LOCAL, "shards_retried": self.retried}

    def pids(self) -> list[int]:
        """The process id of each live worker (tests kill one to check the retry)."""
        ray = require_ray()
        return ray.get([a.pid.remote() for a in self.actors])

    def put(self, shared: Any):
        """``shared`` in Ray's object store, to pass to several `run` calls: it is sent once, and each worker keeps
        its ``cache`` across those calls (e.g. a batched engine built once per run, not once per call)."""
        return require_ray().put(shared)

    def run(self, fn: Callable, shared: Any, shards: Sequence, on_result: Callable[[int, Any], None]) -> None:
        """Run ``fn(model, shared, shard, cache)`` on every shard, calling ``on_result(index, result)`` in the
        driver as each finishes (in completion order). A shard whose worker dies goes to another worker.
        ``shared`` is any object, or what `put` returned; workers keep one ``cache`` per shared object."""
        ray = require_ray()
        from ray.exceptions import RayActorError, RayTaskError

        shared_ref = shared if isinstance(shared, ray.ObjectRef) else ray.put(shared)
        run_key = shared_ref.hex()
        queue = deque(enumerate(shards))
        idle, pending = list(self.actors), {}
        while queue or pending:
            while queue and idle:
                actor = idle.pop()
                index, shard = queue.popleft()
                pending[actor.run.remote(fn, shared_ref, shard, run_key)] = (actor, index, shard)
            ready, _ = ray.wait(list(pending), num_returns=1)
            actor, index, shard = pending.pop(ready[0])
            try:
                result = ray.get(ready[0])
            except RayActorError:  # the worker process died: its shard goes to another worker
                self.retried += 1
                queue.appendleft((index, shard))
                idle.append(self._replace(ray, actor))
                continue
            except RayTaskError as e:  # the shard itself failed: the same error the local run would raise
                cause = e.as_instanceof_cause()
                raise (e.cause if isinstance(getattr(e, "cause", None), BaseException) else cause) from None
            idle.append(actor)
            on_result(index, result)

    def _replace(self, ray, dead):
        if self.replaced >= 2 * self.n:
            raise InterpError(f"Ray workers died {self.replaced + 1} times; giving up (finished shards are kept: "
                              "complete the run with --resume)")
        self.replaced += 1
        ray.kill(dead, no_restart=True)
        self.actors.remove(dead)
        actor = self._start(ray)
        self.actors.append(actor)
        return actor

    def __exit__(self, *exc) -> None:
        ray = require_ray()
        for actor in self.actors:
            try:
                ray.kill(actor, no_restart=True)
            except Exception:  # already gone
                pass
        self.actors = []
        if self._started_ray:
            ray.shutdown()
            self._started_ray = False


def split_even(items: Sequence, n_shards: int) -> list[list]:
    """``items`` in order, cut into at most ``n_shards`` contiguous shards of near-equal size."""
    items = list(items)
    n_shards = max(1, min(n_shards, len(items)))
    size, extra = divmod(len(items), n_shards)
    out, start = [], 0
    for i in range(n_shards):
        stop = start + size + (i < extra)
        out.append(items[start:stop])
        start = stop
    return [s for s in out if s]
