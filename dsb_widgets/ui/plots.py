"""Bokeh figures of the live dashboard: loss and accuracy per probe, coloured by interaction order.

One ``ColumnDataSource`` per probe (columns :data:`dsb_widgets.ui.stream.COLUMNS`) feeds both
figures; the viewer appends to it with ``source.stream(payload, rollover)``, so only new points
cross the websocket (measured in NOTES.md: ~19x less traffic than re-sending Plotly traces).

Encoding (Belrose et al., ICML 2024, Fig. 1-3): x = step + 1 on a log axis; solid line = mean
across seeds with a shaded band (min..max or +/- std across seeds); colour = interaction order
(:func:`dsb_widgets.ui.stream.order_color`, real data black); marker = which probe among those
of equal order; dotted horizontal line = the probe's loss floor when finite (entropy rate of an
n-gram probe); dash-dot = accuracy on the *target* label of OT/CQN-edited images; dashed =
saved runs overlaid from netCDF.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import xarray as xr
from bokeh.models import ColumnDataSource, HoverTool, Legend, LegendItem, Range1d, Span
from bokeh.plotting import figure

from dsb_widgets.ui.stream import ProbeStyle, empty_columns, order_color, probe_styles, summarize_saved

X_LABEL = "training step + 1 (log scale; step 0 is drawn at x = 1)"
HEIGHT = 360


def _figure(title: str, y_label: str, name: str) -> figure:
    fig = figure(title=title, x_axis_type="log", x_axis_label=X_LABEL, y_axis_label=y_label,
                 height=HEIGHT, sizing_mode="stretch_width", tools="pan,wheel_zoom,box_zoom,reset,save",
                 name=name, output_backend="canvas")
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
    """The two live figures and their per-probe sources."""

    loss: figure
    acc: figure
    sources: dict[str, ColumnDataSource]
    styles: dict[str, ProbeStyle]
    overlays: list[str] = field(default_factory=list)  # labels of saved runs drawn dashed


def _legend(fig: figure) -> Legend:
    return fig.select_one(Legend)


def make_plots(probes: Sequence[str], orders: Sequence[float], floors: Sequence[float],
               has_target: Mapping[str, bool], band: str = "minmax", title: str = "") -> CurvePlots:
    """Figures for one run. ``has_target[p]``: draw the target-label accuracy of probe p."""
    band_text = "min..max over seeds" if band == "minmax" else "mean +/- std over seeds"
    loss = _figure(f"Probe loss {title}".strip() + f"  (line: seed mean; band: {band_text})",
                   "cross-entropy (nats)", "loss_figure")
    acc = _figure("Probe accuracy (solid) and accuracy on the edited target label (dash-dot)",
                  "accuracy", "accuracy_figure")
    acc.y_range = Range1d(-0.02, 1.02)
    styles = probe_styles(probes, orders)
    sources: dict[str, ColumnDataSource] = {}
    hover_loss, hover_acc = [], []
    for probe, floor in zip(probes, floors):
        st = styles[probe]
        src = ColumnDataSource(data=empty_columns(), name=f"src:{probe}")
        sources[probe] = src
        rl = [loss.varea("x", "loss_lo", "loss_hi", source=src, fill_color=st.color, fill_alpha=0.15),
              loss.line("x", "loss", source=src, line_color=st.color, line_width=2),
              loss.scatter("x", "loss", source=src, marker=st.marker, color=st.color, size=6, name=probe)]
        hover_loss.append(rl[2])
        _legend(loss).items.append(LegendItem(label=st.label, renderers=rl))
        if floor is not None and math.isfinite(floor):
            loss.add_layout(Span(location=float(floor), dimension="width", line_dash="dotted",
                                 line_color=st.color, line_width=1.5))
            dummy = loss.line([], [], line_dash="dotted", line_color=st.color, line_width=1.5)
            _legend(loss).items.append(LegendItem(label=f"{probe} floor {floor:.3g}", renderers=[dummy]))
        ra = [acc.varea("x", "acc_lo", "acc_hi", source=src, fill_color=st.color, fill_alpha=0.12),
              acc.line("x", "acc", source=src, line_color=st.color, line_width=2),
              acc.scatter("x", "acc", source=src, marker=st.marker, color=st.color, size=6, name=probe)]
        hover_acc.append(ra[2])
        _legend(acc).items.append(LegendItem(label=st.label, renderers=ra))
        if has_target.get(probe, False):
            rt = [acc.line("x", "tacc", source=src, line_color=st.color, line_width=2, line_dash="dashdot"),
                  acc.scatter("x", "tacc", source=src, marker=st.marker, color=st.color, size=5,
                              fill_color="white", name=f"{probe} -> target")]
            hover_acc.append(rt[1])
            _legend(acc).items.append(LegendItem(label=f"{probe}: target label", renderers=rt))
    loss.add_tools(HoverTool(renderers=hover_loss, tooltips=[("probe", "$name"), ("step", "@step{0}"),
                                                               ("loss", "@loss{0.000}"),
                                                               ("band", "@loss_lo{0.000} .. @loss_hi{0.000}")]))
    acc.add_tools(HoverTool(renderers=hover_acc, tooltips=[("probe", "$name"), ("step", "@step{0}"),
                                                             ("accuracy", "@acc{0.000}"), ("target acc", "@tacc{0.000}")]))
    return CurvePlots(loss, acc, sources, styles)


def add_saved_overlay(plots: CurvePlots, ds: xr.Dataset, label: str, band: str = "minmax") -> int:
    """Draw a saved run (``load_results`` layout) dashed over the live figures; returns #probes.

    Static: its sources are never streamed. Mean and band across seeds as in the live curves.
    """
    x = np.asarray(ds["step"].values, dtype=np.float64) + 1.0  # (T,)
    orders = [float(o) for o in ds["probe_order"].values]
    renderers_loss, renderers_acc = [], []
    for probe, order in zip(ds["probe"].values, orders):
        color = order_color(order)
        m, lo, hi = summarize_saved(ds["loss"].sel(probe=probe).transpose("step", "seed").values, band)
        am, alo, ahi = summarize_saved(ds["accuracy"].sel(probe=probe).transpose("step", "seed").values, band)
        src = ColumnDataSource(dict(x=x, step=x - 1, loss=m, loss_lo=lo, loss_hi=hi, acc=am, acc_lo=alo,
                                    acc_hi=ahi), name=f"overlay:{label}:{probe}")
        name = f"{label}: {probe}"
        renderers_loss += [plots.loss.varea("x", "loss_lo", "loss_hi", source=src, fill_color=color, fill_alpha=0.06),
                           plots.loss.line("x", "loss", source=src, line_color=color, line_width=1.5,
                                           line_dash="dashed", name=name)]
        renderers_acc += [plots.acc.line("x", "acc", source=src, line_color=color, line_width=1.5,
                                         line_dash="dashed", name=name)]
    _legend(plots.loss).items.append(LegendItem(label=f"saved {label} (dashed)", renderers=renderers_loss))
    _legend(plots.acc).items.append(LegendItem(label=f"saved {label} (dashed)", renderers=renderers_acc))
    plots.overlays.append(label)
    return len(orders)


def overlay_label(path: str | Path) -> str:
    return Path(path).stem
