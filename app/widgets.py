"""Small pieces every page uses: a figure with its download buttons, a run picker, a run's notes, and the
run-folder zip.

Downloads are made only when clicked (Streamlit's deferred ``data`` callables): HTML is the figure with
plotly.js inlined, readable offline; PNG is drawn by kaleido in the machine's Chromium.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import zipfile
from pathlib import Path

import plotly.graph_objects as go
import streamlit as st

from interp.app.catalog import KIND_TITLES, RunEntry
from interp.app.loading import read_run
from interp.errors import RunFolderError
from interp.results import RunResult

_CHROMIUM = "/usr/bin/chromium"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")[:80] or "figure"


def png_available() -> bool:
    """Whether PNG export can work here: kaleido installed and a Chromium/Chrome to drive."""
    try:
        import kaleido  # noqa: F401
    except ImportError:
        return False
    if not os.environ.get("BROWSER_PATH") and Path(_CHROMIUM).exists():
        os.environ["BROWSER_PATH"] = _CHROMIUM  # kaleido's browser finder reads this
    return bool(os.environ.get("BROWSER_PATH") or shutil.which("chromium") or shutil.which("google-chrome"))


def figure_png(fig: go.Figure) -> bytes:
    """The figure as a PNG (kaleido, headless Chromium)."""
    return fig.to_image(format="png", width=1100, height=int(fig.layout.height or 520), scale=2)


def show_figure(fig: go.Figure, key: str, name: str | None = None) -> None:
    """The figure (hover shows values), then buttons to download it as HTML and as PNG."""
    st.plotly_chart(fig, key=f"fig-{key}", width="stretch")
    stem = _slug(name or key)
    left, right, _ = st.columns([1, 1, 6])
    left.download_button("HTML", data=lambda: fig.to_html(include_plotlyjs=True, full_html=True), file_name=f"{stem}.html",
                         mime="text/html", key=f"html-{key}", help="The interactive figure, readable offline")
    if png_available():
        right.download_button("PNG", data=lambda: figure_png(fig), file_name=f"{stem}.png", mime="image/png",
                              key=f"png-{key}", help="A static picture of the figure")
    else:
        right.caption("PNG: the camera icon in the figure's toolbar")


def folder_zip(folder: str | Path) -> bytes:
    """Every file of a run folder, zipped (paths relative to the folder)."""
    folder = Path(folder)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                archive.write(path, path.relative_to(folder.parent))
    return buffer.getvalue()


def folder_download(folder: str | Path, key: str) -> None:
    """A button that downloads the run folder as a zip."""
    folder = Path(folder)
    st.download_button("Download the run folder (zip)", data=lambda: folder_zip(folder), file_name=f"{_slug(folder.name)}.zip",
                       mime="application/zip", key=f"zip-{key}")


def entry_label(entry: RunEntry) -> str:
    """How a run is named in pickers: folder, kind, model, date."""
    parts = [entry.name, KIND_TITLES.get(entry.kind, entry.kind)]
    if entry.model:
        parts.append(entry.model)
    if entry.created:
        parts.append(entry.created)
    return " · ".join(parts)


def pick_run(entries: list[RunEntry], kinds: tuple[str, ...], key: str, label: str = "Run") -> tuple[RunEntry, RunResult] | None:
    """A select box over the readable runs of ``kinds``; the chosen entry and its `RunResult`, or None.

    Starts on the run chosen on another page (``st.session_state["run"]``) when it is of these kinds.
    """
    choices = [e for e in entries if e.ok and e.kind in kinds]
    if not choices:
        wanted = ", ".join(KIND_TITLES.get(k, k) for k in kinds)
        st.info(f"No {wanted} runs in this folder yet. Runs appear here when an `interp` command writes them.")
        return None
    paths = [str(e.path) for e in choices]
    current = st.session_state.get("run")
    index = paths.index(current) if current in paths else 0
    chosen = st.selectbox(label, range(len(choices)), index=index, format_func=lambda i: entry_label(choices[i]), key=key)
    entry = choices[chosen]
    st.session_state["run"] = str(entry.path)
    try:
        return entry, read_run(entry.path)
    except RunFolderError as exc:
        st.error(str(exc))
        return None


def show_notes(run: RunResult) -> None:
    """The manifest's notes (free text a method wants shown), each in a code block."""
    for note in run.manifest.get("notes", []):
        if note.get("text"):
            st.markdown(f"**{note.get('title', '')}**")
            st.code(str(note["text"]), language=None)


def run_header(entry: RunEntry, run: RunResult) -> None:
    """The command, model and status of a run, and the zip download."""
    st.caption(f"`{run.manifest.get('command', '')}` · model {run.manifest.get('model', '—')} · "
               f"status {run.manifest.get('status', '—')} · {entry.created}")
    if run.manifest.get("status") not in (None, "complete"):
        st.warning(f"This run is {run.manifest.get('status')}: it holds what finished before it stopped.")
    folder_download(entry.path, key=str(entry.path))


def show_sections(run: RunResult, key: str, only: tuple[str, ...] | None = None) -> None:
    """The run's report sections (`RunResult.sections`) one by one: text as code, figures with downloads.

    ``only`` keeps the sections whose title starts with one of these prefixes (None: all but the summary).
    """
    for i, (title, text, figures) in enumerate(run.sections()):
        if (only is None and title == "Run") or (only is not None and not title.startswith(only)):
            continue
        if not figures:  # a figure carries its own title
            st.markdown(f"**{title}**")
        if text and not figures:
            st.code(text, language=None)
        elif text:
            st.caption(text)
        for j, fig in enumerate(figures):
            show_figure(fig, key=f"{key}-{i}-{j}", name=title)


def show_lines(run: RunResult, key: str) -> None:
    """The run's line plots (manifest ``lines``: series against an x tensor), with downloads."""
    titles = tuple(str(line.get("title", "")) for line in run.manifest.get("lines", []))
    if titles:
        show_sections(run, key=key, only=titles)


def open_run(entries: list[RunEntry], kinds: tuple[str, ...], key: str) -> tuple[RunEntry, RunResult] | None:
    """`pick_run`, then the chosen run's header (command, model, status, zip download); None if there is none."""
    picked = pick_run(entries, kinds, key)
    if picked is not None:
        run_header(*picked)
    return picked
