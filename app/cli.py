"""`interp app [RUNS_DIR] [--port N] [--host H] [--allow-remote-control]`: start the Streamlit circuit browser
(on localhost unless told otherwise; see `interp.app.access` for what a non-loopback --host turns off)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import typer

from interp.app.access import CONTROL_ENV, is_local, remote_warning, resolve_host
from interp.errors import InterpError

MAIN = Path(__file__).with_name("main.py")


def streamlit_command(runs_dir: Path, port: int, host: str) -> list[str]:
    """The `streamlit run` command line for the app."""
    return [sys.executable, "-m", "streamlit", "run", str(MAIN), "--server.address", host, "--server.port", str(port),
            "--server.headless", "true", "--browser.gatherUsageStats", "false", "--global.developmentMode", "false",
            "--client.toolbarMode", "minimal"]


def app(
    runs_dir: Path = typer.Argument(Path("runs"), help="The folder that holds the run folders (default ./runs)."),
    port: int = typer.Option(8501, help="Port to serve on."),
    host: str = typer.Option("localhost", help="Address to bind; localhost keeps the app on this machine. Any other "
                             "address serves it, with no password, to whoever reaches the port."),
    allow_remote_control: bool = typer.Option(
        False, "--allow-remote-control",
        help="With a non-loopback --host, also turn on the New run page (it starts runs), the runs-directory box "
             "and loading models by path. Only on a network you trust."),
) -> None:
    """Browse run folders in a local Streamlit app: heatmaps, head maps, circuits; launch patching runs."""
    try:
        import streamlit  # noqa: F401
    except ImportError:
        raise InterpError("the app needs Streamlit: pip install 'interp[app]'") from None
    if not runs_dir.exists():
        raise InterpError(f"runs directory {runs_dir} does not exist: run `make demo` or an `interp` command first, or pass the folder")
    if not runs_dir.is_dir():
        raise InterpError(f"{runs_dir} is a file: pass the folder that holds the run folders")
    if not 0 < port < 65536:
        raise InterpError(f"--port {port} is not a port number: use 1-65535")
    local = is_local(resolve_host(host, port))
    control = local or allow_remote_control
    env = {**os.environ, "INTERP_RUNS_DIR": str(runs_dir.resolve()), CONTROL_ENV: "on" if control else "off"}
    if not local:
        print(remote_warning(host, port, control), file=sys.stderr, flush=True)
    shown = f"[{host}]" if ":" in host and not host.startswith("[") else host
    print(f"interp app: {runs_dir.resolve()} at http://{shown}:{port} (Ctrl-C stops it)", flush=True)
    command = streamlit_command(runs_dir, port, host)
    os.execve(command[0], command, env)  # become the server: signals (Ctrl-C, SIGTERM) reach Streamlit itself
