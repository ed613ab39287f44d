"""Thread policy under a competing CPU load, before (torch's default) / after (``threads="auto"``).

    python benchmarks/bench_threads.py              # ~1 min on 2 cores: the ratio is the last line
    python benchmarks/bench_threads.py --gain       # also the 1- vs all-core speed-up per model

One process builds the digits task once and trains the same run several ways, reporting the
training-loop wall seconds (``TrainResult.timings["train_s"]``: imports and probe building are
paid once, outside the timings) and the threads each ran with:

* ``1 thread, no added load``: the reference;
* ``auto, 1 spinner``: the engine's policy (``train(threads="auto")``, dsb_widgets.threads) while
  ``cores - 1`` other processes spin on the CPU (on 2 cores: one), started 1 s before the run so
  the policy can see them; the goal is within 1.5x of the reference;
* ``default threads, 1 spinner``: torch's default (one thread per core), what ``dsb run`` did
  before (15-40x slower on the loaded 2-core machine); stopped after ``--cap`` x the reference
  and extrapolated from the steps it finished.

Fairness: the reference and the auto case alternate ``--repeats`` times and the medians are
compared, so drifting background load hits both. The spinners run in their own session
(``os.setsid``), as another program would: Linux's autogroup scheduler (on by default) shares
the CPU between sessions first, so a spinner forked into the benchmark's own session competes
for this session's share only and halves the run whatever the thread count (``--same-session``
shows it: 2.05x where its own session gave 1.20x, loaded machine, load 7-8). With other jobs on the machine one extra
spinner costs about (sessions + 1) / sessions, not 1. The load average is printed before and
after. Timings are printed, never asserted by tests.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import threading
import time
from typing import Any


def spin(stop_at: float, own_session: bool) -> None:
    if own_session:
        os.setsid()  # another program's load: its own autogroup, as from another terminal
    x = 0
    while time.time() < stop_at:
        x += 1


def loaded(n: int, own_session: bool) -> list[mp.Process]:
    procs = [mp.Process(target=spin, args=(time.time() + 600, own_session), daemon=True) for _ in range(n)]
    for p in procs:
        p.start()
    time.sleep(1.0)  # let them show up as runnable
    return procs


def stop_all(procs: list[mp.Process]) -> None:
    for p in procs:
        p.terminate()
        p.join()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="cnn")
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3, help="alternating reference / auto pairs (medians)")
    ap.add_argument("--cap", type=float, default=4.0, help="stop the default-threads case at this x the reference")
    ap.add_argument("--same-session", action="store_true", help="fork the spinners into this session (autogroup)")
    ap.add_argument("--gain", action="store_true", help="also time 1 vs all cores per model, no added load")
    ap.add_argument("--gain-models", nargs="*", default=["mlp", "cnn", "resnet"])
    ap.add_argument("--gain-steps", type=int, default=16)
    args = ap.parse_args()
    t_start = time.perf_counter()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    spinners = max(1, cores - 1)
    load0 = os.getloadavg()[0]
    print(f"{cores} cores, load average {load0:.1f} before the benchmark", flush=True)

    import torch

    from dsb_widgets.engine import RunConfig, train
    from dsb_widgets.engine.task import build_task

    def job(model: str, steps: int, threads: int | str | None, cap_s: float | None = None) -> dict[str, float]:
        cfg = RunConfig(experiment="images", model=model, steps=steps, probes=("real",), probe_size=100,
                        per_octave=1)
        if model not in tasks:
            tasks[model] = build_task(cfg)
        task = tasks[model]
        stop, done = threading.Event(), {"step": steps}
        timer = threading.Timer(cap_s, stop.set) if cap_s else None
        if timer is not None:
            timer.start()
        res = train(cfg, task=task, threads=threads, stop_event=stop,
                    subscribers=[lambda ev: done.update(step=ev["step"]) if ev["type"] == "done" else None])
        if timer is not None:
            timer.cancel()
        return {"train_s": res.timings["train_s"] * steps / max(done["step"], 1), "threads": torch.get_num_threads(),
                "steps": done["step"]}

    tasks: dict[str, Any] = {}
    job(args.model, 4, 1)  # warm-up: first-call costs out of the timings
    refs, autos = [], []
    for _ in range(args.repeats):
        refs.append(job(args.model, args.steps, 1))
        procs = loaded(spinners, not args.same_session)
        try:
            autos.append(job(args.model, args.steps, "auto"))
        finally:
            stop_all(procs)
    ref_s = statistics.median(r["train_s"] for r in refs)
    auto_s = statistics.median(r["train_s"] for r in autos)
    procs = loaded(spinners, not args.same_session)
    try:
        torch.set_num_threads(cores)  # torch's default: one intra-op thread per core
        default = job(args.model, args.steps, None, cap_s=args.cap * ref_s)
    finally:
        stop_all(procs)
    load1 = os.getloadavg()[0]
    where = "this session" if args.same_session else "own session"
    print(f"\ndigits {args.model}, {args.steps} steps; competing load = {spinners} spinning process(es) ({where}); "
          f"median of {args.repeats} alternating runs")
    print(f"{'case':<28}{'threads':>8}{'train s':>10}{'vs 1 thread':>13}   runs")
    for name, runs, med in (("1 thread, no added load", refs, ref_s), ("auto, 1 spinner", autos, auto_s)):
        each = " ".join(f"{r['train_s']:.2f}" for r in runs)
        print(f"{name:<28}{runs[0]['threads']:>8}{med:>10.2f}{med / ref_s:>12.2f}x   {each}")
    part = "" if default["steps"] >= args.steps else f" (extrapolated from {default['steps']} steps)"
    print(f"{'default threads, 1 spinner':<28}{default['threads']:>8}{default['train_s']:>10.2f}"
          f"{default['train_s'] / ref_s:>12.2f}x   before{part}")
    print(f"load average {load0:.1f} before, {load1:.1f} after; {time.perf_counter() - t_start:.0f} s")
    print(f"RATIO auto under load / 1 thread: {auto_s / ref_s:.2f}x (goal <= 1.5x); "
          f"default threads: {default['train_s'] / ref_s:.2f}x")
    if cores > 1 and args.gain:
        print(f"\ngain from {cores} threads vs 1 (no added load), {args.gain_steps} steps:")
        for model in args.gain_models:
            one = job(model, args.gain_steps, 1)["train_s"]
            many = job(model, args.gain_steps, cores)["train_s"]
            print(f"  {model:<8} 1 thread {one:.2f}s, {cores} threads {many:.2f}s: speed-up {one / many:.2f}x")


if __name__ == "__main__":
    main()
