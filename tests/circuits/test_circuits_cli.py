"""``interp heads``, ``interp voids`` and ``interp circuit``, run as subprocesses on the tiny model."""

from __future__ import annotations

import json

import pytest
import torch

from interp.circuits.graph import Circuit, node_scores, threshold
from interp.results import load_run

TINY = ["--model", "tiny-llama"]


def _ok(proc):
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    return proc


@pytest.fixture(scope="module")
def patch_run(tmp_path_factory, interp_cli):
    out = tmp_path_factory.mktemp("patch") / "run"
    _ok(interp_cli("patch", *TINY, "--n-prompts", "2", "--components", "head_out,mlp_out", "--out", out))
    return out


def test_build_overlap_and_faithfulness(patch_run, tmp_path, interp_cli):
    _ok(interp_cli("circuit", "build", "--run", patch_run, "--top-k", "5", "--out", tmp_path / "a"))
    _ok(interp_cli("circuit", "build", "--run", patch_run, "--top-k", "3", "--components", "head_out", "--out", tmp_path / "b"))
    a, b = Circuit.load(tmp_path / "a"), Circuit.load(tmp_path / "b")
    assert a.nodes == threshold(node_scores(patch_run), top_k=5).nodes  # the same as the library, from the run folder
    assert len(b) == 3 and all(name.startswith("head.") for name in b.nodes)
    assert torch.allclose(load_run(tmp_path / "a").scores["circuit/node_score"], torch.tensor(list(a.nodes.values())))
    proc = _ok(interp_cli("circuit", "overlap", tmp_path / "a", tmp_path / "b", "--out", tmp_path / "o", "--json"))
    shared = set(a.nodes) & set(b.nodes)
    assert json.loads(proc.stdout)["overlap"]["iou"] == pytest.approx(len(shared) / len(set(a.nodes) | set(b.nodes)))
    _ok(interp_cli("circuit", "faithfulness", tmp_path / "a", *TINY, "--n-prompts", "3", "--out", tmp_path / "f"))
    run = load_run(tmp_path / "f")
    full, circuit, empty = run.scores["circuit/faithfulness"].tolist()
    assert run.manifest["faithfulness"]["fraction"] == pytest.approx(circuit / full, rel=1e-5)
    assert run.scores["circuit/faithfulness/per_prompt"].shape == (3, 3)
    for flag, n_ablated in (("--no-keep-mlps", 4), ("--keep-mlps", 2)):  # 3 heads kept: 2 head sites + 2 MLPs, or heads only
        _ok(interp_cli("circuit", "faithfulness", tmp_path / "b", *TINY, "--n-prompts", "3", flag, "--out", tmp_path / flag))
        assert load_run(tmp_path / flag).manifest["faithfulness"]["n_ablated"] == n_ablated, flag


def test_heads_detect_and_voids(tmp_path, interp_cli):
    _ok(interp_cli("heads", "detect", *TINY, "--n-prompts", "3", "--out", tmp_path / "h"))
    run = load_run(tmp_path / "h")
    for name in ("heads/induction", "heads/previous_token", "heads/duplicate_token", "dla/head_out"):
        assert run.scores[name].shape == (2, 4), name
    _ok(interp_cli("voids", *TINY, "-p", "Hello there", "--max-new-tokens", "3", "--no-mc", "--out", tmp_path / "v"))
    voids = load_run(tmp_path / "v")
    assert voids.scores["voids/usage_prompt"].shape == (2,) and voids.scores["voids/response_map.0"].shape == (3, 2)
    assert bool((voids.scores["voids/response_map.0"][:, 0] == 1).all())  # layer 0: tau is 0, and norms grow from the embedding


@pytest.mark.parametrize("args, expected", [
    (["circuit", "build", "--run", "/nonexistent/run"], ["/nonexistent/run"]),
    (["circuit", "faithfulness", "/tmp", *TINY, "--reference", "middle"], ["--reference", "middle"]),
    (["voids", *TINY, "--alpha", "2"], ["--alpha"]),
    (["heads", "detect", *TINY, "--task", "nope"], ["nope"]),
])
def test_bad_input_is_one_line(args, expected, interp_cli):
    proc = interp_cli(*args)
    message = proc.stderr.strip()
    assert proc.returncode == 2 and "Traceback" not in message and message.count("\n") == 0, proc.stderr
    for part in expected:
        assert part in message, message


