"""Bokeh figures of the live dashboard, one panel per probe family (:mod:`dsb_widgets.ui.probes`).

- **DSB panel** (``loss``): loss of real data and of the probes that keep only low-order
  statistics (max-ent, Gaussian clone, n-grams, clones), log-y by default so a U-shape from
  0.019 to 0.028 is as visible as one from 2 to 3; each probe's minimum starred; n-gram floors
  (entropy rates) dotted, drawn as line renderers so the y range includes them and the legend
  shows their dotted sample. Taylor predictions, when recorded, dashed.
- **accuracy** (``acc``): the same probes' accuracy on their own labels.
- **Edit panel** (``edit_acc``, ``edit_loss``): OT/CQN-edited images scored on their *target*
  label (Belrose et al., ICML 2024: accuracy on the target rises, then falls). Their loss on the
  source label is deliberately not drawn: it climbs to 10-60 nats exactly when the edit works,
  and next to the DSB probes it reads as the opposite of what it means.

One ``ColumnDataSource`` per probe (columns :data:`dsb_widgets.ui.stream.COLUMNS`) feeds all
figures; the viewer appends with ``source.stream(payload, rollover)``, so only new points cross
the websocket (NOTES.md: ~19x less traffic than re-sending Plotly traces). Encoding: x = step + 1
on a log axis; line = mean across seeds, band = min..max or +/- std; colour from
:mod:`dsb_widgets.ui.colors` (order family, distinct hues within it; real black); dashed =
saved runs overlaid from netCDF. Hover (``mode="vline"``) lists every probe at the hovered step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import xarray as xr
from bokeh.models import ColumnDataSource, HoverTool, Legend, LegendItem, Range1d
from bokeh.plotting import figure

from dsb_widgets.engine.results import probe_kinds
from dsb_widgets.ui.probes import kind_of
from dsb_widgets.ui.stream import ProbeStyle, empty_columns, probe_styles, summarize_saved

X_LABEL = "training step + 1 (log scale)"
HEIGHT = 380
EDIT_NAMES = ("ot", "cqn", "shift")


def _figure(title: str, y_label: str, name: str, log_y: bool = False, height: int = HEIGHT) -> figure:
    fig = figure(title=title, x_axis_type="log", y_axis_type="log" if log_y else "linear",
                 x_axis_label=X_LABEL, y_axis_label=y_label, height=height, sizing_mode="stretch_width",
                 tools="pan,wheel_zoom,box_zoom,reset,save", name=name, output_backend="canvas")
    fig.add_layout(Legend(click_policy="hide", label_text_font_size="9pt", spacing=0), "right")
    fig.toolbar.logo = None
    return fig


def placeholder(message: str) -> figure:
    """An empty log-x figure shown before the first checkpoint arrives (or with no run)."""
    fig = figure(title=message, x_axis_type="log", x_axis_label=X_LABEL, height=HEIGHT,
                 sizing_mode="stretch_width", toolbar_location=None, name="placeholder")
    fig.x_range = Range1d(1, 4096)
    fig.y_range = Range1d(0, 1)
    fig.line([], [])  # an empty renderer: Bokeh warns about figures with none
    return fig


@dataclass
class CurvePlots:
    """The live figures and their per-probe sources. ``edit_acc``/``edit_loss`` are None when
    the run has no edit probes; ``mins[p]`` holds probe p's starred minimum (one point)."""

    loss: figure
    acc: figure
    sources: dict[str, ColumnDataSource]
    styles: dict[str, ProbeStyle]
    kinds: dict[str, str] = field(default_factory=dict)
    edit_acc: figure | None = None
    edit_loss: figure | None = None
    div: figure | None = None  # KL/JS to n-gram predictors (text), when recorded
    mins: dict[str, ColumnDataSource] = field(default_factory=dict)
    floors: dict[str, ColumnDataSource] = field(default_factory=dict)
    overlays: list[str] = field(default_factory=list)  # labels of saved runs drawn dashed

    @property
    def figures(self) -> list[figure]:
        return [f for f in (self.loss, self.acc, self.edit_acc, self.edit_loss, self.div) if f is not None]


def _legend(fig: figure) -> Legend:
    return fig.select_one(Legend)


def _hover(fig: figure, renderers: list, tooltips: list[tuple[str, str]]) -> None:
    if renderers:
        fig.add_tools(HoverTool(renderers=renderers, mode="vline", tooltips=tooltips))


def _curve(fig: figure, src: ColumnDataSource, st: ProbeStyle, y: str, lo: str | None, hi: str | None,
           name: str, label: str, alpha: float = 0.15) -> object:
    """Band + line + markers of one probe's column ``y``; returns the line (hover target)."""
    rs = []
    if lo and hi:
        rs.append(fig.varea("x", lo, hi, source=src, fill_color=st.color, fill_alpha=alpha))
    line = fig.line("x", y, source=src, line_color=st.color, line_width=2, line_dash=st.dash, name=name)
    rs += [line, fig.scatter("x", y, source=src, marker=st.marker, color=st.color, size=5)]
    _legend(fig).items.append(LegendItem(label=label, renderers=rs))
    return line


