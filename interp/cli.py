"""The ``interp`` command line.

``interp models`` lives here (``interp doctor`` lives in `interp.patching.doctor`: its engine check needs patching); method commands (``interp patch``, ...) live in their packages and
are found through the ``interp.commands`` entry-point group, so ``interp`` never imports a method
package. Every `InterpError` becomes one line on stderr and exit code 2, without a traceback.
"""

from __future__ import annotations

import json
import sys
from importlib.metadata import entry_points

import typer
from rich.console import Console
from rich.table import Table

from interp.errors import InterpError

app = typer.Typer(help="Mechanistic interpretability on TransformerLens and nnsight.", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False)
err = Console(stderr=True)


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        print(f"interp {version('interp')}")
        raise typer.Exit()


@app.callback()
def _options(
    _version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                  help="Print the version and exit."),
) -> None:
    """Mechanistic interpretability on TransformerLens and nnsight."""


@app.command()
def models(
    as_json: bool = typer.Option(False, "--json", help="Print the list as JSON."),
    families: bool = typer.Option(False, "--families", help="Only the supported architecture families "
                                  "(with --json: {\"families\": [{\"family\", \"model_types\"}, ...]})."),
) -> None:
    """List the model names, whether each is available offline, and its size; then the supported families."""
    from interp.models import list_models

    supported = supported_families()
    if as_json:
        if families:
            print(json.dumps({"families": supported}, indent=2))
        else:  # a list of models, as it always was
            print(json.dumps([info.__dict__ for info in list_models()], indent=2))
        return
    console = Console()
    if not families:
        table = Table("name", "available", "size", "description / how to install")
        for info in list_models():
            table.add_row(info.name, "yes" if info.available else "no", info.size,
                          info.description if info.available else info.install_hint)
        console.print(table)
    table = Table("family", "HF model types", title="supported architectures", title_justify="left")
    for entry in supported:
        table.add_row(entry["family"], ", ".join(entry["model_types"]))
    console.print(table)
    console.print("Any checkpoint of these loads by HF id or local path when its files are on disk (gemma3: the text "
                  "decoder); `interp doctor MODEL` checks that interp computes its own numbers.", highlight=False)


def supported_families() -> list[dict]:
    """Each supported family with the HF ``model_type`` values that load as it (multimodal wrappers included)."""
    from interp.adapters import FAMILIES, MULTIMODAL
    from interp.adapters import supported_families as names

    types: dict[str, list[str]] = {family: [] for family in names()}
    for model_type, (family, _) in FAMILIES.items():
        types[family].append(model_type)
    for model_type, (text_type, _) in MULTIMODAL.items():
        types[FAMILIES[text_type][0]].append(model_type)
    return [{"family": family, "model_types": sorted(ts)} for family, ts in sorted(types.items())]


def _register_plugins() -> None:
    for ep in entry_points(group="interp.commands"):
        command = ep.load()
        if isinstance(command, typer.Typer):  # a group of subcommands, e.g. ``interp steer build|eval|...``
            app.add_typer(command, name=ep.name)
        else:
            app.command(name=ep.name)(command)


OPTIONAL_VALUES = {"--ray": "local"}  # options whose value may be left out, and the value they then take


def with_optional_values(args: list[str]) -> list[str]:
    """``args`` with the implied value after an option of `OPTIONAL_VALUES` given bare (``--ray --workers 2``)."""
    out = []
    for i, arg in enumerate(args):
        out.append(arg)
        if arg in OPTIONAL_VALUES and (i + 1 == len(args) or args[i + 1].startswith("-")):
            out.append(OPTIONAL_VALUES[arg])
    return out


def main() -> None:
    """Entry point: run the app, turning user errors into one clear line."""
    _register_plugins()
    try:
        code = app(args=with_optional_values(sys.argv[1:]), standalone_mode=False)  # returns typer.Exit codes
    except InterpError as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:  # click usage errors arrive here in non-standalone mode
        if type(exc).__name__ == "Abort":
            sys.exit(130)
        if callable(getattr(exc, "format_message", None)) and isinstance(getattr(exc, "exit_code", None), int):
            # a ClickException (from click or the copy typer >= 0.24 vendors): one line, not click's usage block
            command = getattr(getattr(exc, "ctx", None), "command_path", None) or "interp"
            hint = f" (see `{command} --help`)" if getattr(exc, "ctx", None) is not None else ""
            message = " ".join(exc.format_message().split())
            if message:  # empty after no-args help, which click has already printed
                err.print(f"[bold red]error:[/] {message}{hint}", highlight=False, soft_wrap=True)
            sys.exit(exc.exit_code)
        raise
    if isinstance(code, int) and code:
        sys.exit(code)
