"""NDIF remote execution: a `Model` whose runs go through nnsight's ``trace(..., remote=...)``.

``interp.load(hub_id, backend="nnsight", remote=True)`` keeps only the config and tokenizer here (the
model is built on the meta device; its weights stay on NDIF) and sends every `Model.run` to the
NDIF server as one request per forward. ``remote="local"`` loads the model as usual and runs the
same requests through nnsight's local simulation (each request is serialized and deserialized
in-process), which is how the tests check that remote runs give the local numbers.

What travels back is only what the request saves: the logits and the activations read (one dict).
A gradient run (``grad=True``) cannot bring an autograd graph back, so it splits the chain rule:
request 1 runs the forward and returns logits and activations as leaves of a local node
(`_RemoteForward`); the metric is computed here from those logits, and when autograd reaches the
node, request 2 reruns the forward on the server and backpropagates the metric's gradient
w.r.t. the logits (``torch.autograd.grad(logits, acts, dlogits)``) to the read sites. So a
gradient run is two requests (one more per extra backward), and gradients reach the read
activations and the logits, not tensors inside interventions (refused in one line).

Anything that reaches into the HF modules directly (the torch and lens backends, the batched
patching engine, cached generation, weight accessors of a ``remote=True`` model, backward rules)
is refused in one line rather than quietly running locally.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from itertools import groupby

import torch

from interp.backends.nnsight_backend import NNsightBackend
from interp.backends.steps import Step
from interp.errors import InterpError

KEY_HELP = ("set the NDIF_API_KEY environment variable or run "
            "`python -c \"import nnsight; nnsight.CONFIG.set_default_api_key('KEY')\"` (keys: https://login.ndif.us)")


def check_remote(remote: bool | str, backend: str, device_map) -> bool | str:
    """The validated ``remote`` option: False, True or "local"; a one-line error for what cannot run remotely."""
    if remote is False or remote is None:
        return False
    if remote is not True and remote != "local":
        raise InterpError(f"remote must be True (NDIF) or 'local' (nnsight's local simulation), got {remote!r}")
    if backend != "nnsight":
        raise InterpError(f"remote execution runs through nnsight: use backend='nnsight' (--backend nnsight), not '{backend}'")
    if device_map is not None:
        raise InterpError("remote execution runs on NDIF's devices: drop the device map (--device-map)")
    return remote


def api_key() -> str | None:
    """The NDIF API key: ``NDIF_API_KEY``, else nnsight's config (``nnsight.CONFIG.API.APIKEY``)."""
    from nnsight import CONFIG

    return os.environ.get("NDIF_API_KEY") or CONFIG.API.APIKEY or None


def check_server(timeout: float = 5.0) -> str:
    """Fail in one line, before any work, without an API key or a reachable NDIF server; returns the host."""
    from nnsight import CONFIG

    if not api_key():
        raise InterpError(f"remote=True needs an NDIF API key: {KEY_HELP}")
    host = os.environ.get("NDIF_HOST") or CONFIG.API.HOST
    import httpx

    try:  # any answer at all means the server is reachable
        httpx.get(f"{host.rstrip('/')}/status", timeout=timeout)
    except Exception as e:
        raise InterpError(f"cannot reach the NDIF server at {host} ({type(e).__name__}); check the network, "
                          "or set NDIF_HOST to another server") from e
    return host


