"""Drive a served dashboard from outside: start ``dsb serve`` in a subprocess, read
``/dsb_status``, and open many headless websocket sessions (the load test and its measurements).

A session here is what a browser tab is to the server: an HTTP GET of ``/`` (the server builds
the page's document and starts its drain callback) followed by a websocket on ``/ws`` with the
page's session token (Bokeh's protocol: subprotocols ``["bokeh", token]``). The server then
pushes every document change (streamed points, progress) to it; we only count the bytes.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

TOKEN_RE = re.compile(r'"token":"([^"]+)"')
_START_AND_SERVE = """
from pathlib import Path
from dsb_widgets.engine.task import RunConfig, resolve_config
from dsb_widgets.runs import REGISTRY
from dsb_widgets.ui.app import run_path, serve
cfg = resolve_config(RunConfig(**{run!r}))
REGISTRY.start(cfg, out=run_path(Path({runs!r}), cfg))
serve(port={port}, address="127.0.0.1", runs_dir={runs!r})
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get_status(url: str, timeout: float = 30.0) -> dict[str, Any]:
    """The server's ``/dsb_status`` JSON (live callbacks, training threads, RSS, runs)."""
    with urllib.request.urlopen(f"{url}/dsb_status", timeout=timeout) as r:
        return json.loads(r.read())


@dataclass
class ServedDashboard:
    """``dsb serve`` on a free port in a subprocess; use as a context manager.

    ``args``: extra CLI arguments (e.g. ``["--start"]``). ``run``: RunConfig fields of a run to
    start in the server process before serving (what ``--start`` does with the default config),
    e.g. a long run that outlives a load test. Training uses one torch thread so a test server
    does not fight the test runner for the cores.
    """

    runs_dir: Path
    args: Sequence[str] = ()
    run: dict[str, Any] | None = None
    port: int = field(default_factory=free_port)
    startup_timeout: float = 180.0
    proc: subprocess.Popen | None = None
    log_path: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> "ServedDashboard":
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
        self.log_path = Path(self.runs_dir) / f"serve-{self.port}.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "w")
        cmd = [sys.executable, "-m", "dsb_widgets.cli", "serve", "--port", str(self.port), "--address",
               "127.0.0.1", "--runs-dir", str(self.runs_dir), *self.args]
        if self.run is not None:
            cmd = [sys.executable, "-c", _START_AND_SERVE.format(run=self.run, port=self.port,
                                                                 runs=str(self.runs_dir))]
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.time() + self.startup_timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"dsb serve exited with {self.proc.returncode}:\n{self.log()}")
            try:
                get_status(self.url, timeout=5)
                return self
            except OSError:
                time.sleep(0.5)
        self.__exit__()
        raise TimeoutError(f"dsb serve did not answer within {self.startup_timeout:.0f} s:\n{self.log()}")

    def __exit__(self, *exc: Any) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def status(self) -> dict[str, Any]:
        return get_status(self.url)

    def log(self) -> str:
        return self.log_path.read_text()[-4000:] if self.log_path and self.log_path.exists() else ""


@dataclass
class SessionStats:
    """What :func:`watch_sessions` saw: bytes received per session and when each connected."""

    bytes: list[int]
    connected_at: list[float]  # seconds after the start; NaN if never connected
    held_s: float  # how long all sessions were connected together
    status_while_held: list[dict[str, Any]]


async def _session(url: str, i: int, gate: asyncio.Semaphore, all_up: asyncio.Event, until: list[float],
                   stats: SessionStats, t0: float) -> None:
    import websockets
    from websockets.typing import Origin, Subprotocol

    def token() -> str:
        with urllib.request.urlopen(f"{url}/", timeout=120) as r:
            html = r.read().decode()
        m = TOKEN_RE.search(html)
        if m is None:
            raise RuntimeError("no Bokeh session token in the page")
        return m.group(1)

    async with gate:  # a few page builds at a time, then connect at once (unused sessions expire)
        tok = await asyncio.to_thread(token)
        ws = await websockets.connect(url.replace("http", "ws") + "/ws",
                                      subprotocols=[Subprotocol("bokeh"), Subprotocol(tok)],
                                      origin=Origin(url), max_size=None, open_timeout=120,  # as a browser: Origin
                                      ping_interval=None)  # a busy server may not answer pings in time
    stats.connected_at[i] = time.time() - t0
    async with ws:
        while not all_up.is_set() or time.time() < until[0]:
            try:
                msg = await asyncio.wait_for(ws.recv(), timeout=0.5)
                stats.bytes[i] += len(msg)
            except asyncio.TimeoutError:
                continue


async def _watch(url: str, n: int, hold_s: float, concurrency: int, timeout: float) -> SessionStats:
    stats = SessionStats([0] * n, [float("nan")] * n, 0.0, [])
    gate, all_up, until, t0 = asyncio.Semaphore(concurrency), asyncio.Event(), [float("inf")], time.time()
    tasks = [asyncio.create_task(_session(url, i, gate, all_up, until, stats, t0)) for i in range(n)]
    while sum(c == c for c in stats.connected_at) < n:  # c == c: not NaN
        if time.time() - t0 > timeout:
            for t in tasks:
                t.cancel()
            raise TimeoutError(f"only {sum(c == c for c in stats.connected_at)}/{n} sessions connected "
                               f"in {timeout:.0f} s")
        for t in tasks:
            if t.done() and t.exception() is not None:
                raise t.exception()  # type: ignore[misc]
        await asyncio.sleep(0.2)
    start = time.time()
    before = list(stats.bytes)
    until[0] = start + hold_s
    all_up.set()
    while time.time() < until[0]:
        stats.status_while_held.append(await asyncio.to_thread(get_status, url))
        await asyncio.sleep(max(0.0, min(2.0, until[0] - time.time())))
    await asyncio.gather(*tasks)
    stats.held_s = time.time() - start
    stats.bytes = [b - b0 for b, b0 in zip(stats.bytes, before)]  # bytes while all were connected
    return stats


def watch_sessions(url: str, n: int = 20, hold_s: float = 10.0, concurrency: int = 2,
                   timeout: float = 420.0) -> SessionStats:
    """Open ``n`` sessions, hold them all connected ``hold_s`` seconds, then close them all."""
    return asyncio.run(_watch(url, n, hold_s, concurrency, timeout))


def wait_for(predicate: Any, timeout: float, every: float = 0.5) -> Any:
    """Poll ``predicate()`` until truthy (returned) or raise TimeoutError."""
    deadline = time.time() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.time() > deadline:
            raise TimeoutError(f"condition not met within {timeout:.0f} s")
        time.sleep(every)
