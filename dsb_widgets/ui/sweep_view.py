"""Sweep results in the dashboard: mean +/- spread over seeds, one small figure per grid cell.

A sweep (``dsb_widgets.sweep``) merges its runs into one netCDF with the run layout's dims
(``step``, ``probe``, ``seed``) plus one extra dimension per grid axis (e.g. ``model``, ``lr``,
``dataset``). :func:`facet_cells` splits such a Dataset into its cells (one per combination of
the extra dims, optionally restricted by ``fixed``), :func:`facet_curves` reduces a cell over the
seed axis, and :class:`SweepView` draws a grid of log-step figures (curves coloured by
interaction order as in the live view, Belrose et al., ICML 2024, Fig. 1) with one selector per
extra dim. Cells whose runs are missing (all NaN: failed or not yet run) are left out.
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import panel as pn
import param
import xarray as xr
from bokeh.models import ColumnDataSource, HoverTool, Legend, LegendItem
from bokeh.plotting import figure

from dsb_widgets.ui.safety import code, esc
from dsb_widgets.ui.stream import order_label, probe_styles, summarize_saved

CORE_DIMS = ("step", "probe", "seed")
ALL = "all"
MAX_FACETS = 12  # figures drawn at once; narrow the selectors to see the others


def extra_dims(ds: xr.Dataset, metric: str = "loss") -> tuple[str, ...]:
    """Dims of ``ds[metric]`` beyond (step, probe, seed), in the Dataset's order."""
    if metric not in ds:
        raise ValueError(f"no variable {metric!r} in this file; is it a dsb run or sweep result?")
    missing = [d for d in CORE_DIMS if d not in ds[metric].dims]
    if missing:
        raise ValueError(f"{metric!r} lacks dims {missing}; expected (step, probe, seed) plus grid axes")
    return tuple(str(d) for d in ds[metric].dims if d not in CORE_DIMS)


def _coord_text(value: Any) -> str:
    if isinstance(value, (float, np.floating)):
        return f"{float(value):g}"
    return str(value.item() if isinstance(value, np.generic) else value)


@dataclass(frozen=True)
class Cell:
    """One grid cell: its coordinates on the extra dims and the (step, probe, seed) sub-Dataset."""

    coords: Mapping[str, Any]
    data: xr.Dataset

    @property
    def title(self) -> str:
        return ", ".join(f"{k}={_coord_text(v)}" for k, v in self.coords.items()) or "all runs"


def facet_cells(ds: xr.Dataset, fixed: Mapping[str, Any] | None = None, metric: str = "loss") -> list[Cell]:
    """The cells of a sweep result, one per combination of extra-dim values (``fixed`` filters).

    ``fixed[dim] = value`` keeps only that value (compared as text, so selector strings work);
    ``fixed[dim] = "all"`` or absent keeps all. Cells with no finite ``metric`` value are dropped.
    A plain run (no extra dims) gives one cell.
    """
    dims = extra_dims(ds, metric)
    fixed = dict(fixed or {})
    unknown = set(fixed) - set(dims)
    if unknown:
        raise ValueError(f"cannot fix {sorted(unknown)}: the result's extra dims are {list(dims)}")
    choices = []
    for d in dims:
        values = list(ds[d].values)
        want = fixed.get(d, ALL)
        if want != ALL:
            values = [v for v in values if _coord_text(v) == _coord_text(want)]
            if not values:
                raise ValueError(f"{d}={want!r} is not in the result; choose one of "
                                 f"{[_coord_text(v) for v in ds[d].values]}")
        choices.append(values)
    cells = []
    for combo in itertools.product(*choices):
        coords = dict(zip(dims, combo))
        sub = ds.sel(coords) if coords else ds
        if np.isfinite(sub[metric].values).any():
            cells.append(Cell({d: (v.item() if isinstance(v, np.generic) else v) for d, v in coords.items()}, sub))
    return cells


@dataclass(frozen=True)
class Curve:
    """Seed summary of one probe in one cell: x = step + 1 (T,), mean / lo / hi (T,)."""

    probe: str
    order: float
    floor: float
    x: np.ndarray
    mean: np.ndarray
    lo: np.ndarray
    hi: np.ndarray


