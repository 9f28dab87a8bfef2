"""`Model`: one loaded model, whatever the backend, with a single way to run it.

``interp.load(name, backend=...)`` returns a `Model`. It holds the HF model and tokenizer, the
configuration facts methods need (``n_layers``, ``n_heads``, ``d_model``...), the weights they need
(``W_U``, ``W_O(layer)``...), and `Model.run`, which takes tokens, interventions and the sites to
read, and returns logits plus those activations. Every hook a run adds is removed when it ends,
also when it raises.

>>> model = interp.load("tiny-llama", backend="nnsight")            # doctest: +SKIP
>>> out = model.run("When Mary and John went", read=["resid_pre.1"])  # doctest: +SKIP
>>> out.acts["resid_pre.1"].shape                                     # doctest: +SKIP
torch.Size([1, 5, 64])
"""

from __future__ import annotations

from collections import defaultdict
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Sequence

import torch

from interp.adapters import Adapter, adapter_for
from interp.backends import BACKENDS
from interp.backends.steps import plan_steps
from interp.errors import InterpError
from interp.interventions import Intervention
from interp.rules import Rule, forward_rules, parse_rules, rule_steps
from interp.splicing import attached_site, splices, split_name
from interp.sites import READ_ONLY_KINDS, Site, parse_site


@dataclass
class RunOutput:
    """Logits [batch, pos, vocab] and the activations read, keyed by site name."""

    logits: torch.Tensor
    acts: dict[str, torch.Tensor] = field(default_factory=dict)


LENS_DEVICE_MAP = ("the lens backend cannot run a model split by a device map (TransformerLens's bridge boots from a "
                   "copy of the whole model on one device); use --backend torch or nnsight with --device-map")


