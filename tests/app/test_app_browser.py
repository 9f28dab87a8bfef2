"""`interp app` for real: the server started by the CLI, driven in headless Chromium (Debian's package, via
Playwright with that executable), as a person uses it; and PNG export through the same browser."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from playwright.sync_api import sync_playwright

from interp.results import load_run

CHROMIUM = "/usr/bin/chromium"
# What a sandboxed root needs: no sandbox, no GPU, and none of Chromium's background connections
# (this machine's closed network refuses them, many at a time).
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]
INTERP = Path(sys.executable).parent / "interp"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def app_url(app_runs):
    """`interp app RUNS --port N` running; its URL once the health check answers."""
    port = _free_port()
    proc = subprocess.Popen([str(INTERP), "app", str(app_runs), "--port", str(port)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    url = f"http://localhost:{port}"
    deadline = time.time() + 90
    try:
        while True:
            try:
                if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                    break
            except OSError:
                pass
            assert proc.poll() is None, f"interp app exited: {proc.stdout.read()}"
            assert time.time() < deadline, "interp app did not answer within 90 s"
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
    with pytest.raises(OSError):  # stopping `interp app` stops the server itself: nothing is left on the port
        urllib.request.urlopen(f"{url}/_stcore/health", timeout=2)


@pytest.fixture(scope="module")
def browser_page(tmp_path_factory):
    assert Path(CHROMIUM).exists(), "Debian's chromium is missing: `make test` installs it (apt-get install chromium)"
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(str(tmp_path_factory.mktemp("chromium-profile")), executable_path=CHROMIUM,
                                                       headless=True, args=CHROMIUM_FLAGS, viewport={"width": 1400, "height": 1000})
        try:
            yield context.new_page()
        finally:
            context.close()


def test_open_a_run_and_see_its_heatmap_in_chromium(app_url, app_runs, browser_page, tmp_path):
    page = browser_page
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(app_url, wait_until="domcontentloaded")
    page.get_by_role("heading", name="Runs").wait_for(timeout=60_000)
    page.get_by_text("is not valid JSON").first.wait_for()  # the damaged folder says why, in place
    page.get_by_role("button", name="Open in Patching").click()
    heatmap = page.locator(".js-plotly-plot .heatmaplayer").first
    heatmap.wait_for(timeout=60_000)
    page.wait_for_timeout(500)
    page.screenshot(path=str(tmp_path / "patching.png"), full_page=True)
    run = load_run(app_runs / "patch")
    ticks = page.locator(".js-plotly-plot").first.locator(".xtick text").all_text_contents()
    assert ticks == run.axis_labels("activation/resid_pre", "pos")  # the prompt's real tokens on the x axis
    assert page.locator('[data-testid="stException"]').count() == 0
    assert not errors, errors
    page.get_by_text("side by side").click()
    page.locator(".js-plotly-plot").first.locator(".heatmaplayer .hm").nth(3).wait_for(timeout=30_000)  # four panels
    assert page.locator('[data-testid="stException"]').count() == 0 and not errors, errors


def test_png_export_draws_through_chromium():
    from interp.app.widgets import figure_png, png_available
    from interp.plots import heatmap

    assert png_available()
    png = figure_png(heatmap([[0.0, 1.0], [2.0, -1.0]], ["a", "b"], ["0", "1"], "t", "x", "y"))
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_interp_app_bad_input_is_one_line(interp_cli, tmp_path):
    proc = interp_cli("app", tmp_path / "nowhere")
    assert proc.returncode == 2 and "does not exist" in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    proc = interp_cli("app", tmp_path, "--port", "70000")
    assert proc.returncode == 2 and "not a port number" in proc.stderr