def make_plots(probes: Sequence[str], orders: Sequence[float], floors: Sequence[float],
               has_target: Mapping[str, bool], band: str = "minmax", title: str = "",
               x_max: float | None = None, log_y: bool = True,
               kinds: Mapping[str, str] | None = None, edit_panel: bool = False) -> CurvePlots:
    """Figures for one run. ``has_target[p]``: probe p has a target label (an edit probe);
    ``kinds`` overrides the family; ``x_max``: the run's last step + 1 (floor lines span it);
    ``edit_panel``: draw the edit figures even without live edit probes (saved runs have some)."""
    band_text = "min..max over seeds" if band == "minmax" else "mean +/- std over seeds"
    kinds = dict(kinds or {p: kind_of(p, bool(has_target.get(p)) or p in EDIT_NAMES) for p in probes})
    loss = _figure(f"DSB panel: probe loss {title}".strip() + f"  (line: seed mean; band: {band_text}; "
                   "star: minimum)", "cross-entropy (nats" + (", log scale)" if log_y else ")"), "loss_figure", log_y)
    acc = _figure("Accuracy on each probe's own labels", "accuracy", "accuracy_figure", height=300)
    acc.y_range = Range1d(-0.02, 1.02)
    edits = [p for p in probes if kinds.get(p) == "edit"]
    edit_acc = edit_loss = None
    if edits or edit_panel:
        edit_acc = _figure("Edit panel: accuracy on the TARGET label b", "target-label accuracy", "edit_acc_figure",
                           height=300)
        edit_acc.y_range = Range1d(-0.02, 1.02)
        edit_loss = _figure("Edit panel: loss on the TARGET label b", "target-label loss (nats, log scale)",
                            "edit_loss_figure", log_y=True, height=300)
    div = None
    if any(kinds.get(p) == "divergence" for p in probes):
        div = _figure("Divergence of the model from the train n-gram predictors on real text (KL solid, JS dashed)",
                      "nats/token (log scale)", "divergence_figure", log_y=True, height=300)
    plots = CurvePlots(loss, acc, {}, probe_styles(probes, orders), kinds, edit_acc, edit_loss, div)
    hov: dict[str, list] = {"loss": [], "acc": [], "eacc": [], "eloss": [], "div": []}
    xs = [1.0, float(x_max) if x_max else 4096.0]
    for probe, floor in zip(probes, floors):
        st = plots.styles[probe]
        src = ColumnDataSource(data=empty_columns(), name=f"src:{probe}")
        plots.sources[probe] = src
        if kinds.get(probe) == "edit":
            assert edit_acc is not None and edit_loss is not None
            hov["eacc"].append(_curve(edit_acc, src, st, "tacc", "tacc_lo", "tacc_hi", probe, f"{probe} -> target"))
            hov["eloss"].append(_curve(edit_loss, src, st, "tloss", None, None, probe, f"{probe} -> target"))
            continue
        if kinds.get(probe) == "divergence":
            assert div is not None
            dash = "dashed" if probe.startswith("js_") else "solid"
            st = ProbeStyle(st.probe, st.order, st.color, st.marker, probe, dash)
            hov["div"].append(_curve(div, src, st, "loss", "loss_lo", "loss_hi", probe, probe))
            continue
        hov["loss"].append(_curve(loss, src, st, "loss", "loss_lo", "loss_hi", probe, st.label))
        mins = ColumnDataSource(dict(x=[], y=[], step=[]), name=f"min:{probe}")
        plots.mins[probe] = mins
        loss.scatter("x", "y", source=mins, marker="star", size=15, color=st.color, line_color="white",
                     name=f"min:{probe}")
        if floor is not None and math.isfinite(floor):
            fsrc = ColumnDataSource(dict(x=xs, y=[float(floor)] * 2), name=f"floor:{probe}")
            plots.floors[probe] = fsrc
            fr = loss.line("x", "y", source=fsrc, line_dash="dotted", line_color=st.color, line_width=2,
                           name=f"floor:{probe}")
            _legend(loss).items.append(LegendItem(label=f"{probe} floor {floor:.3g}", renderers=[fr]))
        if kinds.get(probe) == "dsb":
            hov["acc"].append(_curve(acc, src, st, "acc", "acc_lo", "acc_hi", probe, st.label, 0.12))
    _hover(loss, hov["loss"], [("probe", "$name"), ("step", "@step{0}"), ("loss", "@loss{0.0000}"),
                               ("seeds", "@loss_lo{0.000} .. @loss_hi{0.000}")])
    _hover(acc, hov["acc"], [("probe", "$name"), ("step", "@step{0}"), ("accuracy", "@acc{0.000}")])
    if div is not None:
        _hover(div, hov["div"], [("probe", "$name"), ("step", "@step{0}"), ("nats/token", "@loss{0.0000}")])
    if edit_acc is not None and edit_loss is not None:
        _hover(edit_acc, hov["eacc"], [("probe", "$name"), ("step", "@step{0}"), ("target acc", "@tacc{0.000}")])
        _hover(edit_loss, hov["eloss"], [("probe", "$name"), ("step", "@step{0}"), ("target loss", "@tloss{0.000}")])
    return plots


