"""The served dashboard in real headless Chromium (Debian ``chromium`` + Python playwright).

Starts ``dsb serve`` in a subprocess, checks the page is offline-clean, shows a form error for
steps = 0, starts a 5-probe digits run from the page, sees the number of plotted points grow,
measures the websocket traffic, opens a second tab on the same run (still one training thread),
stops the run, finds no console errors and saves ``artifacts/dashboard.png``.
"""

from __future__ import annotations

import re
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("panel")
sync_api = pytest.importorskip("playwright.sync_api")

from dsb_widgets.ui.served import ServedDashboard, wait_for  # noqa: E402

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
FONTS = "fonts.googleapis.com"  # the Fast template's web font: fails harmlessly offline
POINTS_JS = """() => {
  if (!window.Bokeh || Bokeh.documents.length === 0) return -1;
  let n = 0;
  for (const m of Bokeh.documents[0].all_models)
    if (m.name && m.name.startsWith('src:')) n += m.data.x.length;
  return n;
}"""
SOURCES_JS = """() => [...Bokeh.documents[0].all_models].filter(m => m.name && m.name.startsWith('src:')).length"""

pytestmark = [pytest.mark.ui, pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian chromium at /usr/bin/chromium")]


def external_refs(html: str) -> list[str]:
    """src/href values of the page that point outside the server."""
    refs = re.findall(r'(?:src|href)\s*=\s*"([^"]*)"', html)
    return [r for r in refs if re.match(r"^(https?:)?//", r)]


def set_number(page: Any, label: str, value: int) -> None:
    box = page.get_by_label(label)
    box.fill(str(value))
    box.press("Enter")


def test_external_refs_helper() -> None:
    html = '<link href="static/a.css"><script src="https://cdn.x/y.js"></script><link href="//fonts.googleapis.com/css">'
    assert external_refs(html) == ["https://cdn.x/y.js", "//fonts.googleapis.com/css"]


def test_dashboard_live_run_in_chromium(tmp_path: Path) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    with ServedDashboard(tmp_path / "runs") as srv, sync_api.sync_playwright() as p:
        html = urllib.request.urlopen(srv.url + "/", timeout=120).read().decode()
        assert [r for r in external_refs(html) if FONTS not in r] == [], "page loads JS/CSS from outside"

        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1100})
        errors: list[str] = []
        outside: list[str] = []
        ws_bytes = [0]
        page.on("console", lambda m: errors.append(f"{m.text} @ {m.location.get('url', '')}")
                if m.type == "error" and FONTS not in m.location.get("url", "") else None)
        page.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))
        page.on("request", lambda r: outside.append(r.url)
                if r.url.startswith("http") and not r.url.startswith(srv.url) else None)
        page.on("websocket", lambda ws: ws.on("framereceived", lambda f: ws_bytes.__setitem__(0, ws_bytes[0] + len(f))))
        page.set_default_timeout(120_000)
        page.goto(srv.url + "/")
        page.get_by_role("button", name="Start").wait_for()

        # Bad input: a message in the page, no run, no traceback.
        set_number(page, "Steps", 0)
        page.get_by_role("button", name="Start").click()
        page.get_by_text("steps must be >= 1").wait_for()
        assert page.get_by_text("Traceback").count() == 0
        assert srv.status()["runs"] == []

        # A short 5-probe digits run (drop cqn), one seed.
        set_number(page, "Steps", 2048)
        set_number(page, "Seeds (trained together)", 1)
        page.locator("button[aria-label=\"Remove item: 'cqn'\"]").click()
        page.get_by_role("button", name="Start").click()
        page.wait_for_function(f"({POINTS_JS})() > 0", timeout=180_000)
        n1 = page.evaluate(POINTS_JS)
        b0, t0 = ws_bytes[0], time.time()
        page.wait_for_function(f"({POINTS_JS})() > {n1}", timeout=120_000)
        n2 = page.evaluate(POINTS_JS)
        assert n2 > n1 > 0
        assert page.evaluate(SOURCES_JS) == 5
        page.wait_for_timeout(max(0.0, 6.0 - (time.time() - t0)) * 1000)
        rate = (ws_bytes[0] - b0) / (time.time() - t0)
        page.screenshot(path=str(ARTIFACTS / "dashboard.png"))

        # A second tab watches the same run: no second training thread.
        tab2 = browser.new_page()
        tab2.goto(srv.url + "/")
        tab2.wait_for_function(f"({POINTS_JS})() > 0", timeout=120_000)
        st = srv.status()
        assert len(st["runs"]) == 1 and st["training_threads"] <= 1
        tab2.close()

        # Stop ends the run (the registry's stop event), the page says so.
        page.get_by_role("button", name="Stop").click()
        run = wait_for(lambda: (r := srv.status()["runs"][0])["status"] in ("stopped", "finished") and r, 120)
        page.get_by_text(f"Run run1 {run['status']}").first.wait_for()
        assert wait_for(lambda: srv.status()["training_threads"] == 0, 60)
        browser.close()
    assert errors == [], errors
    assert all(FONTS in u for u in outside), outside
    print(f"\nUI test: points {n1} -> {n2}; websocket {rate / 1024:.1f} KB/s for a 5-probe, 1-seed run; "
          f"run {run['status']} at step {run['step']}")
