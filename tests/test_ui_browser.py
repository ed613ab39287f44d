"""The served dashboard in real headless Chromium (Debian ``chromium`` + Python playwright).

Every test here fails on ANY browser request off the machine (fonts included) and on ANY console
error or page error. ``test_dashboard_live_run_in_chromium`` starts ``dsb serve``, shows a form
error for steps = 0, starts a 5-probe digits run from the page, sees the plotted points grow,
measures the websocket traffic, opens a saved run twice from the Compare panel (one overlay, no
error), opens a second tab on the same run (still one training thread), stops the run, checks
the one status line at 700 px and saves ``artifacts/dashboard.png``.
``test_default_run_screenshots`` (slow) serves each experiment's *default* run to its end and
saves ``artifacts/dashboard-<experiment>.png`` (the DSB panel, edit panel, floors, explainers).
"""

from __future__ import annotations

import json
import math
import os
import re
import time
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import pytest

pytest.importorskip("panel")
sync_api = pytest.importorskip("playwright.sync_api")

from dsb_widgets.ui.served import ServedDashboard, wait_for  # noqa: E402

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")
POINTS_JS = """() => {
  if (!window.Bokeh || Bokeh.documents.length === 0) return -1;
  let n = 0;
  for (const m of Bokeh.documents[0].all_models)
    if (m.name && m.name.startsWith('src:')) n += m.data.x.length;
  return n;
}"""
OVERLAYS_JS = """() => [...Bokeh.documents[0].all_models]
  .filter(m => m.name && m.name.startsWith('overlay:saved-a:') && m.data !== undefined).length"""
SOURCES_JS = """() => [...Bokeh.documents[0].all_models].filter(m => m.name && m.name.startsWith('src:')).length"""

