"""The circuit browser as a person meets it: seconds from `interp app` to an answering server, then seconds
until each page has drawn its first figure in headless Chromium, on the run folders of RUNS_DIR.

The page numbers are wall time from the click in the sidebar until the page's script run is over and a
plotly figure is on screen (the
first visit to a page reads its run folder; later visits come from the cache). The attention page loads
the model once per server, so its first visit includes the load and its second does not.

    make demo && .venv/bin/interp circuit build --run runs/demo --components head_out --top-k 8 --edges --out runs/demo-circuit
    .venv/bin/python benchmarks/bench_app.py runs [--port 8650] [--model smollm2-135m]
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from playwright.sync_api import sync_playwright

FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]
PAGES = ["Patching", "Circuits", "Report", "Patching"]  # RUNS_DIR needs a patching and a circuit run


def _wait_health(url: str, proc: subprocess.Popen, limit: float = 120) -> None:
    deadline = time.time() + limit
    while time.time() < deadline:
        try:
            if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                return
        except OSError:
            time.sleep(0.1)
        if proc.poll() is not None:
            sys.exit(f"interp app exited with {proc.returncode}")
    sys.exit("interp app did not answer")


def _drawn(page, t0: float, timeout_ms: int = 300_000) -> float:
    """Seconds since ``t0`` until the script run is over (no "running" widget) and a figure is on screen."""
    page.wait_for_timeout(100)  # let the click's rerun begin
    page.locator('[data-testid="stStatusWidget"]').wait_for(state="hidden", timeout=timeout_ms)
    page.locator(".js-plotly-plot").first.wait_for(timeout=timeout_ms)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", type=Path)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--model", default="smollm2-135m")
    args = ap.parse_args()
    port = args.port
    if not port:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
    url = f"http://localhost:{port}"
    t0 = time.perf_counter()
    proc = subprocess.Popen([str(Path(sys.executable).parent / "interp"), "app", str(args.runs), "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_health(url, proc)
        print(f"server answering: {time.perf_counter() - t0:.2f} s")
        with sync_playwright() as p, tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as profile:
            context = p.chromium.launch_persistent_context(profile, executable_path="/usr/bin/chromium", headless=True,
                                                           args=FLAGS, viewport={"width": 1400, "height": 1000})
            page = context.new_page()
            t1 = time.perf_counter()
            page.goto(url)
            page.get_by_role("heading", name="Runs").wait_for(timeout=120_000)
            print(f"runs list drawn: {time.perf_counter() - t1:.2f} s")
            sidebar = page.locator('[data-testid="stSidebar"]')
            for name in PAGES:
                t2 = time.perf_counter()
                sidebar.get_by_text(name, exact=True).click()
                page.get_by_role("heading", name=name).first.wait_for(timeout=60_000)
                print(f"{name:<10} drawn: {_drawn(page, t2):.2f} s")
            for visit in ("first (loads the model)", "second"):
                sidebar.get_by_text("Attention", exact=True).click()
                page.get_by_role("heading", name="Attention patterns").wait_for()
                page.get_by_label("Model", exact=True).fill(args.model)
                page.get_by_label("Model", exact=True).press("Enter")
                t2 = time.perf_counter()
                page.get_by_role("button", name="Load the model").click()
                print(f"Attention  {visit}: {_drawn(page, t2):.2f} s")
                sidebar.get_by_text("Runs", exact=True).click()
                page.get_by_role("heading", name="Runs").wait_for()
            errors = page.locator('[data-testid="stException"]').count()
            print(f"exceptions on the pages: {errors}")
            context.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)


if __name__ == "__main__":
    main()
