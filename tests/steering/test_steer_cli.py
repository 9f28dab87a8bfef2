"""``interp steer``: each subcommand, run as a real subprocess on the tiny model, writes a readable run folder."""

from __future__ import annotations

import json

import pytest
import torch

from interp.results import load_run
from interp.steering.puzzles import load_puzzles
from interp.steering.vectors import VectorSet

TINY = ["--model", "tiny-llama"]


def _ok(proc):
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    return proc


def test_east_writes_the_sweep_tensors(tmp_path, interp_cli):
    out = tmp_path / "east"
    _ok(interp_cli("steer", "east", *TINY, "--episodes", "2", "--steps", "2", "--k", "2", "--betas", "0,4",
                   "--temperatures", "1,2", "--out", out))
    run = load_run(out)
    assert torch.equal(run.scores["east/beta"], torch.tensor([0.0, 4.0]))
    assert torch.equal(run.scores["east/temperature"], torch.tensor([1.0, 2.0]))
    assert run.scores["east/entropy"].shape == (2,) and run.scores["east/temperature_entropy_per_step"].shape == (2, 2)
    assert torch.allclose(run.scores["east/entropy_per_episode"].mean(1), run.scores["east/entropy"])
    assert torch.equal(run.scores["east/entropy"][0], run.scores["east/temperature_entropy"][0])  # beta 0 = T 1, same seed
    assert run.manifest["status"] == "complete" and "Action entropy against beta" in (out / "report.html").read_text()
    vectors = VectorSet.load(out / "vectors")
    assert vectors.method == "EAST" and torch.equal(vectors.vectors[0], run.scores["east/vector"])
    again = tmp_path / "again"  # a saved vector is reused as is
    _ok(interp_cli("steer", "east", *TINY, "--episodes", "1", "--steps", "1", "--k", "1", "--betas", "2",
                   "--temperatures", "1", "--vector-file", out / "vectors", "--out", again))
    assert torch.equal(load_run(again).scores["east/vector"], run.scores["east/vector"])


def test_generate_side_by_side(tmp_path, interp_cli):
    vectors = VectorSet("tiny-llama", "resid_post", [0, 1], torch.randn(2, 64, generator=torch.Generator().manual_seed(0)) * 20,
                        "R-C", -1)
    vectors.save(tmp_path / "v")
    proc = _ok(interp_cli("steer", "generate", *TINY, "-p", "The capital of France is", "-p", "Hi", "--vectors", tmp_path / "v",
                          "--layers", "1", "--max-new-tokens", "4", "--out", tmp_path / "gen", "--json"))
    rows = json.loads(proc.stdout)["generations"]
    assert [r["prompt"] for r in rows] == ["The capital of France is", "Hi"]
    assert all(r["steered"] != r["unsteered"] for r in rows)
    assert load_run(tmp_path / "gen").manifest["parameters"]["sites"] == ["resid_post.1"]


@pytest.mark.parametrize("args, expected", [
    (["east", *TINY, "--betas", "1,x"], ["--betas", "1,x"]),
    (["east", *TINY, "--agent", "react"], ["unknown agent 'react'"]),
    (["east", *TINY, "--temperatures", "0"], ["--temperatures must be positive"]),
    (["generate", *TINY, "-p", "Hi", "--where", "middle"], ["--where", "middle"]),
])
def test_bad_input_is_one_line(args, expected, interp_cli):
    proc = interp_cli("steer", *args)
    message = proc.stderr.strip()
    assert proc.returncode == 2 and "Traceback" not in message and message.count("\n") == 0, proc.stderr
    for part in expected:
        assert part in message, message


def test_usage_errors_have_no_traceback(interp_cli):
    for args in (["steer", "nothing"], ["steer", "build", "extra"]):
        proc = interp_cli(*args)
        message = proc.stderr.strip()
        assert proc.returncode == 2 and message.count("\n") == 0 and "--help" in message, proc.stderr


def test_build_then_eval_on_held_out_rows(tmp_path, tiny_llama, interp_cli):
    _ok(interp_cli("steer", "build", *TINY, "--task", "ioi", "--n", "6", "--no-only-correct", "--layers", "0,1",
                   "--out", tmp_path / "b"))
    built = load_run(tmp_path / "b")
    vectors = VectorSet.load(tmp_path / "b" / "vectors")
    assert vectors.layers == [0, 1] and vectors.meta["n_generated"] == 6
    assert torch.allclose(built.scores["vectors/norm"], vectors.vectors.norm(dim=-1))
    assert torch.allclose(built.scores["vectors/cosine"].diagonal(), torch.ones(2))
    _ok(interp_cli("steer", "eval", *TINY, "--vectors", tmp_path / "b" / "vectors", "--layers", "1", "--task", "ioi",
                   "--n", "4", "--coefficients", "-1,0,2", "--out", tmp_path / "e"))
    run = load_run(tmp_path / "e")
    for name in ("sweep/coefficient", "sweep/kl", "sweep/entropy", "sweep/accuracy"):
        assert run.scores[name].shape == (3,), name
    assert float(run.scores["sweep/kl"][1]) == 0.0 and float(run.scores["sweep/kl"][2]) > 0
    assert run.manifest["prompt_set"]["n_prompts"] == 4
    ten = load_puzzles("ioi", tiny_llama.tokenizer, 10, 0)  # eval continues past the 6 rows the vectors saw
    assert run.manifest["prompt_set"]["example"] == ten.positives[6]


def test_attack_reports_before_after_random_and_the_detector(tmp_path, interp_cli):
    out = tmp_path / "attack"
    _ok(interp_cli("steer", "attack", *TINY, "--n", "8", "--pair-tokens", "3", "--search", "0,1", "--layer", "1",
                   "--reference-doubling", "--out", out))
    run = load_run(out)
    attack = run.manifest["attack"]
    assert attack["layer"] == 1 and attack["coeff"] == -1.6 and attack["n_test"] == 4
    assert torch.equal(run.scores["attack/rate"], torch.tensor([attack["before"], attack["after"], attack["random"]]))
    assert run.scores["attack/layer_score"].shape == (2,) and run.tensor_info("attack/layer_score")["labels"]["layer"] == ["0", "1"]
    assert set(run.manifest["detector"]["tpr"]) == {"projection", "norm", "combined"}
    vectors = VectorSet.load(out / "vectors")
    assert vectors.layers == [0, 1] and vectors.position == -2
