"""The Latents page (app/views/latents.py), driven by Streamlit's AppTest against a run `latents_run` wrote on the
tiny model with a dictionary SAELens wrote; the page's numbers are checked against the run's tensors, and a token
whose text is HTML or markdown must show as typed."""

from __future__ import annotations

import base64
import html
import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from streamlit.testing.v1 import AppTest

from interp.app.catalog import scan_runs
from interp.app.views.latents import token_html
from interp.circuits.latent_pages import latents_run
from interp.dictionary import load_dictionary
from interp.results import load_run

MAIN = str(Path(__file__).resolve().parents[2] / "app" / "main.py")
SAELENS = Path(__file__).resolve().parents[1] / "fixtures" / "saelens"
HOSTILE = '<script>alert(1)</script><img src=x onerror="window.__xss=1">**bold** [link](http://x)'


@pytest.fixture(scope="module")
def latent_runs(tiny_llama, tmp_path_factory) -> Path:
    """``good``: a latents run; ``hostile``: the same with every token's text replaced by HTML and markdown."""
    runs = tmp_path_factory.mktemp("latents") / "runs"
    d = load_dictionary(SAELENS / "topk", tiny_llama)
    latents_run(tiny_llama, d, tokens=2_000, context=32, top=4, window=3, backend="torch").save(runs / "good")
    shutil.copytree(runs / "good", runs / "hostile")
    manifest = json.loads((runs / "hostile" / "manifest.json").read_text())
    manifest["token_strings"] = {i: HOSTILE for i in manifest["token_strings"]}
    (runs / "hostile" / "manifest.json").write_text(json.dumps(manifest))
    return runs


def _open(runs: Path, monkeypatch, run: str, latent: int | None = None) -> AppTest:
    monkeypatch.setenv("INTERP_RUNS_DIR", str(runs))
    at = AppTest.from_file(MAIN, default_timeout=180)
    if latent is not None:
        at.session_state["latent"] = latent
    at.run()
    at.sidebar.radio(key="page").set_value("Latents").run()
    picker = at.selectbox(key="latents-run")
    picker.select_index(next(i for i, label in enumerate(picker.options) if label.split(" · ")[0] == run)).run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    return at


def _values(value) -> np.ndarray:
    """A plotly JSON array: a list, or a typed array {"dtype", "bdata"}."""
    if isinstance(value, dict):
        return np.frombuffer(base64.b64decode(value["bdata"]), dtype=np.dtype(value["dtype"]))
    return np.asarray(value)


def _context_html(at: AppTest) -> list[str]:
    return [m.value for m in at.markdown if m.value.startswith("<div")]


def _shown_tokens(block: str) -> list[str]:
    return [html.unescape(t) for t in re.findall(r"<span [^>]*>(.*?)</span>", block)]


def test_the_run_is_a_latents_run_that_opens_on_its_page(latent_runs):
    assert {e.name: e.kind for e in scan_runs(latent_runs)} == {"good": "latents", "hostile": "latents"}


def test_the_page_shows_the_densest_latent_with_its_numbers_histogram_contexts_and_logit_effects(latent_runs, monkeypatch):
    run = load_run(latent_runs / "good")
    at = _open(latent_runs, monkeypatch, "good")
    s = run.scores
    latent = int(torch.argsort(s["latents/max"], descending=True, stable=True)[0])  # sorted by max activation first
    assert at.number_input(key="latents-latent").value == latent
    table = at.dataframe[0].value
    assert list(table["latent"][:5]) == torch.argsort(s["latents/max"], descending=True, stable=True)[:5].tolist()
    assert [m.value for m in at.metric] == [f"{float(s['latents/density'][latent]):.4%}",
                                           f"{float(s['latents/max'][latent]):.3f}",
                                           f"{float(s['latents/mean'][latent]):.3f}"]
    bars = json.loads(at.get("plotly_chart")[0].proto.spec)["data"][0]
    counts = s["latents/hist"][latent]
    used = counts.nonzero().flatten()
    assert np.array_equal(_values(bars["y"]), counts[int(used.min()): int(used.max()) + 1].numpy())
    strings = run.manifest["token_strings"]
    blocks = _context_html(at)
    fired = s["latents/top_activation"][latent] > 0
    assert len(blocks) == int(fired.sum()) > 0
    for rank, block in enumerate(blocks):
        ids = [i for i in s["latents/window_ids"][latent, rank].tolist() if i >= 0]
        expected = [strings[str(i)].replace("\n", "↵") for i in ids]
        assert _shown_tokens(block) == expected
    promoted = at.dataframe[1].value
    assert np.allclose(promoted["logit effect"], s["latents/promoted"][latent].numpy(), atol=1e-6)
    assert list(promoted["token"]) == [repr(strings[str(i)]) for i in s["latents/promoted_ids"][latent].tolist()]
    at.radio(key="latents-sort").set_value("density").run()
    assert list(at.dataframe[0].value["latent"][:3]) == torch.argsort(s["latents/density"], descending=True,
                                                                      stable=True)[:3].tolist()


def test_another_page_links_to_a_latent(latent_runs, monkeypatch):
    at = _open(latent_runs, monkeypatch, "good", latent=7)
    assert at.number_input(key="latents-latent").value == 7
    assert "Top contexts of latent 7" in [h.value for h in at.subheader]


def test_token_text_is_escaped_and_shows_as_typed(latent_runs, monkeypatch):
    at = _open(latent_runs, monkeypatch, "hostile")
    blocks = _context_html(at)
    assert blocks
    for block in blocks:
        assert "<script>" not in block and "**" not in block and "](" not in block
        assert "&#60;script&#62;" in block and "<img" not in block
        assert set(_shown_tokens(block)) == {HOSTILE}
    assert token_html("<b>\n") == "&#60;b&#62;↵"


def test_chromium_shows_hostile_token_text_as_typed_and_shades_the_tokens(latent_runs, tmp_path):
    """The real server in headless Chromium: the hostile run (newest by name, so chosen first) shows every token's
    text as typed, runs none of it, and shades the tokens."""
    from playwright.sync_api import sync_playwright
    from test_app_browser import CHROMIUM, CHROMIUM_FLAGS, INTERP, _free_port

    port = _free_port()
    server = subprocess.Popen([str(INTERP), "app", str(latent_runs), "--port", str(port)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            for _ in range(180):
                try:
                    page.goto(f"http://localhost:{port}", wait_until="domcontentloaded")
                    break
                except Exception:  # noqa: BLE001 (the server is still starting)
                    time.sleep(0.5)
            page.get_by_text("Latents", exact=True).first.click(timeout=90_000)
            shaded = page.locator("span[title]")
            shaded.first.wait_for(timeout=60_000)
            page.screenshot(path=str(tmp_path / "latents.png"), full_page=True)
            assert shaded.first.inner_text() == HOSTILE
            assert "rgba(255, 120, 0" in shaded.first.evaluate("e => getComputedStyle(e).backgroundColor")
            assert page.evaluate("window.__xss") is None and page.locator("span[title] img").count() == 0
            assert page.locator('[data-testid="stException"]').count() == 0 and not errors, errors
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=20)
