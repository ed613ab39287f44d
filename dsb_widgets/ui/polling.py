"""Periodic draining of a viewer and its lifecycle (split out of ``viewer.py``).

A viewer drains from ``pn.state.add_periodic_callback`` on its own session's event loop (never
from the training thread, see NOTES.md "Panel, Bokeh"); the callback ends with the session, and
a served page whose websocket has been gone for ``orphan_s`` seconds stops draining itself so
that Bokeh can discard the session.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import panel as pn

from dsb_widgets.ui import sessions

log = logging.getLogger(__name__)
ORPHAN_S = 10.0  # a served page with no websocket for this long stops draining (tab closed)


class PollingMixin:
    """Adds ``start_polling``/``stop_polling``/``polling`` to a viewer that has ``drain()``,
    ``notebook``, ``hooks`` and ``period_ms``; call :meth:`_init_polling` in ``__init__``."""

    notebook: bool
    period_ms: int
    hooks: list[Any]

    def _init_polling(self) -> None:
        self._cb: Any = None
        self._vid: int | None = None
        self._unconnected_since: float | None = None
        self._was_connected = False
        self.orphan_s = ORPHAN_S

    def drain(self) -> int:  # pragma: no cover - provided by the viewer
        raise NotImplementedError

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
