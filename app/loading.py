"""Cached loading for the app: run folders (`st.cache_data`, keyed by the files' modification times),
models (`st.cache_resource`, one per name for the server's life) and attention patterns.

A run folder is read again only when its files change, so browsing is instant after the first
visit; a model is loaded once however many pages and sessions use it.
"""

from __future__ import annotations

import os
from pathlib import Path

import streamlit as st
import torch

from interp.app.catalog import RunEntry, scan_runs
from interp.results import MANIFEST, SCORES, RunResult, load_run

DEFAULT_RUNS_DIR = "runs"
RUNS_DIR_ENV = "INTERP_RUNS_DIR"  # set by `interp app RUNS_DIR`


def default_runs_dir() -> str:
    """The runs directory the app opens on: ``$INTERP_RUNS_DIR`` (set by `interp app`), else ./runs."""
    return os.environ.get(RUNS_DIR_ENV) or DEFAULT_RUNS_DIR


def _signature(folder: Path) -> tuple:
    """What changes when a folder's run changes: its files' sizes and modification times."""
    stamps = []
    try:
        names = sorted(os.listdir(folder)) if folder.is_dir() else []
    except OSError:
        names = []
    for name in names:
        try:
            stat = (folder / name).stat()
        except OSError:
            continue
        stamps.append((os.fsencode(name), stat.st_size, stat.st_mtime_ns))
    return tuple(stamps)


def _tree_signature(root: Path) -> tuple:
    """The signature of every run folder under ``root``, two levels deep (as `scan_runs` looks)."""
    if not root.is_dir():
        return ()
    parts = [_signature(root)]
    for child in sorted(p for p in root.iterdir() if p.is_dir()):
        parts.append((os.fsencode(child.name), _signature(child)))
        try:
            nested = sorted(p for p in child.iterdir() if p.is_dir())
        except OSError:  # unreadable: `scan_runs` says so
            continue
        parts.extend((os.fsencode(child.name), os.fsencode(p.name), _signature(p)) for p in nested)
    return tuple(parts)


# Paths and names go to the caches as bytes: a folder name that is not UTF-8 is a str Streamlit cannot hash.
@st.cache_data(show_spinner=False, max_entries=64)
def _entries(root: bytes, signature: tuple) -> list[RunEntry]:
    return scan_runs(os.fsdecode(root))


def list_runs(root: str | Path) -> list[RunEntry]:
    """`scan_runs`, read again only when something under ``root`` changed."""
    return _entries(os.fsencode(root), _tree_signature(Path(root)))


@st.cache_data(show_spinner="Reading the run folder…", max_entries=32)
def _run(path: bytes, signature: tuple) -> RunResult:
    return load_run(os.fsdecode(path))


def read_run(path: str | Path) -> RunResult:
    """`load_run`, read again only when the folder's files changed; raises `RunFolderError`."""
    path = Path(path)
    wanted = (os.fsencode(MANIFEST), os.fsencode(SCORES))
    return _run(os.fsencode(path), tuple(s for s in _signature(path) if s[0] in wanted))


@st.cache_resource(show_spinner="Loading the model (once per app session)…", max_entries=2)
def model(name: str):
    """`interp.load(name)`, kept for the life of the server."""
    import interp

    return interp.load(name)


@st.cache_data(show_spinner="Running the model…", max_entries=64)
def attention_patterns(model_name: str, prompt: str, layer: int) -> tuple[torch.Tensor, list[str]]:
    """The attention probabilities [head, query, key] of ``layer`` on ``prompt``, and its tokens."""
    m = model(model_name)
    tokens = m.to_tokens(prompt)
    out = m.run(tokens, read=[f"attn_pattern.{layer}"], backend="torch")
    return out.acts[f"attn_pattern.{layer}"][0].float(), [m.tokenizer.decode([t]) for t in tokens[0].tolist()]
