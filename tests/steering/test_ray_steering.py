"""``steer eval``'s coefficient sweep and ``steer east``'s settings sharded over Ray (`interp.steering.ray_steering`):
one module-scoped local cluster of two CPU workers gives the local run's numbers exactly (``torch.equal``) with one
or two workers; an interrupted Ray run resumes with or without Ray; a worker killed mid-run has its shard retried;
and the CLI's ``--ray/--workers`` reach the run."""

from __future__ import annotations

import copy
import os
import signal
import sys
import time
from contextlib import contextmanager

import pytest
import torch
from interp.steering.east_run import east_run
from interp.steering.limits import forward_row_bytes
from interp.steering.puzzles import load_puzzles
from interp.steering.runs import eval_run
from interp.steering.vectors import VectorSet

import interp
from interp.ray_workers import ModelSpec, RayWorkers
from interp.results import load_run

EVAL = {"layers": [1], "task": "deduction", "coefficients": [-1.0, 0.0, 2.0], "n": 10}
EAST = {"layer": 1, "betas": [0.0, 4.0, -3.0], "temperatures": [1.0, 2.0], "episodes": 2, "steps": 3, "k": 2}


@pytest.fixture(scope="module")
def model():
    return interp.load("tiny-llama", backend="torch")


@pytest.fixture(scope="module")
def vector_file(model, tmp_path_factory):
    path = tmp_path_factory.mktemp("vectors") / "v"
    values = 4 * torch.randn(2, model.d_model, generator=torch.Generator().manual_seed(0))
    VectorSet(model.name, "resid_post", [0, 1], values, "R-C", -1).save(path)
    return str(path)


@pytest.fixture(scope="module")
def budget(model):
    """A memory budget of at most two prompts per forward, so groups of equal length split into several batches."""
    prompts = load_puzzles("deduction", model.tokenizer, EVAL["n"], 0, "wrong_answer", 2).prompts
    return 2 * forward_row_bytes(model, min(len(model.tokenizer(p)["input_ids"]) for p in prompts)) + 1


@pytest.fixture(scope="module")
def local_eval(model, vector_file, budget):
    return eval_run(model, vector_file, **EVAL, max_memory=budget)


@pytest.fixture(scope="module")
def local_east(model):
    return {agent: east_run(model, agent=agent, **EAST) for agent in ("token", "thought")}


@pytest.fixture(scope="module")
def pool(model):
    with RayWorkers(ModelSpec.of(model), workers=2) as workers:
        yield workers


def one_worker(pool: RayWorkers) -> RayWorkers:
    """The pool with only its first worker taking shards."""
    single = copy.copy(pool)
    single.actors = pool.actors[:1]
    return single


def assert_equal_runs(a, b) -> None:
    assert sorted(a.scores) == sorted(b.scores) and a.scores
    for name in a.scores:
        assert torch.equal(a.scores[name], b.scores[name]), name


def not_here(*args, **kwargs):
    raise AssertionError("this shard should have run on a Ray worker, not in the driver")


def test_eval_on_one_or_two_workers_gives_the_local_numbers(model, vector_file, budget, local_eval, pool, monkeypatch):
    import interp.ray_workers as ray_workers
    from interp.steering.sweep import SweepPlan

    monkeypatch.setattr(SweepPlan, "group", not_here)  # in this process only: the workers import their own
    for workers in (pool, one_worker(pool)):
        result = eval_run(model, vector_file, **EVAL, max_memory=budget, workers=workers)
        assert_equal_runs(local_eval, result)
        assert result.manifest["ray"] == {"workers": len(workers.actors), "address": "local", "shards_retried": 0}
    assert local_eval.scores["sweep/kl/per_prompt"].shape == (3, 10) and local_eval.scores["sweep/kl"].abs().sum() > 0
    monkeypatch.setattr(ray_workers, "SHARDS_PER_WORKER", 40)  # one batch per shard
    assert_equal_runs(local_eval, eval_run(model, vector_file, **EVAL, max_memory=budget, workers=pool))


