"""Thread policy under a competing CPU load, before (torch's default) / after (``threads="auto"``).

    python benchmarks/bench_threads.py --model cnn --steps 64

Each case trains the same digits run in a fresh process and reports its training-loop seconds
(``TrainResult.timings["train_s"]``, so imports and probe building do not blur it):

* ``1 thread, no load``: the reference;
* ``default, loaded``: torch's default (one thread per core) while ``cores - 1`` other processes
  spin on the CPU (what ``dsb run`` did before: 15-40x slower on the loaded 2-core machine);
* ``auto, loaded``: the engine's policy (``train(threads="auto")``, dsb_widgets.threads) under the
  same load; the goal is within 1.5x of the reference.

Then the gain from a second thread for each model with no added load (the measurement behind
``SMALL_MODEL_FLOPS``): step time with 1 and with ``cores`` threads. Timings are printed, never
asserted by tests; say how loaded the machine was when quoting them.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import subprocess
import sys
import time

JOB = """
import json, sys, torch
from dsb_widgets.engine import RunConfig, train
threads = json.loads(sys.argv[1])
cfg = RunConfig(experiment="images", model=sys.argv[2], steps=int(sys.argv[3]), probes=("real",), probe_size=100,
                per_octave=1)
res = train(cfg, threads=threads)
print(json.dumps({"train_s": res.timings["train_s"], "threads": torch.get_num_threads()}))
"""


def spin(stop_at: float) -> None:
    x = 0
    while time.time() < stop_at:
        x += 1


def run_job(threads: int | str | None, model: str, steps: int) -> dict[str, float]:
    env = dict(os.environ)
    if threads is None:  # torch's own default: drop the pins this benchmark may run under
        env.pop("OMP_NUM_THREADS", None)
        env.pop("MKL_NUM_THREADS", None)
    out = subprocess.run([sys.executable, "-c", JOB, json.dumps(threads), model, str(steps)], env=env,
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def loaded(n: int, seconds: float) -> list[mp.Process]:
    procs = [mp.Process(target=spin, args=(time.time() + seconds,), daemon=True) for _ in range(n)]
    for p in procs:
        p.start()
    time.sleep(1.0)  # let them show up as runnable
    return procs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="cnn")
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--gain-models", nargs="*", default=["mlp", "cnn", "resnet"])
    ap.add_argument("--gain-steps", type=int, default=16)
    args = ap.parse_args()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    print(f"{cores} cores, load average {os.getloadavg()[0]:.1f} before the benchmark")
    ref = run_job(1, args.model, args.steps)
    rows = {"1 thread, no load": ref}
    for name, threads in (("default, loaded", None), ("auto, loaded", "auto")):
        procs = loaded(max(1, cores - 1), 600)
        try:
            rows[name] = run_job(threads, args.model, args.steps)
        finally:
            for p in procs:
                p.terminate()
    print(f"\n{args.model}, {args.steps} steps; competing load = {max(1, cores - 1)} spinning process(es)")
    print(f"{'case':<22}{'threads':>8}{'train s':>10}{'vs 1 thread':>13}")
    for name, r in rows.items():
        print(f"{name:<22}{r['threads']:>8}{r['train_s']:>10.2f}{r['train_s'] / ref['train_s']:>12.2f}x")
    speedup = rows['default, loaded']['train_s'] / rows['auto, loaded']['train_s']
    print(f"before/after under load: {speedup:.1f}x faster")
    if cores > 1 and args.gain_models:
        print(f"\ngain from {cores} threads vs 1 (no added load), {args.gain_steps} steps:")
        for model in args.gain_models:
            one = run_job(1, model, args.gain_steps)["train_s"]
            many = run_job(cores, model, args.gain_steps)["train_s"]
            print(f"  {model:<8} 1 thread {one:.2f}s, {cores} threads {many:.2f}s: speed-up {one / many:.2f}x")


if __name__ == "__main__":
    main()