def facet_curves(cell: xr.Dataset, metric: str = "loss", band: str = "std") -> list[Curve]:
    """Mean and spread (``band``: "std" = mean +/- std, "minmax") over the seed axis, per probe."""
    x = np.asarray(cell["step"].values, dtype=np.float64) + 1.0
    floors = cell["floor"].values if "floor" in cell.coords else np.full(cell.sizes["probe"], np.nan)
    out = []
    for i, probe in enumerate(cell["probe"].values):
        arr = cell[metric].isel(probe=i).transpose("step", "seed").values  # (T, S)
        m, lo, hi = summarize_saved(arr, band)
        out.append(Curve(str(probe), float(cell["probe_order"].values[i]), float(np.ravel(floors)[i]),
                         x, m, lo, hi))
    return out


def _kind_filter(metric: str) -> str:
    """Probe family a metric is drawn for: target metrics for edit probes, the others for DSB."""
    return "edit" if metric.startswith("target") else "dsb"


def facet_figure(cell: Cell | Sequence[Cell], metric: str, band: str, legend: bool = True, height: int = 300,
                 overlay: str | None = None) -> figure:
    """A log-step figure of one cell, or of several cells overlaid (``overlay``: the grid dim
    that tells them apart, one line style per value: solid, dashed, dotted, dot-dash).

    Line = seed mean, band = spread, dotted = loss floor (a line renderer, inside the y range);
    colour = probe (:mod:`dsb_widgets.ui.colors`); log-y for losses; DSB probes for loss and
    accuracy, edit probes (target label) for the target metrics. The legend sits inside the
    plot, so every facet has the same plot width.
    """
    from dsb_widgets.engine.results import probe_kinds

    cells = [cell] if isinstance(cell, Cell) else list(cell)
    want = _kind_filter(metric)
    title = cells[0].title if overlay is None else (
        ", ".join(f"{k}={_coord_text(v)}" for k, v in cells[0].coords.items() if k != overlay) or "all runs")
    fig = figure(title=title, x_axis_type="log", y_axis_type="log" if "loss" in metric else "linear",
                 height=height, sizing_mode="stretch_width", x_axis_label="step + 1", y_axis_label=metric,
                 tools="pan,wheel_zoom,box_zoom,reset,save", name=f"facet:{title}")
    fig.toolbar.logo = None
    items = []
    for j, c_ in enumerate(cells):
        dash = ("solid", "dashed", "dotted", "dotdash")[j % 4]
        kinds = probe_kinds(c_.data)
        curves = [c for c in facet_curves(c_.data, metric, band) if kinds.get(c.probe, "dsb") == want]
        styles = probe_styles([c.probe for c in curves], [c.order for c in curves])
        cond = f" · {overlay}={_coord_text(c_.coords.get(overlay))}" if overlay else ""
        for c in curves:
            st = styles[c.probe]
            ok = np.isfinite(c.mean)
            if not ok.any():
                continue
            src = ColumnDataSource(dict(x=c.x[ok], mean=c.mean[ok], lo=c.lo[ok], hi=c.hi[ok]))
            rs = [fig.varea("x", "lo", "hi", source=src, fill_color=st.color, fill_alpha=0.12 if overlay else 0.18),
                  fig.line("x", "mean", source=src, line_color=st.color, line_width=2, line_dash=dash,
                           name=f"{c.probe}{cond}")]
            if metric == "loss" and math.isfinite(c.floor) and j == 0:
                fsrc = ColumnDataSource(dict(x=[float(c.x[0]), float(c.x[-1])], y=[c.floor, c.floor]))
                rs.append(fig.line("x", "y", source=fsrc, line_dash="dotted", line_color=st.color, name="floor"))
            items.append(LegendItem(label=f"{c.probe} ({order_label(c.order)}){cond}", renderers=rs))
    if legend and items:
        fig.add_layout(Legend(items=items, click_policy="hide", label_text_font_size="7pt", spacing=0,
                              location="top_right", background_fill_alpha=0.6))
    if fig.renderers:
        fig.add_tools(HoverTool(renderers=[r for r in fig.renderers if getattr(r.glyph, "y", None) == "mean"],
                                mode="vline", tooltips=[("", "$name"), ("step", "$x{0}"), (metric, "@mean{0.000}")]))
    else:
        fig.line([], [])  # no curve of this family here (e.g. target metrics without edit probes)
    return fig


