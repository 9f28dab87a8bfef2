"""NDIF remote execution (`interp.remote`), checked through nnsight's ``remote="local"`` simulation.

Every request of a ``remote="local"`` model is serialized and deserialized the way nnsight ships it
to NDIF; the numbers must equal the ordinary nnsight backend's. A stricter replay (`_serve`) also
runs each payload the way the server does: unpickled where ``interp`` cannot be imported, executed
on its own copies of the variables, and only the saved values sent back. ``remote=True`` is run end
to end against that replay, with a weightless (meta) model on the client side.
"""

import pytest
import torch
from interp.patching.attribution import attribution_patching
from nnsight.intervention.backends.remote import RemoteBackend
from nnsight.intervention.serialization import CustomCloudUnpickler
from nnsight.modeling.transformers import TransformersModel
from nnsight.schema.request import RequestModel
from nnsight.tracing import tracer as nnsight_tracer

import interp
from interp import Ablate, Add, InterpError, Replace, SubspaceReplace
from interp.ioi import generate_ioi
from interp.metrics import MetricContext, logit_diff

READS = ["resid_pre.1", "resid_mid.0", "attn_out.0", "mlp_out.1", "head_out.1", "mlp_act.0", "attn_pattern.1",
         "resid_post.1"]


@pytest.fixture(scope="module")
def pair():
    local = interp.load("tiny-llama", backend="nnsight")
    remote = interp.load("tiny-llama", backend="nnsight", remote="local")
    tokens = local.to_tokens(["When Mary and John went to the store, John gave", "When Tom and Anna went to the park, Anna gave"])
    return local, remote, tokens


def _requests(model) -> int:
    return model.backend().requests


