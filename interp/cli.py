"""The ``interp`` command line.

``interp models`` lives here; method commands (``interp patch``, ...) live in their packages and
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


@app.command()
def models(as_json: bool = typer.Option(False, "--json", help="Print the list as JSON.")) -> None:
    """List the model names, whether each is available offline, and its size."""
    from interp.models import list_models

    infos = list_models()
    if as_json:
        print(json.dumps([info.__dict__ for info in infos], indent=2))
        return
    table = Table("name", "available", "size", "description / how to install")
    for info in infos:
        table.add_row(info.name, "yes" if info.available else "no", info.size,
                      info.description if info.available else info.install_hint)
    Console().print(table)


def _register_plugins() -> None:
    for ep in entry_points(group="interp.commands"):
        command = ep.load()
        if isinstance(command, typer.Typer):  # a group of subcommands, e.g. ``interp steer build|eval|...``
            app.add_typer(command, name=ep.name)
        else:
            app.command(name=ep.name)(command)


def main() -> None:
    """Entry point: run the app, turning user errors into one clear line."""
    _register_plugins()
    try:
        code = app(standalone_mode=False)  # returns typer.Exit codes instead of exiting
    except InterpError as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:  # click usage errors arrive here in non-standalone mode
        if type(exc).__name__ == "Abort":
            sys.exit(130)
        if callable(getattr(exc, "show", None)) and isinstance(getattr(exc, "exit_code", None), int):
            exc.show()  # a ClickException, from click or from the copy of click that typer >= 0.24 vendors
            sys.exit(exc.exit_code)
        raise
    if isinstance(code, int) and code:
        sys.exit(code)
