"""CPU-seconds per training step of ``dsb run clones``: masked-only read-out vs the full read-out.

The engine's clones step sends only the masked positions through the BERT's read-out
(:func:`dsb_widgets.engine.clones.masked_readout_loss`); the former step computed the (B, T, V)
logits of every position. Both give the same loss and gradients (tests/test_engine_clones.py).
This script builds the task of a clone folder at the experiment's defaults, then times
alternating blocks of steps of the two (``time.process_time``, one thread, side by side in one
process so the machine's load hits both alike) and prints CPU-s per step and their ratio.

    OMP_NUM_THREADS=1 python benchmarks/clone_saturation/bench_readout.py --clones DIR [--seeds 1]

Measured: see the engine/clones.py docstring ("Measured").
"""

from __future__ import annotations

import dataclasses
import time

from _common import bench_parser, clones_task  # this folder (on sys.path when run as a script)

from dsb_widgets.engine.loop import _Run


def main(argv: list[str] | None = None) -> None:
    ap = bench_parser(__doc__)
    ap.add_argument("--steps", type=int, default=100, help="steps per timed block")
    ap.add_argument("--blocks", type=int, default=4, help="timed blocks per path (alternating)")
    a = ap.parse_args(argv)
    cfg, task = clones_task(a)
    runs = {"masked": _Run(cfg, None, False, task=task),
            "full": _Run(cfg, None, False, task=dataclasses.replace(task, step_loss=None))}
    cpu = {k: 0.0 for k in runs}
    for run in runs.values():  # warm-up: optimizer state, allocator
        for _ in range(10):
            run.update()
    for _ in range(a.blocks):
        for name, run in runs.items():
            c0 = time.process_time()
            for _ in range(a.steps):
                run.update()
            cpu[name] += time.process_time() - c0
    n = a.blocks * a.steps
    for name in runs:
        print(f"{name:>6} read-out: {cpu[name] / n * 1e3:.2f} CPU-ms per step ({a.seeds} seed(s), batch "
              f"{cfg.batch_size}, {n} steps)")
    print(f"full / masked: {cpu['full'] / cpu['masked']:.2f}x")


if __name__ == "__main__":
    main()
