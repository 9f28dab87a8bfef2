"""Models split across devices (``interp.load(..., device_map=...)``) give the single-device numbers.

On this CPU-only machine the maps are explicit: every module on "cpu" (through accelerate's hooks,
which move each module's inputs to its device), and a layer offloaded to disk (its weights on the
meta device, loaded from the offload folder for each forward). Reads, interventions, AtP gradients
and the batched patching engine must equal the plain load's numbers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

import interp
from interp import Add, InterpError, Replace
from interp.ioi import generate_ioi
from interp.metrics import MetricContext, logit_diff
from interp.patching.activation import grid_shape, sweep
from interp.patching.attribution import atp
from interp.results import load_run

PROMPT = "When Mary and John went to the store, John gave a drink to"
TOL = 0.0  # measured: bit-identical on cpu and with a layer offloaded to disk


def cpu_map(model: interp.Model, **overrides: str) -> dict[str, str]:
    """Every top-level piece and every decoder layer on cpu, some overridden (``layers_1="disk"``)."""
    inner = model.hf.model
    out = {f"model.{name}": "cpu" for name, _ in inner.named_children() if name != "layers"}
    out.update({f"model.layers.{i}": "cpu" for i in range(model.n_layers)})
    out["lm_head"] = "cpu"
    out.update({f"model.{k.replace('_', '.')}": v for k, v in overrides.items()})
    return out


@pytest.fixture(scope="module", params=["tiny-llama", "tiny-gemma3"])
def plain(request):
    return interp.load(request.param, backend="torch")


@pytest.fixture(scope="module")
def split(plain, tmp_path_factory):
    """name -> model: all on cpu through hooks, and layer 1 on disk."""
    folder = tmp_path_factory.mktemp("offload")
    return {
        "cpu": interp.load(plain.name, backend="torch", device_map=cpu_map(plain)),
        "disk": interp.load(plain.name, backend="torch", device_map=cpu_map(plain, layers_1="disk"),
                            offload_folder=str(folder)),
    }


def diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape
    return (a.double() - b.double()).abs().max().item()


@pytest.mark.parametrize("kind", ["cpu", "disk"])
def test_reads_interventions_and_weights_equal_the_plain_load(plain, split, kind):
    model = split[kind]
    assert model.device_map and (kind != "disk" or "disk" in model.device_map.values())
    assert hasattr(model.adapter.layer_list(model.hf)[0], "_hf_hook")  # accelerate's hooks run, even all on cpu
    sites = ["resid_pre.0", "attn_out.0", "head_out.1", "mlp_out.1", "resid_post.1"]
    ivs = [Add("resid_pre.1", torch.ones(plain.d_model)), Replace("head_out.1", torch.zeros(plain.d_head), index=(slice(None), slice(None), 0))]
    for backend in ("torch", "nnsight"):
        for interventions in ((), ivs):
            a = plain.run(PROMPT, interventions, read=sites, backend=backend)
            b = model.run(PROMPT, interventions, read=sites, backend=backend)
            assert diff(a.logits, b.logits) <= TOL, (backend, kind)
            for s in sites:
                assert diff(a.acts[s], b.acts[s]) <= TOL, (backend, kind, s)
    assert torch.equal(plain.W_U, model.W_U)
    assert torch.equal(plain.W_O(1), model.W_O(1)) and torch.equal(plain.W_out(1), model.W_out(1))


def _ioi(model):
    tokens = generate_ioi(model.tokenizer, 3).tokenize(model.tokenizer)
    with torch.no_grad():
        clean = model.run(tokens.clean, read=[f"resid_pre.{i}" for i in range(model.n_layers)] + [f"attn_out.{i}" for i in range(model.n_layers)])
        corrupt = model.run(tokens.corrupt)
    ctx = MetricContext(tokens.answer, tokens.wrong, clean.logits[:, -1], corrupt.logits[:, -1])
    return tokens, clean, ctx


@pytest.mark.parametrize("kind", ["cpu", "disk"])
def test_atp_and_batched_patching_equal_the_plain_load(plain, split, kind):
    results = []
    for model in (plain, split[kind]):
        tokens, clean, ctx = _ioi(model)
        scores = atp(model, "attn_out", tokens.corrupt, clean.acts, logit_diff, ctx)
        values, done = sweep(model, "resid_pre", tokens.corrupt, clean.acts, logit_diff, ctx, engine="batched")
        assert done.all() and values.shape[1:] == grid_shape(model, "resid_pre", tokens.corrupt.shape[1])
        results.append((scores, values))
    (atp_a, sweep_a), (atp_b, sweep_b) = results
    assert diff(atp_a, atp_b) <= TOL
    assert diff(sweep_a, sweep_b) <= TOL


def test_auto_and_balanced_maps_load_and_match(plain):
    for spec in ("auto", "balanced"):
        model = interp.load(plain.name, backend="torch", device_map=spec)
        assert model.device_map and model.device == torch.device("cpu")
        assert torch.equal(plain.run(PROMPT).logits, model.run(PROMPT).logits)


def test_a_json_map_file_is_read(plain, tmp_path):
    path = tmp_path / "map.json"
    path.write_text(json.dumps(cpu_map(plain)))
    model = interp.load(plain.name, backend="nnsight", device_map=str(path))
    assert model.device_map == cpu_map(plain)
    assert torch.equal(plain.run(PROMPT, backend="nnsight").logits, model.run(PROMPT).logits)


def test_bad_maps_are_refused_in_one_line(tmp_path):
    model = interp.load("tiny-llama", backend="torch")
    good = cpu_map(model)
    bad_json = tmp_path / "bad.json"
    bad_json.write_text('{"model.layers.0": ')
    cases = {
        "unknown module": (dict(good, **{"model.layers.7": "cpu"}), "unknown module"),
        "uncovered": ({k: v for k, v in good.items() if k != "model.layers.1"}, "places no module holding"),
        "bad device": (dict(good, **{"model.norm": "tpu:3"}), "cannot use device"),
        "not a device": (dict(good, **{"model.norm": 1.5}), "is not a device"),
        "malformed JSON": (str(bad_json), "not valid JSON"),
        "no such file": (str(tmp_path / "none.json"), "neither auto, balanced nor a JSON file"),
        "empty": ({}, "non-empty object"),
    }
    for what, (spec, message) in cases.items():
        with pytest.raises(InterpError, match=message) as e:
            interp.load("tiny-llama", backend="torch", device_map=spec)
        assert "\n" not in str(e.value), what


def test_lens_refuses_a_device_map():
    with pytest.raises(InterpError, match="lens backend cannot run a model split by a device map"):
        interp.load("tiny-llama", backend="lens", device_map="auto")
    model = interp.load("tiny-llama", backend="torch", device_map="auto")
    with pytest.raises(InterpError, match="lens backend cannot"):
        model.run(PROMPT, backend="lens")


def _cli(*args) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "250", "NO_COLOR": "1", "TERM": "dumb", "OMP_NUM_THREADS": "1"}
    return subprocess.run([str(os.path.join(os.path.dirname(sys.executable), "interp")), *map(str, args)],
                          capture_output=True, text=True, env=env, timeout=300)


def test_cli_patch_with_a_device_map_file_gives_the_same_scores(tmp_path):
    model = interp.load("tiny-llama", backend="torch")
    path = tmp_path / "map.json"
    path.write_text(json.dumps(cpu_map(model, layers_0="disk")))
    args = ["patch", "--model", "tiny-llama", "--backend", "torch", "--n-prompts", "2", "--components", "resid_pre",
            "--method", "activation,atp", "--json"]
    plain = _cli(*args, "--out", tmp_path / "plain")
    split = _cli(*args, "--out", tmp_path / "split", "--device-map", path)
    assert plain.returncode == 0 and split.returncode == 0, split.stderr
    a, b = load_run(tmp_path / "plain").scores, load_run(tmp_path / "split").scores
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    manifest = load_run(tmp_path / "split").manifest
    assert manifest["device_map"]["model.layers.0"] == "disk" and "device_map" not in load_run(tmp_path / "plain").manifest
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    for extra, message in ((["--device-map", bad], "is not valid JSON"),
                           (["--device-map", "auto", "--backend", "lens"], "lens backend cannot run")):
        proc = _cli("patch", "--model", "tiny-llama", "--n-prompts", "2", *extra, "--out", tmp_path / "x")
        assert proc.returncode != 0 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_cli_steer_with_a_device_map_file_gives_the_same_generations(tmp_path):
    model = interp.load("tiny-llama", backend="torch")
    path = tmp_path / "map.json"
    path.write_text(json.dumps(cpu_map(model, layers_1="disk")))
    built = _cli("steer", "build", "--model", "tiny-llama", "--backend", "torch", "--task", "ioi",
                 "--out", tmp_path / "vec", "--device-map", path)
    assert built.returncode == 0, built.stderr
    args = ["steer", "generate", "--model", "tiny-llama", "--backend", "torch", "--vectors", tmp_path / "vec" / "vectors",
            "--prompt", "Hello there", "--coeff", "2", "--max-new-tokens", "6"]
    plain = _cli(*args, "--out", tmp_path / "plain")
    split = _cli(*args, "--out", tmp_path / "split", "--device-map", path)
    assert plain.returncode == 0 and split.returncode == 0, split.stderr
    a, b = load_run(tmp_path / "plain"), load_run(tmp_path / "split")
    assert a.manifest["generations"] == b.manifest["generations"] and a.manifest["generations"][0]["steered"]
    assert a.scores.keys() == b.scores.keys() and all(torch.equal(a.scores[k], b.scores[k]) for k in a.scores)


def test_cli_subspace_with_a_layer_on_disk_gives_the_same_scores(tmp_path):
    model = interp.load("tiny-llama", backend="torch")
    path = tmp_path / "map.json"
    path.write_text(json.dumps(cpu_map(model, layers_1="disk")))  # the readable basis reads layer 1's offloaded weights
    args = ["subspace", "--model", "tiny-llama", "--backend", "torch", "--site", "resid_post.0", "--heads", "1.0,1.1",
            "--method", "das", "--epochs", "2", "--n-prompts", "8"]
    plain = _cli(*args, "--out", tmp_path / "plain")
    split = _cli(*args, "--out", tmp_path / "split", "--device-map", path)
    assert plain.returncode == 0 and split.returncode == 0, split.stderr
    a, b = load_run(tmp_path / "plain").scores, load_run(tmp_path / "split").scores
    assert len(a) > 3 and a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
