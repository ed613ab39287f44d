"""Who may talk to ``dsb serve``: the Host header and the websocket Origin, checked on every request.

Bokeh checks a websocket's Origin against ``websocket_origin`` only when the header is present
(Tornado skips ``check_origin`` without one) and never checks the Host header of plain HTTP
requests, so a page on another site could read ``/`` and ``/dsb_status`` through DNS rebinding.
:func:`install_guard` puts one Tornado routing rule in front of all of Bokeh's: a request whose
``Host`` is not in the allow-list, or a websocket upgrade without an ``Origin``, gets 403 and a
one-line reason. The allow-list is the served address, ``localhost`` and ``127.0.0.1`` on the
served port, plus every ``dsb serve --allow-websocket-origin HOST[:PORT]`` (Bokeh's patterns:
``*`` wildcards; a bare host means port 80).
"""

from __future__ import annotations

from typing import Any, Iterable

LOCAL_NAMES = ("localhost", "127.0.0.1")
ANY_ADDRESS = ("", "0.0.0.0", "::", "[::]")


def allowed_origins(address: str, port: int, extra: Iterable[str] = ()) -> list[str]:
    """``host:port`` patterns allowed as Host and websocket Origin (the served address first)."""
    names = ([] if address in ANY_ADDRESS else [address]) + list(LOCAL_NAMES)
    out = [f"{name}:{port}" for name in names] + [e.strip().lower() for e in extra if e.strip()]
    return list(dict.fromkeys(o.lower() for o in out))


def host_allowed(host: str, allowlist: Iterable[str]) -> bool:
    """Bokeh's own matcher (``bokeh.server.util.check_allowlist``) applied to a Host header."""
    from bokeh.server.util import check_allowlist

    return check_allowlist(host.lower(), list(allowlist))


def install_guard(tornado_app: Any, allowlist: Iterable[str]) -> None:
    """Refuse (403) requests with a foreign Host, and websocket upgrades without an Origin."""
    from tornado.routing import Matcher, Rule
    from tornado.web import RequestHandler

    allow = list(allowlist)

    class Refused(Matcher):
        def match(self, request: Any) -> dict[str, Any] | None:
            if not host_allowed(request.host or "", allow):
                return {"target_kwargs": {"reason": f"Host {request.host!r} is not allowed"}}
            upgrade = request.headers.get("Upgrade", "").lower() == "websocket"
            if upgrade and "Origin" not in request.headers and "Sec-Websocket-Origin" not in request.headers:
                return {"target_kwargs": {"reason": "websocket without an Origin header"}}
            return None

    class Forbidden(RequestHandler):
        def initialize(self, reason: str = "") -> None:
            self.reason = reason

        def prepare(self) -> None:
            self.set_status(403)
            self.set_header("Content-Type", "text/plain")
            self.finish(f"403: {self.reason}; dsb serve --allow-websocket-origin HOST:PORT allows another "
                        f"address (allowed: {', '.join(allow)})\n")

    router = tornado_app.default_router  # tornado.web.Application's router; ours goes first
    router.rules.insert(0, router.process_rule(Rule(Refused(), Forbidden)))


def serve_guarded(apps: dict[str, Any], *, port: int, address: str, allow: Iterable[str] = (),
                  show: bool = False, **kwargs: Any) -> None:
    """``pn.serve`` with Host/Origin checks and the upload-sized websocket limit (blocking)."""
    import panel as pn

    from dsb_widgets.ui.safety import WEBSOCKET_MAX_BYTES

    origins = allowed_origins(address, port, allow)
    server = pn.serve(apps, port=port, address=address, show=show, start=False, websocket_origin=origins,
                      websocket_max_message_size=WEBSOCKET_MAX_BYTES, **kwargs)
    install_guard(server._tornado, origins)  # Bokeh's tornado.web.Application
    server.start()
    server.io_loop.start()