class Model:
    """A loaded model on one backend. Build it with `interp.load`."""

    def __init__(self, name: str, hf: torch.nn.Module, tokenizer, backend: str = "lens", remote: bool | str = False):
        if backend not in BACKENDS:
            raise InterpError(f"unknown backend '{backend}': use one of {', '.join(BACKENDS)}")
        self.name, self.hf, self.tokenizer, self.backend_name = name, hf, tokenizer, backend
        self.remote = remote  # True: runs go to NDIF; "local": nnsight's local simulation of that (`interp.remote`)
        if remote:  # nothing may run the modules here behind the user's back
            from interp.remote import guard

            self._guard = guard(hf)
        self.adapter: Adapter = adapter_for(hf.config)
        a = self.adapter
        self.n_layers, self.n_heads, self.n_kv_heads = a.n_layers, a.n_heads, a.n_kv_heads
        self.d_model, self.d_mlp, self.d_head, self.d_vocab = a.d_model, a.d_mlp, a.d_head, a.d_vocab
        self.n_ctx: int | None = a.n_ctx  # longest sequence (prompt + generated tokens) the model supports
        self._backends: dict[str, object] = {}
        self.dictionaries: dict[str, object] = {}  # base site -> attached sparse dictionary (`attach`)

    def __repr__(self) -> str:
        return (f"Model('{self.name}', backend='{self.backend_name}', layers={self.n_layers}, "
                f"heads={self.n_heads}, d_model={self.d_model})")

    # ----------------------------------------------------------------- backends
    def backend(self, name: str | None = None):
        """The backend object (built on first use); ``name`` defaults to the model's backend."""
        name = name or self.backend_name
        if self.remote and name != "nnsight":
            raise InterpError(f"this model runs remotely (NDIF, through nnsight): the {name} backend would run it here; "
                              "this method or option cannot run remotely (load it without remote to run it locally)")
        if name not in self._backends:
            if self.remote:
                from interp.remote import RemoteNNsightBackend

                self._backends[name] = RemoteNNsightBackend(self.hf, self.tokenizer, self.adapter, self.remote, self._guard)
            elif name == "lens":
                if self.device_map:
                    raise InterpError(LENS_DEVICE_MAP)
                from interp.backends.lens import LensBackend

                self._backends[name] = LensBackend(self.hf, self.tokenizer, self.adapter, self.name)
            elif name == "nnsight":
                from interp.backends.nnsight_backend import NNsightBackend

                self._backends[name] = NNsightBackend(self.hf, self.tokenizer, self.adapter)
            elif name == "torch":
                from interp.backends.torch_backend import TorchBackend

                self._backends[name] = TorchBackend(self.hf, self.adapter)
            else:
                raise InterpError(f"unknown backend '{name}': use one of {', '.join(BACKENDS)}")
        return self._backends[name]

    # ----------------------------------------------------------------- running
    def site(self, name: str | Site) -> Site:
        """Parse and range-check a site name for this model (one that this architecture has)."""
        site = parse_site(name, self.n_layers)
        self.adapter.check_site(site)
        return site

    def to_tokens(self, text: str | Sequence[str]) -> torch.Tensor:
        """Token ids [batch, pos] with the tokenizer's own defaults (SmolLM2 adds no BOS)."""
        texts = [text] if isinstance(text, str) else list(text)
        ids = [self.tokenizer(t)["input_ids"] for t in texts]
        if len({len(i) for i in ids}) > 1:
            raise InterpError(f"prompts tokenize to different lengths {sorted({len(i) for i in ids})}; run them separately or make them equal")
        return torch.tensor(ids, dtype=torch.long, device=self.device)

    def length_groups(self, texts: Sequence[str], max_rows: int | None = None) -> list[tuple[list[int], torch.Tensor]]:
        """Texts grouped by token length, so each group runs as one batch with no padding.

        Returns (row indices, token ids [rows, length]) per group, in at most ``max_rows`` rows each.
        """
        if isinstance(texts, str) or not texts:
            raise InterpError("give a non-empty list of texts")
        ids = [self.tokenizer(t)["input_ids"] for t in texts]
        groups: dict[int, list[int]] = {}
        for i, row in enumerate(ids):
            groups.setdefault(len(row), []).append(i)
        out = []
        for rows in groups.values():
            step = max_rows or len(rows)
            for start in range(0, len(rows), step):
                chunk = rows[start:start + step]
                out.append((chunk, torch.tensor([ids[i] for i in chunk], dtype=torch.long, device=self.device)))
        return out

    @property
    def device(self) -> torch.device:
        """Where inputs go: the device, or with a device map accelerate's main device (first that is not cpu/disk)."""
        device_map = getattr(self.hf, "hf_device_map", None)
        if device_map:
            main = [d for d in device_map.values() if str(d) not in ("cpu", "disk")]
            return torch.device(main[0] if main else "cpu")
        device = next(self.hf.parameters()).device
        return torch.device("cpu") if device.type == "meta" else device  # remote=True: a weightless copy here

    @property
    def device_map(self) -> dict[str, str] | None:
        """The module -> device map the model was split by (``load(device_map=...)``), None on one device."""
        device_map = getattr(self.hf, "hf_device_map", None)
        return {k: str(v) for k, v in device_map.items()} if device_map else None

    @contextmanager
    def _weights(self):
        """Offloaded weights brought onto their execution device while a weight accessor reads them."""
        if self.remote is True:
            raise InterpError("the weights of a remote model stay on NDIF: this method reads them here; run it locally")
        with ExitStack() as stack:
            if self.device_map:  # cpu/disk entries behind a GPU main device hold meta parameters
                from accelerate.utils import align_module_device, has_offloaded_params

                for module in self.hf.modules():
                    if has_offloaded_params(module):
                        stack.enter_context(align_module_device(module))
            yield

    def _plan(self, interventions: Sequence[Intervention], read: Sequence[str | Site], acts: dict, grad: bool) -> list:
        edits: dict[Site, list[Intervention]] = defaultdict(list)
        spliced_edits: dict[str, list[Intervention]] = defaultdict(list)
        for iv in interventions:
            if split_name(iv.site):
                spliced_edits[iv.site].append(iv)
            else:
                edits[self.site(iv.site)].append(iv)
        spliced_reads = {s for s in read if split_name(s)}
        for splice in (splices(self.dictionaries, spliced_edits, spliced_reads, acts, grad, self.n_heads)
                       if spliced_edits or spliced_reads else []):
            edits[self.site(splice.site)].append(splice)  # after the site's own edits: it sees the edited value
        return plan_steps(self.adapter, dict(edits), [self.site(s) for s in read if s not in spliced_reads], acts, grad)

    # ----------------------------------------------------------------- dictionaries
    def site_width(self, site: str | Site) -> int | None:
        """The last-axis width of ``site`` as a dictionary reads it (head_out flattened: n_heads * d_head); None
        for sites no dictionary reads (q/k/v, attention patterns, norm divisors, MoE router and expert reads)."""
        kind = self.site(site).kind
        if kind == "head_out":
            return self.n_heads * self.d_head
        if kind == "mlp_act":
            return self.d_mlp
        return None if kind in READ_ONLY_KINDS or kind in ("q", "k", "v") else self.d_model

    def attach(self, dictionary) -> str:
        """Splice a sparse dictionary (`interp.dictionary.Dictionary`) at its site: runs may then read and edit
        ``sae.<site>.latents``, ``.error`` and ``.recon`` (see `interp.splicing`). Returns ``"sae.<site>"``."""
        out_site = getattr(dictionary, "out_site", None)
        for site, width, what in ((dictionary.site, dictionary.d_in, "input"),
                                  (out_site or dictionary.site, dictionary.d_out, "output")):
            expected = self.site_width(site)
            if expected is None:
                raise InterpError(f"a dictionary cannot be spliced at {site}: use a residual, attn_out, mlp_out, "
                                  "mlp_in, mlp_act or head_out site")
            if width != expected:
                raise InterpError(f"the dictionary's {what} width is {width}, but {site} of {self.name} has "
                                  f"{expected}: it was trained for another model or site")
        base = str(self.site(dictionary.site))
        self.dictionaries[base] = dictionary
        return f"sae.{base}"

    def detach_dictionary(self, site: str) -> None:
        """Remove the dictionary attached at ``site`` (``"resid_post.6"`` or ``"sae.resid_post.6"``)."""
        del self.dictionaries[attached_site(self.dictionaries, site)]

    def run(
        self,
        tokens: torch.Tensor | str | Sequence[str],
        interventions: Sequence[Intervention] = (),
        read: Sequence[str | Site] = (),
        grad: bool = False,
        backend: str | None = None,
        rules: str | Sequence[str | Rule] = (),
    ) -> RunOutput:
        """Run the model with ``interventions`` applied, returning logits and the ``read`` sites.

        With ``grad=True`` the graph is kept, so gradients with respect to the returned
        activations can be taken (``torch.autograd.grad(metric, out.acts[site])``). ``rules``
        ("ln,identity,half", see `interp.rules`) change those gradients into LRP propagation
        coefficients; the forward values stay bit-identical.
        """
        if not isinstance(tokens, torch.Tensor):
            tokens = self.to_tokens(tokens)
        acts: dict[str, torch.Tensor] = {}
        if self.remote:  # each request plans its own steps (`interp.remote`)
            from interp.remote import check_run

            check_run(interventions, grad, rules)
            plan = lambda store: self._plan(interventions, read, store, grad)
            return RunOutput(self.backend(backend).run_plan(tokens.to(self.device), plan, grad, acts), acts)
        steps = self._plan(interventions, read, acts, grad)
        active = parse_rules(rules) if rules else ()
        if active:
            steps = sorted(steps + rule_steps(active, self.adapter, self.hf), key=lambda s: s.order)
        with forward_rules(active, self.adapter):
            logits = self.backend(backend).run(tokens.to(self.device), steps, grad)
        return RunOutput(logits=logits, acts=acts)

    def run_cached(self, tokens: torch.Tensor, interventions: Sequence[Intervention] = (), read: Sequence[str | Site] = (),
                   past=None) -> tuple[RunOutput, object]:
        """One no-grad forward of ``tokens`` [batch, new] that continues the KV cache ``past`` (None: start one).

        Runs on the torch backend (plain hooks on the same HF modules), which is what makes cached
        generation fast. Positions in ``interventions`` and in the activations read count from the
        first of ``tokens``, not from the start of the sequence. Only the last position's logits are
        computed (``logits`` is [batch, 1, vocab]). Returns the output and the cache.
        """
        acts: dict[str, torch.Tensor] = {}
        steps = self._plan(interventions, read, acts, False)
        logits, past = self.backend("torch").run_cached(tokens.to(self.device), steps, past)
        return RunOutput(logits=logits, acts=acts), past

    def cache(self, tokens: torch.Tensor | str | Sequence[str], sites: Sequence[str | Site], backend: str | None = None) -> RunOutput:
        """Shorthand for a plain run that reads ``sites``."""
        return self.run(tokens, read=sites, backend=backend)

    # ----------------------------------------------------------------- weights
    @property
    def W_U(self) -> torch.Tensor:
        """Unembedding [d_model, d_vocab]."""
        with self._weights():
            return self.adapter.W_U(self.hf)

    def W_out(self, layer: int) -> torch.Tensor:
        """MLP output weights [d_mlp, d_model] (neuron i writes row i), times any residual multiplier."""
        with self._weights():
            return self.adapter.W_out(self.hf, layer)

    def W_O(self, layer: int) -> torch.Tensor:
        """Attention output weights [n_heads, d_head, d_model], times any residual multiplier."""
        with self._weights():
            return self.adapter.W_O(self.hf, layer)

    def W_Q(self, layer: int) -> torch.Tensor:
        """Query weights [n_heads, d_model, d_head] (cut out of a fused q/k/v projection where there is one): the site
        ``q.L`` is ln1(resid_pre) @ W_Q + b_Q, per head (the projection's output, before any q-norm and RoPE)."""
        with self._weights():
            return self.adapter.W_Q(self.hf, layer)

    def W_K(self, layer: int) -> torch.Tensor:
        """Key weights [n_kv_heads, d_model, d_head]: the site ``k.L`` is ln1(resid_pre) @ W_K + b_K, per KV head."""
        with self._weights():
            return self.adapter.W_K(self.hf, layer)

    def W_V(self, layer: int) -> torch.Tensor:
        """Value weights [n_kv_heads, d_model, d_head]: the site ``v.L`` is ln1(resid_pre) @ W_V + b_V, per KV head."""
        with self._weights():
            return self.adapter.W_V(self.hf, layer)

    def b_QKV(self, layer: int, which: str) -> torch.Tensor | None:
        """The bias [heads, d_head] of the ``which`` ("q", "k" or "v") projection, None where it has none."""
        with self._weights():
            return self.adapter.b_QKV(self.hf, layer, which)

    def ln1_gain(self, layer: int) -> torch.Tensor:
        """The gain [d_model] of the norm before layer ``layer``'s attention."""
        with self._weights():
            return self.adapter.ln1_gain(self.hf, layer)

    def final_gain(self) -> torch.Tensor:
        """The gain [d_model] of the final norm."""
        with self._weights():
            return self.adapter.final_gain(self.hf)


