"""Retrieval heads, relation neurons and path-patching edges sharded over Ray (one 2-worker local pool): the numbers
equal the local run's (``torch.equal``); an interrupted Ray run resumes with or without Ray; a killed worker's shard
is retried; the CLI passes its --ray pool through and refuses --workers without --ray."""

from __future__ import annotations

import dataclasses
import os
import signal
import time
import zlib

import pytest
import torch
from typer.testing import CliRunner

import interp
from interp.circuits import retrieval
from interp.circuits.haystack import niah_prompts
from interp.circuits.path_patching import circuit_edges
from interp.circuits.relations import RELATIONS
from interp.circuits.retrieval import detect_retrieval_heads, masking_curve
from interp.circuits.runs import neurons_run, neurons_units, retrieval_units
from interp.ray_workers import ModelSpec, RayWorkers
from interp.results import load_run
from interp.tasks import load_prompt_set

RELS = ["capital_of", "plural_of", "opposite_of"]
NEURONS = dict(k=5, sweep="plural_of", ks=[2, 5], n_identification=4, keep_correct=True)
HEADS = [(layer, head) for layer in range(2) for head in range(4)]  # every head of tiny-llama


@pytest.fixture(scope="module")
def model():
    return interp.load("tiny-llama", backend="torch")


@pytest.fixture(scope="module")
def pool(model):
    with RayWorkers(ModelSpec.of(model), workers=2) as workers:
        yield workers


@pytest.fixture(scope="module")
def needles(model):
    return niah_prompts(model.tokenizer, [100, 130], [0, 100], template="plain")  # 3 needles x 2 lengths x 2 depths


def _text_score(response: str, reference: str) -> float:
    """A stand-in for ROUGE-1 recall that sees every character of the response: the random tiny model never recalls
    a needle, so the real recall would be 0 for every decode, masked or not."""
    return zlib.crc32(response.encode()) % 1000 / 1000


def _retrieval(model, needles, units=None, workers=None, progress=None):
    with pytest.MonkeyPatch.context() as patch:  # recall is computed in the driver, from the workers' texts
        patch.setattr(retrieval, "rouge1_recall", _text_score)
        found = detect_retrieval_heads(model, needles, 3, batch_size=4, units=units, workers=workers, progress=progress)
        curve = masking_curve(model, needles, found, [0, 2], 1, 3, batch_size=4, units=units, workers=workers,
                              progress=progress)
    return [found.head_score, found.per_test, found.recall, found.success, curve.recall_top, curve.recall_random,
            torch.tensor(curve.recall_clean)], found.responses


@pytest.fixture(scope="module")
def local_retrieval(model, needles):
    return _retrieval(model, needles)


def assert_same(a, b):
    assert len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))


def test_retrieval_on_two_workers_equals_the_local_run(model, needles, pool, local_retrieval):
    tensors, responses = _retrieval(model, needles, workers=pool)
    assert_same(local_retrieval[0], tensors) and responses == local_retrieval[1]
    top, rand, clean = local_retrieval[0][4:]
    assert top[0] == rand[0] == clean and top[1] != clean and rand[1] != clean  # masking changed the texts
    assert len(set(pool.pids())) == 2 and os.getpid() not in pool.pids()
    one_length = [p for p in needles if len(p.ids) == len(needles[0].ids)]  # one local decode batch of 6 prompts
    steps = {None: [], pool: []}
    found = {w: detect_retrieval_heads(model, one_length, 3, workers=w, progress=lambda *a, w=w: steps[w].append(a[1]))
             for w in steps}
    assert steps == {None: [0, 6], pool: [0, 3, 6]}  # on Ray the batch was split in two shards: the same numbers
    assert torch.equal(found[None].per_test, found[pool].per_test) and found[None].responses == found[pool].responses


def test_interrupted_ray_retrieval_resumes_with_or_without_ray(model, needles, pool, local_retrieval, tmp_path):
    for resume_with in (None, pool):
        out = tmp_path / ("ray" if resume_with else "local")
        calls = []

        def stop(phase, done, total):
            calls.append(phase)
            if phase == "mask" and done:  # detection and one masking shard finished
                raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            _retrieval(model, needles, retrieval_units(model, out, [100, 130], [0, 100], [0, 2], 1, 3, 0), pool, stop)
        units = retrieval_units(model, out, [100, 130], [0, 100], [0, 2], 1, 3, 0, resume=True)
        assert 12 < units.resumed < 12 + 12 * 3  # every prompt detected, some masking settings done, not all
        tensors, responses = _retrieval(model, needles, units, resume_with)
        assert_same(local_retrieval[0], tensors) and responses == local_retrieval[1]


@pytest.fixture(scope="module")
def relations(model):
    """The built-in relations with every other fact's answer set to the tiny model's own greedy token, so that the
    filter keeps some test prompts and zeroing neurons changes accuracy (the random model knows no real fact)."""
    def own(relation):
        facts = []
        for i, (subject, answers) in enumerate(relation.facts):
            if i % 2 == 0:
                token = int(model.run(relation.prompt(subject)).logits[0, -1].argmax())
                answers = (model.tokenizer.decode([token]).strip(),)
            facts.append((subject, answers))
        return dataclasses.replace(relation, facts=tuple(facts))

    return [own(RELATIONS[name]) for name in RELS]


def _neuron_scores(run):
    return [run.scores[k] for k in sorted(run.scores)]


