"""``interp steer`` as a careless user meets it: bad input is one line (exit 2), sizes are checked up front,
``--out`` is checked before the model loads, and Ctrl-C keeps finished units that ``--resume`` completes exactly.

The CLI runs in-process (`interp.cli.main`, as the entry point runs it) so the tiny model loads once;
``tests/steering/test_steer_cli.py`` runs it as a real subprocess.
"""

from __future__ import annotations

import json
import os
import signal
import sys

import pytest
import safetensors.torch
import torch

from interp.errors import InterpError
from interp.outdir import PROGRESS
from interp.results import load_run
from interp.steering.vectors import VectorSet

TINY = ["--model", "tiny-llama", "--backend", "torch"]


@pytest.fixture
def steer(capsys, monkeypatch, tmp_path):
    """``steer("build", ...)`` -> (exit code, stdout, stderr) of ``interp steer build ...``, run in this process."""
    from interp import cli

    monkeypatch.chdir(tmp_path)  # a run without --out lands in tmp_path/runs, never in the repository
    monkeypatch.setenv("COLUMNS", "250")

    def run(*args) -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "argv", ["interp", "steer", *map(str, args)])
        capsys.readouterr()
        try:
            cli.main()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


def one_line_error(result, *parts: str) -> str:
    code, _, err = result
    message = err.strip()
    assert code == 2 and "Traceback" not in message and message.count("\n") == 0, err
    for part in parts:
        assert part in message, message
    return message


def tiny_vectors(tmp_path, values: torch.Tensor | None = None, name: str = "v") -> str:
    values = torch.randn(2, 64, generator=torch.Generator().manual_seed(0)) if values is None else values
    VectorSet("tiny-llama", "resid_post", [0, 1], values, "R-C", -1).save(tmp_path / name)
    return str(tmp_path / name)


# ------------------------------------------------------------------------------------ non-finite numbers


@pytest.mark.parametrize("args, parts", [
    (["eval", *TINY, "--vectors", "v", "--layers", "1", "--coefficients", "nan,inf"], ["--coefficients", "finite"]),
    (["attack", *TINY, "--multiplier", "nan"], ["--multiplier", "finite"]),
    (["generate", *TINY, "-p", "Hi", "--temperature", "nan"], ["--temperature", "finite"]),
    (["generate", *TINY, "-p", "Hi", "--coeff", "inf"], ["--coeff", "finite"]),
    (["east", *TINY, "--betas", "0,nan"], ["--betas", "finite"]),
    (["east", *TINY, "--temperatures", "1,inf"], ["--temperatures", "finite"]),
])
def test_non_finite_options_are_refused_before_the_model_loads(steer, args, parts):
    one_line_error(steer(*args), *parts)


def test_a_vector_file_holding_nan_or_lacking_keys_is_one_line(tmp_path, steer):
    values = torch.randn(2, 64)
    values[1, 3] = float("nan")
    nan_file = tiny_vectors(tmp_path, values, "nan")
    with pytest.raises(InterpError, match="layer 1 holds a non-finite number"):
        VectorSet.load(nan_file)
    good = tiny_vectors(tmp_path)
    info = json.loads((tmp_path / "v.json").read_text())
    for broken, expected in (({k: v for k, v in info.items() if k != "layers"}, "lacks layers"),
                             ({**info, "layers": "0,1"}, "layers must be a non-empty list"),
                             ({**info, "layers": [0]}, "do not match"),
                             ([1, 2], "must hold a JSON object")):
        (tmp_path / "v.json").write_text(json.dumps(broken))
        with pytest.raises(InterpError, match=expected):
            VectorSet.load(good)
    (tmp_path / "v.json").write_bytes(b"\xff\xfe not json")
    with pytest.raises(InterpError, match="not a readable vector set"):
        VectorSet.load(good)
    safetensors.torch.save_file({"other": torch.zeros(2, 64)}, str(tmp_path / "nan.safetensors"))
    with pytest.raises(InterpError, match="no tensor 'vectors'"):
        VectorSet.load(nan_file)
    values[1, 3] = float("inf")
    tiny_vectors(tmp_path, values, "inf")
    one_line_error(steer("generate", *TINY, "-p", "Hi", "--vectors", tmp_path / "inf", "--max-new-tokens", "1",
                         "--out", tmp_path / "g"), "layer 1 holds a non-finite number")
    assert not (tmp_path / "g").exists(), "the vector file is read before the run folder is made"


