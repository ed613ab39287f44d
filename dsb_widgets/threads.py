"""Thread policy: how many CPU threads a training run may use, so runs never oversubscribe.

On a shared CPU, torch's default (one intra-op thread per core, in every run) is the worst
choice: two runs on two cores each start two OpenMP teams that spin against each other and
against every other process. Measured on the 2-core machine with other jobs running (issue 17):
``dsb run images`` for 256 steps took 53-65 s with torch's default and 3.3-3.6 s with one thread.

The policy (used by ``dsb run``, ``dsb serve``'s runs and ``dsb sweep``'s workers):

- ``--threads N`` wins when given;
- otherwise ``cores // concurrent runs`` (cores = the CPUs this process may run on), at least 1;
- and 1 for models too small to gain from a second thread (fewer than
  :data:`SMALL_MODEL_FLOPS` multiply-adds per training step: the digits MLP at batch 64 is
  ~1.5e7 and ran no faster on 2 threads than on 1; see ``benchmarks/bench_threads.py``).

Torch reads the intra-op count per thread when that thread first runs a parallel op, so
:func:`apply_threads` must run *in* the training thread (the run registry does so) or before
any work in the process (the CLI does so).

This module imports nothing heavy (torch is imported inside :func:`apply_threads` only).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

from dsb_widgets.errors import ConfigError

# Below this many multiply-adds per training step (forward, per seed x batch), one thread is
# as fast as two (measured in benchmarks/bench_threads.py) and never slows a neighbour down.
SMALL_MODEL_FLOPS = 5e7


def available_cores() -> int:
    """CPUs this process may run on (affinity mask / cgroup-pinned), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not on Linux
        return max(1, os.cpu_count() or 1)


def check_threads(threads: int | None) -> int | None:
    """Validate a ``--threads`` value (None = automatic)."""
    if threads is not None and threads < 1:
        raise ConfigError(f"--threads must be >= 1 (got {threads}); leave it out for the automatic choice")
    return threads


def busy_cores() -> float:
    """Cores other processes keep busy: the larger of the 1-minute load average and the number of
    runnable tasks right now (``/proc/loadavg``) minus this one; 0 where neither is known."""
    load = 0.0
    try:
        load = os.getloadavg()[0]
        with open("/proc/loadavg") as fh:
            load = max(load, float(fh.read().split()[3].split("/")[0]) - 1)
    except (OSError, AttributeError, IndexError, ValueError):
        pass
    return max(0.0, load)


def auto_threads(concurrent: int = 1, cores: int | None = None, step_flops: float | None = None,
                 busy: float | None = None) -> int:
    """Threads for one of ``concurrent`` runs sharing ``cores`` (default: this process's CPUs).

    Never more than the cores left idle by other processes (``busy``, default :func:`busy_cores`):
    an OpenMP team larger than the free cores waits at every barrier for a descheduled member.
    ``step_flops``: multiply-adds of one training step when known; a small model gets 1 thread.
    """
    cores = available_cores() if cores is None else max(1, cores)
    busy = busy_cores() if busy is None else busy
    share = max(1, min(cores // max(1, concurrent), int(cores - busy + 0.5)))
    if step_flops is not None and step_flops < SMALL_MODEL_FLOPS:
        return 1
    return share


def apply_threads(threads: int) -> int:
    """Set torch's intra-op threads (and inter-op, when still allowed) for the calling thread."""
    import torch

    threads = max(1, int(threads))
    torch.set_num_threads(threads)
    try:  # only allowed once per process, before any inter-op work: best effort
        torch.set_num_interop_threads(threads)
    except RuntimeError:
        pass
    return threads


def step_flops(model: "torch.nn.Module", x: "torch.Tensor") -> float:
    """Multiply-adds of one forward pass of ``model`` on the batch ``x`` (Linear and Conv layers,
    counted with forward hooks; attention and elementwise ops are ignored: an estimate)."""
    import torch
    from torch import nn

    total = [0.0]

    def hook(mod: nn.Module, inp: tuple, out: torch.Tensor) -> None:
        if isinstance(mod, nn.Linear):
            total[0] += out.numel() * mod.in_features
        elif isinstance(mod, nn.modules.conv._ConvNd):
            k = mod.weight[0].numel()  # (C_in / groups) * kernel elements per output value
            total[0] += out.numel() * k

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd))]
    was_training = model.training
    model.eval()  # no BatchNorm statistics update, no dropout
    try:
        with torch.no_grad():
            model(x)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return total[0]
