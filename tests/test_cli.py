"""The ``interp`` command line, run as a real subprocess (the installed entry-point script).

Covers ``interp models``, a full ``interp patch`` run, one clear line (and no traceback) for every
kind of bad input, and SIGTERM: an interrupted run keeps its finished patches and ``--resume``
completes it with the same numbers as an uninterrupted run. Runs use ``--model tiny-llama``.
"""

from __future__ import annotations

import json
import os
import pty
import re
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import safetensors.torch
import torch

from interp.metrics import METRICS
from interp.results import load_run
from interp.patching.activation import COMPONENTS

INTERP = Path(sys.executable).parent / "interp"
# a wide terminal so rich never wraps table rows or messages; no colour codes; one BLAS/OpenMP
# thread per process, since several CLI processes run at once (oversubscribed OpenMP threads spin)
ENV = {**os.environ, "COLUMNS": "250", "NO_COLOR": "1", "TERM": "dumb", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
ROW = {"clean": "When Mary and John went to the park, John gave a ball to",
       "corrupt": "When Mary and John went to the park, Mary gave a ball to",
       "answer": " Mary", "wrong": " John"}


def interp_cli(*args: str, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([str(INTERP), *map(str, args)], capture_output=True, text=True, env=ENV,
                          cwd=cwd, timeout=timeout)


def start_cli(*args: str, cwd: Path | None = None) -> subprocess.Popen:
    return subprocess.Popen([str(INTERP), *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=ENV, cwd=cwd)


def write_jsonl(path: Path, lines: list) -> Path:
    path.write_text("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n")
    return path


def test_entry_point_script_exists():
    assert INTERP.is_file() and os.access(INTERP, os.X_OK), f"{INTERP} is not an executable"


# ---------------------------------------------------------------------------------- interp models


def test_models_lists_smollm2_as_available():
    proc = interp_cli("models")
    assert proc.returncode == 0, proc.stderr
    rows = [line for line in proc.stdout.splitlines() if "smollm2-135m" in line]
    assert len(rows) == 1, proc.stdout
    assert "yes" in rows[0].split(), rows[0]
    for name in ("tiny-llama", "tiny-gemma3"):
        assert name in proc.stdout


def test_models_json_parses():
    proc = interp_cli("models", "--json")
    assert proc.returncode == 0, proc.stderr
    infos = json.loads(proc.stdout)
    by_name = {info["name"]: info for info in infos}
    assert by_name["smollm2-135m"]["available"] is True
    assert by_name["tiny-llama"]["available"] is True
    for info in infos:
        assert {"name", "description", "available", "size", "install_hint"} <= set(info)


def test_models_lists_the_supported_families():
    from interp.adapters import supported_families, supported_model_types

    proc = interp_cli("models")
    assert proc.returncode == 0, proc.stderr
    assert "supported architectures" in proc.stdout
    rows = {line.split()[1]: line for line in proc.stdout.splitlines() if line.startswith("│") and len(line.split()) > 3}
    for family in supported_families():
        assert family in rows, family
    proc = interp_cli("models", "--families", "--json")
    assert proc.returncode == 0, proc.stderr
    families = json.loads(proc.stdout)["families"]
    assert [f["family"] for f in families] == supported_families()
    assert sorted(t for f in families for t in f["model_types"]) == supported_model_types()
    assert {"gemma3", "gemma3_text"} == set(next(f for f in families if f["family"] == "gemma3")["model_types"])


# ----------------------------------------------------------------------------------- interp patch


def test_patch_json_writes_a_run_folder(tmp_path):
    out = tmp_path / "D"
    proc = interp_cli("patch", "--model", "tiny-llama", "--n-prompts", "2", "--components", "resid_pre,head_out",
                      "--out", out, "--json")
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    manifest = json.loads(proc.stdout)  # stdout is the manifest and nothing else
    timings = manifest["timings"]
    for key in ("load_s", "run_s", "total_s"):
        assert isinstance(timings[key], (int, float)) and timings[key] >= 0, key
    assert timings["total_s"] >= timings["run_s"] and timings["total_s"] >= timings["load_s"]
    assert manifest["status"] == "complete" and manifest["model"] == "tiny-llama"
    assert manifest["components"] == ["resid_pre", "head_out"]
    assert manifest["command"].startswith("interp patch")
    for name in ("manifest.json", "scores.safetensors", "report.html"):
        assert (out / name).is_file(), name
    assert not (out / "partial.safetensors").exists()
    run = load_run(out)
    assert run.manifest == manifest
    assert list(run.scores["activation/resid_pre"].shape) == manifest["tensors"]["activation/resid_pre"]["sizes"]
    assert run.scores["activation/head_out/per_prompt"].shape[0] == 2
    assert torch.isfinite(run.scores["activation/resid_pre"]).all()


def test_patch_with_every_method_writes_estimates_and_their_faithfulness(tmp_path):
    out = tmp_path / "all"
    proc = interp_cli("patch", "--model", "tiny-llama", "--n-prompts", "2", "--components", "attn_out,mlp_out",
                      "--method", "activation,atp,relp,ig", "--rules", "ln,identity,half,ah", "--ig-steps", "3",
                      "--out", out, "--json")
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads(proc.stdout)
    assert manifest["parameters"]["rules"] == ["ln", "identity", "half", "ah"] and manifest["parameters"]["ig_steps"] == 3
    run = load_run(out)
    for method in ("activation", "atp", "relp", "ig"):
        for comp in ("attn_out", "mlp_out"):
            assert torch.isfinite(run.scores[f"{method}/{comp}"]).all(), (method, comp)
    assert sorted(manifest["faithfulness"]) == ["atp", "ig", "relp"]
    assert {(c["x"], c["y"]) for c in manifest["comparisons"]} == {
        (f"activation/{comp}", f"{m}/{comp}") for m in ("atp", "relp", "ig") for comp in ("attn_out", "mlp_out")}
    for key in ("atp_s", "relp_s", "ig_s"):
        assert manifest["timings"][key] >= 0
    report = (out / "report.html").read_text()
    assert "relp/mlp_out vs activation/mlp_out" in report and "Comparisons" in report


def test_a_task_file_shorter_than_the_default_n_prompts_is_every_row(tmp_path):
    """`--n-prompts` defaults to every row of a task file (it used to be 8, refusing a 3-row file); --force reruns."""
    task = write_jsonl(tmp_path / "three_rows.jsonl", [ROW] * 3)
    out = tmp_path / "run"
    args = ["patch", "--model", "tiny-llama", "--task", task, "--components", "resid_pre", "--out", out]
    proc = interp_cli(*args, "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["prompt_set"]["n_prompts"] == 3
    again = interp_cli(*args, "--n-prompts", "2", "--force", "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["prompt_set"]["n_prompts"] == 2 and load_run(out).manifest["prompt_set"]["n_prompts"] == 2


# ------------------------------------------------------------------------------------ bad inputs


def _bad_input_cases(tmp: Path, tokenizer) -> dict[str, tuple[list[str], list[str]]]:
    """name -> (arguments, substrings the one-line message must contain)."""
    ok = dict(ROW)
    bad_json = write_jsonl(tmp / "bad_json.jsonl", [ok, '{"clean": "When Mary", "corrupt": '])
    no_wrong = write_jsonl(tmp / "no_wrong.jsonl", [ok, {k: v for k, v in ok.items() if k != "wrong"}])
    longer = dict(ok, corrupt="When Mary and John went to the big old park, Mary gave a ball to")
    n_clean, n_corrupt = (len(tokenizer(longer[k])["input_ids"]) for k in ("clean", "corrupt"))
    assert n_clean != n_corrupt
    lengths = write_jsonl(tmp / "lengths.jsonl", [ok, longer])
    long_answer = write_jsonl(tmp / "long_answer.jsonl", [dict(ok, answer=" Zorblaxian"), ok])
    assert len(tokenizer(" Zorblaxian", add_special_tokens=False)["input_ids"]) > 1
    (tmp / "empty_out").mkdir()
    (tmp / "finished").mkdir()
    (tmp / "finished" / "manifest.json").write_text(json.dumps({"command": "interp patch --n-prompts 2"}))
    two_rows = write_jsonl(tmp / "two_rows.jsonl", [ok, ok])
    inside = write_jsonl(tmp / "finished" / "prompts.jsonl", [ok, ok])
    from interp.patching.subspace import Direction

    Direction("mlp_act.1", torch.full((1, 128), float("nan")), "das").save(tmp / "nan_direction")
    Direction("mlp_act.1", torch.ones(1, 128), "das").save(tmp / "no_site")
    (tmp / "no_site.json").write_text(json.dumps({"method": "das"}))
    patch = ["patch", "--model", "tiny-llama", "--n-prompts", "2"]
    subspace = ["subspace", "--model", "tiny-llama", "--site", "mlp_act.1", "--n-prompts", "4"]
    return {
        "invalid_json_line": ([*patch, "--task", bad_json], ["bad_json.jsonl", "line 2", "not valid JSON"]),
        "missing_field": ([*patch, "--task", no_wrong], ["no_wrong.jsonl", "line 2", "'wrong'"]),
        "token_lengths_differ": ([*patch, "--task", lengths],
                                 ["row 2", f"clean prompt is {n_clean} tokens", f"corrupt is {n_corrupt}"]),
        "answer_not_one_token": ([*patch, "--task", long_answer], ["row 1", "answer ' Zorblaxian'", "not exactly one"]),
        "unknown_component": ([*patch, "--components", "resid_pre,resid_pree"], ["resid_pree", *COMPONENTS]),
        "unknown_metric": ([*patch, "--metric", "accuracy"], ["accuracy", *METRICS]),
        "model_not_available": (["patch", "--model", "some-org/not-here", "--n-prompts", "2"],
                                ["some-org/not-here", "not available"]),
        "resume_without_interrupted_run": ([*patch, "--resume", "--out", tmp / "empty_out"],
                                           ["nothing to resume", "empty_out"]),
        "resume_without_out": ([*patch, "--resume"], ["--resume needs --out"]),
        "prompt_file_missing": ([*patch, "--task", tmp / "nope.jsonl"], ["nope.jsonl", "does not exist"]),
        "bad_mlp_layers": ([*patch, "--components", "mlp_act", "--mlp-layers", "1,x"], ["--mlp-layers", "1,x"]),
        "unknown_method": ([*patch, "--method", "activation,relpp"], ["relpp", "activation", "atp", "relp", "ig"]),
        "unknown_rule": ([*patch, "--method", "relp", "--rules", "ln,zero"], ["unknown rule 'zero'", "ln", "identity", "half", "ah"]),
        "bad_ig_steps": ([*patch, "--method", "ig", "--ig-steps", "0"], ["--ig-steps", "at least 1"]),
        "corruption_with_jsonl_task": ([*patch, "--task", two_rows, "--corruption", "order"],
                                       ["--corruption only applies to the generated ioi task", "JSONL"]),
        "mlp_layers_without_mlp_act": ([*patch, "--components", "resid_pre", "--mlp-layers", "1"],
                                       ["--mlp-layers", "mlp_act", "not in --components"]),
        "empty_model_name": (["patch", "--model", "", "--n-prompts", "2"], ["model name is empty"]),
        "meta_device": ([*patch, "--device", "meta", "--out", tmp / "meta_out"], ["cannot use device 'meta'"]),
        "huge_n_prompts": (["patch", "--model", "tiny-llama", "--n-prompts", "1000000000"],
                           ["patching 1000000000 prompts", "of memory", "--n-prompts"]),
        "finished_run_without_force": ([*patch, "--out", tmp / "finished"], ["holds a finished run", "--force"]),
        "subspace_position_beyond_prompt": ([*subspace, "--method", "mean_diff", "--positions", "99"],
                                            ["--positions 99 is outside the prompts"]),
        "subspace_lr_inf": ([*subspace, "--lr", "inf"], ["--lr must be a finite number"]),
        "subspace_nan_direction": ([*subspace, "--method", "given", "--direction-file", tmp / "nan_direction"],
                                   ["NaN or infinite"]),
        "subspace_direction_missing_keys": ([*subspace, "--method", "given", "--direction-file", tmp / "no_site"],
                                            ["lacks 'site'"]),
        "doctor_empty_model_name": (["doctor", ""], ["model name is empty"]),
        "empty_out": ([*patch, "--out", ""], ["--out is empty"]),
        "task_inside_out_with_force": ([*patch, "--task", inside, "--out", tmp / "finished", "--force"],
                                       ["prompts.jsonl is inside --out", "--force would delete"]),
    }


BAD_INPUTS = ["invalid_json_line", "missing_field", "token_lengths_differ", "answer_not_one_token",
              "unknown_component", "unknown_metric", "model_not_available", "resume_without_interrupted_run",
              "resume_without_out", "prompt_file_missing", "bad_mlp_layers", "unknown_method", "unknown_rule",
              "bad_ig_steps", "corruption_with_jsonl_task", "mlp_layers_without_mlp_act", "empty_model_name",
              "meta_device", "huge_n_prompts", "finished_run_without_force", "subspace_position_beyond_prompt",
              "subspace_lr_inf", "subspace_nan_direction", "subspace_direction_missing_keys", "doctor_empty_model_name",
              "empty_out", "task_inside_out_with_force"]


@pytest.fixture(scope="module")
def bad_input_results(tmp_path_factory, tiny_llama):
    """Every bad-input command, run one per CPU at a time (each is a separate process)."""
    tmp = tmp_path_factory.mktemp("bad_inputs")
    cases = _bad_input_cases(tmp, tiny_llama.tokenizer)
    assert sorted(cases) == sorted(BAD_INPUTS)
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 1)) as pool:
        futures = {name: pool.submit(interp_cli, *args, cwd=tmp) for name, (args, _) in cases.items()}
        return {name: (cases[name][1], future.result()) for name, future in futures.items()} | {"tmp": tmp}


def test_a_run_that_fails_leaves_no_empty_folder_behind(bad_input_results):
    tmp = bad_input_results["tmp"]
    assert bad_input_results["meta_device"][1].returncode == 2
    assert not (tmp / "meta_out").exists()  # --out created, then removed when loading failed
    assert not list((tmp / "runs").glob("*")) if (tmp / "runs").exists() else True  # default runs/patch-<time>
    assert (tmp / "empty_out").is_dir()  # a folder the user made stays


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_exits_nonzero_with_one_line(bad_input_results, case):
    expected, proc = bad_input_results[case]
    message = proc.stderr.strip()
    assert proc.returncode == 2, f"exit {proc.returncode}: {proc.stderr}"
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr
    assert message.count("\n") == 0, f"stderr is not one line:\n{proc.stderr}"
    assert message.startswith("error: "), message
    for part in expected:
        assert part in message, f"{part!r} not in {message!r}"
    assert proc.stdout.strip() == ""


# ---------------------------------------------------------------------------------------- SIGTERM

SLOW_RUN = ["patch", "--model", "tiny-llama", "--components", "mlp_act", "--mlp-layers", "0,1",
            "--n-prompts", "2", "--engine", "hooks"]


def _scores(folder: Path) -> dict[str, torch.Tensor]:
    return safetensors.torch.load_file(folder / "scores.safetensors")


class TtyStderrRun:
    """``interp`` with stderr on a pseudo-terminal, so rich draws its live progress bar there
    (on a pipe it draws nothing until the end); a thread keeps reading it."""

    def __init__(self, *args: str):
        master, slave = pty.openpty()
        self.proc = subprocess.Popen([str(INTERP), *map(str, args)], stdout=subprocess.PIPE, stderr=slave,
                                     env={**ENV, "TERM": "xterm"}, start_new_session=True)
        os.close(slave)
        self._master, self._chunks = master, []
        self._reader = threading.Thread(target=self._pump, daemon=True)
        self._reader.start()

    def _pump(self) -> None:
        while True:
            try:
                data = os.read(self._master, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            self._chunks.append(data)
        os.close(self._master)

    def stderr(self) -> str:
        return b"".join(self._chunks).decode("utf-8", "replace")

    def patches_done(self) -> int:
        """The largest "done/total" count the progress bar has shown so far (0 if none)."""
        return max((int(m) for m in re.findall(r"(\d+)/\d+", self.stderr())), default=0)

    def wait(self, timeout: float) -> tuple[int, str]:
        rc = self.proc.wait(timeout=timeout)
        self._reader.join(timeout=10)
        return rc, self.stderr()


def test_sigterm_checkpoints_and_resume_completes_with_identical_results(tmp_path):
    interrupted, reference = tmp_path / "D", tmp_path / "ref"
    ref_proc = start_cli(*SLOW_RUN, "--out", reference)  # uninterrupted, alongside
    run = TtyStderrRun(*SLOW_RUN, "--out", interrupted)
    proc = run.proc
    try:
        # SIGTERM once the sweep is under way: a checkpoint exists, or the bar shows finished patches
        deadline = time.monotonic() + 240
        while not ((interrupted / "partial.safetensors").exists() or run.patches_done() > 0):
            assert proc.poll() is None, f"the run ended (exit {proc.returncode}) before any patch: {run.stderr()}"
            assert time.monotonic() < deadline, "no progress after 240 s"
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        _, stderr = run.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    interrupted_rc = proc.returncode
    assert "Traceback" not in stderr, stderr
    assert "--resume" in stderr, stderr
    assert (interrupted / "partial.safetensors").is_file()
    assert not (interrupted / "manifest.json").exists()
    progress = json.loads((interrupted / "progress.json").read_text())
    assert 0 < progress["done"]["mlp_act"] < progress["total"]["mlp_act"] == 2 * 128, progress

    # without --resume the folder is refused; with it the run completes
    refused = interp_cli(*SLOW_RUN, "--out", interrupted)
    assert refused.returncode == 2 and "--resume" in refused.stderr and "Traceback" not in refused.stderr
    resumed = interp_cli(*SLOW_RUN, "--out", interrupted, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert not (interrupted / "partial.safetensors").exists() and not (interrupted / "progress.json").exists()
    assert load_run(interrupted).manifest["status"] == "complete"

    _, ref_err = ref_proc.communicate(timeout=300)
    assert ref_proc.returncode == 0, ref_err
    got, want = _scores(interrupted), _scores(reference)
    assert sorted(got) == sorted(want) == ["activation/mlp_act", "activation/mlp_act/per_prompt"]
    for name in want:
        assert torch.isfinite(want[name]).all()
        assert torch.equal(got[name], want[name]), f"{name}: max abs diff {(got[name] - want[name]).abs().max()}"

    # the interrupted process must report failure (130, like Ctrl-C), not success
    assert interrupted_rc != 0, f"SIGTERM-interrupted `interp patch` exited {interrupted_rc}; expected non-zero (130)"