def test_an_overflowing_sweep_stops_naming_the_coefficient(tmp_path, steer):
    huge = tiny_vectors(tmp_path, torch.full((2, 64), 3e38), "huge")  # finite, but 10 x it is not
    message = one_line_error(steer("eval", *TINY, "--vectors", huge, "--layers", "0", "--n", "2",
                                   "--coefficients", "0,10", "--out", tmp_path / "e"), "coefficient 10", "not finite")
    assert "accuracy" not in message and not (tmp_path / "e" / "manifest.json").exists()


# ------------------------------------------------------------------------------ tracebacks -> one line


def test_bad_task_files_are_one_line(tmp_path, steer):
    files = {"binary.jsonl": b"\x00\x01\x02garbage\xff", "latin1.jsonl": '{"positive": "caf\xe9"}\n'.encode("latin-1"),
             "number.jsonl": b'{"positive": 1, "negative": "x"}\n', "list.jsonl": b"[1, 2]\n",
             "candidates.jsonl": b'{"prompt": "a", "candidates": " b", "answer": " b"}\n'}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    for name, parts in (("binary.jsonl", ["binary"]), ("latin1.jsonl", ["not UTF-8", "line 1"]),
                        ("number.jsonl", ["positive must be a non-empty string"]), ("list.jsonl", ["JSON list"])):
        one_line_error(steer("build", *TINY, "--task", tmp_path / name, "--out", tmp_path / f"o-{name}"), name, *parts)
    vectors = tiny_vectors(tmp_path)
    for name, parts in (("binary.jsonl", ["binary"]), ("candidates.jsonl", ["candidates must be a list"])):
        one_line_error(steer("eval", *TINY, "--vectors", vectors, "--layers", "1", "--task", tmp_path / name,
                             "--out", tmp_path / f"e-{name}"), name, *parts)


def test_generate_and_export_mistakes_are_one_line(tmp_path, steer):
    one_line_error(steer("generate", *TINY, "-p", "", "--out", tmp_path / "g"), "--prompt 1 is empty")
    one_line_error(steer("generate", *TINY, "-p", "Hi", "--layers", "1", "--out", tmp_path / "g"), "--layers", "--vectors")
    one_line_error(steer("build", *TINY, "--layers", "1,1", "--out", tmp_path / "b"), "--layers repeats layer 1")
    one_line_error(steer("build", *TINY, "--export-gguf", tmp_path, "--out", tmp_path / "b"), "is a folder")
    (tmp_path / "file").write_text("x")
    one_line_error(steer("build", *TINY, "--export-gguf", tmp_path / "file" / "v.gguf", "--out", tmp_path / "b"),
                   "cannot write --export-gguf")
    one_line_error(steer("build", *TINY, "--layers", "0", "--export-gguf", tmp_path / "v.gguf", "--out", tmp_path / "b"),
                   "block 0")
    assert not (tmp_path / "b").exists() and not (tmp_path / "g").exists(), "checked before the run folder is made"


# ------------------------------------------------------------------------------------ unbounded requests


def test_oversized_requests_are_refused_up_front(tmp_path, steer):
    one_line_error(steer("build", *TINY, "--n", "100000000", "--out", tmp_path / "b"), "--n 100000000", "lower --n")
    one_line_error(steer("eval", *TINY, "--vectors", tiny_vectors(tmp_path), "--layers", "1", "--n", "100000000",
                         "--out", tmp_path / "e"), "lower --n")
    one_line_error(steer("east", *TINY, "--steps", "100000", "--out", tmp_path / "s"), "tokens", "lower --steps")
    one_line_error(steer("east", *TINY, "--k", "100000000", "--out", tmp_path / "k"), "--k 100000000", "lower --episodes")
    one_line_error(steer("generate", *TINY, "-p", "Hi", "--max-new-tokens", "10000000", "--out", tmp_path / "g"),
                   "longer than the", "fewer new tokens")
    one_line_error(steer("attack", *TINY, "--pair-tokens", "100000", "--out", tmp_path / "a"), "--pair-tokens")


# ------------------------------------------------------------------------------------------ --out, --force


