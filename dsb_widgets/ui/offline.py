"""Everything the dashboard page loads comes from this machine (no CDN, no web fonts).

``pn.config.inline`` inlines BokehJS/Panel JS and CSS. What remains is the Fast design's web
font: ``panel.theme.fast.Fast._resources['font']`` links ``fonts.googleapis.com`` (Open Sans)
into every page that uses the Fast template, which offline ends in console errors
(``ERR_NAME_NOT_RESOLVED``) and a request off the machine. :class:`OfflineFast` is the same
design without that link, and :func:`offline_template` builds the dashboard's FastListTemplate
with it and a system font stack (the fonts every OS has).
"""

from __future__ import annotations

from typing import Any

import panel as pn
from panel.io.resources import CDN_DIST
from panel.theme.fast import Fast

SYSTEM_FONT = "system-ui, -apple-system, 'Segoe UI', Roboto, 'Helvetica Neue', Arial, sans-serif"


class OfflineFast(Fast):
    """Panel's Fast design minus its Google-fonts stylesheet (its own JS kept, served from the
    bundled ``fast/`` folder, which resource resolution would otherwise look up under this
    subclass's name)."""

    _resources = {**{k: v for k, v in Fast._resources.items() if k != "font"},  # type: ignore[typeddict-item]
                  "js_modules": {**Fast._resources["js_modules"],
                                 "fast-design": f"{CDN_DIST}bundled/fast/js/fast_design.js"}}


def offline_template(**params: Any) -> pn.template.FastListTemplate:
    """A FastListTemplate whose page references no host but the server (fonts included)."""
    params.setdefault("font", SYSTEM_FONT)
    params.setdefault("font_url", "")
    return pn.template.FastListTemplate(design=OfflineFast, **params)


def local_resources_for_session() -> None:
    """Make every stylesheet of this server session point at the server, never at the CDN.

    Panel rewrites component stylesheets (``cdn.holoviz.org/.../css/*.css``) to the server's
    ``static/extensions/panel/`` only through ``doc._template_variables['dist_url']``, which it
    sets while rendering the page's HTML. A session whose document is built without that render
    (a slow page that opened its websocket after the unused-session lifetime: Bokeh builds a new
    document on connect) kept CDN URLs: seen as 13 stylesheet requests to cdn.holoviz.org in the
    Chromium test on the loaded machine. Setting the variable when the session's page is built
    covers both paths. (``_template_variables`` is Bokeh's private per-document dict; Panel reads
    it the same way.)
    """
    from panel.io.resources import LOCAL_DIST

    doc = pn.state.curdoc
    if doc is None or doc.session_context is None:
        return
    rel = pn.state.rel_path
    doc._template_variables.setdefault("dist_url", f"{rel}/{LOCAL_DIST}" if rel else LOCAL_DIST)
