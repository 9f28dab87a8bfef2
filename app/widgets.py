"""Small pieces every page uses: a figure with its download buttons, a run picker, a run's notes, and the
run-folder zip.

Downloads are made only when clicked (Streamlit's deferred ``data`` callables): HTML is the figure with
plotly.js inlined, readable offline; PNG is drawn by kaleido in the machine's Chromium.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import stat
import zipfile
from pathlib import Path

import plotly.graph_objects as go
import streamlit as st

from interp.app.catalog import KIND_TITLES, RunEntry
from interp.app.loading import read_run
from interp.errors import RunFolderError
from interp.results import RunResult

_CHROMIUM = "/usr/bin/chromium"


def scalar(value):
    """A manifest value as one cell or metric: numbers and strings as they are, anything else as short JSON text."""
    if isinstance(value, str) or (isinstance(value, (int, float)) and not isinstance(value, bool)):
        return plain(value) if isinstance(value, str) else value
    if value is None:
        return "—"
    return plain(_one_line_json(value))


def _one_line_json(value, limit: int = 200) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def table(rows: list[dict]) -> list[dict]:
    """Rows for `st.dataframe` with one type per column: a column that mixes numbers with other values (a manifest
    may hold anything) is shown as text, rather than failing the conversion Streamlit makes."""
    columns = list(dict.fromkeys(k for row in rows for k in row))
    textual = {c for c in columns
               if any(not (_is_number(row.get(c)) or row.get(c) is None) for row in rows)
               and any(_is_number(row.get(c)) for row in rows)}
    return [{c: (plain(row[c]) if c in textual and row.get(c) is not None else row.get(c)) for c in columns} for row in rows]


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def number(value, spec: str = ".3f", missing: str = "—") -> str:
    """``value`` formatted with ``spec`` when it is a number, else ``missing`` (a manifest may hold anything)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return format(value, spec)
    return missing


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")[:80] or "figure"


def plain(value) -> str:
    """``str(value)`` that Streamlit can send and a person can read: a folder name that is not UTF-8 (Python holds
    its bytes as lone surrogates) gets "?" in their place instead of breaking the page; control characters (a NUL
    byte, a terminal escape) show as ``\x00``."""
    text = str(value).encode("utf-8", "replace").decode("utf-8")
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)  # a NUL byte shows as \x00


_CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f]")


_MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~$:&=\"'^])")


def md(value, limit: int | None = 300) -> str:
    """Text from a run folder, a prompt or a model, made safe to put in Streamlit markdown (captions, errors,
    labels): one line, at most ``limit`` characters, every markdown and HTML character backslash-escaped, so it
    shows as typed and never as a link, image, HTML or formatting."""
    text = " ".join(plain(value).split())
    if limit is not None and len(text) > limit:
        text = text[: limit - 1] + "…"
    return _MARKDOWN_SPECIAL.sub(r"\\\1", text)


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
    key = plain(key)
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


def folder_files(folder: str | Path) -> list[Path]:
    """The regular files under a run folder, its sub-folders included; symbolic links (to files or folders) and
    anything that is not a regular file (a FIFO, a device) are left out, so a link cannot pull a file from
    elsewhere into the download and a FIFO cannot block it."""
    folder = Path(folder)
    files = []
    for top, dirs, names in os.walk(folder, followlinks=False):
        dirs[:] = sorted(d for d in dirs if not os.path.islink(os.path.join(top, d)))
        for name in sorted(names):
            path = Path(top) / name
            try:
                if stat.S_ISREG(os.lstat(path).st_mode):
                    files.append(path)
            except OSError:
                continue
    return files


def folder_zip(folder: str | Path) -> bytes:
    """The regular files of a run folder (`folder_files`: no links, no FIFOs), zipped with paths relative to the
    folder's parent."""
    folder = Path(folder)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for path in folder_files(folder):
            try:
                fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)  # swapped for a link or FIFO since: skip
            except OSError:
                continue
            with os.fdopen(fd, "rb") as handle:
                if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
                    continue
                info = zipfile.ZipInfo.from_file(path, path.relative_to(folder.parent))
                info.compress_type = zipfile.ZIP_DEFLATED
                with archive.open(info, "w") as target:
                    shutil.copyfileobj(handle, target)
    return buffer.getvalue()


def folder_download(folder: str | Path, key: str) -> None:
    """A button that downloads the run folder as a zip."""
    folder = Path(folder)
    st.download_button("Download the run folder (zip)", data=lambda: folder_zip(folder), file_name=f"{_slug(folder.name)}.zip",
                       mime="application/zip", key=f"zip-{plain(key)}")


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
        st.error(md(exc, None))
        return None


def show_notes(run: RunResult) -> None:
    """The manifest's notes (free text a method wants shown), each in a code block."""
    for note in run.manifest.get("notes", []):
        if isinstance(note, dict) and note.get("text"):
            st.markdown(f"**{md(note.get('title', ''))}**")
            st.code(str(note["text"]), language=None)


def run_header(entry: RunEntry, run: RunResult) -> None:
    """The command, model and status of a run, and the zip download."""
    st.caption(f"{md(run.manifest.get('command', ''))} · model {md(run.manifest.get('model', '—'))} · "
               f"status {md(run.manifest.get('status', '—'))} · {md(entry.created)}")
    if run.manifest.get("status") not in (None, "complete"):
        st.warning(f"This run is {md(run.manifest.get('status'))}: it holds what finished before it stopped.")
    folder_download(entry.path, key=str(entry.path))


def show_sections(run: RunResult, key: str, only: tuple[str, ...] | None = None) -> None:
    """The run's report sections (`RunResult.sections`) one by one: text as code, figures with downloads.

    ``only`` keeps the sections whose title starts with one of these prefixes (None: all but the summary).
    """
    for i, (title, text, figures) in enumerate(run.sections()):
        if (only is None and title == "Run") or (only is not None and not title.startswith(only)):
            continue
        if not figures:  # a figure carries its own title
            st.markdown(f"**{md(title)}**")
        if text and not figures:
            st.code(text, language=None)
        elif text:
            st.caption(md(text, 2000))
        for j, fig in enumerate(figures):
            show_figure(fig, key=f"{key}-{i}-{j}", name=title)


def show_lines(run: RunResult, key: str) -> None:
    """The run's line plots (manifest ``lines``: series against an x tensor), with downloads."""
    titles = tuple(str(line.get("title", "")) for line in run.manifest.get("lines", []) if isinstance(line, dict))
    if titles:
        show_sections(run, key=key, only=titles)


def open_run(entries: list[RunEntry], kinds: tuple[str, ...], key: str) -> tuple[RunEntry, RunResult] | None:
    """`pick_run`, then the chosen run's header (command, model, status, zip download); None if there is none."""
    picked = pick_run(entries, kinds, key)
    if picked is not None:
        run_header(*picked)
    return picked
