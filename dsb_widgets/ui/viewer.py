"""``RunViewer``: live loss/accuracy curves of one run, in a served page or in JupyterLab.

Streaming design (see NOTES.md, "Panel, Bokeh"): the training thread (owned by
:data:`dsb_widgets.runs.REGISTRY`) only appends rows to the run's locked ``RowStore``. Each
viewer keeps its own cursor and, from a periodic callback on its session's event loop
(``pn.state.add_periodic_callback(drain, period)``, document lock held), streams the unseen
rows with ``ColumnDataSource.stream(payload, rollover)``. No Bokeh or Panel object is ever
touched from the training thread. The callback is removed when the session is destroyed
(``pn.state.on_session_destroyed``), so closed tabs cost nothing and never stop the run.

In JupyterLab (``pn.extension(inline=True)``) the same callback runs on the kernel's asyncio
loop while the kernel is idle, and ``pn.io.push_notebook`` sends the streamed points.
"""

from __future__ import annotations

import io
import json
import math
import time
from typing import Any, Callable

import numpy as np
import panel as pn
import param
import xarray as xr

from dsb_widgets.engine.task import required
from dsb_widgets.runs import RunHandle
from dsb_widgets.ui.compare import DASHES, compare_html, config_of
from dsb_widgets.ui.plots import CurvePlots, add_saved_overlay, make_plots, placeholder, update_minimum
from dsb_widgets.ui.polling import ORPHAN_S, PollingMixin
from dsb_widgets.ui.probes import intro
from dsb_widgets.ui.run_status import (
    config_of_run,
    describe,
    explainer_html,
    in_server_session,
    status_message,
)
from dsb_widgets.ui.safety import esc
from dsb_widgets.ui.stream import EtaEstimator, SeedAggregator, Smoother, format_eta

__all__ = ["ORPHAN_S", "ROLLOVER", "RunViewer", "config_of_run", "describe", "explainer_html",
           "in_server_session", "status_message", "viewer"]

ROLLOVER = 10_000  # points kept per probe (a run has ~per_octave * log2(steps) checkpoints)


