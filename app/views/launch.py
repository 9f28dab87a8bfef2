"""A new `interp patch` run from the browser: a form, the run as a subprocess with a progress bar read from
its checkpoint file, and the result shown when it finishes.

The run is the ordinary CLI writing an ordinary run folder under the runs directory, so it can be stopped
(Ctrl-C semantics: finished patches are kept; `interp patch --resume` completes it) and reopened later.
"""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import sys
import time
import unicodedata
from datetime import datetime
from pathlib import Path

import streamlit as st

from interp.app.catalog import PROGRESS, progress_of, read_entry, read_progress
from interp.app.loading import read_run
from interp.app.views.patching import show_patching_run
from interp.app.widgets import md
from interp.errors import RunFolderError

COMPONENTS = ["resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "head_out"]
METHODS = {"activation": "activation patching", "atp": "AtP", "relp": "RelP", "ig": "integrated gradients"}
LOG_DIR = ".logs"  # beside the run folders; hidden, so the runs list skips it


def interp_executable() -> str:
    """The `interp` script of this environment."""
    beside = Path(sys.executable).parent / "interp"
    return str(beside) if beside.exists() else (shutil.which("interp") or "interp")


def patch_command(model: str, task: str, n_prompts: int, components: list[str], methods: list[str], out: Path) -> list[str]:
    """The `interp patch` command line the form runs."""
    return [interp_executable(), "patch", f"--model={model}", "--task", task, "--n-prompts", str(n_prompts),
            "--components", ",".join(components), "--method", ",".join(methods), "--out", str(out)]


MAX_NAME_BYTES = 255  # the longest file name Linux and macOS file systems take


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a run folder's name (one line), or None: a plain name of at most 255 bytes, without
    '/', control characters (NUL among them) or a leading '.'."""
    if not name:
        return "Give the run folder a name."
    if any(unicodedata.category(ch) in ("Cc", "Cs") for ch in name):
        return "The run folder name holds a control character (a NUL byte, a line break …): use letters, digits, - and _."
    if "/" in name or "\\" in name or name.startswith("."):
        return "Give the run folder a plain name (no '/' and not starting with '.')."
    if len(name.encode("utf-8")) > MAX_NAME_BYTES:
        return f"The run folder name is {len(name.encode('utf-8'))} bytes long: file systems take at most {MAX_NAME_BYTES}."
    return None


def _progress(out: Path):
    """The launched run's `Progress` from its progress.json (a regular file only), or None before the first one."""
    saved = read_progress(out)
    return progress_of(saved) if saved is not None else None


def _last_line(log: Path, tail: int = 64 * 1024) -> str:
    try:
        fd = os.open(log, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
    except OSError:
        return ""
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            return ""
        handle.seek(max(0, os.fstat(handle.fileno()).st_size - tail))
        text = handle.read(tail).decode("utf-8", errors="replace")
    lines = [line.strip() for line in text.replace("\r", "\n").splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _start(root: Path, command: list[str], out: Path) -> None:
    logs = root / LOG_DIR
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / f"{out.name}.log"
    # a new regular file only: never through a link, never blocking on a FIFO left there
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            raise OSError(f"{log} is not a regular file")
        proc = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env={**os.environ, "COLUMNS": "200", "NO_COLOR": "1"})
    st.session_state["launched"] = {"proc": proc, "out": str(out), "log": str(log), "command": command, "t0": time.time()}


def _form(root: Path) -> None:
    st.session_state.setdefault("launch-name", f"patch-{datetime.now():%Y%m%d-%H%M%S}")
    with st.form("new-patch-run"):
        cols = st.columns(3)
        model = cols[0].text_input("Model", value="smollm2-135m", key="launch-model",
                                   help="A name from `interp models`, or a local path")
        task = cols[1].selectbox("Task", ["ioi", "colored_objects"], key="launch-task")
        n_prompts = int(cols[2].number_input("Prompts", min_value=1, max_value=256, value=8, key="launch-prompts"))
        components = st.multiselect("Components", COMPONENTS, default=["resid_pre", "head_out"], key="launch-components")
        methods = st.multiselect("Methods", list(METHODS), default=["activation", "atp"], format_func=METHODS.get,
                                 key="launch-methods")
        name = st.text_input("Run folder name", key="launch-name")
        submitted = st.form_submit_button("Start the run")
    if not submitted:
        return
    name = name.strip()
    problem = name_problem(name)
    if problem is not None:
        st.error(problem)
        return
    out = root / name
    try:
        exists = out.exists() or out.is_symlink()
    except (OSError, ValueError) as exc:  # e.g. the whole path too long
        st.error(f"cannot use {md(out)}: {md(exc)}")
        return
    if not model.strip():
        st.error("Give a model name (one from `interp models`).")
    elif not components or not methods:
        st.error("Choose at least one component and one method.")
    elif exists:
        st.error(f"{md(out)} already exists: choose another run folder name.")
    else:
        try:
            _start(root, patch_command(model.strip(), task, n_prompts, components, methods, out), out)
        except OSError as exc:
            st.error(f"cannot start the run in {md(root)}: {md(exc)}")


def _follow() -> None:
    launched = st.session_state["launched"]
    proc, out, log = launched["proc"], Path(launched["out"]), Path(launched["log"])
    st.code(" ".join(launched["command"][1:]).replace(str(Path(launched["command"][0]).parent) + "/", ""), language="bash")
    if proc.poll() is None and st.button("Stop the run", key="launch-stop"):
        proc.send_signal(signal.SIGINT)  # the CLI keeps finished patches; `interp patch --resume` completes them
    bar = st.progress(0.0, text="loading the model…")
    while proc.poll() is None:
        state = _progress(out)
        elapsed = time.time() - launched["t0"]
        if state is not None:
            counted = f"{state.done}/{state.total} patches" if state.exact else f"{state.done} patches, {state.parts}"
            bar.progress(state.fraction, text=f"{state.fraction:.0%} of the activation patches ({counted}) · {elapsed:.0f} s")
        else:
            bar.progress(0.0, text=f"loading the model and running the baselines… {elapsed:.0f} s")
        time.sleep(0.5)
    if proc.returncode != 0:
        bar.empty()
        st.error(f"The run stopped (exit {proc.returncode}): {md(_last_line(log) or 'no message')}")
        if (out / PROGRESS).exists():
            st.caption(f"Finished patches are kept in {md(out)}; complete them with interp patch … --out {md(out)} --resume.")
        return
    bar.progress(1.0, text=f"finished in {time.time() - launched['t0']:.0f} s")
    try:
        run = read_run(out)
    except RunFolderError as exc:
        st.error(md(exc, None))
        return
    st.success(f"Finished: {md(out)}")
    st.session_state["run"] = str(out)
    show_patching_run(read_entry(out), run, key="launched")


def render(root: Path) -> None:
    st.header("New patching run")
    st.caption("Runs `interp patch` on this machine and writes the run folder into the runs directory.")
    _form(root)
    if "launched" in st.session_state:
        _follow()
