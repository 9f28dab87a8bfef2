"""`interp subspace` and `interp.patching.subspace_run`: run folders, saved directions, backends, bad input."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from interp.errors import InterpError
from interp.ioi import generate_ioi
from interp.results import load_run
from interp.patching.subspace import Direction, patch_pairs, patched_logits
from interp.patching.subspace_run import subspace_run

INTERP = Path(sys.executable).parent / "interp"
ENTRIES = ("direction", "readable", "unreadable", "full")


@pytest.mark.parametrize("method", ["mean_diff", "probe", "gradient"])
def test_run_folder_holds_the_direction_and_the_illusion_check(tiny_llama, tmp_path, method):
    prompts = generate_ioi(tiny_llama.tokenizer, 8, seed=1, corruption="order")
    run = subspace_run(tiny_llama, prompts, "mlp_act.1", method, out=tmp_path / "run")
    back = load_run(tmp_path / "run")
    assert back.manifest == run.manifest
    assert back.scores["subspace/direction"].shape == (1, tiny_llama.d_mlp)
    check = back.manifest["illusion"]
    if method == "gradient":  # d metric / d mlp_act = W_out (d metric / d mlp_out): wholly readable
        assert check["unreadable"] is None and check["norms"]["unreadable"] < 1e-4
    for name in (n for n in ENTRIES if not (method == "gradient" and n == "unreadable")):
        assert set(check[name]) == {"logit_diff", "fldd", "interchange_acc"}, name
    assert isinstance(check["base_logit_diff"], float) and isinstance(check["illusion"], bool) and check["verdict"]
    norms = check["norms"]
    assert abs(norms["readable"] ** 2 + norms["unreadable"] ** 2 - 1) < 1e-3  # orthogonal parts of a unit vector
    assert back.manifest["parameters"]["n_train"] == 4 and back.manifest["parameters"]["n_test"] == 4
    report = (tmp_path / "run" / "report.html").read_text()
    assert "Illusion check" in report and "projections on the readable part" in report
    # the saved direction, given back, reproduces the check exactly
    again = subspace_run(tiny_llama, prompts, "mlp_act.1", "given", direction_file=str(tmp_path / "run" / "direction"))
    assert again.manifest["illusion"] == check
    assert torch.equal(again.scores["subspace/direction"], back.scores["subspace/direction"])


def test_subspace_patch_is_the_same_on_every_backend(tiny_gemma3):
    pairs = patch_pairs(tiny_gemma3, generate_ioi(tiny_gemma3.tokenizer, 3, seed=2), "resid_mid.1", positions=[-1, -2])
    basis = torch.randn(2, tiny_gemma3.d_model, generator=torch.Generator().manual_seed(0))
    ref = patched_logits(tiny_gemma3, pairs, basis, backend="torch")
    for backend in ("nnsight", "lens"):
        assert torch.allclose(patched_logits(tiny_gemma3, pairs, basis, backend=backend), ref, atol=1e-5), backend


def test_options_are_checked_before_model_work(tiny_llama):
    prompts = generate_ioi(tiny_llama.tokenizer, 4, seed=1)
    for kwargs, message in [({"method": "pca"}, "unknown method 'pca'"), ({"method": "probe", "k": 2}, "needs --method das"),
                            ({"method": "given"}, "needs --direction-file"), ({"test_fraction": 1.0}, "test-fraction"),
                            ({"site": "resid_post.0"}, "name the downstream heads"),
                            ({"site": "resid_post.0", "heads": [(0, 1)]}, "does not read resid_post.0"),
                            ({"site": "attn_pattern.1"}, "illusion check reads")]:
        args = {"site": "mlp_act.1", "method": "mean_diff"} | kwargs
        with pytest.raises(InterpError, match=message):
            subspace_run(tiny_llama, prompts, **args)


def test_cli_writes_a_run_and_rejects_bad_input_in_one_line(tmp_path):
    out = tmp_path / "s"
    ok = subprocess.run([str(INTERP), "subspace", "--model", "tiny-llama", "--site", "mlp_act.1", "--method", "probe",
                         "--n-prompts", "8", "--out", str(out), "--json"], capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr
    manifest = json.loads(ok.stdout)
    assert manifest["command"].startswith("interp subspace") and manifest["site"] == "mlp_act.1"
    assert (out / "direction.safetensors").is_file() and (out / "manifest.json").is_file()
    for args, part in [(["--site", "resid_post.0", "--heads", "1-2"], "LAYER.HEAD"),
                       (["--site", "mlp_act.1", "--positions", "x"], "--positions"),
                       (["--site", "mlp_act.1", "--method", "given"], "--direction-file")]:
        bad = subprocess.run([str(INTERP), "subspace", "--model", "tiny-llama", *args], capture_output=True, text=True, timeout=300)
        assert bad.returncode == 2 and "Traceback" not in bad.stderr, bad.stderr
        assert bad.stderr.strip().count("\n") == 0 and part in bad.stderr, bad.stderr


# ------------------------------------------------------------------------ hardening: input, interruption


def test_positions_outside_the_prompts_are_refused_not_wrapped(tiny_llama):
    prompts = generate_ioi(tiny_llama.tokenizer, 4, seed=1)
    n_pos = prompts.tokenize(tiny_llama.tokenizer).clean.shape[1]
    for bad in (n_pos, 99, -n_pos - 1):
        with pytest.raises(InterpError, match=f"--positions {bad} is outside the prompts, which are {n_pos} tokens"):
            patch_pairs(tiny_llama, prompts, "mlp_act.1", positions=[bad])
    assert patch_pairs(tiny_llama, prompts, "mlp_act.1", positions=[-1, 0]).positions == [n_pos - 1, 0]


def test_non_finite_lr_and_bad_direction_files_are_refused(tiny_llama, tmp_path):
    prompts = generate_ioi(tiny_llama.tokenizer, 4, seed=1)
    for lr in (float("inf"), float("nan"), -1.0):
        with pytest.raises(InterpError, match="--lr must be a positive finite number"):
            subspace_run(tiny_llama, prompts, "mlp_act.1", "das", das_options={"lr": lr})
    good = Direction("mlp_act.1", torch.ones(1, tiny_llama.d_mlp), "mean_diff")
    good.save(tmp_path / "good")
    nan = Direction("mlp_act.1", torch.full((1, tiny_llama.d_mlp), float("nan")), "mean_diff")
    nan.save(tmp_path / "nan")
    with pytest.raises(InterpError, match="holds NaN or infinite values"):
        Direction.load(tmp_path / "nan")
    (tmp_path / "nokeys.json").write_text("{}")
    (tmp_path / "nokeys.safetensors").write_bytes((tmp_path / "good.safetensors").read_bytes())
    with pytest.raises(InterpError, match="lacks 'site', 'method'"):
        Direction.load(tmp_path / "nokeys")
    (tmp_path / "broken.json").write_text("{not json")
    (tmp_path / "broken.safetensors").write_bytes((tmp_path / "good.safetensors").read_bytes())
    with pytest.raises(InterpError, match="is not a saved direction"):
        Direction.load(tmp_path / "broken")
    assert torch.equal(Direction.load(tmp_path / "good").vectors, good.vectors)


def test_a_zero_test_fraction_is_stated_in_the_run(tiny_llama):
    prompts = generate_ioi(tiny_llama.tokenizer, 4, seed=1, corruption="order")
    run = subspace_run(tiny_llama, prompts, "mlp_act.1", "mean_diff", test_fraction=0.0)
    assert run.manifest["parameters"]["tested_on"] == "train"
    assert any("--test-fraction 0" in note["text"] for note in run.manifest["notes"])
    assert subspace_run(tiny_llama, prompts, "mlp_act.1", "mean_diff").manifest["parameters"]["tested_on"] == "test"


class StopAtEpoch:
    def __init__(self, epoch: int):
        self.epoch = epoch

    def __call__(self, epoch: int, total: int, loss: float) -> None:
        if epoch == self.epoch:
            raise KeyboardInterrupt


def test_an_interrupted_das_run_resumes_from_its_finished_epochs_to_identical_results(tiny_llama, tmp_path):
    prompts = generate_ioi(tiny_llama.tokenizer, 8, seed=1, corruption="order")
    das = {"epochs": 4, "batch_size": 3, "lr": 0.05}
    kwargs = dict(site="mlp_act.1", method="das", das_options=das, seed=2)
    full = subspace_run(tiny_llama, prompts, **kwargs)
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        subspace_run(tiny_llama, prompts, **kwargs, out=out, progress=StopAtEpoch(2))
    progress = json.loads((out / "progress.json").read_text())
    assert progress["done"] == {"epochs": 2} and progress["total"] == {"epochs": 4}
    assert not (out / "manifest.json").exists()
    with pytest.raises(InterpError, match="holds an interrupted run"):
        subspace_run(tiny_llama, prompts, **kwargs, out=out)
    with pytest.raises(InterpError, match="different lr"):
        subspace_run(tiny_llama, prompts, **(kwargs | {"das_options": das | {"lr": 0.1}}), out=out, resume=True)
    epochs_seen = []
    resumed = subspace_run(tiny_llama, prompts, **kwargs, out=out, resume=True,
                           progress=lambda epoch, total, loss: epochs_seen.append(epoch))
    assert epochs_seen == [2, 3, 4]  # starts from the saved epochs
    assert torch.equal(resumed.scores["subspace/direction"], full.scores["subspace/direction"])
    assert resumed.manifest["direction_meta"] == full.manifest["direction_meta"]
    assert resumed.manifest["illusion"] == full.manifest["illusion"]
    assert not (out / "progress.json").exists() and not (out / "partial.safetensors").exists()
    assert load_run(out).manifest["illusion"] == full.manifest["illusion"]
