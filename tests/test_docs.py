"""The documentation site builds with `mkdocs build --strict` (mkdocs.yml, docs/).

Strict mode turns every warning into a failure: a broken link or anchor between pages, a page left out of the
navigation, a docstring cross-reference to a missing name, a module the API reference cannot find. The tutorials
are rendered without running them (tests/tutorials runs them).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(ROOT / "mkdocs.yml"),
         "--site-dir", str(out)],
        check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    if proc.returncode != 0:
        problems = [line for line in (proc.stdout + proc.stderr).splitlines()
                    if line.startswith(("WARNING", "ERROR")) or "Error" in line]
        pytest.fail("mkdocs build --strict failed (`make docs` shows the whole log):\n"
                    + "\n".join(problems[-40:] or (proc.stdout + proc.stderr).splitlines()[-40:]))
    return out


def test_site_builds_strict(site):
    for page in ("index.html", "getting-started/index.html", "cli/index.html", "tutorials/index.html"):
        assert (site / page).is_file(), page


def test_every_tutorial_is_rendered(site):
    notebooks = sorted(p.stem for p in (ROOT / "tutorials").glob("*.ipynb"))
    assert len(notebooks) == 7
    linked = sorted(p.stem for p in (ROOT / "docs" / "tutorials").glob("*.ipynb"))
    assert linked == notebooks, "docs/tutorials/ should link every notebook in tutorials/"
    for name in notebooks:
        html = (site / "tutorials" / name / "index.html").read_text(encoding="utf-8")
        assert "import interp" in html or "interp." in html, name


def test_api_reference_covers_the_public_modules(site):
    expected = {
        "interp": ["interp.load", "interp.Model", "interp.Add", "interp.results.load_run"],
        "patching": ["interp.patching.activation_patching", "interp.patching.illusion.illusion_check"],
        "steering": ["interp.steering.build_vectors", "interp.steering.VectorSet"],
        "circuits": ["interp.circuits.heads.detect_heads", "interp.circuits.graph.faithfulness"],
    }
    for page, names in expected.items():
        html = (site / "reference" / page / "index.html").read_text(encoding="utf-8")
        for name in names:
            assert f'id="{name}"' in html, f"{name} missing from reference/{page}"


def test_cli_page_has_every_command(site):
    html = (site / "cli" / "index.html").read_text(encoding="utf-8")
    for command in ("patch", "subspace", "steer-build", "heads-retrieval", "circuit-faithfulness", "app", "doctor"):
        assert f'id="interp-{command}"' in html, command
    assert "--force" in html and "--resume" in html


def test_readme_links_into_the_docs():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    links = re.findall(r"\]\((docs/[^)#\s]+)(?:#[^)]*)?\)", readme)
    assert links, "the README should link into docs/"
    for link in links:
        assert (ROOT / link).is_file(), f"README links to missing {link}"
