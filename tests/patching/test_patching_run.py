"""`interp.patching.run.activation_patching`: the run folder it writes, and checkpoint / resume.

Everything runs on the tiny Llama with two IOI prompts, so it is fast.
"""

from __future__ import annotations

import json

import pytest
import safetensors.torch
import torch

import interp.patching.run as run_module
from interp import InterpError
from interp.ioi import generate_ioi
from interp.metrics import MetricContext, logit_diff
from interp.plots import token_label
from interp.results import load_run
from interp.patching.run import PARTIAL, PROGRESS, activation_patching

COMPONENTS = ["resid_pre", "head_out"]


@pytest.fixture(scope="module")
def prompts(tiny_llama):
    return generate_ioi(tiny_llama.tokenizer, 2)


# ------------------------------------------------------------------------------- the run folder


def test_run_folder_is_complete_and_readable(tiny_llama, prompts, tmp_path):
    out = tmp_path / "run"
    result = activation_patching(tiny_llama, prompts, COMPONENTS, out=out, command="test")
    loaded = load_run(out)
    tokens = prompts.tokenize(tiny_llama.tokenizer)
    n, n_pos = tokens.clean.shape
    m = loaded.manifest

    assert m["status"] == "complete" and m["model"] == "tiny-llama" and m["metric"] == "logit_diff"
    assert m["components"] == COMPONENTS and m["methods"] == ["activation"]
    assert m["parameters"]["direction"] == "denoise" and m["parameters"]["n_prompts"] == n
    assert m["prompt_set"]["fingerprint"] == prompts.fingerprint() and m["prompt_set"]["n_tokens"] == n_pos
    assert sorted(loaded.scores) == sorted(
        [f"activation/{c}" for c in COMPONENTS] + [f"activation/{c}/per_prompt" for c in COMPONENTS])
    for name, tensor in result.scores.items():
        assert torch.equal(loaded.scores[name], tensor), name

    # axes, sizes and labels from the manifest
    layer_labels = [str(layer) for layer in range(tiny_llama.n_layers)]
    pos_labels = loaded.axis_labels("activation/resid_pre", "pos")
    info = loaded.tensor_info("activation/resid_pre")
    assert info["axes"] == ["layer", "pos"] and info["sizes"] == [tiny_llama.n_layers, n_pos]
    assert loaded.axis_labels("activation/resid_pre", "layer") == layer_labels
    assert len(pos_labels) == n_pos
    for p, (label, token_id) in enumerate(zip(pos_labels, tokens.clean[0].tolist())):
        # "<index> <token as text>": the actual token of the first clean prompt
        assert label == f"{p} {token_label(tiny_llama.tokenizer.decode([token_id]))}"
    assert pos_labels[1].endswith(token_label(" " + prompts.clean[0].split()[1]))  # the first name
    info = loaded.tensor_info("activation/resid_pre/per_prompt")
    assert info["axes"] == ["prompt", "layer", "pos"] and info["sizes"] == [n, tiny_llama.n_layers, n_pos]
    info = loaded.tensor_info("activation/head_out")
    assert info["axes"] == ["layer", "head"] and info["sizes"] == [tiny_llama.n_layers, tiny_llama.n_heads]
    assert loaded.axis_labels("activation/head_out", "head") == [f"H{h}" for h in range(tiny_llama.n_heads)]
    for c in COMPONENTS:
        per_prompt = loaded.scores[f"activation/{c}/per_prompt"]
        assert torch.isfinite(per_prompt).all()
        assert torch.allclose(loaded.scores[f"activation/{c}"], per_prompt.mean(0))

    # baselines: the clean and corrupt metric per prompt, with a bootstrap interval around the mean
    with torch.no_grad():
        clean = tiny_llama.run(tokens.clean).logits[:, -1]
        corrupt = tiny_llama.run(tokens.corrupt).logits[:, -1]
    ctx = MetricContext(tokens.answer, tokens.wrong, clean, corrupt)
    for name, logits in (("clean", clean), ("corrupt", corrupt)):
        base = m["baselines"][name]
        expected = logit_diff(logits, ctx)
        assert torch.allclose(torch.tensor(base["per_prompt"]), expected, atol=1e-5), name
        assert abs(base["mean"] - expected.mean().item()) < 1e-5
        lo, hi = base["ci95"]
        assert lo <= base["mean"] <= hi and lo < hi, base
    # denoising the embedding of the only changed token gives the clean run
    k = int((tokens.clean[0] != tokens.corrupt[0]).nonzero()[0, 0])
    assert torch.allclose(loaded.scores["activation/resid_pre/per_prompt"][:, 0, k],
                          torch.tensor(m["baselines"]["clean"]["per_prompt"]), atol=1e-4)

    assert m["timings"]["run_s"] > 0 and all(m["timings"][f"{c}_s"] >= 0 for c in COMPONENTS)
    report = (out / "report.html").read_text(encoding="utf-8")
    assert "plotly" in report.lower() and "activation/resid_pre" in report
    assert not (out / PARTIAL).exists() and not (out / PROGRESS).exists()


