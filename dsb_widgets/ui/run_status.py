"""The one status line of a run and the text around its figures (split out of ``viewer.py``).

Everything here returns strings for Panel panes; every string that comes from a file, a path,
a user or an exception passes through :mod:`dsb_widgets.ui.safety` (``esc``/``code``) or
``html.escape`` before it reaches HTML.
"""

from __future__ import annotations

import json
from typing import Any, Literal

import panel as pn

from dsb_widgets.runs import RunHandle
from dsb_widgets.ui.plots import CurvePlots
from dsb_widgets.ui.probes import explain
from dsb_widgets.ui.safety import code, esc
from dsb_widgets.ui.stream import format_duration


def in_server_session() -> bool:
    """True inside a ``panel serve`` / ``dsb serve`` session (False in notebooks and scripts)."""
    doc = pn.state.curdoc
    return doc is not None and doc.session_context is not None


def describe(run: RunHandle) -> str:
    c = run.config
    return f"{run.id}: {c.experiment}/{c.dataset}/{c.model}, {c.steps} steps x {c.seeds} seed(s)"


AlertType = Literal["primary", "success", "danger", "warning", "info"]


def status_message(run: RunHandle, eta: str = "", elapsed: float | None = None) -> tuple[AlertType, str]:
    """(alert type, the ONE status line of a run): state, step, elapsed, ETA; never a traceback."""
    st = run.store
    spent = format_duration(st.elapsed if elapsed is None else elapsed)
    if st.status == "failed":
        first = esc((st.error or "unknown error").strip().splitlines()[0][:400])
        return "danger", f"Run {run.id} failed: {first}"
    if st.status == "finished":
        where = f"; results in {code(run.out)}" if run.out else ""
        return "success", f"Run {run.id} finished: {st.step} steps in {format_duration(st.elapsed)}{where}."
    if st.status == "stopped":
        how = " Press **Resume** to continue it." if run.out else ""
        return "warning", f"Run {run.id} stopped at step {st.step}/{st.total} (state saved).{how}"
    if st.status == "starting":
        return "info", f"Run {run.id} is starting: loading data and building probe sets... {spent} elapsed"
    if run.stop_event.is_set():
        return "warning", f"Run {run.id} stopping after its current step (state will be saved) {spent} elapsed"
    return "primary", (f"Run {run.id} training: step {st.step}/{st.total} &nbsp;·&nbsp; {spent} elapsed"
                       f" &nbsp;·&nbsp; {eta}")


def explainer_html(plots: CurvePlots) -> str:
    """One line per probe: colour swatch, name, family and what a rise of its curve means.
    An HTML pane (no Markdown): plain HTML escaping (``esc``'s Markdown entities would show)."""
    from html import escape as esc
    family = {"dsb": "DSB panel", "edit": "edit panel (target label)", "measure": "prediction",
              "divergence": "divergence panel"}
    lines = []
    for probe, st in plots.styles.items():
        kind = plots.kinds.get(probe, "dsb")
        lines.append(f'<li><span style="color:{st.color};font-size:1.2em">&#9632;</span> '
                     f"<b>{esc(probe)}</b> <i>({esc(st.label.split('(')[-1].rstrip(')'))}, "
                     f"{family[kind]})</i>: {esc(explain(probe))}</li>")
    return "<b>What each probe keeps</b><ul style='margin:2px 0 0 0;padding-left:18px'>" + "".join(lines) + "</ul>"


def config_of_run(cfg: Any) -> dict[str, Any]:
    """A live run's config flattened like :func:`dsb_widgets.ui.compare.config_of`."""
    d = json.loads(cfg.to_json())
    flat = {k: v for k, v in d.items() if k != "options"}
    flat.update({f"options.{k}": v for k, v in (d.get("options") or {}).items()})
    return flat
