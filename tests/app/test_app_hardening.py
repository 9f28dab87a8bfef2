"""Run folders as a careless or hostile user leaves them, and the app as such a user drives it (issue 14).

`load_run` rejects every malformed folder with its own one-line `RunFolderError`; `report()` and every page show
every folder it accepts without raising. The run-folder zip skips links and FIFOs; a FIFO named progress.json does
not block the runs list; bad run names and hosts are one line; served beyond this machine, the app keeps the
launcher and the runs-directory box off; an interrupted patch run shows its true total; text from run folders is
shown literally, never as markdown or HTML.
"""

from __future__ import annotations

import io
import json
import os
import re
import signal
import socket
import zipfile
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
import typer
from app_runs import COMMANDS
from manifest_fuzz import BAD, MARKUP, mutations, page_mutations, write_folder
from streamlit.testing.v1 import AppTest
from typer.testing import CliRunner

import interp.patching.run as patch_module
import interp.results as results
from interp.app.catalog import progress_of, read_progress, scan_runs
from interp.app.widgets import folder_zip, md
from interp.errors import InterpError, RunFolderError
from interp.ioi import generate_ioi
from interp.results import load_run

MAIN = str(Path(__file__).resolve().parents[2] / "app" / "main.py")
PAGE_FAILED = "This page cannot show this run"
REPORT_FIELDS = ("tensors", "notes", "histograms", "lines", "comparisons", "metric", "command")
KIND_PAGES = {"patching": "Patching", "heads": "Heads", "retrieval": "Heads", "neurons": "Neurons", "voids": "Voids",
              "sweep": "Steering", "east": "Steering", "attack": "Steering", "vectors": "Steering", "subspace": "Subspace",
              "circuit": "Circuits", "overlap": "Report", "faithfulness": "Circuits", "latents": "Latents"}
PICKERS = {"Patching": "patching-run", "Heads": "heads-run", "Neurons": "neurons-run", "Voids": "voids-run",
           "Steering": "steering-run", "Subspace": "subspace-run", "Circuits": "circuit-run", "Report": "report-run",
           "Latents": "latents-run"}