def test_neurons_on_two_workers_resume_and_equal_the_local_run(model, pool, relations, tmp_path):
    local = neurons_run(model, relations, **NEURONS)
    assert local.scores["neurons/acc_change"].abs().sum() > 0 and local.scores["neurons/random_change"].abs().sum() > 0
    assert_same(_neuron_scores(local), _neuron_scores(neurons_run(model, relations, **NEURONS, workers=pool)))
    for resume_with in (None, pool):
        out = tmp_path / ("ray" if resume_with else "local")

        def stop(phase, done, total):
            if phase == "zeroing" and done == 1:
                raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            neurons_run(model, relations, **NEURONS, workers=pool, progress=stop,
                        units=neurons_units(model, out, RELS, 5, "plural_of", [2, 5], 4, True, 0))
        units = neurons_units(model, out, RELS, 5, "plural_of", [2, 5], 4, True, 0, resume=True)
        assert {"filter", "expertise.mlp_act"} <= set(units.done) and 1 <= sum(f"zero.{r}" in units for r in RELS) < 3
        resumed = neurons_run(model, relations, **NEURONS, workers=resume_with, units=units)
        assert_same(_neuron_scores(local), _neuron_scores(resumed))
        assert resumed.manifest.get("ray", {}).get("workers") == (2 if resume_with else None)


def test_edges_on_two_workers_survive_a_killed_worker(model, pool):
    prompts = load_prompt_set("ioi", model.tokenizer, n=3, seed=0)
    local = circuit_edges(model, HEADS, prompts)
    assert len(local) == 8 + 4 * 4  # every head into the logits, each layer-0 head into each layer-1 head
    killed = []

    def kill_one_worker(phase, done, total):
        if done == 1 and not killed:
            killed.append(pool.pids()[0])
            os.kill(killed[0], signal.SIGKILL)
            time.sleep(0.5)  # 5 receivers in 5 shards: shards still queued go to the dead worker too, and are retried

    retried = pool.retried
    assert circuit_edges(model, HEADS, prompts, workers=pool, progress=kill_one_worker) == local
    assert killed and pool.retried > retried and killed[0] not in pool.pids() and len(pool.pids()) == 2


def test_the_cli_runs_on_the_pool_and_refuses_workers_without_ray(model, pool, tmp_path, monkeypatch):
    from contextlib import contextmanager

    import interp.circuits.cli as cli

    seen = []

    @contextmanager
    def given_pool(console, m, ray, workers):
        seen.append((ray, workers))
        yield pool

    monkeypatch.setattr(cli, "ray_workers", given_pool)  # the module's pool, not a second cluster
    # `neurons` has a single command, so typer takes no command name
    args = ["--model", "tiny-llama", "--relations", "capital_of,plural_of", "--no-keep-correct", "--k", "3",
            "--n-identification", "4"]
    result = CliRunner().invoke(cli.neurons, [*args, "--ray", "local", "--workers", "2", "--out", str(tmp_path / "n")])
    assert result.exit_code == 0, result.output
    assert seen == [("local", 2)] and load_run(tmp_path / "n").manifest["ray"]["workers"] == 2
    result = CliRunner().invoke(cli.heads, ["retrieval", "--model", "tiny-llama", "--workers", "2", "--out",
                                            str(tmp_path / "r")])
    assert result.exit_code != 0 and "add --ray" in str(result.exception) and not (tmp_path / "r").exists()
    result = CliRunner().invoke(cli.circuit, ["build", "--run", str(tmp_path), "--ray", "local"])
    assert result.exit_code != 0 and "add --edges or drop --ray" in str(result.exception)


def test_an_edge_faithfulness_curve_on_two_workers_equals_the_local_run(model, pool, tmp_path, monkeypatch):
    from contextlib import contextmanager

    import interp.circuits.cli as cli
    from interp.circuits.eap import edge_scores
    from interp.circuits.edge_circuit import faithfulness_curve
    from interp.metrics import MetricContext, logit_diff

    tokens = load_prompt_set("ioi", model.tokenizer, n=3, seed=0).tokenize(model.tokenizer)
    with torch.no_grad():
        ctx = MetricContext(tokens.answer, tokens.wrong, model.run(tokens.clean).logits[:, -1],
                            model.run(tokens.corrupt).logits[:, -1])
    scores = edge_scores(model, tokens.clean, tokens.corrupt, logit_diff, ctx)
    fractions = (0.05, 0.1, 0.2, 0.5, 1.0)
    local = faithfulness_curve(model, scores, tokens.clean, tokens.corrupt, "logit_diff", ctx, fractions)
    on_ray = faithfulness_curve(model, scores, tokens.clean, tokens.corrupt, "logit_diff", ctx, fractions, workers=pool)
    assert on_ray["kept"] == local["kept"]
    assert all(abs(a - b) < 1e-5 for a, b in zip(on_ray["metric"], local["metric"]))

    @contextmanager
    def given_pool(console, m, ray, workers):
        yield pool

    monkeypatch.setattr(cli, "ray_workers", given_pool)
    result = CliRunner().invoke(cli.circuit, ["discover", "--model", "tiny-llama", "--n-prompts", "3", "--edges", "10",
                                              "--curve", "--fractions", "0.1,1", "--ray", "local", "--out",
                                              str(tmp_path / "d")])
    assert result.exit_code == 0, result.output
    assert load_run(tmp_path / "d").manifest["ray"]["workers"] == 2
    result = CliRunner().invoke(cli.circuit, ["discover", "--model", "tiny-llama", "--ray", "local"])
    assert result.exit_code != 0 and "add --curve or drop --ray" in str(result.exception)