def _close(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


def test_reads_and_logits_equal_the_local_backend_in_one_request(pair):
    local, remote, tokens = pair
    before = _requests(remote)
    want, got = local.run(tokens, read=READS), remote.run(tokens, read=READS)
    assert _requests(remote) - before == 1
    assert torch.equal(want.logits, got.logits)
    assert set(got.acts) == set(READS)
    for site in READS:
        assert torch.equal(want.acts[site], got.acts[site]), site


def test_interventions_equal_the_local_backend(pair):
    local, remote, tokens = pair
    g = torch.Generator().manual_seed(1)
    ref = local.run(tokens, read=["mlp_out.0"]).acts["mlp_out.0"]
    cases = [
        [Replace("resid_pre.1", torch.randn(64, generator=g), index=(slice(None), 3))],
        [Add("resid_mid.1", torch.randn(64, generator=g), coeff=2.5, positions=[1, 4])],
        [Ablate("head_out.0", index=(slice(None), slice(None), 2))],
        [Ablate("mlp_out.0", kind="mean", values=ref)],
        [Replace("mlp_act.1", torch.zeros(()), index=(slice(None), -1, 7)), Add("attn_out.1", torch.ones(64), 0.5)],
        [SubspaceReplace("resid_post.0", torch.randn(2, 64, generator=g), torch.randn(2, 11, 64, generator=g))],
    ]
    for ivs in cases:
        before = _requests(remote)
        want, got = local.run(tokens, ivs, read=["resid_post.1"]), remote.run(tokens, ivs, read=["resid_post.1"])
        assert _requests(remote) - before == 1
        assert not torch.equal(want.logits, local.run(tokens).logits), ivs  # the edit did something
        assert _close(want.logits, got.logits) <= 1e-6, ivs
        assert _close(want.acts["resid_post.1"], got.acts["resid_post.1"]) <= 1e-6, ivs


def test_gradient_run_equals_local_autograd_in_two_requests(pair):
    local, remote, tokens = pair
    sites = ["resid_pre.0", "attn_out.0", "head_out.1", "resid_post.1"]
    grads = {}
    for name, model in (("local", local), ("remote", remote)):
        before = _requests(model) if name == "remote" else 0
        out = model.run(tokens, [Add("mlp_out.0", torch.ones(64), 0.3)], read=sites, grad=True)
        metric = out.logits[:, -1, 100].sum() - out.logits[:, -1, 7].square().mean()
        grads[name] = torch.autograd.grad(metric, [out.acts[s] for s in sites])
        if name == "remote":
            assert _requests(model) - before == 2  # the forward, then the backward's request
            assert all(not out.acts[s].grad_fn for s in sites)  # leaves: the graph stayed on the server
    for site, want, got in zip(sites, grads["local"], grads["remote"]):
        assert want.abs().max() > 0, site
        assert _close(want, got) <= 1e-6, site


def test_atp_equals_the_local_backend(pair):
    local, remote, _ = pair
    prompts = generate_ioi(local.tokenizer, 3, seed=1).tokenize(local.tokenizer)
    components = ["resid_pre", "attn_out", "mlp_out", "head_out"]
    sites = [f"{c}.{layer}" for c in components for layer in range(local.n_layers)]
    with torch.no_grad():
        clean = local.run(prompts.clean, read=sites)
        corrupt = local.run(prompts.corrupt, read=sites)
    ctx = MetricContext(prompts.answer, prompts.wrong, clean.logits[:, -1], corrupt.logits[:, -1])
    want = attribution_patching(local, components, prompts.corrupt, clean.acts, logit_diff, ctx)
    before = _requests(remote)
    got = attribution_patching(remote, components, prompts.corrupt, clean.acts, logit_diff, ctx)
    assert _requests(remote) - before == 2
    for comp in components:
        assert want[comp].abs().max() > 0
        assert _close(want[comp], got[comp]) <= 1e-6, comp


# ---------------------------------------------------------------- what NDIF itself would do with a request


class _NoInterp(CustomCloudUnpickler):
    """Unpickles as a server without interp would: any reference to interp's modules fails."""

    def find_class(self, module, name):
        if module.split(".")[0] == "interp":
            raise ModuleNotFoundError(f"no module named {module!r} on the server")
        return super().find_class(module, name)


def _serve(server_lm, blob: bytes, compress: bool) -> dict:
    """Run one payload like the NDIF server: own copies of every variable, only saved values come back."""
    tracer = RequestModel.deserialize(blob, server_lm._remoteable_persistent_objects(), compress=compress,
                                      unpickler=_NoInterp)
    nnsight_tracer.inc()
    try:
        tracer.execute(tracer.info.code)
    finally:
        nnsight_tracer.dec()
    saved = {name: value for name, value in tracer.info.frame.f_locals.items() if id(value) in nnsight_tracer._saves()}
    assert list(saved) == ["result"]  # the request sends back one saved value, nothing else
    return saved


def test_remote_true_end_to_end_against_a_replayed_server(pair, monkeypatch):
    local, _, tokens = pair
    hub_id = "HuggingFaceTB/SmolLM2-135M-Instruct"
    config = local.hf.config.__class__.from_dict(local.hf.config.to_dict())
    config._name_or_path = hub_id
    from nnsight import CONFIG

    for field in ("APIKEY", "HOST"):  # a remote request syncs them from the environment: restore them afterwards
        monkeypatch.setattr(CONFIG.API, field, getattr(CONFIG.API, field))
    monkeypatch.setenv("NDIF_API_KEY", "test-key")
    monkeypatch.setattr("interp.remote.check_server", lambda: "http://ndif.test")
    monkeypatch.setattr("transformers.AutoConfig.from_pretrained", lambda *a, **k: config)
    monkeypatch.setattr("transformers.AutoTokenizer.from_pretrained", lambda *a, **k: local.tokenizer)
    server = TransformersModel(local.hf, task="text-generation", tokenizer=local.tokenizer)
    sent = []

    def request(self, request, tracer):
        sent.append((self.model_key, self.api_key))
        return _serve(server, self._serialize(tracer), self.compress)

    monkeypatch.setattr(RemoteBackend, "request", request)
    model = interp.load(hub_id, backend="nnsight", remote=True)
    assert next(model.hf.parameters()).device.type == "meta"  # no weights on the client
    ivs = [Add("resid_pre.1", torch.ones(64), 1.5)]
    want = local.run(tokens, ivs, read=READS)
    got = model.run(tokens, ivs, read=READS)
    assert _close(want.logits, got.logits) <= 1e-6
    for site in READS:
        assert _close(want.acts[site], got.acts[site]) <= 1e-6, site
    out = model.run(tokens, read=["resid_pre.1"], grad=True)
    (grad,) = torch.autograd.grad(out.logits[:, -1, 5].sum(), [out.acts["resid_pre.1"]])
    ref = local.run(tokens, read=["resid_pre.1"], grad=True)
    (ref_grad,) = torch.autograd.grad(ref.logits[:, -1, 5].sum(), [ref.acts["resid_pre.1"]])
    assert _close(ref_grad, grad) <= 1e-6 and ref_grad.abs().max() > 0
    assert len(sent) == 3 and model.backend().requests == 3
    key, api_key = sent[0]
    assert key.startswith("nnsight.modeling.transformers.TransformersModel:") and hub_id in key
    assert '"task": "text-generation"' in key and api_key == "test-key"
    with pytest.raises(InterpError, match="weights of a remote model stay on NDIF"):
        _ = model.W_U


# ---------------------------------------------------------------- refusals, each in one line


def _one_line(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


def test_remote_true_without_a_key_fails_before_any_work(monkeypatch):
    from nnsight import CONFIG

    monkeypatch.delenv("NDIF_API_KEY", raising=False)
    monkeypatch.setattr(CONFIG.API, "APIKEY", None)
    monkeypatch.setattr("interp.models.load_hf", lambda *a, **k: pytest.fail("loaded a model"))
    with pytest.raises(InterpError) as e:
        interp.load("meta-llama/Llama-3.1-8B", backend="nnsight", remote=True)
    assert "NDIF_API_KEY" in _one_line(e) and "set_default_api_key" in str(e.value)


def test_remote_true_without_a_server_fails_before_any_work(monkeypatch):
    monkeypatch.setenv("NDIF_API_KEY", "test-key")
    monkeypatch.setenv("NDIF_HOST", "http://127.0.0.1:9")  # the discard port: nothing listens
    monkeypatch.setattr("interp.remote.load_meta", lambda *a, **k: pytest.fail("loaded a model"))
    with pytest.raises(InterpError) as e:
        interp.load("meta-llama/Llama-3.1-8B", backend="nnsight", remote=True)
    assert "cannot reach the NDIF server at http://127.0.0.1:9" in _one_line(e)


def test_remote_true_refuses_registry_names_and_local_paths(monkeypatch, tmp_path):
    monkeypatch.setattr("interp.remote.check_server", lambda: "http://ndif.test")
    for name in ("tiny-llama", str(tmp_path)):
        with pytest.raises(InterpError) as e:
            interp.load(name, backend="nnsight", remote=True)
        assert "hub id" in _one_line(e)


@pytest.mark.parametrize("kwargs, words", [
    ({"backend": "lens"}, "backend='nnsight'"),
    ({"backend": "torch"}, "backend='nnsight'"),
    ({"backend": "nnsight", "device_map": "auto"}, "device map"),
    ({"backend": "nnsight", "remote": "ndif"}, "True (NDIF) or 'local'"),
])
def test_load_refuses_what_cannot_run_remotely(kwargs, words, monkeypatch):
    monkeypatch.setattr("interp.models.load_hf", lambda *a, **k: pytest.fail("loaded a model"))
    with pytest.raises(InterpError) as e:
        interp.load("tiny-llama", **{"remote": True, **kwargs})
    assert words in _one_line(e)


def test_methods_that_would_run_locally_are_refused(pair):
    _, remote, tokens = pair
    before = _requests(remote)
    checks = [
        (lambda: remote.run(tokens, backend="torch"), "the torch backend would run it here"),
        (lambda: remote.run_cached(tokens), "the torch backend would run it here"),
        (lambda: remote.hf(tokens), "runs the model's modules here"),
        (lambda: remote.hf.model.layers[1](torch.zeros(2, 3, 64)), "runs the model's modules here"),
        (lambda: remote.run(tokens, read=["resid_pre.1"], grad=True, rules="ln,identity,half"), "backward rules"),
        (lambda: remote.run(tokens, [Replace("resid_pre.1", torch.zeros(64, requires_grad=True))], grad=True),
         "not at tensors inside interventions"),
    ]
    for call, words in checks:
        with pytest.raises(InterpError) as e:
            call()
        assert words in _one_line(e)
    assert _requests(remote) == before  # refused before sending anything


def test_batched_patching_engine_is_refused(pair):
    from interp.patching.activation import sweep

    _, remote, tokens = pair
    ctx = MetricContext(torch.tensor([5, 6]), torch.tensor([7, 8]), torch.zeros(2, 10), torch.zeros(2, 10))
    with pytest.raises(InterpError) as e:
        sweep(remote, "resid_pre", tokens, {}, logit_diff, ctx, engine="batched")
    assert "batched patching engine" in _one_line(e)


def test_cli_load_model_passes_remote_and_the_option_says_what_it_needs(monkeypatch):
    from rich.console import Console

    from interp import cli_support

    monkeypatch.setattr("interp.models.load_hf", lambda *a, **k: pytest.fail("loaded a model"))
    with pytest.raises(InterpError, match="backend='nnsight'"):
        cli_support.load_model(Console(quiet=True), "tiny-llama", "lens", remote=True)
    assert cli_support.REMOTE.param_decls == ("--remote",) and cli_support.REMOTE.default is False
    assert all(w in cli_support.REMOTE.help for w in ("NDIF", "nnsight", "--backend nnsight", "NDIF_API_KEY"))


def test_interp_patch_remote_refuses_in_one_line_what_cannot_run_there(interp_cli, tmp_path):
    def patch(*args):
        return interp_cli("patch", "--model", "tiny-llama", "--backend", "nnsight", "--remote", *args,
                          "--out", tmp_path / "run")

    for args, words in ((["--method", "activation,relp"], "--remote cannot run relp"),
                        (["--method", "ig"], "--remote cannot run ig"),
                        (["--ray"], "choose one")):
        result = patch(*args)
        assert result.returncode == 2 and words in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert not (tmp_path / "run").exists()  # refused before the run folder was made