def test_without_out_nothing_is_written_and_results_are_the_same(tiny_llama, prompts, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    a = activation_patching(tiny_llama, prompts, ["head_out"])
    b = activation_patching(tiny_llama, prompts, ["head_out"], out=tmp_path / "b")
    assert list(tmp_path.iterdir()) == [tmp_path / "b"]
    assert torch.equal(a.scores["activation/head_out/per_prompt"], b.scores["activation/head_out/per_prompt"])


def test_bad_options_raise_interp_errors(tiny_llama, prompts):
    with pytest.raises(InterpError, match="unknown component 'mlp'"):
        activation_patching(tiny_llama, prompts, ["mlp"])
    with pytest.raises(InterpError, match="unknown direction 'sideways'"):
        activation_patching(tiny_llama, prompts, ["head_out"], direction="sideways")
    with pytest.raises(InterpError, match="unknown metric 'acc'"):
        activation_patching(tiny_llama, prompts, ["head_out"], metric="acc")
    with pytest.raises(InterpError, match="unknown engine 'gpu'"):
        activation_patching(tiny_llama, prompts, ["head_out"], engine="gpu")
    with pytest.raises(InterpError, match="--mlp-layers"):
        activation_patching(tiny_llama, prompts, ["mlp_act"])
    with pytest.raises(InterpError, match="out of range"):
        activation_patching(tiny_llama, prompts, ["mlp_act"], mlp_layers=[tiny_llama.n_layers])
    with pytest.raises(InterpError, match="--resume needs --out"):
        activation_patching(tiny_llama, prompts, ["head_out"], resume=True)


# -------------------------------------------------------------------------- interrupt and resume

RESUME_COMPONENTS = ["resid_pre", "head_out_pos"]  # each takes several chunks on two prompts


class Interrupter:
    """A progress callback that raises KeyboardInterrupt at the ``at[1]``-th call (0-based) for
    component ``at[0]``, and records every call and whether a checkpoint existed at that time."""

    def __init__(self, out, at: tuple[str, int] | None):
        self.out, self.at, self.calls, self.partial_seen = out, at, [], []
        self.stopped_at: tuple[str, int] | None = None  # (component, patches done) when raised

    def __call__(self, comp: str, done: int, total: int) -> None:
        self.calls.append((comp, done, total))
        self.partial_seen.append((self.out / PARTIAL).exists())
        if self.at is not None and comp == self.at[0] and sum(c == comp for c, _, _ in self.calls) == self.at[1] + 1:
            self.stopped_at = (comp, done)
            raise KeyboardInterrupt


@pytest.fixture(scope="module")
def uninterrupted(tiny_llama, prompts, tmp_path_factory):
    return activation_patching(tiny_llama, prompts, RESUME_COMPONENTS, out=tmp_path_factory.mktemp("full"))


# (component, which of its progress calls raises): before any patch, after the first chunk, later
@pytest.mark.parametrize("at", [("resid_pre", 0), ("resid_pre", 1), ("head_out_pos", 1), ("head_out_pos", 2)])
def test_interrupted_run_resumes_to_identical_results(tiny_llama, prompts, uninterrupted, tmp_path, monkeypatch, at):
    monkeypatch.setattr(run_module, "CHECKPOINT_EVERY_S", 0.0)  # checkpoint after every chunk
    out = tmp_path / "run"
    stop = Interrupter(out, at)
    with pytest.raises(KeyboardInterrupt):
        activation_patching(tiny_llama, prompts, RESUME_COMPONENTS, out=out, progress=stop)
    assert stop.stopped_at is not None
    comp, n_done = stop.stopped_at
    total = stop.calls[-1][2]
    assert (at[1] == 0) == (n_done == 0) and n_done < total, stop.calls
    if len(stop.calls) > 2:  # a chunk finished before the one that raised: it was checkpointed
        assert any(stop.partial_seen), "no checkpoint was written while the sweep ran"
    assert (out / PARTIAL).is_file() and (out / PROGRESS).is_file()
    assert not (out / "manifest.json").exists(), "an interrupted run must not look complete"
    progress = json.loads((out / PROGRESS).read_text())
    saved = safetensors.torch.load_file(out / PARTIAL)
    assert progress["done"][comp] == n_done == int(saved[f"done/{comp}"].sum())
    assert progress["total"][comp] == total
    done = saved[f"done/{comp}"].bool()
    values = saved[f"values/{comp}"]
    assert not values[:, ~done].isfinite().any() and values[:, done].isfinite().all()
    assert torch.equal(values[:, done], uninterrupted.scores[f"activation/{comp}/per_prompt"][:, done])

    # without --resume the folder is refused; with other options it is refused naming what changed
    with pytest.raises(InterpError, match="holds an interrupted run.*--resume"):
        activation_patching(tiny_llama, prompts, RESUME_COMPONENTS, out=out)
    with pytest.raises(InterpError, match=r"different metric\b"):
        activation_patching(tiny_llama, prompts, RESUME_COMPONENTS, out=out, resume=True, metric="kl")
    with pytest.raises(InterpError, match=r"different direction\b"):
        activation_patching(tiny_llama, prompts, RESUME_COMPONENTS, out=out, resume=True, direction="noise")
    with pytest.raises(InterpError, match=r"different components\b"):
        activation_patching(tiny_llama, prompts, ["resid_pre"], out=out, resume=True)
    with pytest.raises(InterpError, match=r"different fingerprint, n_prompts\b"):
        activation_patching(tiny_llama, generate_ioi(tiny_llama.tokenizer, 3), RESUME_COMPONENTS, out=out, resume=True)
    assert (out / PARTIAL).is_file(), "a refused resume must keep the interrupted run"

    watch = Interrupter(out, None)
    resumed = activation_patching(tiny_llama, prompts, RESUME_COMPONENTS, out=out, resume=True, progress=watch)
    first = {c: next(done for cc, done, _ in watch.calls if cc == c) for c in RESUME_COMPONENTS}
    assert first[comp] == n_done, "the resumed run should start where the interrupted one stopped"
    assert sorted(resumed.scores) == sorted(uninterrupted.scores)
    for name, tensor in uninterrupted.scores.items():
        assert torch.equal(resumed.scores[name], tensor), name
    loaded = load_run(out)
    for name, tensor in uninterrupted.scores.items():
        assert torch.equal(loaded.scores[name], tensor), name
    assert loaded.manifest["status"] == "complete"
    assert not (out / PARTIAL).exists() and not (out / PROGRESS).exists()


def test_periodic_checkpoints_follow_checkpoint_every_s(tiny_llama, prompts, tmp_path, monkeypatch):
    """With a long interval no chunk checkpoints; the interrupt itself still saves what finished."""
    monkeypatch.setattr(run_module, "CHECKPOINT_EVERY_S", 3600.0)
    out = tmp_path / "run"
    stop = Interrupter(out, ("head_out_pos", 2))
    with pytest.raises(KeyboardInterrupt):
        activation_patching(tiny_llama, prompts, RESUME_COMPONENTS, out=out, progress=stop)
    assert not any(stop.partial_seen)
    saved = safetensors.torch.load_file(out / PARTIAL)
    assert int(saved["done/resid_pre"].sum()) == saved["done/resid_pre"].numel()
    assert 0 < int(saved["done/head_out_pos"].sum()) == stop.stopped_at[1] < saved["done/head_out_pos"].numel()


def test_resume_with_nothing_to_resume_raises(tiny_llama, prompts, tmp_path):
    with pytest.raises(InterpError, match="nothing to resume"):
        activation_patching(tiny_llama, prompts, ["head_out"], out=tmp_path / "empty", resume=True)
    done = tmp_path / "done"
    activation_patching(tiny_llama, prompts, ["head_out"], out=done)
    with pytest.raises(InterpError, match="nothing to resume"):
        activation_patching(tiny_llama, prompts, ["head_out"], out=done, resume=True)


def test_finished_estimators_survive_an_interrupt_and_are_not_recomputed(tiny_llama, prompts, tmp_path, monkeypatch):
    methods = ["activation", "atp", "relp", "ig"]
    full = activation_patching(tiny_llama, prompts, RESUME_COMPONENTS, methods=methods, ig_steps=2)
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):  # interrupted in the activation sweep, after every estimator finished
        activation_patching(tiny_llama, prompts, RESUME_COMPONENTS, methods=methods, ig_steps=2, out=out,
                            progress=Interrupter(out, ("resid_pre", 0)))
    saved = safetensors.torch.load_file(out / PARTIAL)
    assert {k for k in saved if k.startswith("estimate/")} == {f"estimate/{m}/{c}" for m in methods[1:] for c in RESUME_COMPONENTS}

    def must_not_run(*args, **kwargs):
        raise AssertionError("a finished estimator was computed again")

    monkeypatch.setattr(run_module, "integrated_gradients", must_not_run)
    monkeypatch.setattr(run_module, "attribution_patching", must_not_run)
    resumed = activation_patching(tiny_llama, prompts, RESUME_COMPONENTS, methods=methods, ig_steps=2, out=out, resume=True)
    for name, tensor in full.scores.items():
        assert torch.equal(resumed.scores[name], tensor), name
    assert resumed.manifest["faithfulness"] == full.manifest["faithfulness"]


