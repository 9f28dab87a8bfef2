"""Activation patching and IG sharded over Ray: a local cluster with two CPU workers gives the local run's numbers
exactly (``torch.equal``) for any number of workers; an interrupted Ray run resumes with or without Ray; a worker
killed mid-run has its shard retried on another worker; and ``interp patch --ray HOST:PORT`` joins a cluster started
separately with ``ray start --head``."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import interp
from interp import InterpError
from interp.patching.run import activation_patching
from interp.ray_workers import ModelSpec, RayWorkers, split_even
from interp.results import load_run
from interp.tasks import load_prompt_set

COMPONENTS = ["resid_pre", "head_out_pos", "mlp_act"]
OPTIONS = dict(methods=["activation", "ig"], mlp_layers=[1], ig_steps=3)


@pytest.fixture(scope="module")
def model():
    return interp.load("tiny-llama", backend="torch")


@pytest.fixture(scope="module")
def prompts(model):
    return load_prompt_set("ioi", model.tokenizer, n=3, seed=0)


@pytest.fixture(scope="module")
def local(model, prompts):
    return activation_patching(model, prompts, COMPONENTS, **OPTIONS)


@pytest.fixture(scope="module")
def pool(model):
    with RayWorkers(ModelSpec.of(model), workers=2) as workers:
        yield workers


def assert_equal_runs(a, b):
    assert set(a.scores) == set(b.scores) and len(a.scores) == 12
    for name in a.scores:
        assert torch.equal(a.scores[name], b.scores[name]), name


def test_two_workers_give_the_local_numbers(model, prompts, local, pool):
    result = activation_patching(model, prompts, COMPONENTS, **OPTIONS, workers=pool)
    assert_equal_runs(local, result)
    assert result.manifest["ray"] == {"workers": 2, "address": "local", "shards_retried": 0}
    assert len(set(pool.pids())) == 2 and os.getpid() not in pool.pids()  # the work ran in two other processes


def test_the_grid_does_not_depend_on_the_sharding(model, prompts, local, pool, monkeypatch):
    import interp.ray_workers as ray_workers

    monkeypatch.setattr(ray_workers, "SHARDS_PER_WORKER", 40)  # many small shards: cells split mid-layer
    assert_equal_runs(local, activation_patching(model, prompts, COMPONENTS, **OPTIONS, workers=pool))


def test_an_interrupted_ray_run_resumes_with_or_without_ray(model, prompts, local, pool, tmp_path):
    for resume_with in (None, pool):
        out = tmp_path / ("ray" if resume_with else "local")
        calls = 0

        def stop_after_two_shards(comp, done, total):
            nonlocal calls
            calls += 1
            if comp == "resid_pre" and done and calls > 2:
                raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            activation_patching(model, prompts, COMPONENTS, **OPTIONS, workers=pool, out=out,
                                progress=stop_after_two_shards)
        assert (out / "progress.json").is_file() and not (out / "manifest.json").exists()
        resumed = activation_patching(model, prompts, COMPONENTS, **OPTIONS, workers=resume_with, out=out, resume=True)
        assert_equal_runs(local, resumed)
        assert_equal_runs(local, load_run(out))
        assert not (out / "progress.json").exists()


def test_a_killed_worker_has_its_shard_retried(model, prompts, local, pool):
    killed = []

    def kill_one_worker(comp, done, total):
        if comp == "resid_pre" and done and not killed:
            killed.append(pool.pids()[0])
            os.kill(killed[0], signal.SIGKILL)
            time.sleep(0.5)  # the other worker takes shards meanwhile; the dead one's shard is in flight or next

    result = activation_patching(model, prompts, COMPONENTS, **OPTIONS, workers=pool, progress=kill_one_worker)
    assert killed and pool.retried >= 1 and result.manifest["ray"]["shards_retried"] >= 1
    assert_equal_runs(local, result)
    assert len(pool.pids()) == 2 and killed[0] not in pool.pids()  # a replacement took the dead worker's place


def test_an_error_in_a_shard_is_the_local_error(model, prompts, pool):
    from interp.patching.ray_patching import ray_sweep, shared_state

    shared = shared_state(torch.zeros(1, 3, dtype=torch.long), {}, "logit_diff", None, {"resid_pre": [0, 1]},
                          "batched", None)
    with pytest.raises(KeyError):  # the source activations are missing: the worker's KeyError reaches the driver
        ray_sweep(pool, model, "resid_pre", shared, 3, [0, 1], torch.zeros(2, 3, dtype=torch.bool),
                  torch.zeros(1, 2, 3), lambda k: None)


def test_split_even():
    assert split_even(range(7), 3) == [[0, 1, 2], [3, 4], [5, 6]]
    assert split_even(range(2), 8) == [[0], [1]] and split_even([], 4) == []


def test_bad_requests_are_one_line_errors(model, interp_cli, tmp_path):
    with pytest.raises(InterpError, match="--workers must be at least 1"):
        RayWorkers(ModelSpec.of(model), workers=0)
    result = interp_cli("patch", "--model", "tiny-llama", "--workers", "2", "--out", tmp_path / "a")
    assert result.returncode == 2 and "add --ray" in result.stderr and "Traceback" not in result.stderr
    result = interp_cli("patch", "--model", "tiny-llama", "--ray", "127.0.0.1:1", "--out", tmp_path / "b")
    assert result.returncode == 2 and "no Ray cluster answers at 127.0.0.1:1" in result.stderr
    assert not (tmp_path / "b").exists()
    result = interp_cli("patch", "--model", "tiny-llama", "--ray", "nonsense", "--out", tmp_path / "c")
    assert result.returncode == 2 and "HOST:PORT" in result.stderr


def test_without_ray_installed_the_error_says_what_to_install(monkeypatch):
    from interp.cli_support import check_ray

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
    with pytest.raises(InterpError, match=r"pip install 'interp\[ray\]'"):
        check_ray("local", None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_cli_joins_a_cluster_started_separately(model, prompts, tmp_path):
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "COLUMNS": "250", "NO_COLOR": "1", "OMP_NUM_THREADS": "1",
           "RAY_AUTH_MODE": "token"}  # a cluster of `ray start --head` uses token auth; joining by address opts in

    def interp_cli(*args):
        return subprocess.run([str(bin_dir / "interp"), *map(str, args)], capture_output=True, text=True, env=env,
                              timeout=300)

    port = _free_port()
    head = subprocess.Popen([str(bin_dir / "ray"), "start", "--head", f"--port={port}", "--num-cpus=2",
                             "--include-dashboard=false", "--disable-usage-stats", "--block"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 60
        while True:  # wait for the head's GCS to listen
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.time() < deadline and head.poll() is None, "ray start --head did not come up"
                time.sleep(0.5)
        args = ["patch", "--model", "tiny-llama", "--backend", "torch", "--components", "resid_pre,head_out",
                "--n-prompts", "3"]
        joined = interp_cli(*args, "--ray", f"127.0.0.1:{port}", "--workers", "2", "--out", tmp_path / "joined")
        assert joined.returncode == 0, joined.stderr
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        head.wait(timeout=60)
    a = load_run(tmp_path / "joined")
    b = activation_patching(model, prompts, ["resid_pre", "head_out"])  # the same run, locally in this process
    assert a.manifest["ray"]["address"] == f"127.0.0.1:{port}" and a.manifest["ray"]["workers"] == 2
    assert all(torch.equal(a.scores[k], b.scores[k]) for k in b.scores) and len(b.scores) == 4


def test_ctrl_c_on_the_cli_keeps_finished_shards_and_resume_without_ray_completes(tmp_path):
    out = tmp_path / "run"
    args = ["patch", "--model", "tiny-llama", "--backend", "torch", "--n-prompts", "48", "--components",
            "resid_pre,head_out_pos,mlp_act", "--mlp-layers", "0,1", "--method", "activation,ig", "--out", out]
    env = {**os.environ, "COLUMNS": "250", "NO_COLOR": "1", "OMP_NUM_THREADS": "1"}
    interp_script = Path(sys.executable).parent / "interp"
    proc = subprocess.Popen([str(interp_script), *map(str, args), "--ray", "--workers", "2"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # as in a terminal
    deadline = time.time() + 120
    while not (out / "progress.json").is_file():  # the first finished IG passes are checkpointed
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read() if proc.poll() is not None else ""
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "finished work is saved" in stderr and "Traceback" not in stderr, stderr
    assert (out / "partial.safetensors").is_file() and not (out / "manifest.json").exists()
    resumed = subprocess.run([str(interp_script), *map(str, args), "--resume"], env=env, capture_output=True,
                             text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    model = interp.load("tiny-llama", backend="torch")
    local = activation_patching(model, load_prompt_set("ioi", model.tokenizer, n=48, seed=0),
                                ["resid_pre", "head_out_pos", "mlp_act"], methods=["activation", "ig"],
                                mlp_layers=[0, 1])
    assert_equal_runs(local, load_run(out))