def sweep_name(ds: xr.Dataset, fallback: str = "sweep") -> str:
    """The sweep's own name (its YAML ``name``, stored in ``attrs['sweep']`` by dsb sweep)."""
    try:
        name = json.loads(ds.attrs.get("sweep", "{}")).get("name")
    except (TypeError, ValueError):
        name = None
    return str(name) if name and (name != "sweep" or not fallback) else fallback


class SweepView(pn.viewable.Viewer):
    """Faceted view of a sweep result: one selector per extra dim, a grid of cell figures, and
    ``overlay``: a grid dim whose conditions are drawn on one axis (line style per value)."""

    metric: param.Selector[str] = param.Selector(default="loss",
                                                 objects=["loss", "accuracy", "target_accuracy", "target_loss"])
    band: param.Selector[str] = param.Selector(default="std", objects=["std", "minmax"])
    overlay: param.Selector[str] = param.Selector(default="none", objects=["none"])

    def __init__(self, ds: xr.Dataset, label: str = "sweep", **params: Any) -> None:
        super().__init__(**params)
        self.ds, self.label = ds, label
        self.dims = extra_dims(ds)
        self.param.overlay.objects = ["none", *self.dims]
        self.selectors = {d: pn.widgets.Select(name=d, options=[ALL] + [_coord_text(v) for v in ds[d].values],
                                               value=ALL, width=140) for d in self.dims}
        for w in self.selectors.values():
            w.param.watch(lambda e: self.redraw(), "value")
        self.param.watch(lambda e: self.redraw(), ["metric", "band", "overlay"])
        self.note = pn.pane.Markdown("", margin=(0, 10))
        self.grid = pn.GridBox(ncols=1, sizing_mode="stretch_width")
        controls = pn.Row(pn.widgets.Select.from_param(self.param.metric, width=150),
                          pn.widgets.Select.from_param(self.param.band, name="spread over seeds", width=150),
                          pn.widgets.Select.from_param(self.param.overlay, name="overlay on one axis", width=150),
                          *self.selectors.values())
        self.layout = pn.Column(pn.pane.Markdown(f"### Sweep {code(label)}: mean over {ds.sizes['seed']} seed(s), "
                                                 f"faceted by {esc(', '.join(self.dims) or '-')}"),
                                controls, self.note, self.grid, sizing_mode="stretch_width")
        self.redraw()

    def __panel__(self) -> pn.Column:
        return self.layout

    @property
    def fixed(self) -> dict[str, str]:
        return {d: w.value for d, w in self.selectors.items()}

    def groups(self) -> list[list[Cell]]:
        """Cells to draw, one list per figure (several cells when overlaid)."""
        cells = facet_cells(self.ds, self.fixed, metric=self.metric)
        if self.overlay == "none":
            return [[c] for c in cells]
        out: dict[tuple[str, ...], list[Cell]] = {}
        for c in cells:
            key = tuple(_coord_text(v) for k, v in c.coords.items() if k != self.overlay)
            out.setdefault(key, []).append(c)
        return list(out.values())

    def redraw(self) -> None:
        groups = self.groups()
        shown = groups[:MAX_FACETS]
        more = f"; showing the first {MAX_FACETS}: narrow the selectors" if len(groups) > MAX_FACETS else ""
        self.note.object = f"{len(groups)} figure(s) with data{more}"
        self.grid.ncols = min(3, max(1, len(shown)))
        overlay = None if self.overlay == "none" else self.overlay
        self.grid.objects = [pn.pane.Bokeh(facet_figure(g if overlay else g[0], self.metric, self.band,
                                                        overlay=overlay), sizing_mode="stretch_width")
                             for g in shown]


def is_sweep(ds: xr.Dataset) -> bool:
    """True when the result has grid dims beyond (step, probe, seed)."""
    return bool(extra_dims(ds))


def dims_summary(ds: xr.Dataset, dims: Sequence[str]) -> str:
    return ", ".join(f"{d} ({ds.sizes[d]})" for d in dims)
