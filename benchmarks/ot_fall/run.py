"""One variant of the image recipe, 4 seeds in one engine run, scored for issue 15's Done-when.

Trains the dataset's default recipe (``BY_DATASET``) with the overrides given on the command line,
records the default probes plus ``ot_big``: the same OT edit (the run's ``ot_shrinkage``) on
``--ot-big`` held-out images (default 5000, a different draw from the 1000-image ``ot`` probe),
saves the results netCDF and prints ``summary.py``'s row per seed. The point of ``ot_big`` is to
separate the probe's own sampling noise from the network's checkpoint-to-checkpoint changes:
every checkpoint scores the *same* images, so a larger probe lowers the per-image part of the
scatter but not the part that comes from the weights moving.

Run (1 thread; ~150 CPU-s of training per seed at 4096 steps on Fashion-MNIST)::

    DSB_DATA_DIR=../shared/data python benchmarks/ot_fall/run.py --name base --out /tmp/ot/base.nc
    python benchmarks/ot_fall/run.py --name const --schedule constant --out /tmp/ot/const.nc
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

from dsb_widgets.engine.image_probes import build_image_probes
from dsb_widgets.engine.images import _as_options, _load_split, build_images_task
from dsb_widgets.engine.loop import train as run_train
from dsb_widgets.engine.task import Probe, RunConfig, resolve_config


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--name", required=True)
    ap.add_argument("--out", required=True, help="results netCDF")
    ap.add_argument("--dataset", default="fashion_mnist")
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0, help="first training seed (seeds SEED .. SEED + SEEDS - 1)")
    ap.add_argument("--steps", type=int)
    ap.add_argument("--model")
    ap.add_argument("--optimizer")
    ap.add_argument("--lr", type=float)
    ap.add_argument("--weight-decay", type=float)
    ap.add_argument("--batch-size", type=int)
    ap.add_argument("--warmup", type=int)
    ap.add_argument("--schedule", choices=["cosine", "constant"])
    ap.add_argument("--ot-big", type=int, default=5000, help="images in the large OT probe (0: none)")
    ap.add_argument("--probes", nargs="+", default=None)
    ap.add_argument("-o", nargs="*", default=[], metavar="KEY=VALUE", help="image options")
    args = ap.parse_args()
    torch.set_num_threads(1)
    opts = dict(kv.split("=", 1) for kv in args.o)
    cfg = RunConfig(experiment="images", dataset=args.dataset, steps=args.steps, seeds=args.seeds, seed=args.seed,
                    model=args.model,
                    optimizer=args.optimizer, lr=args.lr, weight_decay=args.weight_decay, batch_size=args.batch_size,
                    warmup=args.warmup, schedule=args.schedule,
                    probes=tuple(args.probes) if args.probes else None,
                    data_dir=os.environ.get("DSB_DATA_DIR"), options=opts)
    cfg = resolve_config(cfg)
    t0 = time.process_time()
    task = build_images_task(cfg)
    if args.ot_big:
        train, test = _load_split(cfg, "train"), _load_split(cfg, "test")
        (ot,) = build_image_probes(train, test, ("ot",), args.ot_big, cfg.seed, _as_options(cfg.options))
        task.probes.append(Probe("ot_big", ot.order, ot.x, ot.y, target=ot.target, description=ot.description))
    t_build = time.process_time() - t0
    res = run_train(cfg, out=args.out, force=True, task=task, threads=1).dataset
    cpu = time.process_time() - t0
    print(f"{args.name}: {cfg.model} {cfg.optimizer} lr {cfg.lr} wd {cfg.weight_decay} {cfg.schedule or 'cosine'} "
          f"{cfg.steps} steps batch {cfg.batch_size}, {cfg.seeds} seeds; probes {t_build:.0f} CPU-s, "
          f"all {cpu:.0f} CPU-s ({cpu / cfg.seeds:.0f} per seed)")
    with open(args.out + ".meta.json", "w") as fh:
        json.dump({"name": args.name, "cpu_s": cpu, "probe_build_cpu_s": t_build, "config": cfg.to_json()}, fh)
    from summary import print_rows  # benchmarks/ot_fall/summary.py, next to this script

    print_rows(args.name, res, cpu / cfg.seeds)


if __name__ == "__main__":
    main()
