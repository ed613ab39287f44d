"""The dashboard's upload box: size refused in the browser, chunks capped on the server.

Panel's ``FileInput`` reads the whole file in the browser and sends it base64-encoded in one
websocket message; a file over ~48 MB exceeds the socket limit (64 MB, ``safety.WEBSOCKET_MAX_BYTES``)
and the connection simply drops, with no message. :class:`BoundedUpload` is Panel's
``FileDropper`` (FilePond, bundled with Panel and served inline: nothing is fetched off the
machine) with

- ``max_file_size`` = ``safety.MAX_UPLOAD_BYTES``: FilePond's size plugin refuses a larger file in
  the browser ("File is too large / Maximum file size is 20 MB") and sends nothing;
- chunked transfer (``chunk_size`` 4 MB), so an allowed file never nears the socket limit;
- a server-side cap, because a hostile client can skip the browser check: chunks of one file are
  counted as they arrive, and a file whose bytes pass the limit, or buffered bytes of all files
  together passing it, are dropped at once and reported through :attr:`BoundedUpload.refused`
  (the content checks of ``safety.open_results_bytes`` then run on what did arrive).

``value`` holds at most one file, ``{name: bytes}``; the dashboard clears it after answering.
"""

from __future__ import annotations

from typing import Any

import panel as pn
import param

from dsb_widgets.ui.safety import MAX_UPLOAD_BYTES

CHUNK_BYTES = 4 * 2**20  # per websocket message (base64 in transit: x 4/3 < WEBSOCKET_MAX_BYTES)


def refusal(name: str, size: int) -> str:
    """The message for a file refused on size while it streamed in."""
    return (f"{name} passed {size / 2**20:.1f} MB while uploading, over the {MAX_UPLOAD_BYTES // 2**20} MB "
            "upload limit; copy it into the runs folder and open it from the list")


class BoundedUpload(pn.widgets.FileDropper):
    """``FileDropper`` with the upload limit enforced in the browser and on the server."""

    refused = param.String(default="", doc="message for the last file dropped on size (server side)")

    _rename = {**pn.widgets.FileDropper._rename, "refused": None}  # server-side only: not a browser property

    def __init__(self, **params: Any) -> None:
        params.setdefault("max_file_size", f"{MAX_UPLOAD_BYTES // 2**20}MB")
        params.setdefault("chunk_size", CHUNK_BYTES)
        params.setdefault("previews", [])
        params.setdefault("multiple", False)
        super().__init__(**params)
        self._received: dict[str, int] = {}

    def _process_event(self, event: Any) -> None:
        data = event.data
        if event.event_name != "upload_event":
            self._received.pop(data.get("name", ""), None)
            super()._process_event(event)
            return
        name, chunk = str(data["name"]), data.get("data") or b""
        if data["chunk"] == 1:
            self._received[name] = 0
        elif name not in self._received:  # continuation of a file already dropped: ignore it
            return
        self._received[name] += len(chunk)
        if self._received[name] > MAX_UPLOAD_BYTES or sum(self._received.values()) > MAX_UPLOAD_BYTES:
            size = self._received.pop(name)
            self._file_buffer.pop(name, None)
            self.refused = refusal(name, size)
            return
        super()._process_event(event)
        if data["chunk"] == data["total_chunks"]:
            self._received.pop(name, None)
