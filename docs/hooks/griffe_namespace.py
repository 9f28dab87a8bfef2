"""A Griffe extension for the API reference (mkdocs.yml, mkdocstrings' `extensions` option).

1. It finds `interp.patching`, `interp.steering`, `interp.circuits` and `interp.app` where setuptools does. The
   method packages live in the repository's top-level folders (`patching/`, `steering/`, ...) and install inside
   the `interp` namespace through `[tool.setuptools] package-dir` in pyproject.toml. Griffe reads source from the
   disk and finds `interp/` without them, so `::: interp.patching` would not be found. When Griffe has loaded the
   `interp` package, this loads each mapped folder as its submodule, reading the mapping from pyproject.toml so
   it stays the one the wheel uses.
2. It shows doctest lines (`>>> ...`) that stand outside an `Examples:` section as `pycon` code blocks. As plain
   Markdown, `report["test"]["acc"]` in such a line reads as a reference link to a missing target, which
   `mkdocs build --strict` rejects. The docstrings themselves stay as they are (they are read as doctests).
3. It escapes shape notation that reads as a reference link, such as "[k][draw]", outside code. A real
   cross-reference names a dotted path (`[Model][interp.Model]`, `[interp.load][]`) and is kept, so one
   whose target is missing still fails the strict build.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import griffe

ROOT = Path(__file__).resolve().parents[2]
FENCE = "```"


def _package_dirs() -> dict[str, Path]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    mapping = config["tool"]["setuptools"]["package-dir"]
    return {name: ROOT / folder for name, folder in mapping.items() if name.startswith("interp.")}


def fence_doctests(text: str) -> str:
    """Wrap each run of doctest lines (`>>>` and `...` with their output) in a ```pycon block, outside fences."""
    out: list[str] = []
    in_fence = in_doctest = False
    indent = ""
    for line in text.splitlines():
        stripped = line.lstrip()
        if in_doctest:
            if stripped and line.startswith(indent):
                out.append(line)
                continue
            out.append(indent + FENCE)
            in_doctest = False
        if stripped.startswith(FENCE):
            in_fence = not in_fence
        elif not in_fence and stripped.startswith(">>>"):
            indent = line[: len(line) - len(stripped)]
            out.append(indent + FENCE + "pycon")
            in_doctest = True
        out.append(line)
    if in_doctest:
        out.append(indent + FENCE)
    return "\n".join(out)


_CODE_SPAN = re.compile(r"(`+)(?:.+?)\1")
_REF = re.compile(r"\[([^\[\]\n]*)\]\[([^\[\]\n]*)\]")


def _escape_ref(match: re.Match) -> str:
    target = match[2] or match[1]
    if "." in target or "`" in target:  # a cross-reference to a dotted path: keep it
        return match[0]
    return f"\\[{match[1]}\\]\\[{match[2]}\\]"


def escape_shape_refs(text: str) -> str:
    """Escape "[a][b]" outside code unless its target is a dotted path (a real cross-reference)."""
    out, in_fence = [], False
    for line in text.splitlines():
        if line.lstrip().startswith(FENCE):
            in_fence = not in_fence
        if in_fence or "][" not in line:
            out.append(line)
            continue
        pieces, last = [], 0
        for span in _CODE_SPAN.finditer(line):
            pieces.append(_REF.sub(_escape_ref, line[last:span.start()]))
            pieces.append(span[0])
            last = span.end()
        pieces.append(_REF.sub(_escape_ref, line[last:]))
        out.append("".join(pieces))
    return "\n".join(out)


def _walk(obj: griffe.Object, seen: set[str]) -> None:
    if obj.path in seen:
        return
    seen.add(obj.path)
    if obj.docstring is not None:
        if ">>>" in obj.docstring.value:
            obj.docstring.value = fence_doctests(obj.docstring.value)
        if "][" in obj.docstring.value:
            obj.docstring.value = escape_shape_refs(obj.docstring.value)
    for member in obj.members.values():
        if not member.is_alias:
            _walk(member, seen)


class InterpNamespace(griffe.Extension):
    """Attach the mapped folders to the `interp` package as its submodules; fence doctests, escape shape brackets."""

    def on_package(self, *, pkg: griffe.Module, loader: griffe.GriffeLoader, **kwargs: Any) -> None:
        if pkg.name != "interp":
            return
        for dotted, folder in sorted(_package_dirs().items()):
            name = dotted.split(".", 1)[1]
            if name in pkg.members or "." in name:
                continue
            # the loader's own routine for a package folder: the module, then its submodules
            module = loader._load_module(name, folder / "__init__.py", submodules=True, parent=pkg)
            pkg.set_member(name, module)
            loader.expand_exports(module)
            loader.expand_wildcards(module, external=False)
        _walk(pkg, set())