def test_an_interrupted_ig_keeps_its_finished_passes_and_resumes_to_identical_results(tiny_llama, prompts, tmp_path,
                                                                                      monkeypatch):
    """IG used to keep nothing until every pass finished (and the CLI then named a folder that did not exist)."""
    monkeypatch.setattr(run_module, "CHECKPOINT_EVERY_S", 0.0)
    full = activation_patching(tiny_llama, prompts, RESUME_COMPONENTS, methods=["ig"], ig_steps=2)
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):  # on the second of IG's 4 passes (resid_pre and head_out, 2 layers)
        activation_patching(tiny_llama, prompts, RESUME_COMPONENTS, methods=["ig"], ig_steps=2, out=out,
                            progress=Interrupter(out, ("ig", 1)))
    saved = safetensors.torch.load_file(out / PARTIAL)
    assert sorted(k for k in saved if k.startswith("ig_grad/")) == ["ig_grad/resid_pre.0", "ig_grad/resid_pre.1"]
    progress = json.loads((out / PROGRESS).read_text())
    assert progress["done"] == {"ig": 2} and progress["total"] == {"ig": 4}

    passes = []
    real = run_module.integrated_gradients

    def counting(*args, **kwargs):
        passes.append(sorted(kwargs["grads"]))  # the finished passes it starts from
        return real(*args, **kwargs)

    monkeypatch.setattr(run_module, "integrated_gradients", counting)
    resumed = activation_patching(tiny_llama, prompts, RESUME_COMPONENTS, methods=["ig"], ig_steps=2, out=out,
                                  resume=True)
    assert passes == [["resid_pre.0", "resid_pre.1"]]
    for name, tensor in full.scores.items():
        assert torch.equal(resumed.scores[name], tensor), name
    assert not (out / PARTIAL).exists()


def test_progress_counts_every_component_of_the_run_from_the_start(tiny_llama, prompts, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        activation_patching(tiny_llama, prompts, RESUME_COMPONENTS, out=out, progress=Interrupter(out, ("resid_pre", 1)))
    progress = json.loads((out / PROGRESS).read_text())
    assert sorted(progress["total"]) == sorted(RESUME_COMPONENTS) and progress["done"]["head_out_pos"] == 0


def test_mlp_layers_without_mlp_act_and_oversized_runs_are_refused(tiny_llama, prompts):
    with pytest.raises(InterpError, match="--mlp-layers chooses the layers of component mlp_act"):
        activation_patching(tiny_llama, prompts, ["resid_pre"], mlp_layers=[0])
    need = run_module.memory_needed(tiny_llama, 10**9, 15, ["resid_pre"], ["activation"])
    assert need > 10**15
    with pytest.raises(InterpError, match=r"patching 1000000000 prompts of 15 tokens needs about .* free"):
        run_module.check_size(tiny_llama, 10**9, 15, ["resid_pre"], ["activation"])
    with pytest.raises(InterpError, match="supports at most"):
        run_module.check_size(tiny_llama, 1, 10**7, ["resid_pre"], ["activation"])