def update_minimum(plots: CurvePlots, probe: str, x: np.ndarray, loss: np.ndarray) -> None:
    """Star probe's lowest seed-mean loss (of all points so far, ``x``/``loss`` raw values) once
    the curve has risen after it; a curve whose lowest point is its newest is still falling: no star."""
    src = plots.mins.get(probe)
    if src is None or len(loss) == 0 or not np.isfinite(loss).any():
        return
    i = int(np.nanargmin(loss))
    if i == len(loss) - 1:
        if len(src.data["x"]):
            src.data = dict(x=[], y=[], step=[])
        return
    src.data = dict(x=[float(x[i])], y=[float(loss[i])], step=[float(x[i]) - 1])


def add_saved_overlay(plots: CurvePlots, ds: xr.Dataset, label: str, band: str = "minmax",
                      dash: str = "dashed") -> int:
    """Draw a saved run (``load_results`` layout) over the live figures; returns #probes.

    Static: its sources are never streamed. DSB probes' loss on the DSB panel, edit probes'
    target-label accuracy/loss on the edit panel (when the figures have one).
    """
    x = np.asarray(ds["step"].values, dtype=np.float64) + 1.0  # (T,)
    probes = [str(p) for p in ds["probe"].values]
    orders = [float(o) for o in ds["probe_order"].values]
    colors = {p: s.color for p, s in probe_styles(probes, orders).items()}
    kinds = probe_kinds(ds)
    r_loss, r_acc, r_edit = [], [], []
    for probe in probes:
        color = colors[probe]

        def summary(var: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            if var not in ds:
                nan = np.full(len(x), np.nan)
                return nan, nan, nan
            return summarize_saved(ds[var].sel(probe=probe).transpose("step", "seed").values, band)  # noqa: B023

        name = f"{label}: {probe}"
        if kinds[probe] == "edit":
            if plots.edit_acc is None or plots.edit_loss is None:
                continue
            m, _, _ = summary("target_accuracy")
            tl, _, _ = summary("target_loss")
            src = ColumnDataSource(dict(x=x, step=x - 1, tacc=m, tloss=tl), name=f"overlay:{label}:{probe}")
            r_edit += [plots.edit_acc.line("x", "tacc", source=src, line_color=color, line_width=1.5,
                                           line_dash=dash, name=name),
                       plots.edit_loss.line("x", "tloss", source=src, line_color=color, line_width=1.5,
                                            line_dash=dash, name=name)]
            continue
        if kinds[probe] == "divergence":
            if plots.div is not None:
                m, _, _ = summary("loss")
                src = ColumnDataSource(dict(x=x, step=x - 1, loss=m), name=f"overlay:{label}:{probe}")
                plots.div.line("x", "loss", source=src, line_color=color, line_width=1.5, line_dash=dash, name=name)
            continue
        m, lo, hi = summary("loss")
        am, _, _ = summary("accuracy")
        src = ColumnDataSource(dict(x=x, step=x - 1, loss=m, loss_lo=lo, loss_hi=hi, acc=am),
                               name=f"overlay:{label}:{probe}")
        r_loss += [plots.loss.varea("x", "loss_lo", "loss_hi", source=src, fill_color=color, fill_alpha=0.06),
                   plots.loss.line("x", "loss", source=src, line_color=color, line_width=1.5, line_dash=dash,
                                   name=name)]
        r_acc.append(plots.acc.line("x", "acc", source=src, line_color=color, line_width=1.5, line_dash=dash,
                                    name=name))
    text = f"saved {label} ({dash})"
    _legend(plots.loss).items.append(LegendItem(label=text, renderers=r_loss))
    _legend(plots.acc).items.append(LegendItem(label=text, renderers=r_acc))
    if r_edit and plots.edit_acc is not None and plots.edit_loss is not None:
        _legend(plots.edit_acc).items.append(LegendItem(label=text, renderers=r_edit[0::2]))
        _legend(plots.edit_loss).items.append(LegendItem(label=text, renderers=r_edit[1::2]))
    plots.overlays.append(label)
    return len(probes)


def overlay_label(path: str | Path) -> str:
    return Path(path).stem
