"""``interp heads``, ``neurons``, ``voids`` and ``circuit`` as a careless user meets them: bad input is one line,
--out is checked before the model loads, an interrupted run keeps its finished units and resumes to the same
numbers, undefined numbers are null and non-finite ones an error.

Most commands run in this process through the same ``main()`` the script runs (no Python start-up per command);
one test interrupts a real ``interp heads retrieval`` process with SIGINT.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import safetensors.torch
import torch

import interp
from interp.circuits.graph import Circuit, faithfulness
from interp.circuits.haystack import niah_prompts
from interp.circuits.retrieval import decode, detect_retrieval_heads, masking_curve
from interp.circuits.units import run_units
from interp.errors import InterpError
from interp.results import load_run

TINY = ["--model", "tiny-llama"]


@pytest.fixture(scope="module")
def cli():
    """``cli(*args)`` -> (exit code, stdout, stderr) of ``interp ARGS`` run in this process by ``interp.cli.main``."""
    import interp.cli

    if not getattr(interp.cli, "_plugins_registered_for_tests", False):
        interp.cli._register_plugins()
        interp.cli._plugins_registered_for_tests = True

    def run(*args) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        code = 0
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(sys, "argv", ["interp", *map(str, args)])
            mp.setattr(interp.cli, "_register_plugins", lambda: None)
            mp.setenv("COLUMNS", "250")
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                try:
                    interp.cli.main()
                except SystemExit as exc:
                    code = exc.code if isinstance(exc.code, int) else 1
        return code, out.getvalue(), err.getvalue()

    return run


def _one_line_error(code: int, err: str, *parts: str) -> str:
    message = err.strip()
    assert code == 2, f"exit {code}: {err}"
    assert "Traceback" not in err and message.count("\n") == 0 and message.startswith("error: "), err
    for part in parts:
        assert part in message, f"{part!r} not in {message!r}"
    return message


@pytest.fixture(scope="module")
def runs(tmp_path_factory, cli):
    """A patching run, a circuit built from it, one with a node tiny-llama does not have, and an empty circuit."""
    root = tmp_path_factory.mktemp("hardening")
    code, _, err = cli("patch", *TINY, "--n-prompts", "2", "--components", "head_out", "--out", root / "patch")
    assert code == 0, err
    code, _, err = cli("circuit", "build", "--run", root / "patch", "--top-k", "3", "--out", root / "a")
    assert code == 0, err
    Circuit({"head.0.1": 1.0, "head.99.0": 0.5}).save(root / "bad_layer")
    Circuit({"head.1.0@99": 1.0}).save(root / "bad_pos")
    Circuit({}).save(root / "empty")
    return root


# ------------------------------------------------------------------------------------ out-of-range nodes

@pytest.mark.parametrize("node, expected", [("head.99.0", "layers 0..1"), ("head.0.4", "heads 0..3"),
                                            ("neuron.1.128", "neurons 0..127"), ("mlp.2", "layers 0..1"),
                                            ("head.0.0@99", "positions 0..")])
def test_faithfulness_refuses_nodes_the_model_does_not_have(tiny_llama, node, expected):
    from interp.tasks import load_prompt_set

    prompts = load_prompt_set("ioi", tiny_llama.tokenizer, n=2, seed=0)
    with pytest.raises(InterpError, match=expected) as info:
        faithfulness(tiny_llama, Circuit({"head.1.1": 1.0, node: 0.5}), prompts)
    assert node in str(info.value)


def test_cli_faithfulness_out_of_range_node_is_one_line_and_writes_nothing(runs, cli, tmp_path):
    for circuit, parts in (("bad_layer", ["head.99.0", "layers 0..1"]), ("bad_pos", ["head.1.0@99", "positions"])):
        code, out, err = cli("circuit", "faithfulness", runs / circuit, *TINY, "--n-prompts", "2", "--out", tmp_path / circuit)
        _one_line_error(code, err, *parts)
        assert not (tmp_path / circuit).exists()  # the run folder made for it is gone again


# ------------------------------------------------------------------------------------ bad input, one line

def _bad_cases(runs: Path, tmp: Path) -> dict[str, tuple[list, list[str]]]:
    (tmp / "a_file").write_text("x")
    return {
        "retrieval_length_beyond_context": (["heads", "retrieval", *TINY, "--lengths", "10000000", "--ks", "1"],
                                            ["10000030 tokens", "at most 8192", "--lengths"]),
        "retrieval_ks_too_many_heads": (["heads", "retrieval", *TINY, "--ks", "1,5"], ["--ks value 5", "8 heads", "[0, 4]"]),
        "retrieval_negative_ks": (["heads", "retrieval", *TINY, "--ks", "-1"], ["--ks", "-1"]),
        "retrieval_no_new_tokens": (["heads", "retrieval", *TINY, "--max-new-tokens", "0"], ["--max-new-tokens"]),
        "retrieval_too_short_for_a_needle": (["heads", "retrieval", *TINY, "--lengths", "30", "--ks", "1"], ["no room"]),
        "retrieval_resume_without_out": (["heads", "retrieval", *TINY, "--resume"], ["--resume needs --out"]),
        "voids_beyond_context": (["voids", *TINY, "--max-new-tokens", "1000000"], ["at most 8192", "--max-new-tokens"]),
        "voids_empty_prompt": (["voids", *TINY, "-p", "Hi", "-p", " "], ["prompt 2 is empty"]),
        "voids_alpha_nan": (["voids", *TINY, "--alpha", "nan"], ["--alpha"]),
        "neurons_k_beyond_units": (["neurons", "relation", *TINY, "--k", "1000"], ["k = 1000", "256 mlp_act units", "[1, 128]"]),
        "neurons_sweep_ks_beyond_units": (["neurons", "relation", *TINY, "--sweep", "plural_of", "--ks", "5,200"],
                                          ["k = 200"]),
        "neurons_n_identification": (["neurons", "relation", *TINY, "--n-identification", "0"], ["--n-identification"]),
        "neurons_one_relation": (["neurons", "relation", *TINY, "--relations", "capital_of"], ["two different relations"]),
        "build_min_abs_nan": (["circuit", "build", "--run", runs / "patch", "--min-abs", "nan"], ["--min-abs", "finite"]),
        "build_edges_without_heads": (["circuit", "build", "--run", runs / "patch", "--top-k", "0", "--min-abs", "1e9",
                                       "--edges", *TINY], ["--edges", "no"]),
        "faithfulness_unknown_metric": (["circuit", "faithfulness", runs / "a", "--metric", "accuracy", *TINY], ["accuracy"]),
        "faithfulness_no_prompts": (["circuit", "faithfulness", runs / "a", "--n-prompts", "0", *TINY], ["--n-prompts"]),
        "faithfulness_missing_circuit": (["circuit", "faithfulness", tmp / "nope", *TINY], ["nope"]),
        "out_empty": (["heads", "detect", *TINY, "--out", ""], ["--out is empty"]),
        "out_empty_overlap": (["circuit", "overlap", runs / "a", runs / "a", "--out", ""], ["--out is empty"]),
        "out_is_a_file": (["circuit", "overlap", runs / "a", runs / "a", "--out", tmp / "a_file"], ["a_file", "is a file"]),
        "out_is_an_input": (["circuit", "overlap", runs / "a", runs / "empty", "--out", runs / "a", "--force"],
                            ["--out", "input"]),
        "build_out_is_the_run": (["circuit", "build", "--run", runs / "patch", "--out", runs / "patch", "--force"],
                                 ["--out", "input"]),
        # the folder is checked before the model loads: the error is about --out, not about the missing model
        "finished_run_before_model_loads": (["heads", "detect", "--model", "some-org/not-here", "--out", runs / "a"],
                                            ["holds a finished run", "--force"]),
        "finished_run_retrieval": (["heads", "retrieval", "--model", "some-org/not-here", "--out", runs / "a"],
                                   ["holds a finished run"]),
        "finished_run_neurons": (["neurons", "relation", "--model", "some-org/not-here", "--out", runs / "a"],
                                 ["holds a finished run"]),
        "finished_run_voids": (["voids", "--model", "some-org/not-here", "--out", runs / "a"], ["holds a finished run"]),
        "finished_run_faithfulness": (["circuit", "faithfulness", runs / "empty", "--model", "some-org/not-here",
                                       "--out", runs / "a"], ["holds a finished run"]),
        "finished_run_build": (["circuit", "build", "--run", runs / "patch", "--out", runs / "a"], ["holds a finished run"]),
    }


def test_bad_input_is_one_line_with_exit_2(runs, cli, tmp_path):
    before = sorted(p.name for p in runs.iterdir())
    for name, (args, parts) in _bad_cases(runs, tmp_path).items():
        code, out, err = cli(*args)
        try:
            _one_line_error(code, err, *parts)
        except AssertionError as exc:
            raise AssertionError(f"{name}: {exc}") from None
        assert out.strip() == "", name
    assert sorted(p.name for p in runs.iterdir()) == before  # nothing overwritten or left behind
    assert Circuit.load(runs / "a").nodes and load_run(runs / "patch").manifest["status"] == "complete"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]  # no run folders left by refused commands


def test_force_overwrites_a_finished_run_and_overlap_writes_null_for_undefined_ratios(runs, cli, tmp_path):
    out = tmp_path / "o"
    assert cli("circuit", "overlap", runs / "a", runs / "a", "--out", out)[0] == 0
    (out / "stray.txt").write_text("old")
    code, _, err = cli("circuit", "overlap", runs / "empty", runs / "a", "--out", out)
    _one_line_error(code, err, "finished run", "--force")
    code, _, err = cli("circuit", "overlap", runs / "empty", runs / "a", "--out", out, "--force")
    assert code == 0, err
    assert not (out / "stray.txt").exists()  # nothing of the old run is left beside the new one
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["overlap"]["iou"] == 0.0 and manifest["overlap"]["over_a"] is None  # empty a: undefined -> null
    assert "undefined" in manifest["notes"][0]["text"]


# ------------------------------------------------------------------------------------ non-finite numbers

def test_non_finite_model_numbers_stop_with_an_error(tiny_llama):
    from interp.circuits.voids import void_usage
    from interp.tasks import load_prompt_set

    hf = copy.deepcopy(tiny_llama.hf)
    with torch.no_grad():
        hf.model.embed_tokens.weight[:] = float("nan")
    broken = interp.Model("broken", hf, tiny_llama.tokenizer)
    prompt = niah_prompts(tiny_llama.tokenizer, [100], [0], template="plain")[0]
    with pytest.raises(InterpError, match="not finite"):
        decode(broken, prompt, 3)
    with pytest.raises(InterpError, match="not finite"):
        void_usage(broken, ["Hello there"], 2)
    prompts = load_prompt_set("ioi", tiny_llama.tokenizer, n=2, seed=0)
    with pytest.raises(InterpError, match="not finite"):
        faithfulness(broken, Circuit({"head.0.0": 1.0}), prompts, backend="torch")


# ------------------------------------------------------------------------------------ interrupt and resume

class Stop(KeyboardInterrupt):
    pass


def _stop_after(phase: str, n: int):
    """A progress callback that interrupts (like Ctrl-C) once ``phase`` has ``n`` units done."""
    def progress(p: str, done: int, total: int) -> None:
        if p == phase and done >= n:
            raise Stop
    return progress


def test_retrieval_detection_and_masking_resume_to_the_same_numbers(tiny_llama, tmp_path):
    model = tiny_llama
    prompts = niah_prompts(model.tokenizer, [110, 130], [0, 100], template="plain")  # two batches of 6
    params = {"case": "retrieval"}
    full = detect_retrieval_heads(model, prompts, 4)
    with pytest.raises(Stop):
        detect_retrieval_heads(model, prompts, 4, progress=_stop_after("detect", 6),
                               units=run_units(model, tmp_path, "test", params))
    progress = json.loads((tmp_path / "progress.json").read_text())
    assert progress["done"] == 6 and len(progress["units"]) == 6
    seen = []
    units = run_units(model, tmp_path, "test", params, resume=True)
    resumed = detect_retrieval_heads(model, prompts, 4, progress=lambda p, d, t: seen.append(d), units=units)
    assert units.resumed == 6 and seen == [6, 12]  # the finished batch is not decoded again
    assert torch.equal(resumed.per_test, full.per_test) and resumed.responses == full.responses
    assert torch.equal(resumed.recall, full.recall) and torch.equal(resumed.head_score, full.head_score)

    curve = masking_curve(model, prompts, full, [0, 2], n_random=1, max_new_tokens=3)
    with pytest.raises(Stop):  # 3 settings (clean, top 2, random 2) x 12 prompts: stop after 2 batches
        masking_curve(model, prompts, full, [0, 2], 1, 3, progress=_stop_after("mask", 12), units=units)
    again = masking_curve(model, prompts, full, [0, 2], 1, 3, units=run_units(model, tmp_path, "test", params, resume=True))
    for name in ("recall_top", "recall_random"):
        assert torch.equal(getattr(again, name), getattr(curve, name)), name
    assert again.recall_clean == curve.recall_clean and again.random_heads == curve.random_heads
    with pytest.raises(InterpError, match="different case"):  # another run's checkpoint is refused
        run_units(model, tmp_path, "test", {"case": "other"}, resume=True)


def test_neurons_relation_resumes_to_the_same_numbers(tiny_llama, tmp_path):
    from interp.circuits.runs import neurons_run, neurons_units

    args = (["capital_of", "plural_of"], 5, "plural_of", [2, 5], 6, False, 0)
    full = neurons_run(tiny_llama, *args)
    with pytest.raises(Stop):
        neurons_run(tiny_llama, *args, progress=_stop_after("zeroing", 1),
                    units=neurons_units(tiny_llama, tmp_path, *args))
    units = neurons_units(tiny_llama, tmp_path, *args, resume=True)
    assert set(units.done) == {"expertise.mlp_act", "baseline", "zero.capital_of"}
    seen = []
    resumed = neurons_run(tiny_llama, *args, progress=lambda p, d, t: seen.append((p, d, t)), units=units)
    assert ("zeroing", 1, 2) in seen and ("zeroing", 0, 2) not in seen
    assert sorted(resumed.scores) == sorted(full.scores)
    for name, value in full.scores.items():
        assert torch.equal(resumed.scores[name], value), name


INTERP = Path(sys.executable).parent / "interp"
ENV = {**os.environ, "COLUMNS": "250", "NO_COLOR": "1", "TERM": "dumb", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
SLOW_RETRIEVAL = ["heads", "retrieval", *TINY, "--lengths", "110,120,130,140", "--depths", "0,50,100", "--ks", "1",
                  "--batch-size", "1"]  # 36 prompts decoded one at a time: seconds of work after the first checkpoint


def test_sigint_keeps_finished_prompts_and_resume_completes_with_identical_results(tmp_path, cli):
    out = tmp_path / "r"
    proc = subprocess.Popen([str(INTERP), *SLOW_RETRIEVAL, "--out", str(out)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=ENV,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # as in a terminal,
    # even when the suite itself runs in the background (where SIGINT is ignored and children inherit that)
    try:
        deadline = time.monotonic() + 240
        while not (out / "progress.json").exists():
            assert proc.poll() is None, f"the run ended (exit {proc.returncode}) before any checkpoint: {proc.stderr.read()}"
            assert time.monotonic() < deadline, "no checkpoint after 240 s"
            time.sleep(0.01)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "saved in" in stderr and "--resume" in stderr, stderr
    assert not (out / "manifest.json").exists()
    done = json.loads((out / "progress.json").read_text())["done"]
    assert 0 < done < 36

    code, _, err = cli(*SLOW_RETRIEVAL, "--out", out)  # an interrupted run is not silently restarted
    _one_line_error(code, err, "interrupted run", "--resume")
    code, _, err = cli(*SLOW_RETRIEVAL, "--max-new-tokens", "5", "--out", out, "--resume")
    _one_line_error(code, err, "different max_new_tokens")
    code, _, err = cli(*SLOW_RETRIEVAL, "--out", out, "--resume")
    assert code == 0, err
    assert "detect" in err and "36/36" in err  # the progress bar, its count including the kept prompts
    assert not (out / "progress.json").exists() and not (out / "partial.safetensors").exists()
    code, _, err = cli(*SLOW_RETRIEVAL[:-2], "--out", tmp_path / "ref")  # uninterrupted, batched
    assert code == 0, err
    got, want = (safetensors.torch.load_file(f / "scores.safetensors") for f in (out, tmp_path / "ref"))
    assert sorted(got) == sorted(want)
    for name in want:
        assert torch.equal(got[name], want[name]), name
    assert load_run(out).manifest["responses"] == load_run(tmp_path / "ref").manifest["responses"]