def test_out_is_checked_first_and_force_clears_the_old_run(tmp_path, steer):
    (tmp_path / "file").write_text("x")
    one_line_error(steer("generate", *TINY, "-p", "Hi", "--out", tmp_path / "file"), "is a file")
    one_line_error(steer("east", *TINY, "--resume"), "--resume needs --out")
    out = tmp_path / "run"
    code, _, err = steer("build", *TINY, "--n", "4", "--no-only-correct", "--layers", "1", "--out", out)
    assert code == 0, err
    assert (out / "vectors.safetensors").is_file()
    one_line_error(steer("generate", *TINY, "-p", "Hi", "--max-new-tokens", "1", "--out", out), "finished run", "--force")
    one_line_error(steer("generate", *TINY, "-p", "Hi", "--vectors", out / "vectors", "--max-new-tokens", "1",
                         "--out", out, "--force"), "--vectors", "inside --out")
    code, _, err = steer("generate", *TINY, "-p", "Hi", "--max-new-tokens", "1", "--out", out, "--force")
    assert code == 0, err
    assert load_run(out).manifest["method"] == "generate"
    assert not list(out.glob("vectors*")), "the old run's vectors must not stay beside the new run"


# -------------------------------------------------------------------------------- Ctrl-C, SIGTERM, --resume


def _interrupt_on_call(monkeypatch, targets: list[tuple[object, str]], at: int, signal_self: bool = False) -> dict:
    """Wrap the functions ``targets`` (module, name) so the ``at``-th call (1-based, counted together) is interrupted."""
    calls = {"n": 0}
    for module, name in targets:
        original = getattr(module, name)

        def wrapper(*args, _original=original, **kwargs):
            calls["n"] += 1
            if calls["n"] == at:
                if signal_self:  # SIGTERM, as `kill` sends it: handled like Ctrl-C
                    os.kill(os.getpid(), signal.SIGTERM)
                raise KeyboardInterrupt
            return _original(*args, **kwargs)

        monkeypatch.setattr(module, name, wrapper)
    return calls


def _same_scores(a, b) -> None:
    assert sorted(a.scores) == sorted(b.scores)
    for name, tensor in a.scores.items():
        assert torch.equal(tensor, b.scores[name]), name


def test_east_interrupted_in_the_vector_phase_or_the_sweep_resumes_exactly(tmp_path, steer, monkeypatch):
    from interp.steering import east_agent, east_run

    args = [*TINY, "--agent", "token", "--episodes", "1", "--steps", "2", "--betas", "0,4", "--temperatures", "1,2"]
    code, _, err = steer("east", *args, "--out", tmp_path / "whole")
    assert code == 0, err
    whole = load_run(tmp_path / "whole")

    out = tmp_path / "cut"
    with monkeypatch.context() as patch:  # the vector phase: nothing is kept, and it says so
        _interrupt_on_call(patch, [(east_run, "play"), (east_agent, "play")], at=1)
        code, _, err = steer("east", *args, "--out", out)
    assert code == 130 and "nothing was kept" in err and not (out / PROGRESS).exists(), err
    with monkeypatch.context() as patch:  # the second setting, by SIGTERM: the vector and beta 0 are kept
        _interrupt_on_call(patch, [(east_run, "play"), (east_agent, "play")], at=3, signal_self=True)
        code, _, err = steer("east", *args, "--out", out)
    assert code == 130 and "2 of 4" in err and "--resume" in err, err
    assert not (out / "manifest.json").exists(), "an interrupted run must not look finished"
    one_line_error(steer("east", *args, "--out", out), "interrupted run", "--resume")
    one_line_error(steer("east", *args[:-1], "1,3", "--out", out, "--resume"), "different temperatures")
    calls = _interrupt_on_call(monkeypatch, [(east_run, "play"), (east_agent, "play")], at=0)
    code, _, err = steer("east", *args, "--out", out, "--resume")
    assert code == 0, err
    assert calls["n"] == 2, "the resumed sweep plays only the settings that had not finished (beta 4, temperature 2)"
    resumed = load_run(out)
    _same_scores(whole, resumed)
    assert not (out / PROGRESS).exists()