pytestmark = [pytest.mark.ui,
              pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian chromium at /usr/bin/chromium")]


def external_refs(html: str) -> list[str]:
    """src/href values of the page that point outside the server."""
    refs = re.findall(r'(?:src|href)\s*=\s*"([^"]*)"', html)
    return [r for r in refs if re.match(r"^(https?:)?//", r)
            and urlparse(r if ":" in r.split("//")[0] else "http:" + r).hostname not in LOCAL_HOSTS]


def off_machine(url: str) -> bool:
    """True for a request the browser makes to any host but this machine (data:/blob: are local)."""
    parsed = urlparse(url)
    return parsed.scheme in ("http", "https", "ws", "wss") and parsed.hostname not in LOCAL_HOSTS


def set_number(page: Any, label: str, value: int) -> None:
    box = page.get_by_label(label)
    box.fill(str(value))
    box.press("Enter")


class Watch:
    """Console errors, page errors, off-machine requests and websocket bytes of one browser page."""

    def __init__(self, page: Any) -> None:
        self.errors: list[str] = []
        self.outside: list[str] = []
        self.ws_bytes = 0
        page.on("console", lambda m: self.errors.append(f"{m.text} @ {m.location.get('url', '')}")
                if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(f"pageerror: {e}"))
        page.on("request", lambda r: self.outside.append(r.url) if off_machine(r.url) else None)
        page.on("websocket", self._socket)

    def _socket(self, ws: Any) -> None:
        if off_machine(ws.url):
            self.outside.append(ws.url)
        ws.on("framereceived", lambda f: setattr(self, "ws_bytes", self.ws_bytes + len(f)))

    def check(self) -> None:
        assert self.outside == [], f"requests off the machine: {self.outside}"
        assert self.errors == [], f"console errors: {self.errors}"


def test_helpers() -> None:
    html = ('<link href="static/a.css"><script src="https://cdn.x/y.js"></script>'
            '<link href="//fonts.googleapis.com/css">'
            '<script src="http://127.0.0.1:5006/static/z.js"></script>')
    assert external_refs(html) == ["https://cdn.x/y.js", "//fonts.googleapis.com/css"]
    assert off_machine("https://fonts.gstatic.com/x.woff2") and off_machine("ws://example.org/ws")
    assert not off_machine("http://127.0.0.1:5006/static/a.js") and not off_machine("data:font/woff2;base64,AA")


def _saved_run(path: Path) -> None:
    """A small finished run file for the Compare panel (two probes, three checkpoints)."""
    import xarray as xr

    from dsb_widgets.engine.results import METRICS, write_atomic

    shape = (3, 2, 1)
    data = {m: (("step", "probe", "seed"), np.full(shape, np.nan) if m.startswith("target")
                else np.array([[[2.3], [2.3]], [[1.0], [0.5]], [[0.8], [0.9]]])) for m in METRICS}
    data["train_loss"] = (("step", "seed"), np.ones((3, 1)))
    ds = xr.Dataset(data, coords={"step": [0, 64, 512], "probe": ["real", "maxent1"], "seed": [0],
                                  "wall_time": ("step", [0.0, 1.0, 2.0]), "probe_order": ("probe", [math.inf, 1.0]),
                                  "floor": ("probe", [math.nan, math.nan])},
                    attrs={"config": json.dumps({"experiment": "images", "steps": 512, "lr": 0.01})})
    write_atomic(ds, path)


def test_dashboard_live_run_in_chromium(tmp_path: Path) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    _saved_run(tmp_path / "runs" / "saved-a.nc")
    with ServedDashboard(tmp_path / "runs") as srv, sync_api.sync_playwright() as p:
        html = urllib.request.urlopen(srv.url + "/", timeout=120).read().decode()
        assert external_refs(html) == [], "page loads JS/CSS/fonts from outside"
        assert "googleapis" not in html

        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1100})
        watch = Watch(page)
        page.set_default_timeout(120_000)
        page.goto(srv.url + "/")
        page.get_by_role("button", name="Start").wait_for()

        # Bad input: a message in the page, no run, no traceback.
        set_number(page, "Steps", 0)
        page.get_by_role("button", name="Start").click()
        page.get_by_text("steps must be >= 1").wait_for()
        assert page.get_by_text("Traceback").count() == 0
        assert srv.status()["runs"] == []

        # A short 5-probe digits run (real, maxent1, maxent2, gauss_clone, ot), one seed.
        set_number(page, "Steps", 2048)
        set_number(page, "Seeds (trained together)", 1)
        for name in ("cqn", "maxent3"):
            remove = page.locator(f"button[aria-label=\"Remove item: '{name}'\"]")
            if remove.count():
                remove.click()
        page.get_by_role("button", name="Start").click()
        page.wait_for_function(f"({POINTS_JS})() > 0", timeout=240_000)
        n1 = page.evaluate(POINTS_JS)
        b0, t0 = watch.ws_bytes, time.time()
        page.wait_for_function(f"({POINTS_JS})() > {n1}", timeout=180_000)
        n2 = page.evaluate(POINTS_JS)
        assert n2 > n1 > 0
        assert page.evaluate(SOURCES_JS) == 5
        page.wait_for_timeout(max(0.0, 6.0 - (time.time() - t0)) * 1000)
        rate = (watch.ws_bytes - b0) / (time.time() - t0)
        assert page.get_by_text("DSB panel").count() >= 1 and page.get_by_text("TARGET label").count() >= 1
        page.get_by_text("What each probe keeps").wait_for()

        # Compare: the saved run is selected (not a blank box); opening it twice = one overlay.
        page.get_by_role("button", name="Open").click()
        page.get_by_text("Overlaid saved-a").wait_for()
        page.wait_for_function(f"({OVERLAYS_JS})() === 2")  # real, maxent1
        page.get_by_role("button", name="Open").click()
        page.wait_for_timeout(3000)
        page.wait_for_function(f"({OVERLAYS_JS})() === 2")  # replaced, not drawn twice
        page.get_by_text("Compare (line style = run").wait_for()
        assert page.get_by_text("_pending_writes").count() == 0
        page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)

        # A second tab watches the same run: no second training thread.
        tab2 = browser.new_page()
        watch2 = Watch(tab2)
        tab2.goto(srv.url + "/")
        tab2.wait_for_function(f"({POINTS_JS})() > 0", timeout=120_000)
        st = srv.status()
        assert len(st["runs"]) == 1 and st["training_threads"] <= 1
        tab2.close()

        # Stop ends the run (the registry's stop event), the one status line says so.
        page.get_by_role("button", name="Stop").click()
        run = wait_for(lambda: (r := srv.status()["runs"][0])["status"] in ("stopped", "finished") and r, 120)
        page.get_by_text(f"Run run1 {run['status']}").first.wait_for()
        assert wait_for(lambda: srv.status()["training_threads"] == 0, 60)
        if run["status"] == "stopped":
            page.get_by_role("button", name="Resume").wait_for()

        # Downloads: the run's netCDF and a long CSV (one row per step, probe and seed).
        with page.expect_download() as got:
            page.get_by_role("button", name="CSV").click()
        csv = Path(got.value.path()).read_text().splitlines()
        assert csv[0].startswith("step,probe,seed") and len(csv) > 5 * 2, csv[:3]
        with page.expect_download() as got:
            page.get_by_role("button", name="netCDF").click()
        assert Path(got.value.path()).read_bytes()[:3] == b"CDF"

        # 700 px wide: the status line wraps into a few lines, not one character per line.
        page.set_viewport_size({"width": 700, "height": 1000})
        page.wait_for_timeout(1000)
        status = page.locator(".bk-panel-models-markup-HTML, div").filter(has_text=f"Run run1 {run['status']}")
        box = status.last.bounding_box()
        assert box is not None and box["width"] > 200, box
        page.screenshot(path=str(ARTIFACTS / "dashboard-700px.png"))
        browser.close()
    watch.check()
    watch2.check()
    print(f"\nUI test: points {n1} -> {n2}; websocket {rate / 1024:.1f} KB/s for a 5-probe, 1-seed run; "
          f"run {run['status']} at step {run['step']}")