def load_meta(name: str):
    """Config and tokenizer of hub model ``name`` from the local HF cache, the model built on the meta device."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from interp.models import KNOWN_NAMES, _looks_like_path

    if name in KNOWN_NAMES or _looks_like_path(name) or os.path.exists(name):
        raise InterpError(f"remote=True runs a Hugging Face hub model that NDIF hosts: give its hub id (e.g. "
                          f"meta-llama/Llama-3.1-8B), not {name!r} (registry names and local paths are local weights)")
    try:
        config = AutoConfig.from_pretrained(name, local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(name, local_files_only=True)
    except Exception as e:
        from interp.errors import ModelNotAvailableError

        raise ModelNotAvailableError(f"remote=True needs the config and tokenizer of {name!r} in the local Hugging Face "
                                     f"cache (interp never downloads): `huggingface-cli download {name} config.json "
                                     "tokenizer.json tokenizer_config.json`") from e
    config._attn_implementation = "eager"
    with torch.device("meta"):
        hf = AutoModelForCausalLM.from_config(config)
    hf.eval()
    hf.requires_grad_(False)
    return hf, tokenizer


class _Guard:
    """A forward pre-hook on every module of a remote model: running them outside a request is refused."""

    def __init__(self):
        self.open = 0

    def __call__(self, module, args):
        if not self.open:
            raise InterpError("this model runs remotely (NDIF, through nnsight): this method runs the model's modules "
                              "here (e.g. the batched patching engine, cached generation), not remotely; use a method "
                              "that goes through Model.run (patching engine 'hooks', AtP) or load without remote")


def guard(hf: torch.nn.Module) -> _Guard:
    """Install the `_Guard` on every module of ``hf``; the remote backend opens it for its own requests."""
    g = _Guard()
    for module in hf.modules():
        module.register_forward_pre_hook(g)
    return g


def check_run(interventions: Sequence, grad: bool, rules) -> None:
    """Refuse, in one line, what a remote run cannot do."""
    if rules:
        raise InterpError("backward rules (RelP's LRP rules) cannot run remotely: they patch torch functions in this "
                          "process; use AtP, or run locally")
    if grad:
        for iv in interventions:
            for value in vars(iv).values():
                if isinstance(value, torch.Tensor) and value.requires_grad:
                    raise InterpError("a remote gradient run returns gradients at the read sites only, not at "
                                      f"tensors inside interventions ({type(iv).__name__} at {iv.site}); run locally")


class RemoteNNsightBackend(NNsightBackend):
    """The nnsight backend with each forward sent as one remote request; ``requests`` counts them."""

    name = "nnsight"

    def __init__(self, hf: torch.nn.Module, tokenizer, adapter, remote: bool | str, guard: _Guard | None = None):
        self.remote, self.guard = remote, guard or _Guard()
        self.requests = 0
        if remote is not True:
            super().__init__(hf, tokenizer, adapter)
            return
        from nnsight.modeling import huggingface
        from nnsight.modeling.transformers import TransformersModel

        # Built from the hub id (on the meta device), so the request names the checkpoint NDIF hosts.
        self.lm = TransformersModel(hf.name_or_path, config=hf.config, tokenizer=tokenizer, task="text-generation",
                                    attn_implementation="eager")
        self.hf, self.adapter = self.lm._module, adapter
        # nnsight would ask the Hub how to spell the id; the local cache already did (interp stays offline).
        huggingface._ID_CACHE.setdefault(self.lm.repo_id, self.lm.repo_id)

    def run(self, tokens: torch.Tensor, steps, grad: bool) -> torch.Tensor:
        raise InterpError("a remote model runs through Model.run (its steps must be planned per request)")

    def run_plan(self, tokens: torch.Tensor, plan: Callable[[dict], list[Step]], grad: bool,
                 acts: dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits of one remote forward; ``plan(store)`` builds the steps, which record the sites read into ``store``.

        With ``grad`` the activations put into ``acts`` are leaves of a `_RemoteForward` node whose backward
        sends a second request.
        """
        logits, got = self._request(tokens, plan, grad, None)
        if not grad:
            acts.update(got)
            return logits
        names = list(got)
        leaves = [got[n].requires_grad_(True) for n in names]
        acts.update(zip(names, leaves))
        return _RemoteForward.apply(self, tokens, plan, names, logits, *leaves)

    def _request(self, tokens: torch.Tensor, plan, grad: bool, dlogits: torch.Tensor | None):
        """One remote trace: (logits, activations read), or with ``dlogits`` (None, their gradients)."""
        import nnsight

        nnsight.register("interp")  # the server has no interp: the steps' code travels by value
        store: dict[str, torch.Tensor] = {}
        steps = plan(store)
        route = [(self._envoy(path), io, [(s, self.adapter.point(s.location)) for s in group])
                 for (path, io), group in groupby(steps, key=self._where)]
        lm = self.lm
        if self.remote is True:  # nnsight read NDIF_API_KEY / NDIF_HOST at import; later settings win, as there
            from nnsight import CONFIG

            CONFIG.API.APIKEY = api_key()
            CONFIG.API.HOST = os.environ.get("NDIF_HOST") or CONFIG.API.HOST
        self.requests += 1
        self.guard.open += 1  # "local" runs the modules here, as the server would
        try:
            return self._trace(lm, tokens, route, store, grad, dlogits)
        finally:
            self.guard.open -= 1

    def _trace(self, lm, tokens, route, store, grad, dlogits):
        """The trace block: everything it reads travels in the request, and ``result`` alone comes back."""
        import nnsight

        from interp.backends.torch_backend import apply_step

        with torch.set_grad_enabled(grad), lm.trace(tokens, remote=self.remote):
            previous = torch.is_grad_enabled()
            torch.set_grad_enabled(grad)  # the server's own grad mode is not ours
            for envoy, io, pairs in route:
                value = envoy.output if io == "output" else envoy.input
                new = value
                for step, point in pairs:
                    new = apply_step(step, point, envoy._module, new)
                if new is not value:
                    if io == "output":
                        envoy.output = new
                    else:
                        envoy.input = new
            result = _result(lm.output.logits, store, dlogits)
            torch.set_grad_enabled(previous)
            result = nnsight.save(result)
        return result


def _result(logits: torch.Tensor, store: dict[str, torch.Tensor], dlogits: torch.Tensor | None):
    """What a request sends back (runs on the server): logits and reads, or the reads' gradients."""
    if dlogits is None:
        return logits.detach(), {name: value.detach() for name, value in store.items()}
    names = [name for name, value in store.items() if value.requires_grad]
    grads = torch.autograd.grad(logits, [store[n] for n in names], dlogits, allow_unused=True)
    return None, dict(zip(names, grads))


class _RemoteForward(torch.autograd.Function):
    """Logits as a function of the read activations; backward = one remote request with d(metric)/d(logits)."""

    @staticmethod
    def forward(ctx, backend, tokens, plan, names, logits, *leaves):
        ctx.request = (backend, tokens, plan, names)
        return logits.clone()

    @staticmethod
    def backward(ctx, dlogits):
        backend, tokens, plan, names = ctx.request
        _, grads = backend._request(tokens, plan, True, dlogits.contiguous())
        return (None, None, None, None, None, *(grads.get(n) for n in names))
