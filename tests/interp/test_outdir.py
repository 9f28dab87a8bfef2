"""Output folders checked before work (`prepare_out`), checkpoints (`Checkpoint`), strict JSON, finite options."""

from __future__ import annotations

import json
import os

import pytest
import torch

from interp.cli_support import numbers
from interp.errors import InterpError
from interp.metrics import check_finite
from interp.outdir import Checkpoint, prepare_out
from interp.results import write_json_atomic


def test_new_and_empty_folders_are_created_and_used(tmp_path):
    assert prepare_out(tmp_path / "a" / "b", "x").is_dir()
    (tmp_path / "empty").mkdir()
    assert prepare_out(tmp_path / "empty", "x") == tmp_path / "empty"


@pytest.mark.parametrize("out", ["", "  "])
def test_empty_out_is_refused(out):
    with pytest.raises(InterpError, match="--out is empty"):
        prepare_out(out, "x")


def test_file_foreign_folder_and_unwritable_path_are_refused(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(InterpError, match="is a file"):
        prepare_out(tmp_path / "f", "x")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(InterpError, match="not empty and holds no interp run"):
        prepare_out(tmp_path / "mine", "x", force=True)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    with pytest.raises(InterpError, match="cannot write to --out"):
        prepare_out(tmp_path / "f" / "below", "x")
    if os.geteuid() != 0:  # root writes anywhere
        (tmp_path / "ro").mkdir(mode=0o500)
        with pytest.raises(InterpError, match="cannot write"):
            prepare_out(tmp_path / "ro" / "run", "x")


def test_finished_run_needs_force_which_clears_it(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    write_json_atomic(run / "manifest.json", {"command": "interp steer build"})
    (run / "vectors.safetensors").write_bytes(b"old")
    with pytest.raises(InterpError, match=r"finished run \(interp steer build\).*--force"):
        prepare_out(run, "x")
    assert prepare_out(run, "x", force=True) == run
    assert list(run.iterdir()) == []  # no file of the old run is left beside the new one


def test_checkpoint_round_trip_and_other_options_refused(tmp_path):
    cp = Checkpoint(tmp_path, {"k": 3, "layers": [1, 2]})
    assert cp.load() is None
    cp.save({"done": torch.tensor([True, False])}, done=1, total=2)
    with pytest.raises(InterpError, match="interrupted run.*--resume"):
        prepare_out(tmp_path, "x")
    assert prepare_out(tmp_path, "x", resume=True) == tmp_path
    tensors, info = cp.load()
    assert torch.equal(tensors["done"], torch.tensor([True, False])) and info["done"] == 1 and info["total"] == 2
    with pytest.raises(InterpError, match="different k"):
        Checkpoint(tmp_path, {"k": 4, "layers": [1, 2]}).load()
    cp.clear()
    assert cp.load() is None
    with pytest.raises(InterpError, match="nothing to resume"):
        prepare_out(tmp_path, "x", resume=True)


def test_manifests_are_strict_json_and_name_the_non_finite_value(tmp_path):
    with pytest.raises(InterpError, match=r"non-finite number .* at faithfulness\.atp\.1"):
        write_json_atomic(tmp_path / "m.json", {"faithfulness": {"atp": [0.5, float("nan")]}})
    assert not (tmp_path / "m.json").exists()
    write_json_atomic(tmp_path / "m.json", {"x": torch.tensor([1.5])})
    assert json.loads((tmp_path / "m.json").read_text()) == {"x": [1.5]}


def test_non_finite_options_and_metrics_are_one_line_errors():
    with pytest.raises(InterpError, match="--coefficients must be a finite number, got nan"):
        numbers("0,nan", "--coefficients")
    with pytest.raises(InterpError, match="--betas must be a finite number, got inf"):
        numbers("1,inf", "--betas")
    with pytest.raises(InterpError, match=r"not finite \(inf\) at layer 3, index \(1,\)"):
        check_finite(torch.tensor([0.0, float("inf")]), "layer 3")