def load(name: str | None = None, backend: str = "lens", device: str = "cpu", dtype: torch.dtype = torch.float32,
         verify: bool = False, device_map: str | dict | None = None, offload_folder: str | None = None,
         remote: bool | str = False) -> Model:
    """Load a model by name (see `interp.models.list_models`) onto ``backend``.

    ``verify=True`` runs the quick checks of ``interp doctor`` (`interp.doctor.verify`): the backend's
    logits against the plain HF forward, the residual identities of the block shape, and no hook left
    behind. A failure raises `InterpError` naming the check and its difference.

    ``device_map`` splits the model across devices through accelerate (``device`` is then unused):
    "auto", "balanced", a dict of module name -> device ("cpu", "cuda:1", 0, "disk"), or the path of
    a JSON file with one; ``offload_folder`` holds "disk" modules. The lens backend refuses it.

    ``remote=True`` (with ``backend="nnsight"`` and a hub id) runs every `Model.run` on NDIF through
    nnsight's remote execution; ``remote="local"`` simulates that here. See `interp.remote`.

    >>> model = interp.load("smollm2-135m", backend="nnsight")   # doctest: +SKIP
    """
    from interp.device_map import parse_device_map
    from interp.models import DEFAULT_MODEL, check_name, load_hf

    if backend not in BACKENDS:
        raise InterpError(f"unknown backend '{backend}': use one of {', '.join(BACKENDS)}")
    name = DEFAULT_MODEL if name is None else name
    check_name(name)  # "" is a mistake, not a request for the default
    device_map = parse_device_map(device_map)  # a bad map first, in one line
    if device_map is not None and backend == "lens":
        raise InterpError(LENS_DEVICE_MAP)
    from interp.remote import check_remote, check_server, load_meta

    remote = check_remote(remote, backend, device_map)
    if remote is True and verify:
        raise InterpError("verify checks the backend against the HF forward here, which a remote model has no weights for")
    if remote is True:
        check_server()  # no key or no server: one line, before any work
        hf, tokenizer = load_meta(name)
    else:
        hf, tokenizer = load_hf(name, device=device, dtype=dtype, device_map=device_map, offload_folder=offload_folder)
    model = Model(name, hf, tokenizer, backend=backend, remote=remote)
    if verify:
        from interp.doctor import verify as run_verify

        run_verify(model)
    return model