def test_an_interrupted_ray_eval_resumes_with_or_without_ray(model, vector_file, budget, local_eval, pool, tmp_path):
    for resume_with in (None, pool):
        out = tmp_path / ("ray" if resume_with else "local")
        seen = []

        def stop_after_a_shard(stage, done, total, seen=seen):
            seen.append(done)
            if done:
                raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            eval_run(model, vector_file, **EVAL, max_memory=budget, workers=pool, out=out, progress=stop_after_a_shard)
        assert (out / "progress.json").is_file() and not (out / "manifest.json").exists()
        assert 0 < seen[-1] < 30  # some held-out prompts were kept, not all
        resumed = eval_run(model, vector_file, **EVAL, max_memory=budget, workers=resume_with, out=out, resume=True)
        assert_equal_runs(local_eval, resumed)


def test_a_killed_worker_has_its_eval_shard_retried(model, vector_file, budget, local_eval, pool):
    killed = []

    def kill_one_worker(stage, done, total):
        if done and not killed:
            killed.append(pool.pids()[0])
            os.kill(killed[0], signal.SIGKILL)
            time.sleep(0.5)

    retried = pool.retried
    result = eval_run(model, vector_file, **EVAL, max_memory=budget, workers=pool, progress=kill_one_worker)
    assert killed and pool.retried > retried and result.manifest["ray"]["shards_retried"] > retried
    assert_equal_runs(local_eval, result)
    assert len(pool.pids()) == 2 and killed[0] not in pool.pids()


@pytest.mark.parametrize("agent", ["token", "thought"])
def test_east_settings_on_one_or_two_workers_give_the_local_rollouts(model, local_east, pool, agent, monkeypatch):
    from interp.steering import east_agent

    monkeypatch.setattr(east_agent, "play", not_here)  # the settings; the vector is collected here (east_run.play)
    for workers in (pool, one_worker(pool)):
        result = east_run(model, agent=agent, **EAST, workers=workers)
        assert_equal_runs(local_east[agent], result)
        assert result.manifest["ray"]["workers"] == len(workers.actors)
    assert local_east[agent].scores["east/entropy_per_step"].shape == (3, 3)


def test_an_interrupted_ray_east_resumes_with_or_without_ray(model, local_east, pool, tmp_path):
    for resume_with in (None, pool):
        out = tmp_path / ("ray" if resume_with else "local")
        ticks = []

        def stop_after_a_setting(ticks=ticks):
            ticks.append(1)
            if len(ticks) == 2:  # the vector, then the first setting to finish
                raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            east_run(model, agent="token", **EAST, out=out, progress=stop_after_a_setting, workers=pool)
        assert (out / "progress.json").is_file() and not (out / "manifest.json").exists()
        resumed = east_run(model, agent="token", **EAST, out=out, resume=True, workers=resume_with)
        assert_equal_runs(local_east["token"], resumed)
        assert_equal_runs(local_east["token"], load_run(out))


def test_the_cli_passes_ray_workers_to_eval_and_east(model, vector_file, pool, tmp_path, monkeypatch, capsys):
    from interp.steering import cli as steer_cli

    from interp import cli

    asked = []

    @contextmanager
    def the_pool(console, m, ray, workers):
        asked.append((ray, workers))
        yield pool

    monkeypatch.setattr(steer_cli, "ray_workers", the_pool)
    tiny = ["--model", "tiny-llama", "--backend", "torch"]
    commands = {"eval": ["--vectors", vector_file, "--layers", "1", "--task", "deduction", "--n", "3",
                         "--coefficients", "0,2", "--ray", "--workers", "2"],
                "east": ["--agent", "token", "--episodes", "1", "--steps", "2", "--betas", "0,4", "--temperatures", "2",
                         "--ray", "--workers", "2"]}

    def steer(*args) -> tuple[int, str]:
        monkeypatch.setattr(sys, "argv", ["interp", "steer", *args])
        try:
            cli.main()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        return code, capsys.readouterr().err

    for command, args in commands.items():
        code, err = steer(command, *tiny, *args, "--out", str(tmp_path / command))
        assert code == 0, err
        assert load_run(tmp_path / command).manifest["ray"]["workers"] == 2
    assert asked == [("local", 2), ("local", 2)]
    code, err = steer("east", *tiny, "--workers", "2")
    assert code == 2 and "add --ray" in err, err
