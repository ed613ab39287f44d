"""The static SVG fallback of notebooks: one curve per DSB probe (never an edit probe), floors,
stars only at interior minima, points placed on log-log axes."""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET

import numpy as np
import xarray as xr

from dsb_widgets.engine.results import METRICS
from dsb_widgets.ui.colors import probe_colors
from dsb_widgets.ui.figures import static_curves_svg

NS = "{http://www.w3.org/2000/svg}"


def _ds() -> xr.Dataset:
    steps = np.array([0, 1, 3, 7, 15])
    real = np.array([2.3, 1.0, 0.5, 0.3, 0.2])
    uni = np.array([2.3, 0.8, 0.6, 0.9, 1.2])  # minimum at step 3, then rises (a U)
    ot = np.array([2.3, 5.0, 9.0, 12.0, 15.0])  # source-label loss of an edit: must not be drawn
    data = {}
    for m in METRICS:
        arr = np.stack([real, uni, ot], axis=1)[:, :, None]
        if m.startswith("target"):
            arr = np.full_like(arr, np.nan)
            arr[:, 2] = 0.5
        data[m] = (("step", "probe", "seed"), arr)
    return xr.Dataset(data, coords={"step": steps, "probe": ["real", "unigram", "ot"], "seed": [0],
                                    "probe_order": ("probe", [math.inf, 1.0, 2.0]),
                                    "floor": ("probe", [math.nan, 0.4, math.nan])})


def test_svg_draws_dsb_probes_floors_and_interior_minima() -> None:
    root = ET.fromstring(static_curves_svg(_ds(), title="t"))
    curves = [e for e in root.iter(f"{NS}polyline") if e.get("class") == "curve"]
    assert [c.get("data-probe") for c in curves] == ["real", "unigram"]  # no edit probe
    colours = probe_colors(["real", "unigram"], [math.inf, 1.0])
    assert [c.get("stroke") for c in curves] == [colours["real"], colours["unigram"]]
    assert len([e for e in root.iter(f"{NS}line") if e.get("class") == "floor"]) == 1
    stars = [e for e in root.iter(f"{NS}text") if e.get("class") == "min"]
    assert len(stars) == 1  # unigram's minimum is inside the run; real's is at the last step
    # log-log placement: x of step 3 (x = 4) is 2/4 of the way from x = 1 to x = 16
    pts = [tuple(map(float, p.split(","))) for p in curves[1].get("points").split()]
    (xa, _), (xb, _), (xe, _) = pts[0], pts[2], pts[-1]
    assert abs((xb - xa) / (xe - xa) - 0.5) < 1e-3
    assert abs(float(stars[0].get("x")) - xb) < 0.2


def test_explainers_are_plain_html_one_line_per_probe() -> None:
    from dsb_widgets.ui.plots import make_plots
    from dsb_widgets.ui.viewer import explainer_html

    text = explainer_html(make_plots(["real", "maxent3", "<b>x</b>"], [math.inf, 3.0, 1.0], [math.nan] * 3, {}))
    assert text.count("<li>") == 3
    assert "&#35;" not in text and "class&#x27;s" in text  # entities a browser decodes, not Markdown ones
    assert "<b>x</b>" not in text.replace("<b>real</b>", "").replace("<b>maxent3</b>", "")  # names escaped
