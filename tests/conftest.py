"""Session-wide fixtures: each model is loaded once per test session and shared by every test file.

The models are in eval mode with ``requires_grad=False`` parameters (see `interp.models`); tests must
not change their weights. A `Model` builds its backends lazily and caches them, so one fixture serves
the lens, nnsight and torch backends alike (``model.run(..., backend="nnsight")``).
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

import interp


@pytest.fixture(scope="session")
def tiny_llama() -> interp.Model:
    """Tiny random Llama (2 layers, d_model 64, 4 query / 2 kv heads), SmolLM2 tokenizer."""
    return interp.load("tiny-llama")


@pytest.fixture(scope="session")
def tiny_gemma3() -> interp.Model:
    """Tiny random Gemma 3 (2 layers: sliding window 4, then full attention), Gemma 3 tokenizer."""
    return interp.load("tiny-gemma3")


@pytest.fixture(scope="session")
def smollm2() -> interp.Model:
    """The real default model, SmolLM2-135M (30 layers); tests using it are marked ``real_model``."""
    return interp.load("smollm2-135m")


@pytest.fixture(scope="session")
def smollm2_tokenizer(smollm2):
    """SmolLM2's tokenizer (adds no BOS)."""
    return smollm2.tokenizer


@pytest.fixture(scope="session")
def interp_cli():
    """Run the installed ``interp`` script as a subprocess: ``interp_cli("steer", "east", ...)`` -> CompletedProcess.

    A wide plain terminal (no wrapping or colour codes) and one BLAS thread per process.
    """
    env = {**os.environ, "COLUMNS": "250", "NO_COLOR": "1", "TERM": "dumb", "OMP_NUM_THREADS": "1"}
    script = Path(sys.executable).parent / "interp"

    def run(*args, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run([str(script), *map(str, args)], capture_output=True, text=True, env=env, timeout=timeout)

    return run


@pytest.fixture
def toy_spliced(tiny_llama):
    """``(tiny_llama, tokens, ctx)``: 3 IOI prompts, with a toy dictionary attached at each of
    `toy_dictionary.TOY_SITES` (detached again after the test)."""
    from ioi_runs import ioi_runs
    from toy_dictionary import TOY_SITES, toy

    tokens, _, _, ctx = ioi_runs(tiny_llama, 3, 1)
    for i, site in enumerate(TOY_SITES):
        tiny_llama.attach(toy(tiny_llama.d_model, tiny_llama.d_model, site, d_sae=48, seed=i))
    yield tiny_llama, tokens, ctx
    tiny_llama.dictionaries.clear()
