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

import logging
import math
import time
from typing import Any, Callable

import panel as pn
import param
import xarray as xr

from dsb_widgets.runs import RunHandle
from dsb_widgets.ui import sessions
from dsb_widgets.ui.plots import CurvePlots, add_saved_overlay, make_plots, placeholder
from dsb_widgets.ui.stream import EtaEstimator, SeedAggregator, format_eta

log = logging.getLogger(__name__)
ROLLOVER = 10_000  # points kept per probe (a run has ~per_octave * log2(steps) checkpoints)
ORPHAN_S = 10.0  # a served page with no websocket for this long stops draining (tab closed)


def in_server_session() -> bool:
    """True inside a ``panel serve`` / ``dsb serve`` session (False in notebooks and scripts)."""
    doc = pn.state.curdoc
    return doc is not None and doc.session_context is not None


def describe(run: RunHandle) -> str:
    c = run.config
    return f"{run.id}: {c.experiment}/{c.dataset}/{c.model}, {c.steps} steps x {c.seeds} seed(s)"


def status_message(run: RunHandle) -> tuple[str, str]:
    """(alert type, one-line message) for a run's status; never a traceback."""
    st = run.store
    if st.status == "failed":
        first = (st.error or "unknown error").strip().splitlines()[0][:400]
        return "danger", f"Run {run.id} failed: {first}"
    if st.status == "finished":
        where = f"; results in `{run.out}`" if run.out else ""
        return "success", f"Run {run.id} finished ({st.step} steps, {st.elapsed:.0f} s){where}."
    if st.status == "stopped":
        where = f" `dsb run {run.config.experiment} --resume --out {run.out}` (same options)" if run.out else ""
        return "warning", f"Run {run.id} stopped at step {st.step}.{' Resume with' + where if where else ''}"
    if st.status == "starting":
        return "info", f"Run {run.id} is starting: loading data and building probe sets..."
    return "primary", f"Run {run.id} is training."


