"""The runs list (`interp.app.catalog`): every run folder with what ran, its kind and date; bad folders say why."""

from __future__ import annotations

import io
import json
import zipfile

import pytest
from app_runs import BROKEN, COMMANDS

from interp.app.catalog import read_entry, scan_runs
from interp.app.widgets import folder_zip
from interp.errors import RunFolderError

KINDS = {"patch": "patching", "circuit_a": "circuit", "circuit_b": "circuit", "feature_circuit": "circuit", "discover": "circuit", "overlap": "overlap", "faithfulness": "faithfulness",
         "subspace": "subspace", "heads": "heads", "retrieval": "retrieval", "neurons": "neurons", "voids": "voids",
         "steer_build": "vectors", "steer_eval": "sweep", "east": "east", "attack": "attack",
         "latents": "latents"}


def test_every_run_folder_is_listed_with_its_kind_command_model_and_date(app_runs):
    entries = {e.name: e for e in scan_runs(app_runs)}
    assert set(entries) == set(COMMANDS) | set(BROKEN) | {"running"}
    assert set(KINDS) == set(COMMANDS)
    for name, kind in KINDS.items():
        entry = entries[name]
        manifest = json.loads((app_runs / name / "manifest.json").read_text())
        assert entry.ok and entry.kind == kind, (name, entry)
        assert entry.command == manifest["command"] and entry.command.startswith("interp ")
        assert entry.status == "complete"
        assert entry.created[:4].isdigit() and entry.created.endswith("UTC")
        if kind not in ("overlap",):
            assert entry.model == "tiny-llama", name  # circuit runs take it from the patching run they were built from


def test_unreadable_and_unfinished_folders_say_why(app_runs):
    entries = {e.name: e for e in scan_runs(app_runs)}
    for name, phrase in BROKEN.items():
        assert not entries[name].ok and phrase in entries[name].error, entries[name]
        assert "\n" not in entries[name].error
    running = entries["running"]
    assert running.kind == "running" and not running.ok and running.status == "unfinished: 3/8 patches"


def test_a_missing_runs_directory_is_one_clear_error(tmp_path):
    with pytest.raises(RunFolderError, match="does not exist"):
        scan_runs(tmp_path / "nowhere")
    (tmp_path / "file").write_text("x")
    with pytest.raises(RunFolderError, match="is a file"):
        scan_runs(tmp_path / "file")


def test_nested_run_folders_and_a_run_folder_as_root(app_runs, tmp_path):
    assert read_entry(app_runs / "heads").kind == "heads"
    root_is_run = scan_runs(app_runs / "heads")
    assert [e.kind for e in root_is_run] == ["heads"]
    outer = tmp_path / "outer"
    (outer / "group").mkdir(parents=True)
    (outer / "group" / "inner").symlink_to(app_runs / "voids", target_is_directory=True)
    assert [(e.name, e.kind) for e in scan_runs(outer)] == [("group/inner", "voids")]


def test_run_folder_zip_holds_every_file(app_runs):
    archive = zipfile.ZipFile(io.BytesIO(folder_zip(app_runs / "circuit_a")))
    names = sorted(archive.namelist())
    assert names == sorted(f"circuit_a/{p.name}" for p in (app_runs / "circuit_a").iterdir())
    assert archive.read("circuit_a/circuit.json") == (app_runs / "circuit_a" / "circuit.json").read_bytes()
