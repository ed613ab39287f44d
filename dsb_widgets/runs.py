"""The run registry: training threads live here, never in the UI.

One module-level :data:`REGISTRY` per process (so ``panel serve --autoreload`` re-importing the
app does not start training twice). Each run has one training thread, a stop event and a
thread-safe append-only :class:`RowStore` that any number of viewers drain at their own pace.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dsb_widgets.engine.loop import train
from dsb_widgets.engine.task import RunConfig, required, resolve_config
from dsb_widgets.errors import BusyError
from dsb_widgets.threads import available_cores

THREAD_PREFIX = "dsb-train-"


@dataclass
class RowStore:
    """Checkpoint rows of one run, appended by the training thread, read by viewers.

    ``rows_since(i)`` returns the rows after position ``i`` and the new position; rows are never
    modified or removed, so each viewer only needs its own cursor.
    """

    meta: dict[str, Any] = field(default_factory=dict)
    status: str = "starting"  # starting | running | finished | stopped | failed
    error: str = ""
    step: int = 0
    total: int = 0
    elapsed: float = 0.0
    _rows: list[dict[str, Any]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def on_event(self, event: dict[str, Any]) -> None:
        """Subscriber for :func:`dsb_widgets.engine.train` events (runs on the training thread)."""
        kind = event["type"]
        with self._lock:
            if kind == "start":
                cfg: RunConfig = event["config"]
                self.meta = {k: event[k] for k in ("probes", "orders", "floors", "seeds", "checkpoints")}
                self.meta["config"] = cfg
                self.total, self.step, self.status = required(cfg.steps, "steps"), event["step"], "running"
                self._rows.extend(event["rows"])
            elif kind == "checkpoint":
                self._rows.extend(event["rows"])
                self.step, self.elapsed = event["step"], event["wall_time"]
            elif kind == "progress":
                self.step, self.total, self.elapsed = event["step"], event["total"], event["elapsed"]
            elif kind == "done":
                self.status, self.step = event["status"], event["step"]

    def rows_since(self, cursor: int) -> tuple[list[dict[str, Any]], int]:
        with self._lock:
            new = self._rows[cursor:]
            return new, cursor + len(new)

    def __len__(self) -> int:
        with self._lock:
            return len(self._rows)

    @property
    def eta(self) -> float | None:
        """Seconds left, from the average step time so far (None before the first steps)."""
        if self.step <= 0 or self.total <= self.step or self.elapsed <= 0:
            return None if self.status == "running" else 0.0
        return self.elapsed / self.step * (self.total - self.step)


@dataclass
class RunHandle:
    id: str
    config: RunConfig
    out: Path | None
    store: RowStore
    stop_event: threading.Event
    thread: threading.Thread
    started: float = field(default_factory=time.time)

    def stop(self) -> None:
        """Ask the run to stop after its current step (state saved, resumable)."""
        self.stop_event.set()

    @property
    def alive(self) -> bool:
        return self.thread.is_alive()

    def join(self, timeout: float | None = None) -> None:
        self.thread.join(timeout)


class RunRegistry:
    """All runs of this process, by id; starts one training thread per run.

    At most ``max_runs`` runs train at once (default: one per CPU core, so runs never
    oversubscribe the machine); a further :meth:`start` is refused with a message (BusyError).
    Each run gets ``threads`` torch threads, or by default its share of the cores
    (:func:`dsb_widgets.threads.auto_threads`), set inside its training thread.
    """

    def __init__(self, threads: int | None = None, max_runs: int | None = None) -> None:
        self._runs: dict[str, RunHandle] = {}
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self.threads, self.max_runs = threads, max_runs

    def configure(self, threads: int | None = None, max_runs: int | None = None) -> None:
        """Set the thread count per run and the number of concurrent runs (None: automatic)."""
        self.threads, self.max_runs = threads, max_runs

    def capacity(self) -> int:
        """How many runs may train at once."""
        return self.max_runs or available_cores()

    def start(self, cfg: RunConfig, out: str | Path | None = None, resume: bool = False) -> RunHandle:
        """Validate ``cfg`` (raises ConfigError at once) and start training in a thread.

        Raises :class:`BusyError` when ``capacity()`` runs are already training.
        """
        cfg = resolve_config(cfg)
        if out is not None:  # an existing result is refused here, in the caller's thread (never clobbered)
            from dsb_widgets.engine.results import check_out_path

            check_out_path(out, resume=resume)
        store, stop = RowStore(total=required(cfg.steps, "steps")), threading.Event()
        with self._lock:
            run_id = f"run{next(self._ids)}"
        out_path = Path(out) if out is not None else None
        threads: int | str = self.threads or "auto"
        concurrent = 1

        def target() -> None:
            try:
                train(cfg, out=out_path, resume=resume, subscribers=[store.on_event], stop_event=stop,
                      threads=threads, concurrent=concurrent)
            except Exception as err:  # noqa: BLE001 - surfaced to viewers via the store
                store.status, store.error = "failed", f"{type(err).__name__}: {err}"
                store.meta.setdefault("traceback", traceback.format_exc())

        thread = threading.Thread(target=target, name=THREAD_PREFIX + run_id, daemon=True)
        handle = RunHandle(run_id, cfg, out_path, store, stop, thread)
        with self._lock:  # check and claim a slot atomically (two sessions may start at once)
            busy = sum(r.thread.is_alive() or r.thread.ident is None for r in self._runs.values())
            if busy >= self.capacity():
                raise BusyError(f"{busy} runs are already training and this machine serves {self.capacity()} at "
                                "once (one per CPU core); stop one or wait for it to finish, then start again")
            concurrent = busy + 1
            self._runs[run_id] = handle
        thread.start()
        return handle

    def get(self, run_id: str) -> RunHandle:
        with self._lock:
            if run_id not in self._runs:
                raise KeyError(f"no run {run_id!r}; known: {sorted(self._runs)}")
            return self._runs[run_id]

    def runs(self) -> list[RunHandle]:
        with self._lock:
            return list(self._runs.values())

    def latest(self) -> RunHandle | None:
        runs = self.runs()
        return runs[-1] if runs else None

    def active(self) -> list[RunHandle]:
        return [r for r in self.runs() if r.alive]

    def stop_all(self, join: bool = True) -> None:
        for r in self.runs():
            r.stop()
        if join:
            for r in self.runs():
                r.join()


REGISTRY = RunRegistry()


def reserve_run_path(runs_dir: str | Path, cfg: RunConfig, when: float | None = None) -> Path:
    """A results path no other run has: ``<experiment>-<dataset>-<model>-<time>[-N].nc`` in
    ``runs_dir``, created empty with ``O_EXCL`` so two runs started in the same second (threads,
    sessions or processes) never share a file; the engine treats the empty file as no result."""
    runs_dir = Path(runs_dir)
    runs_dir.mkdir(parents=True, exist_ok=True)
    stem = Path(str(cfg.dataset or "default")).stem or "data"
    base = f"{cfg.experiment}-{stem}-{cfg.model or 'default'}-{time.strftime('%Y%m%d-%H%M%S', time.localtime(when))}"
    for n in itertools.count(1):
        path = runs_dir / (f"{base}.nc" if n == 1 else f"{base}-{n}.nc")
        try:
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
        except FileExistsError:
            continue
        return path
    raise AssertionError("unreachable")


def training_threads() -> list[threading.Thread]:
    """The live training threads of this process (the load test counts them)."""
    return [t for t in threading.enumerate() if t.name.startswith(THREAD_PREFIX)]