DEFAULT_RUNS = {"images": {"experiment": "images"},
                "text": {"experiment": "text"}}


def test_upload_over_the_limit_is_refused_in_the_browser(tmp_path: Path) -> None:
    """A 25 MB file is refused by the page itself (nothing sent, socket kept: before, a file over
    ~48 MB dropped the connection without a word); a small valid run uploaded next still opens."""
    from dsb_widgets.ui.safety import MAX_UPLOAD_BYTES

    big, small = tmp_path / "big.nc", tmp_path / "saved-b.nc"
    big.write_bytes(b"CDF\x01" + bytes(MAX_UPLOAD_BYTES + 5 * 2**20))
    _saved_run(small)
    (tmp_path / "runs").mkdir()
    with ServedDashboard(tmp_path / "runs") as srv, sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1100})
        watch, sent = Watch(page), [0]
        page.on("websocket", lambda ws: ws.on("framesent", lambda f: sent.__setitem__(0, sent[0] + len(f))))
        page.set_default_timeout(120_000)
        page.goto(srv.url + "/")
        page.get_by_role("button", name="Start").wait_for()
        upload = page.locator("input[type=file]").first
        before = sent[0]
        upload.set_input_files(str(big))
        page.get_by_text("File is too large").first.wait_for()
        page.get_by_text("Maximum file size is 20 MB").first.wait_for()
        page.wait_for_timeout(2000)
        assert sent[0] - before < 2**20, f"{sent[0] - before} bytes sent for a refused file"
        page.locator(".filepond--action-remove-item").first.click()  # clear the refused file
        upload.set_input_files(str(small))
        page.get_by_text("Overlaid saved-b").wait_for()  # the socket survived: the answer arrives
        browser.close()
        watch.check()


@pytest.mark.slow
@pytest.mark.parametrize("experiment", sorted(DEFAULT_RUNS))
def test_default_run_screenshots(tmp_path: Path, experiment: str) -> None:
    """Each experiment's default run, served to its end and screenshotted (minutes on 2 cores).
    ``DSB_SCREENSHOT_STEPS`` shortens the runs for a quick look."""
    if experiment == "text" and not os.environ.get("DSB_DATA_DIR"):
        pytest.skip("the text default (TinyStories) needs DSB_DATA_DIR")
    run = dict(DEFAULT_RUNS[experiment])
    if os.environ.get("DSB_SCREENSHOT_STEPS"):
        run["steps"] = int(os.environ["DSB_SCREENSHOT_STEPS"])
    ARTIFACTS.mkdir(exist_ok=True)
    with ServedDashboard(tmp_path / "runs", run=run, startup_timeout=600) as srv, sync_api.sync_playwright() as p:
        done = wait_for(lambda: (r := srv.status()["runs"][0])["status"] in ("finished", "failed", "stopped") and r,
                        3600, every=5)
        assert done["status"] == "finished", srv.log()
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1500, "height": 2300})  # the whole main area, no scrolling
        watch = Watch(page)
        page.set_default_timeout(120_000)
        page.goto(srv.url + "/")
        page.wait_for_function(f"({POINTS_JS})() > 0", timeout=120_000)
        page.get_by_text("What each probe keeps").wait_for()
        page.wait_for_timeout(3000)
        page.screenshot(path=str(ARTIFACTS / f"dashboard-{experiment}.png"), full_page=True)
        floors = page.evaluate("""() => [...Bokeh.documents[0].all_models]
            .filter(m => m.name && m.name.startsWith('floor:')).length""")
        mins = page.evaluate("""() => [...Bokeh.documents[0].all_models]
            .filter(m => m.name && m.name.startsWith('min:') && m.data && m.data.x && m.data.x.length === 1).length""")
        browser.close()
    watch.check()
    assert mins >= 2  # every DSB probe's minimum starred
    if experiment == "text":
        assert floors >= 2  # unigram/bigram/trigram floors drawn (as line renderers, inside the y range)
