"""Speed helpers of the training loop: ``torch.compile`` with a fallback, bf16 autocast, device timers.

- :class:`Forward`: the stack's forward, compiled with ``torch.compile`` when asked
  (``dsb run --compile``, ``train(compile=True)``). Inductor needs a C++ compiler on CPU and
  Triton on CUDA; when they are missing, or when compiling the first call fails, training goes on
  eagerly with one logged line saying why (the results are the same computation either way).
- :func:`autocast`: bfloat16 autocast when ``amp`` is on (CUDA only), else no context at all
  (an entered-but-disabled ``torch.autocast`` costs ~60 us per call: 1-2% of a digits MLP step).
- :class:`DeviceTimer`: seconds spent in the training steps, from CUDA events on a GPU (device
  time; read only where the loop waits for the device anyway, at checkpoints) and from
  ``time.perf_counter`` on CPU. A host clock around asynchronous CUDA launches would measure the
  launches, not the work.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import shutil
import time
from typing import Any, Callable

import torch

log = logging.getLogger(__name__)


def compile_unavailable(device: torch.device) -> str | None:
    """Why ``torch.compile``'s default backend (inductor) cannot run on ``device``, or None."""
    if device.type == "cuda":
        if importlib.util.find_spec("triton") is None:
            return "Triton is not installed (pip install triton)"
        return None
    from torch._inductor import config as inductor_config  # imported only when compiling

    candidates = [os.environ.get("CXX"), *inductor_config.cpp.cxx]
    if not any(c and shutil.which(c) for c in candidates):
        names = ", ".join(c for c in candidates if c) or "g++"
        return f"no C++ compiler found ({names}; install g++ or set CXX)"
    return None


class Forward:
    """``module(x)``, through ``torch.compile(module)`` when ``compile`` is on and it works.

    ``compiled``: whether calls go through the compiled module; ``reason``: why not, when asked.
    """

    def __init__(self, module: torch.nn.Module, compile: bool = False, device: torch.device | None = None,
                 warn: Callable[[str], None] | None = None) -> None:
        self.module = module
        self.reason: str | None = None
        self._warn = warn or log.warning
        self._fn: Callable[..., Any] | None = None
        self._first = True
        if compile:
            self.reason = compile_unavailable(device or torch.device("cpu"))
            if self.reason is None:
                self._fn = torch.compile(module)
            else:
                self._warn(f"--compile: {self.reason}; training without torch.compile")

    @property
    def compiled(self) -> bool:
        return self._fn is not None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self._fn is None:
            return self.module(x)
        if not self._first:
            return self._fn(x)
        self._first = False
        try:  # compilation happens in the first call; nothing has run yet when it fails
            return self._fn(x)
        except Exception as err:  # noqa: BLE001 - any backend failure: fall back, say why in one line
            self._fn = None
            self.reason = f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"
            self._warn(f"--compile: torch.compile failed ({self.reason[:200]}); training without it")
            return self.module(x)


def autocast(device: torch.device, amp: bool) -> contextlib.AbstractContextManager[Any]:
    """bfloat16 autocast on ``device`` when ``amp``, else a no-op context."""
    if amp:
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


class DeviceTimer:
    """Accumulated seconds of timed sections: CUDA events on a GPU, ``perf_counter`` on CPU."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self._host = 0.0
        self._t0 = 0.0
        self._pending: list[tuple[Any, Any]] = []
        self._start: Any = None

    def start(self) -> None:
        if self.cuda:
            self._start = torch.cuda.Event(enable_timing=True)
            self._start.record()
        else:
            self._t0 = time.perf_counter()

    def stop(self) -> None:
        if self.cuda:
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            self._pending.append((self._start, end))
        else:
            self._host += time.perf_counter() - self._t0

    def seconds(self) -> float:
        """Total so far. On CUDA this folds in the finished event pairs without waiting; at a
        checkpoint (after the loop synchronised) every pair is finished."""
        if self.cuda:
            finished = [p[1].query() for p in self._pending]
            self._host += sum(a.elapsed_time(b) for (a, b), f in zip(self._pending, finished) if f) / 1000.0
            self._pending = [p for p, f in zip(self._pending, finished) if not f]
        return self._host

    def total(self) -> float:
        """Total after waiting for the device (end of a run)."""
        if self.cuda and self._pending:
            self._pending[-1][1].synchronize()
        return self.seconds()