@contextmanager
def deadline(seconds: int):
    """Fail, rather than hang the suite, if the block blocks (reading a FIFO would)."""
    def expired(*_):
        raise TimeoutError(f"blocked for more than {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _general(what: str, manifest: dict) -> str:
    """The breakage without the tensor's name, so one of each kind is drawn as a report."""
    for name in manifest.get("tensors", {}):
        what = what.replace(f"tensors.{name}", "tensors.T")
    return what


# --- load_run and report() ------------------------------------------------------------------------------------------


def test_every_malformed_manifest_is_rejected_in_one_line_or_reported(app_runs, tmp_path):
    """Every field of every fixture run's manifest broken in turn (one tensor's description each)."""
    reported, counts = set(), {"rejected": 0, "accepted": 0}
    for source in COMMANDS:
        manifest = json.loads((app_runs / source / "manifest.json").read_text())
        for i, (what, broken) in enumerate(mutations(manifest, BAD, n_tensors=1)):
            folder = write_folder(tmp_path / source / str(i), app_runs / source, broken)
            try:
                run = load_run(folder)
            except RunFolderError as exc:
                assert "\n" not in str(exc) and len(str(exc)) < 600, (source, what, str(exc))
                counts["rejected"] += 1
                continue
            except Exception as exc:  # noqa: BLE001
                pytest.fail(f"{source}, {what}: load_run raised {type(exc).__name__}: {exc}")
            counts["accepted"] += 1
            kind = _general(what, manifest)
            if kind.removeprefix("del ").startswith(REPORT_FIELDS) and kind not in reported:
                reported.add(kind)
                try:
                    html = run.report()
                except Exception as exc:  # noqa: BLE001
                    pytest.fail(f"{source}, {what}: report() raised {type(exc).__name__}: {exc}")
                assert html.startswith("<!DOCTYPE html>")
    assert counts["rejected"] > 500 and counts["accepted"] > 500 and len(reported) > 40, (counts, len(reported))


@pytest.mark.parametrize("what, change, phrase", [
    ("labels not an object", lambda m, t: t.__setitem__("labels", "x"), "'labels' of tensor"),
    ("labels of the wrong length", lambda m, t: t["labels"].__setitem__("layer", ["0"]), "do not match its size"),
    ("labels not strings", lambda m, t: t["labels"].__setitem__("layer", [{}, {}]), "are not a list of strings"),
    ("labels null", lambda m, t: t["labels"].__setitem__("layer", None), "are not a list of strings"),
    ("axes not names", lambda m, t: t.__setitem__("axes", [1, 2]), "axis names that are not strings"),
    ("sizes not integers", lambda m, t: t.__setitem__("sizes", [2.0, 14.0]), "not non-negative integers"),
    ("sizes as text", lambda m, t: t.__setitem__("sizes", ["2", "14"]), "not non-negative integers"),
    ("a tensor entry that is a list", lambda m, t: m["tensors"].__setitem__("activation/resid_pre", []), "lacks 'axes'"),
    ("zmid as text", lambda m, t: t.__setitem__("zmid", "0"), "'zmid' of tensor"),
    ("plot as text", lambda m, t: t.__setitem__("plot", "yes"), "'plot' of tensor"),
    ("notes not a list", lambda m, t: m.__setitem__("notes", "x"), "field 'notes' is a string"),
    ("a note not an object", lambda m, t: m.__setitem__("notes", ["x"]), "notes[0] is a string"),
    ("lines' ys not names", lambda m, t: m.__setitem__("lines", [{"x": "a", "ys": "b"}]), "lines[0].ys is a string"),
    ("comparison of different shapes", lambda m, t: m["comparisons"][0].__setitem__("y", "activation/head_out"),
     "differ in shape"),
    ("metric a list", lambda m, t: m.__setitem__("metric", [1]), "field 'metric' is a list"),
    ("command a number", lambda m, t: m.__setitem__("command", 3), "field 'command' is a number"),
])
def test_malformed_labels_nesting_and_types_are_one_line_errors(app_runs, tmp_path, what, change, phrase):
    manifest = json.loads((app_runs / "patch" / "manifest.json").read_text())
    change(manifest, manifest["tensors"]["activation/resid_pre"])
    folder = write_folder(tmp_path / "run", app_runs / "patch", manifest)
    with pytest.raises(RunFolderError, match=re.escape(phrase)) as caught:
        load_run(folder)
    assert "\n" not in str(caught.value)


def test_unreadable_manifest_files_are_one_line_errors(app_runs, tmp_path, monkeypatch):
    source = app_runs / "heads"
    cases = {
        "deep": ("[" * 100_000 + "]" * 100_000, "nests its JSON too deeply"),
        "surrogate": ('{"schema_version": 1, "tensors": {}, "model": "\\ud800"}', "is not valid JSON"),
        "latin1": ('{"schema_version": 1, "model": "caf\xe9"}'.encode("latin-1"), "is not valid JSON"),
    }
    for name, (text, phrase) in cases.items():
        folder = tmp_path / name
        write_folder(folder, source, "")
        path = folder / "manifest.json"
        path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
        with pytest.raises(RunFolderError, match=phrase):
            load_run(folder)
    fifo = tmp_path / "fifo"
    write_folder(fifo, source, "")
    (fifo / "manifest.json").unlink()
    os.mkfifo(fifo / "manifest.json")
    with deadline(10), pytest.raises(RunFolderError, match="no manifest.json|not a regular file"):
        load_run(fifo)
    monkeypatch.setattr(results, "MAX_MANIFEST_BYTES", 1000)
    with pytest.raises(RunFolderError, match="more than"):
        load_run(source)
    with pytest.raises(RunFolderError, match="not a regular file"):
        results.read_regular_file(fifo / "manifest.json", 1000)


# --- every page on every accepted folder ----------------------------------------------------------------------------


def _nan_scores(folder: Path) -> None:
    """Replace a folder's scores by tensors of the same shapes, every value NaN or infinite."""
    path = folder / "scores.safetensors"
    scores = results.read_tensors(path)
    bad = {}
    for i, (name, t) in enumerate(scores.items()):
        fill = (float("nan"), float("inf"), -float("inf"))[i % 3]
        bad[name] = torch.full(t.shape, fill) if t.is_floating_point() else t
    results.write_tensors_atomic(path, bad)


def _empty_scores(folder: Path, manifest: dict) -> dict:
    """Cut every tensor of a folder to length 0 along its first axis; the manifest that describes the result."""
    path = folder / "scores.safetensors"
    scores = results.read_tensors(path)
    manifest = json.loads(json.dumps(manifest))
    for name, t in scores.items():
        if t.ndim:
            scores[name] = t[:0].contiguous()
            info = manifest["tensors"][name]
            info["sizes"][0] = 0
            if info.get("labels", {}).get(info["axes"][0]) is not None:
                info["labels"][info["axes"][0]] = []
    results.write_tensors_atomic(path, scores)
    return manifest


@pytest.fixture(scope="module")
def fuzz_runs(app_runs, tmp_path_factory) -> Path:
    """A runs directory of malformed folders that `load_run` accepts: each field the pages read broken in turn,
    and each fixture run with NaN and infinite scores."""
    runs = tmp_path_factory.mktemp("fuzz") / "runs"
    broken_fields = {}
    for source in COMMANDS:
        manifest = json.loads((app_runs / source / "manifest.json").read_text())
        for i, (what, broken) in enumerate(page_mutations(manifest, source)):
            folder = write_folder(runs / f"{source}-{i:03d}", app_runs / source, broken)
            try:
                load_run(folder)
                broken_fields[folder.name] = what
            except RunFolderError:
                for path in folder.iterdir():
                    path.unlink()
                folder.rmdir()
        nan = write_folder(runs / f"{source}-nan", app_runs / source, manifest)
        (nan / "scores.safetensors").unlink()
        (nan / "scores.safetensors").write_bytes((app_runs / source / "scores.safetensors").read_bytes())
        _nan_scores(nan)
        empty = write_folder(runs / f"{source}-empty", app_runs / source, manifest)
        (empty / "scores.safetensors").unlink()
        (empty / "scores.safetensors").write_bytes((app_runs / source / "scores.safetensors").read_bytes())
        (empty / "manifest.json").write_text(json.dumps(_empty_scores(empty, manifest)))
    (runs.parent / "broken_fields.json").write_text(json.dumps(broken_fields))
    return runs


def test_report_of_runs_with_non_finite_or_empty_scores(fuzz_runs):
    for folder in sorted(fuzz_runs.glob("*-nan")) + sorted(fuzz_runs.glob("*-empty")):
        assert load_run(folder).report().startswith("<!DOCTYPE html>"), folder.name


def _problems(at: AppTest) -> list[str]:
    return [e.value for e in at.exception] + [e.value for e in at.error if PAGE_FAILED in e.value]


def test_every_page_shows_every_accepted_malformed_folder(fuzz_runs, monkeypatch):
    monkeypatch.setenv("INTERP_RUNS_DIR", str(fuzz_runs))
    entries = scan_runs(fuzz_runs)
    assert all(e.ok for e in entries) and len(entries) > 150, [e.error for e in entries if not e.ok][:3]
    at = AppTest.from_file(MAIN, default_timeout=120).run()
    assert not _problems(at)  # the Runs page lists them all
    failures, views = [], 0
    for page in sorted(set(KIND_PAGES.values()) - {"Report"}):  # the Report page: the next test
        kinds = {k for k, p in KIND_PAGES.items() if p == page}
        at.sidebar.radio(key="page").set_value(page).run()
        modes = {"Graph": "circuit", "Faithfulness": "faithfulness"} if page == "Circuits" else {None: None}
        for mode, kind in modes.items():
            if mode is not None:
                at.radio(key="circuits-mode").set_value(mode).run()
            key = PICKERS[page] if kind != "faithfulness" else "faithfulness-run"
            names = [e.name for e in entries if e.kind in ({kind} if kind else kinds)]
            picker = at.selectbox(key=key)
            for i in range(len(picker.options)):
                at.selectbox(key=key).select_index(i).run()
                views += 1
                if _problems(at):
                    failures.append((page, at.selectbox(key=key).value, _problems(at)))
            assert len(picker.options) == len(names), (page, mode)
    assert not failures, failures[:5]
    assert views > 150


def test_the_report_page_shows_folders_with_broken_report_fields(fuzz_runs, monkeypatch):
    """The Report page draws `sections()`: every folder whose broken field it shows, every overlap run (their page),
    every run with non-finite scores."""
    broken_fields = json.loads((fuzz_runs.parent / "broken_fields.json").read_text())
    shown = ("command", "model", "status", "created", "metric", "notes", "lines", "histograms", "comparisons")
    wanted = {name for name, what in broken_fields.items() if what.removeprefix("del ").startswith(shown)}
    wanted |= {p.name for p in fuzz_runs.iterdir() if p.name.endswith(("-nan", "-empty")) or p.name.startswith("overlap")}
    monkeypatch.setenv("INTERP_RUNS_DIR", str(fuzz_runs))
    at = AppTest.from_file(MAIN, default_timeout=120).run()
    at.sidebar.radio(key="page").set_value("Report").run()
    failures, views = [], 0
    for i, label in enumerate(at.selectbox(key="report-run").options):
        if label.split(" · ")[0] not in wanted:
            continue
        at.selectbox(key="report-run").select_index(i).run()
        views += 1
        if _problems(at):
            failures.append((label, _problems(at)))
    assert not failures, failures[:5]
    assert views == len(wanted)


# --- links, FIFOs and names -----------------------------------------------------------------------------------------


def test_run_folder_zip_skips_links_and_fifos(app_runs, tmp_path):
    folder = tmp_path / "run"
    write_folder(folder, app_runs / "heads", (app_runs / "heads" / "manifest.json").read_text())
    for path in list(folder.iterdir()):  # real files, as a run folder holds
        data = path.read_bytes()
        path.unlink()
        path.write_bytes(data)
    secret = tmp_path / "secret.txt"
    secret.write_text("not part of the run")
    (folder / "passwd").symlink_to("/etc/passwd")
    (folder / "secret.txt").symlink_to(secret)
    (folder / "elsewhere").symlink_to(tmp_path, target_is_directory=True)
    (folder / "sub").mkdir()
    (folder / "sub" / "kept.txt").write_text("kept")
    os.mkfifo(folder / "progress.json")
    with deadline(20):
        archive = zipfile.ZipFile(io.BytesIO(folder_zip(folder)))
    names = sorted(archive.namelist())
    assert names == sorted(["run/manifest.json", "run/scores.safetensors", "run/sub/kept.txt"]), names
    assert archive.read("run/sub/kept.txt") == b"kept"


def test_a_fifo_named_progress_json_does_not_block_the_runs_page(app_runs, tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    (runs / "blocked").mkdir(parents=True)
    os.mkfifo(runs / "blocked" / "progress.json")
    (runs / "huge").mkdir()
    (runs / "huge" / "progress.json").write_bytes(b" " * (5 * 2**20))
    write_folder(runs / "heads", app_runs / "heads", (app_runs / "heads" / "manifest.json").read_text())
    with deadline(30):
        assert read_progress(runs / "blocked") is None and read_progress(runs / "huge") is None
        entries = {e.name: e for e in scan_runs(runs)}
        assert entries["heads"].ok and not entries["blocked"].ok and not entries["huge"].ok
        monkeypatch.setenv("INTERP_RUNS_DIR", str(runs))
        at = AppTest.from_file(MAIN, default_timeout=60).run()
    assert not at.exception
    assert sorted(at.dataframe[0].value["run"]) == ["blocked", "heads", "huge"]


def test_a_folder_name_that_is_not_utf8_is_listed(app_runs, tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    runs.mkdir()
    odd = Path(os.fsdecode(bytes(runs) + b"/caf\xe9 <b>run</b>"))
    write_folder(odd, app_runs / "voids", (app_runs / "voids" / "manifest.json").read_text())
    monkeypatch.setenv("INTERP_RUNS_DIR", str(runs))
    at = AppTest.from_file(MAIN, default_timeout=60).run()
    assert not at.exception
    at.sidebar.radio(key="page").set_value("Voids").run()
    assert not at.exception and not at.error
    assert at.get("plotly_chart")


@pytest.mark.parametrize("name, phrase", [("bad\x00name", "control character"), ("x" * 300, "at most 255"),
                                          ("é" * 200, "at most 255"), ("line\nbreak", "control character"),
                                          ("../up", "plain name")])
def test_new_run_names_with_nul_or_too_long_are_one_line(tmp_path, monkeypatch, name, phrase):
    monkeypatch.setenv("INTERP_RUNS_DIR", str(tmp_path))
    at = AppTest.from_file(MAIN, default_timeout=60).run()
    at.sidebar.radio(key="page").set_value("New run").run()
    next(t for t in at.text_input if t.label == "Run folder name").set_value(name)
    next(b for b in at.button if b.label == "Start the run").click().run()
    assert not at.exception
    assert len(at.error) == 1 and phrase in at.error[0].value and "\n" not in at.error[0].value
    assert "launched" not in at.session_state and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("root, phrase", [("runs\x00dir", "does not exist"), ("r" * 300, "cannot read the runs directory"),
                                          ("/etc/passwd", "is a file")])
def test_a_runs_directory_with_nul_too_long_or_a_file_is_one_line(tmp_path, monkeypatch, root, phrase):
    monkeypatch.setenv("INTERP_RUNS_DIR", str(tmp_path))
    at = AppTest.from_file(MAIN, default_timeout=60).run()
    at.sidebar.text_input(key="runs-dir").set_value(root).run()
    for page in ("Runs", "Report", "Patching"):
        at.sidebar.radio(key="page").set_value(page).run()
        assert not at.exception and len(at.error) == 1, page
        assert phrase in at.error[0].value.replace("\\", "") and "\x00" not in at.error[0].value


# --- served beyond this machine -------------------------------------------------------------------------------------


def test_app_host_that_is_not_an_address_is_one_line(interp_cli, app_runs):
    for host, phrase in (("999.1.1.1", "not a valid IP address"), ("8.8.8.8", "not an address of this machine"),
                         ("", "not an address")):
        proc = interp_cli("app", app_runs, "--host", host, timeout=60)
        assert proc.returncode == 2 and phrase in proc.stderr, (host, proc.stderr)
        assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(monkeypatch, tmp_path, *args) -> tuple[dict, str]:
    """`interp app` up to the point it becomes Streamlit: the environment it hands over, and what it printed."""
    import interp.app.cli as cli

    seen = {}

    def become_streamlit(path, argv, env):
        seen.update(env=env, argv=argv)

    monkeypatch.setattr(cli.os, "execve", become_streamlit)
    command = typer.Typer()
    command.command()(cli.app)
    result = CliRunner().invoke(command, [str(tmp_path), "--port", str(_free_port()), *args])
    assert result.exit_code == 0, result.output
    return seen["env"], result.output


def test_a_non_loopback_host_warns_and_keeps_control_off(monkeypatch, tmp_path):
    env, output = _launch(monkeypatch, tmp_path, "--host", "0.0.0.0")
    assert "WARNING" in output and "no password" in output and "--allow-remote-control" in output
    assert env["INTERP_APP_CONTROL"] == "off"
    env, output = _launch(monkeypatch, tmp_path, "--host", "0.0.0.0", "--allow-remote-control")
    assert env["INTERP_APP_CONTROL"] == "on" and "WARNING" in output
    env, output = _launch(monkeypatch, tmp_path)
    assert env["INTERP_APP_CONTROL"] == "on" and "WARNING" not in output


def test_without_control_there_is_no_launcher_and_no_runs_folder_box(app_runs, tmp_path, monkeypatch):
    monkeypatch.setenv("INTERP_RUNS_DIR", str(app_runs))
    monkeypatch.setenv("INTERP_APP_CONTROL", "off")
    at = AppTest.from_file(MAIN, default_timeout=60).run()
    assert not at.exception
    assert not [t for t in at.sidebar.text_input if t.label == "Runs directory"]
    at.sidebar.radio(key="page").set_value("New run").run()
    assert not [b for b in at.button if b.label == "Start the run"] and "off" in at.info[0].value
    at.sidebar.radio(key="page").set_value("Attention").run()
    assert not at.text_input and at.selectbox(key="attention-model").options  # registry names only, no paths
    monkeypatch.delenv("INTERP_APP_CONTROL")  # `streamlit run` directly, on Streamlit's default (every interface)
    at = AppTest.from_file(MAIN, default_timeout=60).run()
    assert not [t for t in at.sidebar.text_input if t.label == "Runs directory"]


# --- progress of an interrupted patch run ---------------------------------------------------------------------------


class _StopAt:
    def __init__(self, component: str, call: int):
        self.component, self.call, self.calls = component, call, 0

    def __call__(self, comp: str, done: int, total: int) -> None:
        if comp == self.component:
            self.calls += 1
            if self.calls > self.call:
                raise KeyboardInterrupt


@pytest.mark.parametrize("components", [["resid_pre", "mlp_out"], ["resid_pre", "head_out", "attn_out"]])
def test_an_interrupted_patch_run_shows_its_true_total(tiny_llama, tmp_path, monkeypatch, components):
    monkeypatch.setattr(patch_module, "CHECKPOINT_EVERY_S", 0.0)
    prompts = generate_ioi(tiny_llama.tokenizer, 2)
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        patch_module.activation_patching(tiny_llama, prompts, components, out=out, progress=_StopAt("resid_pre", 1))
    n_pos = prompts.tokenize(tiny_llama.tokenizer).clean.shape[1]
    size = {"resid_pre": tiny_llama.n_layers * n_pos, "mlp_out": tiny_llama.n_layers * n_pos,
            "attn_out": tiny_llama.n_layers * n_pos, "head_out": tiny_llama.n_layers * tiny_llama.n_heads}
    state = progress_of(read_progress(out))
    assert 0 < state.done < size["resid_pre"]
    if state.exact:
        assert state.total == sum(size[c] for c in components)
        assert state.status == f"unfinished: {state.done}/{state.total} patches"
    else:  # a component whose grid no started one shares: the total is at least what is known, and says so
        assert "head_out" in components and state.total == sum(size[c] for c in components if c != "head_out")
        assert state.status.endswith(f"+ patches (1 of {len(components)} components started)")
    assert [e.status for e in scan_runs(tmp_path)] == [state.status]
    if components == ["resid_pre", "mlp_out"]:
        assert state.exact and state.fraction == pytest.approx(state.done / state.total)


def test_progress_with_every_component_total_is_exact():
    progress = {"run": {"components": ["resid_pre", "head_out"], "methods": ["activation"], "model": "m"},
                "done": {"resid_pre": 5}, "total": {"resid_pre": 28, "head_out": 8}}
    state = progress_of(progress)
    assert state.exact and state.status == "unfinished: 5/36 patches"
    assert progress_of({"run": {"command": "steer attack"}, "done": 2, "total": 5, "unit": "phases"}).status == \
        "unfinished: 2/5 phases"
    for bad in ({"done": "x", "total": 3}, {"done": {"a": -1}, "total": {"a": 2}}, {"done": True, "total": 2}, {}):
        assert progress_of(bad) is None


# --- text from run folders is shown literally -----------------------------------------------------------------------


def test_markdown_escaping_shows_text_as_typed():
    assert md("a*b* <b>x</b> [l](u) ![i](u) `c` $x$ # h\nnext") == \
        r"a\*b\* \<b\>x\</b\> \[l\]\(u\) \!\[i\]\(u\) \`c\` \$x\$ \# h next"
    assert md("\ud800") == "?"


def test_text_from_a_run_folder_is_never_rendered_as_markup(app_runs, tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    for source in ("patch", "subspace", "steer_eval"):
        manifest = json.loads((app_runs / source / "manifest.json").read_text())
        manifest.update(command=MARKUP, model=MARKUP, status=MARKUP)
        manifest["notes"] = [{"title": MARKUP, "text": MARKUP}]
        if "prompt_set" in manifest:
            manifest["prompt_set"]["example_clean"] = MARKUP
        if "illusion" in manifest:
            manifest["illusion"]["verdict"] = MARKUP
        for info in manifest["tensors"].values():
            info["labels"] = {axis: [f"<b>{i}</b>" for i in range(size)] for axis, size in zip(info["axes"], info["sizes"])}
        write_folder(runs / source, app_runs / source, manifest)
    monkeypatch.setenv("INTERP_RUNS_DIR", str(runs))
    at = AppTest.from_file(MAIN, default_timeout=60).run()
    shown = []
    for page, folder in (("Patching", "patch"), ("Subspace", "subspace"), ("Steering", "steer_eval"), ("Report", "patch")):
        at.sidebar.radio(key="page").set_value(page).run()
        picker = at.selectbox(key=PICKERS[page])
        picker.select_index(next(i for i, o in enumerate(picker.options) if o.startswith(folder))).run()
        assert not at.exception
        for kind in ("markdown", "caption", "error", "warning", "success", "info"):
            shown += [e.value for e in at.get(kind)]
        for chart in at.get("plotly_chart"):
            spec = chart.proto.spec
            assert "<b>" not in spec and "\\u003cb\\u003e" not in spec, "markup in a figure"
    bodies = " ".join(shown)
    assert MARKUP not in bodies and md(MARKUP) in bodies  # the markup is there, escaped
    for raw in ("<b>", "](http", "**x**", "$x$", ":red["):
        assert raw not in bodies, raw


def test_interp_error_is_an_interp_error():  # the reader's errors are the CLI's one-line kind
    assert issubclass(RunFolderError, InterpError)
