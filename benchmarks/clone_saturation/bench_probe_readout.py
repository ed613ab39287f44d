"""CPU-seconds per probe evaluation of ``dsb run clones``: masked-only read-out vs the full read-out.

At each checkpoint the engine scores every probe (1,280 masked windows each by default). With
``Task.probe_readout`` (:func:`dsb_widgets.engine.clones.masked_probe_readout`) only the scored
(~15%) positions go through the BERT's read-out and the cross-entropy; the former evaluation
computed and scored the (B, T, V) logits of every position. Both give the same probe loss and
accuracy (tests/test_engine_clones.py). This script builds the task of a clone folder at the
experiment's defaults, trains a few steps (so the logits are not those of the initialisation),
then times alternating evaluations of the two (``time.process_time``, one thread, side by side
in one process so the machine's load hits both alike), prints CPU-s per evaluation of all
probes, their ratio, and checks the two give the same losses.

    OMP_NUM_THREADS=1 python benchmarks/clone_saturation/bench_probe_readout.py --clones DIR [--seeds 1]

Measured: see the engine/clones.py docstring ("Measured").
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np
from _common import bench_parser, clones_task  # this folder (on sys.path when run as a script)

from dsb_widgets.engine.loop import _Run


def main(argv: list[str] | None = None) -> None:
    ap = bench_parser(__doc__)
    ap.add_argument("--train-steps", type=int, default=200, help="steps trained before timing")
    ap.add_argument("--blocks", type=int, default=5, help="timed evaluations per path (alternating)")
    a = ap.parse_args(argv)
    cfg, task = clones_task(a)
    run = _Run(cfg, None, False, task=task)
    for _ in range(a.train_steps):
        run.update()
    tasks = {"masked": task, "full": dataclasses.replace(task, probe_readout=None)}
    cpu = {k: 0.0 for k in tasks}
    res = {}
    for _ in range(a.blocks + 1):  # the first round is a warm-up, not timed
        for name, t in tasks.items():
            run.task = t
            c0 = time.process_time()
            res[name] = run.evaluate()
            if _ > 0:
                cpu[name] += time.process_time() - c0
    n_rows = sum(len(p) for p in task.probes)
    for name in tasks:
        print(f"{name:>6} read-out: {cpu[name] / a.blocks:.3f} CPU-s per evaluation ({len(task.probes)} probes, "
              f"{n_rows} windows of {task.probes[0].x.shape[1]} tokens, {a.seeds} seed(s))")
    print(f"full / masked: {cpu['full'] / cpu['masked']:.2f}x")
    gap = float(np.abs(res["masked"]["loss"] - res["full"]["loss"]).max())
    print(f"largest probe-loss difference: {gap:.2e} nats/token")


if __name__ == "__main__":
    main()
