"""A MkDocs hook: the option tables on docs/cli.md, generated from the commands themselves.

It builds the `interp` command line as `interp` does (its own commands plus those of the ``interp.commands``
entry-point group), walks the click command tree Typer makes, and writes one section per command: its help,
its usage line and a table of its options with their defaults, the text `interp COMMAND --help` prints. The
page thus stays true to the code; a command that fails to import fails the build.
"""

from __future__ import annotations

import html
import inspect
import re
from typing import Any

MARKER = "<!-- interp-cli-reference -->"
OPTIONS_MARKER = "<!-- interp-cli-force-resume -->"


def _root():
    import typer

    from interp import cli

    if not getattr(cli, "_docs_registered", False):
        cli._register_plugins()
        cli._docs_registered = True
    return typer.main.get_command(cli.app)


def _cell(text: Any, code: bool = False) -> str:
    """One table cell: whitespace folded, pipes kept out of the table's way (in code spans as &#124;)."""
    text = " ".join(str(text).split())
    if code:
        return text.replace("|", "\\|")
    pieces, last = [], 0
    for span in re.finditer(r"`([^`]+)`", text):
        pieces.append(html.escape(text[last:span.start()], quote=False).replace("|", "\\|"))
        inner = span[1]
        pieces.append(f"<code>{html.escape(inner, quote=False).replace('|', '&#124;')}</code>" if "|" in inner else span[0])
        last = span.end()
    pieces.append(html.escape(text[last:], quote=False).replace("|", "\\|"))
    return "".join(pieces)


def _default(param) -> str:
    if param.is_flag and param.secondary_opts:
        flag = param.opts[0] if param.default else param.secondary_opts[0]
        return f"`{flag}`"
    default = param.default
    if callable(default) or default is None or default == "" or (param.is_flag and not default):
        return ""
    if isinstance(default, (list, tuple)):
        default = ",".join(map(str, default))
    return f"`{_cell(default, code=True)}`"


def _type(param) -> str:
    if hasattr(param, "bare_type"):  # Typer's own parameters (Typer >= 0.24 vendors click)
        return param.bare_type().replace("NoneType", "").replace(" | ", "").strip()
    return getattr(getattr(param, "type", None), "name", "")


def _options_table(command) -> list[str]:
    rows = ["| option | value | default | what it does |", "|---|---|---|---|"]
    arguments = []
    for param in command.params:
        if param.param_type_name == "argument":
            arguments.append(param)
            continue
        if getattr(param, "hidden", False):
            continue
        names = " / ".join(f"`{o}`" for o in [*param.opts, *param.secondary_opts])
        value = "" if param.is_flag else f"`{_type(param)}`"
        rows.append(f"| {names} | {value} | {_default(param)} | {_cell(param.help or '')} |")
    lines = []
    if arguments:
        lines.append("Arguments:")
        lines.append("")
        for a in arguments:
            what = _cell(getattr(a, "help", None) or "")
            lines.append(f"- `{a.name.upper()}`" + ("" if a.required else " (optional)") + (f": {what}" if what else ""))
        lines.append("")
    return lines + rows


def _usage(path: list[str], command) -> str:
    pieces = ["[OPTIONS]"]
    for param in command.params:
        if param.param_type_name == "argument":
            name = param.name.upper() + ("..." if param.nargs != 1 else "")
            pieces.append(name if param.required else f"[{name}]")
    return " ".join([*path, *pieces])


def _sections(group, path: list[str], level: int) -> list[str]:
    out: list[str] = []
    for name in sorted(group.commands):
        command = group.commands[name]
        if getattr(command, "hidden", False):
            continue
        full = [*path, name]
        out += [f"{'#' * level} `{' '.join(full)}`", ""]
        text = inspect.cleandoc(command.help or "")
        if text:
            out += [text, ""]
        if hasattr(command, "commands"):  # a group: interp steer, heads, ...
            out += [f"Subcommands: {', '.join(f'`{c}`' for c in sorted(command.commands))}.", ""]
            out += _sections(command, full, level + 1)
            continue
        out += ["```text", _usage(full, command), "```", ""]
        out += _options_table(command)
        out.append("")
    return out


def cli_reference() -> str:
    """The generated Markdown: one section per command, in alphabetical order."""
    return "\n".join(_sections(_root(), ["interp"], 3))


def _leaves(group, path: list[str]):
    for name in sorted(group.commands):
        command = group.commands[name]
        if hasattr(command, "commands"):
            yield from _leaves(command, [*path, name])
        elif not getattr(command, "hidden", False):
            yield [*path, name], command


def commands_with(option: str) -> list[str]:
    """The commands (``interp patch``, ``interp steer east``, ...) that have ``option``."""
    return [" ".join(path) for path, command in _leaves(_root(), ["interp"])
            if any(option in (*p.opts, *p.secondary_opts) for p in command.params)]


def force_resume() -> str:
    lines = []
    for option, what in (("--force", "overwrites a finished or interrupted run"),
                         ("--resume", "completes an interrupted run")):
        names = commands_with(option)
        listed = ", ".join(f"`{n}`" for n in names) if names else "no command yet"
        lines.append(f"- `{option}` {what}: {listed}.")
    return "\n".join(lines)


def on_page_markdown(markdown: str, page, config, files) -> str:
    if OPTIONS_MARKER in markdown:
        markdown = markdown.replace(OPTIONS_MARKER, force_resume())
    if MARKER in markdown:
        markdown = markdown.replace(MARKER, cli_reference())
    return markdown