class RunViewer(pn.viewable.Viewer):
    """Live curves for ``run`` (a :class:`RunHandle`, or None to wait for one).

    ``period_ms``: drain interval (250-500 ms is smooth and cheap); ``band``: "minmax" or
    "std" across seeds; ``poll=False`` leaves draining to the caller (``viewer.drain()``).
    Measured (digits MLP, 5 probes, 1 seed, served on 2 CPU cores): see tests/test_ui.py.
    """

    period_ms = param.Integer(default=500, bounds=(50, 10_000))
    band = param.Selector(default="minmax", objects=["minmax", "std"])

    def __init__(self, run: RunHandle | None = None, poll: bool = True, rollover: int = ROLLOVER,
                 **params: Any) -> None:
        super().__init__(**params)
        self.rollover = rollover
        self.notebook = not in_server_session()
        self.loss_pane = pn.pane.Bokeh(placeholder("no run yet"), sizing_mode="stretch_width")
        self.acc_pane = pn.pane.Bokeh(placeholder(""), sizing_mode="stretch_width")
        self.progress = pn.indicators.Progress(value=0, max=1, bar_color="primary", width=260,
                                               margin=(12, 10))
        self.progress_text = pn.pane.Markdown("", sizing_mode="stretch_width", margin=(0, 10))
        self.alert = pn.pane.Alert("", alert_type="secondary", visible=False, sizing_mode="stretch_width")
        self.layout = pn.Column(self.alert, pn.Row(self.progress, self.progress_text, sizing_mode="stretch_width"),
                                self.loss_pane, self.acc_pane, sizing_mode="stretch_width")
        self.hooks: list[Callable[[], None]] = []  # extra work per tick (e.g. the app's run list)
        self._overlays: list[tuple[xr.Dataset, str]] = []
        self._cb: Any = None
        self._vid: int | None = None
        self._poll = poll
        self._unconnected_since: float | None = None
        self._was_connected = False
        self.orphan_s = ORPHAN_S
        self.run: RunHandle | None = None
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
        self._cursor = 0
        self._shown: tuple[Any, ...] = ()
        self._eta = EtaEstimator()
        self.points = 0  # points streamed so far (all probes)
        self._set_figures(None, "waiting for the first checkpoint..." if run else "no run yet")
        if self._overlays:
            self._rebuild_overlays_only()
        self._update_status()
        if self._poll and self._cb is None and self.notebook:
            self.start_polling()

    def _set_figures(self, plots: CurvePlots | None, message: str = "") -> None:
        self.plots = plots
        self.loss_pane.object = plots.loss if plots else placeholder(message)
        self.acc_pane.object = plots.acc if plots else placeholder("")

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
        rows, self._cursor = store.rows_since(self._cursor)
        payload = self.agg.add(rows)
        if payload and self.plots is None:
            # New figures: their sources start with the payload (streaming into a model the
            # page has not received yet could double or drop points).
            self._build_run_plots(run, payload)
            self.points += sum(len(cols["x"]) for cols in payload.values())
        elif self.plots is not None:
            for probe, cols in payload.items():
                if probe in self.plots.sources:
                    self.plots.sources[probe].stream(cols, rollover=self.rollover)
                    self.points += len(cols["x"])
        self._update_status()
        if payload and self.notebook:
            pn.io.push_notebook(self.loss_pane, self.acc_pane)
        return len(rows)

    def _build_run_plots(self, run: RunHandle, first: dict[str, dict[str, Any]] | None = None) -> None:
        meta, agg = run.store.meta, self.agg
        assert agg is not None
        floors = list(meta.get("floors") or [math.nan] * len(agg.probes))
        floors += [math.nan] * (len(agg.probes) - len(floors))
        orders = list(meta["orders"]) + [math.nan] * (len(agg.probes) - len(meta["orders"]))
        c = run.config
        plots = make_plots(agg.probes, orders, floors, agg.has_target, band=self.band,
                           title=f"- {c.experiment}/{c.dataset}/{c.model}")
        for probe, cols in (first or {}).items():
            if probe in plots.sources:
                plots.sources[probe].data = {c: v[-self.rollover:] for c, v in cols.items()}
        for ds, label in self._overlays:
            add_saved_overlay(plots, ds, label, self.band)
        self._set_figures(plots)

    def _update_status(self) -> None:
        run = self.run
        if run is None:
            self.progress.value, self.progress.max = 0, 1
            self.progress_text.object = "No run yet: choose settings in the sidebar and press **Start**."
            self.alert.visible = False
            return
        st = run.store
        shown = (st.status, st.step, st.total, int(st.elapsed), st.error)
        if shown == self._shown:
            return
        self._shown = shown
        self.progress.max = max(int(st.total), 1)
        self.progress.value = min(int(st.step), self.progress.max)
        eta = format_eta(self._eta.update(time.monotonic(), st.step, st.total)) if st.status == "running" else ""
        self.progress_text.object = (f"**{describe(run)}** &nbsp; {st.status} &nbsp; step {st.step}/{st.total}"
                                     f" &nbsp; {st.elapsed:.0f} s elapsed &nbsp; {eta}")
        kind, text = status_message(run)
        self.alert.alert_type, self.alert.object = kind, text
        self.alert.visible = True
        if self.notebook and not run.alive and st.status != "starting" and self._cb is not None:
            rest, _ = st.rows_since(self._cursor)
            if not rest:  # finished and fully drained: a notebook needs no more polling
                self.stop_polling()

    # -- saved runs -----------------------------------------------------------------------
    def add_overlay(self, ds: xr.Dataset, label: str) -> int:
        """Overlay a saved run (dashed, static); returns the number of probes drawn."""
        self._overlays.append((ds, label))
        if self.plots is None:
            self._rebuild_overlays_only()
            n = len(ds["probe"])
        else:
            n = add_saved_overlay(self.plots, ds, label, self.band)
        if self.notebook:
            pn.io.push_notebook(self.loss_pane, self.acc_pane)
        return n

    def clear_overlays(self) -> None:
        self._overlays.clear()
        self._set_figures(None, "waiting for the first checkpoint..." if self.run else "no run yet")
        self._replay()

    def _rebuild_overlays_only(self) -> None:
        """No live curves yet: show the saved runs on their own figures."""
        plots = make_plots([], [], [], {}, band=self.band, title="- saved runs")
        for ds, label in self._overlays:
            add_saved_overlay(plots, ds, label, self.band)
        self.loss_pane.object, self.acc_pane.object = plots.loss, plots.acc

    def _replay(self) -> None:
        """Rebuild the live figures from the run's first row (after overlays changed)."""
        self.plots, self.agg, self._cursor, self.points, self._shown = None, None, 0, 0, ()
        if self.run is not None:
            self.drain()

    # -- polling lifecycle ----------------------------------------------------------------
    def start_polling(self) -> None:
        """Start the periodic drain (once); in a server session it ends with the session."""
        if self._cb is not None:
            return
        self._cb = pn.state.add_periodic_callback(self._tick, period=self.period_ms)
        self._vid = sessions.register("notebook" if self.notebook else "session")
        if not self.notebook:
            pn.state.on_session_destroyed(self._on_session_destroyed)

    def stop_polling(self) -> None:
        if self._cb is not None:
            self._cb.stop()
            self._cb = None
        if self._vid is not None:
            sessions.release(self._vid)
            self._vid = None

    @property
    def polling(self) -> bool:
        return self._cb is not None

    def _on_session_destroyed(self, session_context: Any) -> None:
        self.stop_polling()

    def _orphaned(self) -> bool:
        """True when this server session has had no open websocket for ``orphan_s`` seconds.

        Bokeh destroys such a session only when none of its locked callbacks is queued; with
        many sessions streaming, our periodic drains kept every closed session queued (measured:
        20 closed sessions never destroyed, ~50 callbacks queued each). Releasing the drain
        ourselves first lets Bokeh discard the session.
        """
        ctx = pn.state.curdoc.session_context if pn.state.curdoc is not None else None
        session = getattr(ctx, "_session", None)
        if session is None:
            return False
        if session.connection_count > 0:
            self._unconnected_since, self._was_connected = None, True
            return False
        now = time.monotonic()
        if self._unconnected_since is None:
            self._unconnected_since = now
        # A page still loading its JS (slow machine) has not connected yet: give it longer.
        limit = self.orphan_s if self._was_connected else 6 * self.orphan_s
        return now - self._unconnected_since > limit

    def _tick(self) -> None:
        if not self.notebook and self._orphaned():
            self.stop_polling()  # the tab is gone; the run goes on
            return
        try:
            self.drain()
            for hook in self.hooks:
                hook()
        except Exception:  # keep the page alive; the error is logged server-side
            log.exception("dashboard drain failed")


def viewer(run: RunHandle | str | None = None, **kwargs: Any) -> RunViewer:
    """A live viewer for ``run`` (handle, run id, or None for the registry's latest run)."""
    from dsb_widgets.runs import REGISTRY

    handle = REGISTRY.get(run) if isinstance(run, str) else (run or REGISTRY.latest())
    return RunViewer(handle, **kwargs)
