"""The served dashboard: start/stop runs, watch live curves, open saved runs and sweeps.

``dsb serve [--start]`` calls :func:`serve`; ``panel serve dsb_widgets/ui/app.py`` runs this file
as a script for every session (the ``servable`` block at the bottom). Either way, training runs
belong to :data:`dsb_widgets.runs.REGISTRY` (one thread per run, however many tabs watch it);
a page only displays and controls: Start validates the form with
:func:`dsb_widgets.engine.task.resolve_config` and shows any :class:`ConfigError` as a one-line
message, Stop sets the run's stop event, and closing a tab only removes that tab's drain
callback (:mod:`dsb_widgets.ui.sessions`, visible at ``/dsb_status``).

Experiments come from :func:`list_experiments`; the form reads datasets, models, probes and
defaults from each :class:`Experiment`, so text and clones appear here when they register.
Served offline: Bokeh/Panel JS and CSS come from the server itself (``pn.config.inline``) and
the Fast template's Google-fonts link is removed (:mod:`dsb_widgets.ui.offline`, system fonts);
the UI test fails on any browser request off the machine.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Literal, Sequence

import panel as pn
import xarray as xr

from dsb_widgets.engine.results import load_results
from dsb_widgets.engine.task import ConfigError, RunConfig, get_experiment, list_experiments, resolve_config
from dsb_widgets.errors import UnsafeInputError
from dsb_widgets.runs import REGISTRY, RunHandle, RunRegistry, training_threads
from dsb_widgets.ui import sessions
from dsb_widgets.ui.compare import file_labels, port_problem, run_form_values
from dsb_widgets.ui.form import form_config, run_path, saved_files
from dsb_widgets.ui.offline import local_resources_for_session, offline_template
from dsb_widgets.ui.safety import DataPolicy, check_results_file, esc, open_results_bytes
from dsb_widgets.ui.sweep_view import SweepView, dims_summary, extra_dims, sweep_name
from dsb_widgets.ui.upload import BoundedUpload
from dsb_widgets.ui.viewer import RunViewer, describe

log = logging.getLogger(__name__)
TITLE = "dsb_widgets: networks learn statistics of increasing complexity"
STATUS_PATH = "/dsb_status"
MESSAGE_S = 10.0  # seconds a sidebar success/warning message stays (the run's status line is the lasting one)
ACCENT = "#6a00a8"  # plasma purple, the colour family of the order map



def status_payload(registry: RunRegistry = REGISTRY) -> dict[str, Any]:
    """What ``/dsb_status`` returns: live drain callbacks, training threads, RSS, runs."""
    out = sessions.snapshot()
    out["training_threads"] = len(training_threads())
    out["runs"] = [{"id": r.id, "status": r.store.status, "step": r.store.step, "total": r.store.total,
                    "rows": len(r.store), "alive": r.alive} for r in registry.runs()]
    return out


class Dashboard:
    """Sidebar form + :class:`RunViewer` + saved-run / sweep panel for one browser session."""

    def __init__(self, runs_dir: str | Path = "runs", registry: RunRegistry = REGISTRY,
                 policy: DataPolicy | None = None) -> None:
        self.runs_dir, self.registry = Path(runs_dir), registry
        self.policy = policy or DataPolicy.from_settings(self.runs_dir)  # what the form may make us read
        names = list_experiments()
        self.experiment = pn.widgets.Select(name="Experiment", options=names,
                                            value="images" if "images" in names else names[0])
        self.dataset = pn.widgets.AutocompleteInput(name="Dataset", options=[], restrict=False,
                                                    min_characters=0, case_sensitive=False,
                                                    placeholder="name (or a path, for text)")
        self.model = pn.widgets.AutocompleteInput(name="Model", options=[], restrict=True, min_characters=0,
                                                  placeholder="name (or a checkpoint folder, for suites)")
        self.steps = pn.widgets.IntInput(name="Steps", value=1024, step=256)
        self.seeds = pn.widgets.IntInput(name="Seeds (trained together)", value=2, step=1)
        self.probes = pn.widgets.MultiChoice(name="Probes", options=[], value=[])
        self.options = pn.widgets.TextInput(name="Options (KEY=VALUE, ...)", value="")
        self.options_help = pn.widgets.TooltipIcon(value="")
        self.start_btn = pn.widgets.Button(name="Start", button_type="primary", width=110)
        self.stop_btn = pn.widgets.Button(name="Stop", button_type="danger", width=110)
        self.message = pn.pane.Alert("", alert_type="danger", visible=False, sizing_mode="stretch_width",
                                     name="form_message")
        self.run_select = pn.widgets.Select(name="Watch run", options={})
        self.files = pn.widgets.Select(name=f"Saved runs / sweeps in {self.runs_dir}/", options={})
        self.refresh_btn = pn.widgets.Button(name="Refresh list", width=110)
        self.open_btn = pn.widgets.Button(name="Open", button_type="success", width=110)
        self.clear_btn = pn.widgets.Button(name="Clear overlays", width=110)
        self.upload = BoundedUpload(name="or upload a .nc (up to 20 MB)")
        self.sweep_area = pn.Column(sizing_mode="stretch_width", visible=False)
        self.sweep_view: SweepView | None = None
        self.viewer = RunViewer(registry.latest(), registry=registry)
        self.tabs = pn.Tabs(("Live run", self.viewer), sizing_mode="stretch_width", dynamic=False)
        self.viewer.hooks.append(self._refresh_runs)
        self._run_ids: tuple[str, ...] = ()

        self.experiment.param.watch(lambda e: self._fill_from_experiment(), "value")
        self.dataset.param.watch(lambda e: self._fill_from_dataset(), "value")
        self.run_select.param.watch(self._watch_run, "value")
        self.start_btn.on_click(self._start_clicked)
        self.stop_btn.on_click(lambda e: self.stop())
        self.refresh_btn.on_click(lambda e: self._refresh_files())
        self.open_btn.on_click(lambda e: self.open_file(self.files.value))
        self.clear_btn.on_click(lambda e: self._clear())
        self.upload.param.watch(lambda e: self._open_upload(), "value")
        self.upload.param.watch(lambda e: self._upload_refused(), "refused")
        self._fill_from_experiment()
        self._form_from_run(self.viewer.run)
        self._refresh_runs()
        self._refresh_files()

    # -- form -------------------------------------------------------------------------------
    def _start_clicked(self, event: Any) -> None:
        self.start()  # the new run shows in the run list; a click handler returns nothing

    def say(self, text: str, kind: Literal["success", "warning", "danger", "info"] = "danger") -> None:
        """Show a one-line message; escaped, since it quotes names from files, paths and the form."""
        self.message.alert_type, self.message.object, self.message.visible = kind, esc(text), bool(text)
        self._said_at = time.monotonic()

    def _expire_message(self, after_s: float = MESSAGE_S) -> None:
        """Success / warning / info messages go after ``after_s`` (errors stay until the next action)."""
        if self.message.visible and self.message.alert_type != "danger" and \
                time.monotonic() - getattr(self, "_said_at", 0.0) > after_s:
            self.say("")

    def _fill_from_experiment(self) -> None:
        try:
            exp = get_experiment(self.experiment.value)
        except ConfigError as err:
            self.say(str(err))
            return
        d = exp.defaults
        self.dataset.options = list(exp.datasets)
        self.dataset.value = str(d.get("dataset", exp.datasets[0] if exp.datasets else ""))
        self.model.options = list(exp.models)  # open_models: a suite folder under the data roots too
        self.model.restrict, self.model.value = not exp.open_models, d.get("model", exp.models[0])
        self.probes.options = list(exp.probes)
        self.probes.value = list(d.get("probes") or exp.probes)  # the experiment's default set, not every probe
        self.steps.value = int(d.get("steps", 1024))
        if exp.options is not None:  # the experiment's typed options schema, as in `dsb run --help`
            from dsb_widgets.options import options_help

            lines = options_help(exp.options).splitlines()
            self.options.placeholder = ", ".join(line.split()[0] for line in lines[:2])
            self.options_help.value = "\n".join(lines)
        self.options.value = ""
        self.say("")

    def _fill_from_dataset(self) -> None:
        """Model and steps from the dataset's own defaults (``defaults["by_dataset"]``, as
        resolve_config uses them): the form always sends a model, so choosing Fashion-MNIST must
        switch it to that dataset's default model here, not leave the digits MLP."""
        try:
            exp = get_experiment(self.experiment.value)
        except ConfigError:
            return
        d = {**exp.defaults, **exp.defaults.get("by_dataset", {}).get(str(self.dataset.value), {})}
        if d.get("model") in self.model.options:
            self.model.value = d["model"]
        if "steps" in d:
            self.steps.value = int(d["steps"])

    def start(self) -> RunHandle | None:
        """Validate the form and start a run in the registry; errors become a page message."""
        try:
            raw = form_config(self.experiment.value, self.dataset.value, self.model.value,
                              self.steps.value, self.seeds.value, self.probes.value, self.options.value)
            self.policy.check_config(raw, get_experiment(raw.experiment).datasets)  # before any read
            cfg = resolve_config(raw)
            self.policy.check_config(cfg, get_experiment(cfg.experiment).datasets)
            run = self.registry.start(cfg, out=run_path(self.runs_dir, cfg))
        except (ConfigError, UnsafeInputError) as err:
            self.say(f"Not started: {err}")
            return None
        except Exception as err:  # never a traceback in the page
            log.exception("start failed")
            self.say(f"Not started: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
            return None
        self.say("")  # the run's own status line takes over (one status line)
        self.viewer.attach(run)
        self._refresh_runs()
        return run

    def stop(self) -> None:
        run = self.viewer.run
        if run is None or not run.alive:
            self.say("No running run to stop.", "warning")
            return
        run.stop()
        self.say("")  # the run's status line says "stopping", then "stopped"

    # -- runs of this process ----------------------------------------------------------------
    def _refresh_runs(self) -> None:
        self._expire_message()
        runs = self.registry.runs()
        ids = tuple(r.id for r in runs)
        if ids == self._run_ids:
            return
        self._run_ids = ids
        self.run_select.options = {describe(r): r.id for r in reversed(runs)}
        if self.viewer.run is not None:
            self.run_select.value = self.viewer.run.id
        self._refresh_files()

    def _watch_run(self, event: Any) -> None:
        if event.new and (self.viewer.run is None or event.new != self.viewer.run.id):
            run = self.registry.get(event.new)
            self.viewer.attach(run)
            self._form_from_run(run)
            self.say("")

    def _form_from_run(self, run: RunHandle | None) -> None:
        """Show the watched run's settings in the form (not another experiment's defaults)."""
        if run is None:
            return
        values = run_form_values(run.config)
        if self.experiment.value != values["experiment"] and values["experiment"] in self.experiment.options:
            self.experiment.value = values["experiment"]  # refills options and defaults first
        for name in ("dataset", "model", "steps", "seeds", "probes"):
            widget = getattr(self, name)
            value = values[name]
            if name == "model" and value not in widget.options:
                continue
            if name == "probes":
                widget.options = sorted(set(widget.options) | set(value), key=list(widget.options + value).index)
            widget.value = value

    # -- saved runs and sweeps ---------------------------------------------------------------
    def _refresh_files(self) -> None:
        files = saved_files(self.runs_dir)
        options = file_labels(self.runs_dir, files)  # sweep runs by their grid values, not hashes
        keep = self.files.value
        self.files.options = options
        # An explicit selection: with none, the browser showed a blank box while Open used the first.
        self.files.value = keep if keep in options.values() else next(iter(options.values()), None)

    def open_dataset(self, ds: xr.Dataset, label: str) -> str:
        """Overlay a plain run, or show a sweep (extra grid dims) faceted; returns the message."""
        dims = extra_dims(ds)
        if dims:
            name = sweep_name(ds, label)
            self.sweep_view = SweepView(ds, name)
            self.sweep_area.objects = [self.sweep_view]
            self.sweep_area.visible = True
            self.tabs[:] = [("Live run", self.viewer), (f"Sweep: {name}", self.sweep_area)]
            self.tabs.active = 1
            return f"Opened sweep {name}: {dims_summary(ds, dims)}, {ds.sizes['seed']} seed(s) (tab 'Sweep: {name}')."
        n = self.viewer.add_overlay(ds, label)
        return f"Overlaid {label} ({n} probes, {ds.sizes['step']} checkpoints, dashed)."

    def open_file(self, path: str | None) -> None:
        if not path:
            self.say(f"No saved run selected; runs are written to {self.runs_dir}/", "warning")
            return
        try:
            self.policy.check_path(path, "results file")
            check_results_file(path)  # declared sizes within limits before decoding
            self.say(self.open_dataset(load_results(path), Path(path).stem), "success")
        except Exception as err:  # noqa: BLE001  any unreadable file is a message in the sidebar, never a crash
            self.say(f"Could not open {Path(path).name}: {type(err).__name__}: {err}")

    def _open_upload(self) -> None:
        if not self.upload.value:  # cleared after the answer below (an empty file arrives as b"")
            return
        name, blob = next(iter(self.upload.value.items()))
        try:
            ds = open_results_bytes(blob, name)  # header checked before any decoding
            self.say(self.open_dataset(ds, Path(name).stem), "success")
        except Exception as err:  # noqa: BLE001  any unreadable upload is a message in the sidebar, never a crash
            self.say(f"Could not open {name} (expected a netCDF3 file from dsb run / dsb sweep): {err}")
        finally:
            self.upload.value = {}  # drop the bytes; the same file can be chosen again

    def _upload_refused(self) -> None:
        if self.upload.refused:  # a client that skipped the browser's size check (ui/upload.py)
            self.say(f"Could not open the upload: {self.upload.refused}")
            self.upload.refused = ""

    def _clear(self) -> None:
        self.viewer.clear_overlays()
        self.sweep_area.objects, self.sweep_area.visible, self.sweep_view = [], False, None
        self.tabs[:] = [("Live run", self.viewer)]
        self.say("")

    # -- layout -------------------------------------------------------------------------------
    def sidebar(self) -> list[Any]:
        return [
            pn.pane.Markdown("### New run"), self.experiment, self.dataset, self.model, self.steps,
            self.seeds, self.probes, pn.Row(self.options, self.options_help), pn.Row(self.start_btn, self.stop_btn),
            self.message,
            pn.layout.Divider(), self.run_select,
            pn.layout.Divider(), pn.pane.Markdown("### Compare"), self.files,
            pn.Row(self.open_btn, self.refresh_btn), self.upload, self.clear_btn,
        ]

    def main(self) -> list[Any]:
        # The viewer shows the watched run's own experiment intro; a sweep opens in its own tab.
        return [self.tabs]

    def template(self) -> pn.template.FastListTemplate:
        # One Column per area: every template item is a separate document root, and Bokeh
        # recomputes all references per root added (measured: 24 roots made page builds 3x slower).
        return offline_template(title=TITLE, sidebar=[pn.Column(*self.sidebar(), sizing_mode="stretch_width")],
                                            main=[pn.Column(*self.main(), sizing_mode="stretch_width")],
                                            accent=ACCENT, sidebar_width=330, theme_toggle=False)


def build_app(runs_dir: str | Path = "runs", registry: RunRegistry = REGISTRY,
              policy: DataPolicy | None = None) -> pn.template.FastListTemplate:
    """One session's page (Panel calls this for every new browser tab)."""
    local_resources_for_session()  # stylesheets from this server even if the session is rebuilt
    return Dashboard(runs_dir, registry, policy).template()


def _status_handler() -> type:
    from tornado.web import RequestHandler

    class StatusHandler(RequestHandler):
        def get(self) -> None:
            out = status_payload()
            contexts = getattr(self.application, "_applications", {})  # BokehTornado: path -> context
            out["bokeh_sessions"] = [
                {"connections": ses.connection_count, "blocked": ses.expiration_blocked_count,
                 "idle_ms": int(ses.milliseconds_since_last_unsubscribe)}
                for ctx in contexts.values() for ses in ctx.sessions]
            self.set_header("Content-Type", "application/json")
            self.write(json.dumps(out))

    return StatusHandler


def serve(port: int = 5006, address: str = "localhost", show: bool = False, start: bool = False,
          runs_dir: str | Path = "runs", session_lifetime_ms: int = 15_000, allow_origins: Sequence[str] = (),
          data_roots: Sequence[str | Path] = (), data_dir: str | Path | None = None) -> None:
    """Serve the dashboard (blocking). ``start``: begin the default digits run before serving.

    Trust model (README, "Trust model of the served dashboard"): only the served address,
    localhost and ``allow_origins`` may connect (Host and websocket Origin checked,
    :mod:`dsb_widgets.ui.guard`); the form reads registered names or paths under ``runs_dir``,
    ``data_dir`` / ``$DSB_DATA_DIR`` and ``data_roots`` (:class:`~dsb_widgets.ui.safety.DataPolicy`).

    ``session_lifetime_ms``: how long a session with no open websocket lives (Bokeh's default,
    15 s): a page must open its websocket within it or its document is rebuilt, and a closed
    tab's drain callback is released that long after it closed. The run is never affected.
    """
    problem = port_problem(address, port)
    if problem:  # before anything is started or printed
        raise ConfigError(problem)
    pn.config.inline = True  # type: ignore[misc]  # a settable parameter that panel's stubs declare read-only
    runs = Path(runs_dir)
    if start:
        cfg = resolve_config(RunConfig(experiment="images"))
        run = REGISTRY.start(cfg, out=run_path(runs, cfg))
        print(f"dsb serve: started {describe(run)} -> {run.out}", flush=True)
    from dsb_widgets.ui.guard import allowed_origins, serve_guarded

    policy = DataPolicy.from_settings(runs, data_roots, data_dir)
    print(f"dsb serve: http://{address}:{port}/  (status: {STATUS_PATH}); accepting "
          f"{', '.join(allowed_origins(address, port, allow_origins))}; data roots "
          f"{', '.join(map(str, policy.roots))}", flush=True)
    serve_guarded({"/": lambda: build_app(runs, policy=policy)}, port=port, address=address, show=show,
                  allow=allow_origins, title=TITLE, extra_patterns=[(STATUS_PATH, _status_handler())],
                  check_unused_sessions_milliseconds=min(2000, session_lifetime_ms),
                  unused_session_lifetime_milliseconds=session_lifetime_ms)


if pn.state.served:  # `panel serve dsb_widgets/ui/app.py`
    pn.config.inline = True  # type: ignore[misc]  # a settable parameter that panel's stubs declare read-only
    build_app().servable(title=TITLE)