class RunViewer(PollingMixin, pn.viewable.Viewer):
    """Live curves for ``run`` (a :class:`RunHandle`, or None to wait for one).

    ``period_ms``: drain interval (250-500 ms is smooth and cheap); ``band``: "minmax" or
    "std" across seeds; ``log_y``: log loss axes; ``smoothing``: EMA weight of the drawn curves
    (0 = raw; minima are starred on the raw seed means); ``poll=False`` leaves draining to the
    caller (``viewer.drain()``). Layout: the experiment's intro, ONE status line (state, step,
    live elapsed counter, ETA), the DSB panel, the edit panel (target label), accuracy, one
    explainer line per probe, downloads (netCDF, CSV; PNG from each figure's save tool), the
    run's full config and, for a stopped run, a Resume button.
    """

    period_ms = param.Integer(default=500, bounds=(50, 10_000))
    band: param.Selector[str] = param.Selector(default="minmax", objects=["minmax", "std"])
    log_y = param.Boolean(default=True, doc="log-scale loss axes")
    smoothing = param.Number(default=0.0, bounds=(0.0, 0.95), step=0.05, doc="EMA weight (0 = raw)")

    def __init__(self, run: RunHandle | None = None, poll: bool = True, rollover: int = ROLLOVER,
                 registry: Any = None, **params: Any) -> None:
        super().__init__(**params)
        self.rollover = rollover
        self.registry = registry
        self.notebook = not in_server_session()
        self.loss_pane = pn.pane.Bokeh(placeholder("no run yet"), sizing_mode="stretch_width")
        self.acc_pane = pn.pane.Bokeh(placeholder(""), sizing_mode="stretch_width")
        self.edit_acc_pane = pn.pane.Bokeh(placeholder(""), sizing_mode="stretch_width")
        self.edit_loss_pane = pn.pane.Bokeh(placeholder(""), sizing_mode="stretch_width")
        self.div_pane = pn.pane.Bokeh(placeholder(""), sizing_mode="stretch_width")
        # Shown/hidden as containers (a Bokeh pane's own `visible` does not hide its figure).
        self.acc_box = pn.Column(self.acc_pane, sizing_mode="stretch_width", visible=False)
        self.edit_box = pn.Row(self.edit_acc_pane, self.edit_loss_pane, sizing_mode="stretch_width", visible=False)
        self.div_box = pn.Column(self.div_pane, sizing_mode="stretch_width", visible=False)
        self.progress = pn.indicators.Progress(value=0, max=1, bar_color="primary", sizing_mode="stretch_width",
                                               height=10, margin=(6, 10, 0, 10))
        self.alert = pn.pane.Alert("No run yet: choose settings in the sidebar and press **Start**.",
                                   alert_type="secondary", sizing_mode="stretch_width", margin=(4, 10),
                                   name="status_line")
        self.intro = pn.pane.Markdown("", sizing_mode="stretch_width", name="intro")
        self.explain = pn.pane.HTML("", sizing_mode="stretch_width", name="explainers")
        self.compare = pn.pane.HTML("", sizing_mode="stretch_width", name="compare_table")
        self.resume_btn = pn.widgets.Button(name="Resume", button_type="primary", width=110, visible=False)
        self.resume_btn.on_click(self._resume_clicked)
        self.download_nc = pn.widgets.FileDownload(callback=self._nc_bytes, filename="run.nc", label="netCDF",
                                                   width=110, visible=False)
        self.download_csv = pn.widgets.FileDownload(callback=self._csv_bytes, filename="run.csv", label="CSV",
                                                    width=110, visible=False)
        self.config_pane = pn.pane.JSON({}, depth=2, name="run_config", sizing_mode="stretch_width")
        self.config_card = pn.Card(self.config_pane, title="Run config (full)", collapsed=True,
                                   sizing_mode="stretch_width", visible=False)
        controls = pn.FlexBox(pn.widgets.Checkbox.from_param(self.param.log_y, name="log-y loss", margin=(14, 10)),
                          pn.widgets.FloatSlider.from_param(self.param.smoothing, name="smoothing (EMA)", width=180),
                          pn.widgets.Select.from_param(self.param.band, name="band over seeds", width=120),
                          self.download_nc, self.download_csv, self.resume_btn, sizing_mode="stretch_width",
                          flex_wrap="wrap")  # wraps at narrow widths instead of widening the page
        self.layout = pn.Column(self.intro, self.progress, self.alert, controls, self.loss_pane, self.edit_box,
                                self.div_box, self.acc_box, self.compare, self.explain, self.config_card,
                                sizing_mode="stretch_width")
        self.hooks: list[Callable[[], None]] = []  # extra work per tick (e.g. the app's run list)
        self._overlays: list[tuple[xr.Dataset, str]] = []
        self._init_polling()
        self._poll = poll
        self.run: RunHandle | None = None
        self.param.watch(lambda e: self._replay(), ["log_y", "smoothing", "band"])
        self.attach(run)
        if poll:
            self.start_polling()

    def __panel__(self) -> pn.Column:
        return self.layout

    # -- run attachment and draining ------------------------------------------------------
    def attach(self, run: RunHandle | None) -> None:
        """Show ``run`` (from its first row); the previous run's curves are dropped."""
        self.run = run
        self.plots: CurvePlots | None = None
        self.agg: SeedAggregator | None = None
        self._smooth = Smoother(self.smoothing)
        self._raw: dict[str, tuple[list[float], list[float]]] = {}  # probe -> (x, raw mean loss)
        self._cursor = 0
        self._shown: tuple[Any, ...] = ()
        self._eta = EtaEstimator()
        self.points = 0  # points streamed so far (all probes)
        self._set_figures(None, "waiting for the first checkpoint..." if run else "no run yet")
        if self._overlays:
            self._rebuild_overlays_only()
        self.intro.object = intro(run.config.experiment) if run is not None else ""
        self._update_compare()
        self.explain.object = ""
        if run is not None:
            stem = f"{run.id}-{run.config.experiment}-{run.config.dataset}".replace("/", "_")
            self.download_nc.filename, self.download_csv.filename = f"{stem}.nc", f"{stem}.csv"
            self.config_pane.object = json.loads(run.config.to_json())
        self.config_card.visible = run is not None
        self._update_status()
        if self._poll and self._cb is None and self.notebook:
            self.start_polling()

    def _set_figures(self, plots: CurvePlots | None, message: str = "") -> None:
        self.plots = plots
        self.loss_pane.object = plots.loss if plots else placeholder(message)
        self.acc_pane.object = plots.acc if plots else placeholder("")
        self.acc_box.visible = plots is not None
        has_edit = plots is not None and plots.edit_acc is not None
        if plots is not None and has_edit:
            self.edit_acc_pane.object, self.edit_loss_pane.object = plots.edit_acc, plots.edit_loss
        self.edit_box.visible = has_edit
        if plots is not None and plots.div is not None:
            self.div_pane.object = plots.div
        self.div_box.visible = plots is not None and plots.div is not None

    def _panes(self) -> list[pn.pane.Bokeh]:
        return [self.loss_pane, self.acc_pane, self.edit_acc_pane, self.edit_loss_pane, self.div_pane]

    def drain(self) -> int:
        """Stream the run's unseen rows into the figures; returns the number of rows taken."""
        run = self.run
        if run is None:
            return 0
        store = run.store
        if self.agg is None:
            meta = store.meta
            if "probes" not in meta or len(store) == 0:
                self._update_status()
                return 0
            self.agg = SeedAggregator(meta["probes"], meta["seeds"], band=self.band)
            self._eta = EtaEstimator(meta.get("checkpoints") or ())
        rows, self._cursor = store.rows_since(self._cursor)
        payload = self.agg.add(rows)
        self._track_minima(payload)
        shown = {p: self._smooth(p, cols) for p, cols in payload.items()}
        if shown and self.plots is None:
            # New figures: their sources start with the payload (streaming into a model the
            # page has not received yet could double or drop points).
            self._build_run_plots(run, shown)
            self.points += sum(len(cols["x"]) for cols in shown.values())
        elif self.plots is not None:
            for probe, cols in shown.items():
                if probe in self.plots.sources:
                    self.plots.sources[probe].stream(cols, rollover=self.rollover)
                    self.points += len(cols["x"])
        if self.plots is not None:
            for probe in payload:
                update_minimum(self.plots, probe, *map(np.asarray, self._raw[probe]))
        self._update_status()
        if payload and self.notebook:
            pn.io.push_notebook(*self._panes())
        return len(rows)

    def _track_minima(self, payload: dict[str, dict[str, Any]]) -> None:
        for probe, cols in payload.items():
            xs, ys = self._raw.setdefault(probe, ([], []))
            xs.extend(float(v) for v in cols["x"])
            ys.extend(float(v) for v in cols["loss"])

    def _build_run_plots(self, run: RunHandle, first: dict[str, dict[str, Any]] | None = None) -> None:
        meta, agg = run.store.meta, self.agg
        assert agg is not None
        floors = list(meta.get("floors") or [math.nan] * len(agg.probes))
        floors += [math.nan] * (len(agg.probes) - len(floors))
        orders = list(meta["orders"]) + [math.nan] * (len(agg.probes) - len(meta["orders"]))
        c = meta.get("config") or run.config  # the engine's start event: a checkpoint suite's real last step
        plots = make_plots(agg.probes, orders, floors, agg.has_target, band=self.band,
                           title=f"- {c.experiment}/{c.dataset}/{c.model}", x_max=float(required(c.steps, "steps")) + 1,
                           log_y=self.log_y, edit_panel=self._overlay_has_edits())
        for probe, cols in (first or {}).items():
            if probe in plots.sources:
                plots.sources[probe].data = {c: v[-self.rollover:] for c, v in cols.items()}
        for i, (ds, label) in enumerate(self._overlays):
            add_saved_overlay(plots, ds, label, self.band, DASHES[i % len(DASHES)])
        self.explain.object = explainer_html(plots)
        self._set_figures(plots)

    def _overlay_has_edits(self) -> bool:
        from dsb_widgets.engine.results import probe_kinds

        return any("edit" in probe_kinds(ds).values() for ds, _ in self._overlays)

    def _update_status(self) -> None:
        run = self.run
        if run is None:
            self.progress.value, self.progress.max = 0, 1
            self.alert.alert_type = "secondary"
            self.alert.object = "No run yet: choose settings in the sidebar and press **Start**."
            self.resume_btn.visible = self.download_nc.visible = self.download_csv.visible = False
            return
        st = run.store
        live = run.alive and st.status in ("starting", "running")
        elapsed = time.time() - run.started if live else st.elapsed
        shown = (st.status, st.step, st.total, int(elapsed), st.error)
        if shown == self._shown:
            return
        self._shown = shown
        self.progress.max = max(int(st.total), 1)
        self.progress.value = min(int(st.step), self.progress.max)
        eta = format_eta(self._eta.update(st.elapsed, st.step, st.total)) if st.status == "running" else ""
        self.alert.alert_type, self.alert.object = status_message(run, eta, elapsed)
        has_file = run.out is not None and run.out.exists()
        self.download_nc.visible = self.download_csv.visible = has_file
        self.resume_btn.visible = st.status == "stopped" and run.out is not None and not run.alive
        if self.notebook and not run.alive and st.status != "starting" and self._cb is not None:
            rest, _ = st.rows_since(self._cursor)
            if not rest:  # finished and fully drained: a notebook needs no more polling
                self.stop_polling()

    # -- actions --------------------------------------------------------------------------
    def _resume_clicked(self, event: object) -> None:
        self.resume()

    def resume(self) -> RunHandle | None:
        """Continue a stopped run from its saved state (same config, same file)."""
        run = self.run
        if run is None or run.out is None or run.alive:
            return None
        if self.registry is None:
            from dsb_widgets.runs import REGISTRY
            self.registry = REGISTRY
        try:
            new = self.registry.start(run.config, out=run.out, resume=True)
        except Exception as err:  # noqa: BLE001 - a message, never a traceback
            self.alert.alert_type = "danger"
            self.alert.object = esc(f"Could not resume {run.id}: {type(err).__name__}: {err}".splitlines()[0])
            return None
        self.attach(new)
        for hook in self.hooks:
            hook()
        return new

    def _dataset(self) -> xr.Dataset:
        from dsb_widgets.engine.results import load_results

        assert self.run is not None and self.run.out is not None
        return load_results(self.run.out)

    def _nc_bytes(self) -> io.BytesIO:
        assert self.run is not None and self.run.out is not None
        return io.BytesIO(self.run.out.read_bytes())

    def _csv_bytes(self) -> io.StringIO:
        """Long table: one row per (step, probe, seed) with every metric, plus probe order/floor."""
        df = self._dataset().drop_vars("train_loss").to_dataframe().reset_index()
        return io.StringIO(df.to_csv(index=False))

    # -- saved runs -----------------------------------------------------------------------
    def add_overlay(self, ds: xr.Dataset, label: str) -> int:
        """Overlay a saved run (dashed, static); returns the number of probes drawn.
        The same label twice replaces the earlier overlay (no duplicate curves)."""
        same = [d for d, lbl in self._overlays if lbl == label]
        if same and same[0].identical(ds):
            return len(ds["probe"])  # already drawn: nothing to do
        replaced = bool(same)
        self._overlays = [(d, lbl) for d, lbl in self._overlays if lbl != label] + [(ds, label)]
        if self.plots is None:
            self._rebuild_overlays_only()
        elif replaced or (self.plots.edit_acc is None and self._overlay_has_edits()):
            self._replay()
        else:
            add_saved_overlay(self.plots, ds, label, self.band, DASHES[(len(self._overlays) - 1) % len(DASHES)])
        self._update_compare()
        if self.notebook:
            pn.io.push_notebook(*self._panes())
        return len(ds["probe"])

    @property
    def overlays(self) -> list[str]:
        return [label for _, label in self._overlays]

    def _update_compare(self) -> None:
        """The compare table: the live run (solid) and each saved run (its line style), with the
        config keys that differ between them."""
        rows = []
        if self.run is not None:
            rows.append((f"{self.run.id} (live)", "solid", config_of_run(self.run.config)))
        rows += [(label, DASHES[i % len(DASHES)], config_of(ds)) for i, (ds, label) in enumerate(self._overlays)]
        self.compare.object = compare_html(rows)

    def clear_overlays(self) -> None:
        self._overlays.clear()
        self.compare.object = ""
        self._set_figures(None, "waiting for the first checkpoint..." if self.run else "no run yet")
        self._replay()

    def _rebuild_overlays_only(self) -> None:
        """No live curves yet: show the saved runs on their own figures."""
        plots = make_plots([], [], [], {}, band=self.band, title="- saved runs", log_y=self.log_y,
                           edit_panel=self._overlay_has_edits())
        for i, (ds, label) in enumerate(self._overlays):
            add_saved_overlay(plots, ds, label, self.band, DASHES[i % len(DASHES)])
        self._set_figures(plots)
        self.plots = None  # no live sources: the first checkpoint builds the run's figures

    def _replay(self) -> None:
        """Rebuild the live figures from the run's first row (after overlays or options changed)."""
        self.plots, self.agg, self._cursor, self.points, self._shown = None, None, 0, 0, ()
        self._smooth, self._raw = Smoother(self.smoothing), {}
        if self._overlays:
            self._rebuild_overlays_only()
        if self.run is not None:
            self.drain()

def viewer(run: RunHandle | str | None = None, **kwargs: Any) -> RunViewer:
    """A live viewer for ``run`` (handle, run id, or None for the registry's latest run)."""
    from dsb_widgets.runs import REGISTRY

    handle = REGISTRY.get(run) if isinstance(run, str) else (run or REGISTRY.latest())
    return RunViewer(handle, **kwargs)


