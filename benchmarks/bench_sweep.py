"""Benchmark: the same 8-run digits sweep on a LocalCluster of 1 vs 2 worker processes.

    python benchmarks/bench_sweep.py [--steps 512] [--workers 1 2]

Each cluster is started, its workers warmed (one tiny run each: imports and the digits load are
paid once per worker process, ~5 s idle and far more on a loaded machine), then the sweep is
timed into a fresh folder. Runs are single-threaded (torch.set_num_threads(1)), so the ideal
speed-up on 2 cores is 2x; the machine's load average is printed next to every timing because
these machines are shared.

Measured 2026-11-23, ``--steps 256``, on the 2-core dev machine while ~7 other agents kept its
load average at 17 (so every absolute time is tens of times the idle one):

    1 worker(s): sweep   573.1 s  (cluster start + warm-up  88.0 s; load average 17.7 -> 17.1)
    2 worker(s): sweep   237.0 s  (cluster start + warm-up 101.0 s; load average 17.1 -> 17.0)
    speed-up 1 -> 2 workers: 2.42x

More than the ideal 2x because under that load the kernel shares the cores per process, so two
workers also won a larger share from the other jobs; on an idle machine expect <= 2x. Runs are
independent tasks, so the sweep scales with workers until the cores (or GPUs) are used up.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any

SPEC: dict[str, Any] = {
    "name": "bench",
    "base": {"experiment": "images", "dataset": "digits", "model": "mlp", "probe_size": 200,
             "options": {"width": 64}},
    "grid": {"options.train_on": ["real", "gauss_clone"], "seed": [0, 1, 2, 3]},
}


def _warm(client: Any, tmp: Path) -> None:
    from dsb_widgets.engine.task import RunConfig
    from dsb_widgets.sweep import execute_run

    cfg = RunConfig(experiment="images", dataset="digits", model="mlp", steps=2, probe_size=10,
                    options={"width": 8}).to_json()
    futs = [client.submit(execute_run, cfg, str(tmp / f"warm{i}" / "w.nc"), 1, workers=[addr], pure=False)
            for i, addr in enumerate(client.scheduler_info()["workers"])]
    client.gather(futs)


def bench(n_workers: int, steps: int) -> tuple[float, float]:
    """(cluster start + warm-up seconds, sweep seconds) on a LocalCluster of ``n_workers``."""
    from distributed import Client, LocalCluster

    from dsb_widgets.sweep import run_sweep

    spec = {**SPEC, "base": {**SPEC["base"], "steps": steps}}
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        with LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True, dashboard_address=None,
                          silence_logs=40) as cluster, Client(cluster) as client:
            _warm(client, Path(tmp))
            t1 = time.perf_counter()
            res = run_sweep(spec, Path(tmp) / "sweep", client=client, threads=1, progress=False)
            t2 = time.perf_counter()
        assert not res.failed and len(res.finished) == len(res.runs) == 8, res.failed
    return t1 - t0, t2 - t1


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=512)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = p.parse_args()
    print(f"8 digits runs (mlp width 64, {args.steps} steps, probe size 200), 1 torch thread per run, "
          f"{os.cpu_count()} cores")
    times = {}
    for n in args.workers:
        load0 = os.getloadavg()[0]
        start, sweep = bench(n, args.steps)
        times[n] = sweep
        print(f"{n} worker(s): sweep {sweep:7.1f} s  (cluster start + warm-up {start:5.1f} s; "
              f"load average {load0:.1f} -> {os.getloadavg()[0]:.1f})", flush=True)
    base = times[args.workers[0]]
    for n in args.workers[1:]:
        print(f"speed-up {args.workers[0]} -> {n} workers: {base / times[n]:.2f}x")


if __name__ == "__main__":
    main()
