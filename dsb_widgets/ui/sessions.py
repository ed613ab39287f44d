"""Process-wide bookkeeping of live viewers (one periodic drain callback each).

Lives in its own module so ``panel serve dsb_widgets/ui/app.py`` (which re-executes the app
script for every session) and ``dsb serve`` share one count. The load test reads it through
the ``/dsb_status`` endpoint to prove that closed sessions release their callbacks.
"""

from __future__ import annotations

import itertools
import os
import threading
from typing import Any

_lock = threading.Lock()
_live: dict[int, str] = {}  # viewer id -> description
_ids = itertools.count(1)
_totals = {"started": 0, "stopped": 0}


def register(description: str) -> int:
    """Record a started drain callback; returns its id for :func:`release`."""
    with _lock:
        vid = next(_ids)
        _live[vid] = description
        _totals["started"] += 1
        return vid


def release(vid: int) -> bool:
    """Forget callback ``vid``; False if it was already released (release is idempotent)."""
    with _lock:
        if _live.pop(vid, None) is None:
            return False
        _totals["stopped"] += 1
        return True


def live_count() -> int:
    with _lock:
        return len(_live)


def snapshot() -> dict[str, Any]:
    """Counts for the status endpoint: live callbacks, started/stopped totals, process RSS."""
    with _lock:
        out: dict[str, Any] = {"live_callbacks": len(_live), **_totals}
    out["pid"] = os.getpid()
    out["rss_bytes"] = rss_bytes()
    return out


def rss_bytes() -> int:
    """Resident set size of this process (Linux /proc; 0 where unavailable)."""
    try:
        with open(f"/proc/{os.getpid()}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0