def test_heads_retrieval_writes_scores(tmp_path, interp_cli):
    _ok(interp_cli("heads", "retrieval", *TINY, "--lengths", "160", "--depths", "0,100", "--ks", "1", "--max-new-tokens", "3",
                   "--out", tmp_path / "r"))
    run = load_run(tmp_path / "r")
    assert run.scores["retrieval/head_score"].shape == (2, 4)
    assert run.scores["retrieval/test_recall"].shape == (6,)  # 3 needles x 1 length x 2 depths
    assert run.manifest["parameters"]["n_tests"] == 6 and len(run.manifest["responses"]) == 6


def test_neurons_relation_matrix_and_sweep(tmp_path, interp_cli):
    _ok(interp_cli("neurons", "relation", *TINY, "--relations", "capital_of,plural_of", "--no-keep-correct", "--k", "5",
                   "--sweep", "plural_of", "--ks", "2,5", "--n-identification", "6", "--out", tmp_path / "n"))
    run = load_run(tmp_path / "n")
    assert run.manifest["relations"] == ["capital_of", "plural_of"]
    assert run.scores["neurons/acc_change"].shape == (2, 2)
    assert run.tensor_info("neurons/acc_change")["labels"]["relation"] == ["capital_of", "plural_of"]
    assert run.scores["neurons/layers"].sum(1).tolist() == [5.0, 5.0]  # each relation's top-5 neurons, counted by layer
    assert run.scores["neurons/k"].tolist() == [2.0, 5.0] and run.scores["neurons/sweep_own"].shape == (2,)
    assert bool(((run.scores["neurons/best_ap"] > 0) & (run.scores["neurons/best_ap"] <= 1)).all())


def test_build_with_path_patching_edges(patch_run, tmp_path, tiny_llama, interp_cli):
    from interp.circuits.path_patching import path_patching
    from interp.tasks import load_prompt_set

    _ok(interp_cli("circuit", "build", "--run", patch_run, "--top-k", "3", "--components", "head_out", "--edges", *TINY,
                   "--out", tmp_path / "e"))
    built = Circuit.load(tmp_path / "e")
    heads = built.heads()
    expected = len(heads) + sum(1 for s in heads for r in heads if s[0] < r[0])  # every head to the logits, earlier to later
    assert len(built.edges) == expected
    prompts = load_prompt_set("ioi", tiny_llama.tokenizer, n=2, seed=0)  # the patch run's own prompts
    direct = path_patching(tiny_llama, prompts, "logits", heads).effect
    for edge in built.edges:
        if edge.receiver == "logits":
            layer, head = map(int, edge.sender.split(".")[1:])
            assert edge.score == pytest.approx(float(direct[layer, head]), abs=1e-5)


def test_task_file_default_is_every_row(patch_run, tmp_path, interp_cli):
    row = {"clean": "When Mary and John went to the park, John gave a ball to",
           "corrupt": "When Mary and John went to the park, Mary gave a ball to", "answer": " Mary", "wrong": " John"}
    task = tmp_path / "ten.jsonl"
    task.write_text("".join(json.dumps(row) + "\n" for _ in range(10)))  # more than detect's 8, fewer than faithfulness's 16
    _ok(interp_cli("heads", "detect", *TINY, "--task", task, "--out", tmp_path / "h"))
    assert load_run(tmp_path / "h").manifest["prompt_set"]["n_prompts"] == 10
    _ok(interp_cli("circuit", "build", "--run", patch_run, "--top-k", "3", "--out", tmp_path / "c"))
    _ok(interp_cli("circuit", "faithfulness", tmp_path / "c", *TINY, "--task", task, "--out", tmp_path / "f"))
    assert load_run(tmp_path / "f").scores["circuit/faithfulness/per_prompt"].shape == (10, 3)
    _ok(interp_cli("heads", "detect", *TINY, "--task", task, "--n-prompts", "4", "--out", tmp_path / "h4"))
    assert load_run(tmp_path / "h4").manifest["prompt_set"]["n_prompts"] == 4
