"""The distribution: `pip wheel .` builds, and the wheel installs everything inside the `interp` namespace.

The wheel goes into a fresh virtual environment that already has a module named `app` (as many projects do).
The dependencies come from this test environment's site-packages through a .pth file, so nothing is downloaded;
this environment's own editable install of interp is not visible there (a .pth file on a path added by another
.pth file is not read).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
METHOD_PACKAGES = ("patching", "steering", "circuits", "app")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # build from a clean copy: setuptools leaves build/ in the source tree, and a stale build/lib from an earlier
    # build would put modules deleted since into the wheel
    source = tmp_path_factory.mktemp("source") / "interp"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".venv", ".git", "build", "site", "runs", "*.egg-info",
                                                                "__pycache__", ".pytest_cache"))
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation",
                             "--quiet", "-w", str(out)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    (path,) = out.glob("interp-*.whl")
    return path


def test_wheel_holds_only_the_interp_namespace(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith((".dist-info", ".data"))}
    assert top == {"interp"}
    for package in METHOD_PACKAGES:
        assert f"interp/{package}/__init__.py" in names
    assert "interp/app/views/__init__.py" in names and "interp/adapters/families.py" in names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "patch = interp.patching.cli:patch" in text and "app = interp.app.cli:app" in text


def test_wheel_installs_beside_a_users_own_app_module(wheel, tmp_path):
    env_dir = tmp_path / "fresh"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                               capture_output=True, text=True, check=True).stdout.strip())
    (site / "deps.pth").write_text(sysconfig.get_path("purelib") + "\n")  # torch, transformers, ... from here
    (site / "app.py").write_text("MINE = True\n")  # the user's own top-level `app`
    install = subprocess.run([str(python), "-m", "pip", "install", "--no-deps", "--no-index", "--quiet",
                              "--target", str(site), str(wheel)], capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr
    check = ("import app, interp, interp.app.catalog, interp.patching.activation, interp.steering.vectors, "
             "interp.circuits.graph; assert app.MINE; "
             "assert interp.__file__.startswith(%r), interp.__file__" % str(site))
    run = subprocess.run([str(python), "-c", check], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    cli = subprocess.run([str(python), "-c", "import sys; from interp.cli import main; sys.argv = ['interp', "
                          "'--version']; main()"], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert cli.returncode == 0 and cli.stdout.startswith("interp "), cli.stderr
