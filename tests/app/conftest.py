"""Fixture run folders for the app's tests, written by the real `interp` commands on the tiny model.

The commands run in this process (typer's CliRunner over the same `interp` app the script runs), so
the folders are exactly what users get, without a Python start-up per command. Beside them sit the
folders a user's runs directory also holds: a damaged manifest, one from a newer interp, a stray
folder that is not a run, and an `interp patch` run still in progress.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from app_runs import COMMANDS
from typer.testing import CliRunner


def _interp_app():
    import interp.cli

    if not getattr(interp.cli, "_plugins_registered_for_tests", False):
        interp.cli._register_plugins()
        interp.cli._plugins_registered_for_tests = True
    return interp.cli.app


@pytest.fixture(scope="session")
def app_runs(tmp_path_factory) -> Path:
    """A runs directory holding one run folder of every kind the app shows, plus unreadable and unfinished ones."""
    runs = tmp_path_factory.mktemp("app") / "runs"
    runs.mkdir()
    runner, app = CliRunner(), _interp_app()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("COLUMNS", "200")
        for folder, args in COMMANDS.items():
            args = [a.replace("{runs}", str(runs)) for a in args] + ["--out", str(runs / folder)]
            patch.setattr(sys, "argv", ["interp", *args])  # the manifests record the command line from sys.argv
            result = runner.invoke(app, args, catch_exceptions=False)
            assert result.exit_code == 0, f"interp {' '.join(args)} failed:\n{result.output}"
    damaged = runs / "damaged"
    damaged.mkdir()
    (damaged / "manifest.json").write_text("{ not json")
    newer = runs / "newer"
    newer.mkdir()
    manifest = json.loads((runs / "heads" / "manifest.json").read_text())
    (newer / "manifest.json").write_text(json.dumps({**manifest, "schema_version": 99}))
    badscores = runs / "badscores"
    badscores.mkdir()
    (badscores / "manifest.json").write_text(json.dumps(manifest))
    (badscores / "scores.safetensors").write_bytes(b"\x00" * 64)
    stray = runs / "stray"
    stray.mkdir()
    (stray / "notes.txt").write_text("not a run")
    running = runs / "running"
    running.mkdir()
    (running / "progress.json").write_text(json.dumps({"run": {"model": "tiny-llama"}, "done": {"head_out": 3},
                                                       "total": {"head_out": 8}}))
    return runs


@pytest.fixture(autouse=True)
def _app_control_on(monkeypatch):
    """Every page usable, as `interp app` on localhost has it (AppTest runs without a server address, which the
    app treats as served beyond this machine); the tests of remote serving set it off themselves."""
    monkeypatch.setenv("INTERP_APP_CONTROL", "on")
