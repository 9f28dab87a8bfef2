"""The Jupyter tutorials: stored clean, and each one runs from top to bottom on the real model.

Every notebook in ``tutorials/`` is executed with nbclient in a fresh temporary working directory (the
notebooks write their run folders under a relative ``runs/``). A cell that raises fails the test
(nbclient raises ``CellExecutionError``); the notebooks assert their key facts themselves (backends agree,
coefficient 0 changes nothing, ...), so a broken library fails here. The kernel is the ``python3``
kernelspec, which jupyter_client starts with this interpreter (``sys.executable``); a last cell checks
that the kernel ran inside the same environment (``sys.prefix``).

Each notebook is meant to finish in about a minute on a 2-core CPU; the measured seconds are printed and
recorded as the test's ``seconds`` property.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

TUTORIALS = Path(__file__).resolve().parents[2] / "tutorials"
EXPECTED = [
    "01_hook_layer.ipynb",
    "02_activation_patching.ipynb",
    "03_atp_relp.ipynb",
    "04_subspace_das.ipynb",
    "05_steering.ipynb",
    "06_retrieval_neurons_voids.ipynb",
    "07_circuit_and_app.ipynb",
]
NOTEBOOKS = sorted(TUTORIALS.glob("*.ipynb"))
CELL_TIMEOUT_S = 600
KERNEL = "python3"
PREFIX_MARK = "__interp_kernel_prefix__="


def test_exactly_the_seven_tutorials():
    assert [p.name for p in NOTEBOOKS] == EXPECTED


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_stored_without_outputs(path: Path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.nbformat == 4
    assert nb.metadata.get("kernelspec", {}).get("name") == KERNEL
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert code, f"{path.name} has no code cells"
    for i, cell in enumerate(code):
        assert cell.outputs == [], f"{path.name}: code cell {i} is stored with outputs; clear them"
        assert cell.execution_count is None, f"{path.name}: code cell {i} is stored with an execution count"
    assert nb.cells[0].cell_type == "markdown", f"{path.name} should open with a markdown cell"


def _stream_text(cell) -> str:
    return "".join(o.get("text", "") for o in cell.outputs if o.get("output_type") == "stream")


@pytest.mark.real_model
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path: Path, tmp_path: Path, record_property):
    nb = nbformat.read(path, as_version=4)
    check = nbformat.v4.new_code_cell(f"import json, sys\nprint({PREFIX_MARK!r} + json.dumps(sys.prefix))")
    nb.cells.append(check)
    client = NotebookClient(nb, kernel_name=KERNEL, timeout=CELL_TIMEOUT_S,
                            resources={"metadata": {"path": str(tmp_path)}})
    start = time.perf_counter()
    client.execute()  # raises CellExecutionError on the first failing cell
    seconds = time.perf_counter() - start
    record_property("seconds", round(seconds, 1))
    print(f"{path.name}: {seconds:.1f} s")

    text = _stream_text(nb.cells[-1])
    assert PREFIX_MARK in text, f"the kernel check printed nothing: {text!r}"
    kernel_prefix = json.loads(text.split(PREFIX_MARK, 1)[1].strip())
    assert Path(kernel_prefix).resolve() == Path(sys.prefix).resolve(), (
        f"the notebook ran in {kernel_prefix}, not in this environment ({sys.prefix}); "
        "install ipykernel here so the python3 kernel is this interpreter")