def test_attack_interrupted_resumes_exactly_and_shows_its_progress(tmp_path, steer, monkeypatch):
    from interp.steering import attack, attack_run

    pool = attack_run.detector_pool()[:8]  # a short calibration pool keeps the detector phase quick on the CPU
    monkeypatch.setattr(attack_run, "detector_pool", lambda: list(pool))
    args = [*TINY, "--n", "4", "--pair-tokens", "2", "--search", "0,1", "--layer", "1"]
    code, _, err = steer("attack", *args, "--out", tmp_path / "whole")
    assert code == 0, err
    assert "6/6" in err and "replies" in err and "positives" in err, err  # a bar per stage: phases, replies, reads
    whole = load_run(tmp_path / "whole")
    out = tmp_path / "cut"
    with monkeypatch.context() as patch:  # interrupted while measuring after the attack
        _interrupt_on_call(patch, [(attack, "_rate")], at=2)
        code, _, err = steer("attack", *args, "--out", out)
    assert code == 130 and "3 of 6 phases" in err, err
    calls = _interrupt_on_call(monkeypatch, [(attack, "_rate")], at=0)
    code, _, err = steer("attack", *args, "--out", out, "--resume")
    assert code == 0, err
    assert calls["n"] == 2, "before was kept; after and random are measured on resume"
    resumed = load_run(out)
    _same_scores(whole, resumed)
    assert resumed.manifest["attack"] == whole.manifest["attack"]
    assert torch.equal(VectorSet.load(out / "vectors").vectors, VectorSet.load(tmp_path / "whole" / "vectors").vectors)
    assert not (out / PROGRESS).exists()


def test_eval_resumes_exactly_and_build_says_nothing_was_kept(tmp_path, steer, monkeypatch):
    from interp.steering import sweep, vectors

    vector_file = tiny_vectors(tmp_path)
    args = [*TINY, "--vectors", vector_file, "--layers", "1", "--task", "deduction", "--n", "4", "--coefficients", "0,2"]
    code, _, err = steer("eval", *args, "--out", tmp_path / "whole")
    assert code == 0, err
    whole = load_run(tmp_path / "whole")
    out = tmp_path / "cut"
    with monkeypatch.context() as patch:  # in the second group of equal-length prompts (1 unsteered + 1 steered run each)
        _interrupt_on_call(patch, [(sweep, "last_logits")], at=3)
        code, _, err = steer("eval", *args, "--out", out)
    assert code == 130 and "2 of 4 held-out prompts are saved" in err and "--resume" in err, err
    code, _, err = steer("eval", *args, "--out", out, "--resume")
    assert code == 0, err
    _same_scores(whole, load_run(out))

    with monkeypatch.context() as patch:
        _interrupt_on_call(patch, [(vectors, "read_activations")], at=1)
        code, _, err = steer("build", *TINY, "--n", "4", "--no-only-correct", "--layers", "1", "--out", tmp_path / "b")
    assert code == 130 and "nothing was kept" in err, err


def test_task_file_default_is_every_line_and_n_caps_it(tmp_path, steer):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"positive": f"I love it {i}", "negative": f"I hate it {i}"}) + "\n"
                             for i in range(70)))  # more than the generated sets' default of 64
    assert steer("build", *TINY, "--task", pairs, "--layers", "1", "--out", tmp_path / "all")[0] == 0
    assert load_run(tmp_path / "all").manifest["vectors"]["n_pairs"] == 70
    assert steer("build", *TINY, "--task", pairs, "--layers", "1", "--n", "5", "--out", tmp_path / "five")[0] == 0
    assert load_run(tmp_path / "five").manifest["vectors"]["n_pairs"] == 5
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"prompt": f"Pick {i}:", "candidates": [" A", " B"], "answer": " A"}) + "\n"
                            for i in range(3)))
    assert steer("eval", *TINY, "--vectors", tmp_path / "all" / "vectors", "--layers", "1", "--task", rows,
                 "--coefficients", "0,1", "--out", tmp_path / "e")[0] == 0
    assert load_run(tmp_path / "e").manifest["prompt_set"]["n_prompts"] == 3
    assert steer("eval", *TINY, "--vectors", tmp_path / "all" / "vectors", "--layers", "1", "--task", rows, "--n", "2",
                 "--coefficients", "0,1", "--out", tmp_path / "e2")[0] == 0
    assert load_run(tmp_path / "e2").manifest["prompt_set"]["n_prompts"] == 2
