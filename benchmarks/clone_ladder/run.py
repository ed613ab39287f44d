"""Refinetti et al.'s clone ladder on one image dataset: divergence step per rung (issue 15).

Trains the same network on real images and on each rung of ``engine/ladder.py`` (iso_clone ->
gauss_clone -> maxent3_clone -> gmm_clone), same initialisation and batch seeds, and prints per rung the
checkpoint from which the rung-trained network's real-test loss differs from the real-trained
one's by more than 10% for good (``divergence_step``), the first 10% crossing, and the final
real-test losses. Refinetti, Ingrosso & Goldt (ICML 2023) report the steps grow up the ladder
(CIFAR-10, ResNet-18: Gaussian mixture ~50 SGD steps, cifar5m ~2,000). Their training code's
optimiser is the default here: SGD lr 0.05, momentum 0.9, weight decay 5e-4, batch 128, cosine.

Run (1 thread)::

    OMP_NUM_THREADS=1 DSB_DATA_DIR=../shared/data python benchmarks/clone_ladder/run.py \\
        --dataset fashion_mnist --steps 2048 --seeds 3 --out /tmp/ladder_fmnist
    # the mixture rung's dial: one real-trained reference, gmm_clone at k = 4, 16 and 64
    ... run.py --rungs gauss_clone gmm_clone --gmm-k 4 16 64 --out /tmp/ladder_gmm

Measured results are in this folder's README.md.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch

from dsb_widgets.engine.ladder import LADDER, clone_ladder, divergence_step
from dsb_widgets.engine.task import RunConfig


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dataset", default="fashion_mnist")
    ap.add_argument("--model", default="convnet")
    ap.add_argument("--steps", type=int, default=2048)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--per-octave", type=int, default=6)
    ap.add_argument("--rungs", nargs="+", default=list(LADDER), choices=LADDER, help="rungs to train on")
    ap.add_argument("--gmm-k", type=int, nargs="+", default=[16],
                    help="components per class of gmm_clone; more than one value adds a run per value")
    ap.add_argument("--out", required=True, help="folder for one results netCDF per rung")
    args = ap.parse_args()
    torch.set_num_threads(1)
    cfg = RunConfig(experiment="images", dataset=args.dataset, model=args.model, steps=args.steps, seeds=args.seeds,
                    optimizer="sgd", lr=args.lr, momentum=0.9, weight_decay=5e-4, batch_size=128, warmup=0,
                    schedule="cosine", per_octave=args.per_octave, device="cpu",
                    data_dir=os.environ.get("DSB_DATA_DIR"), options={"gmm_k": args.gmm_k[0], "flip": False, "crop": 0})
    # no flips or crops: clone runs have none (engine/images.py), so the real-trained reference has none either
    variants = {f"gmm_clone_k{k}": {"train_on": "gmm_clone", "gmm_k": k} for k in args.gmm_k[1:]}
    t0 = time.process_time()
    steps, results = clone_ladder(cfg, tuple(args.rungs), variants=variants)
    cpu = time.process_time() - t0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, ds in results.items():
        ds.to_netcdf(out / f"{name}.nc")
    print(f"{args.dataset} {args.model} SGD lr {args.lr} momentum 0.9 wd 5e-4 batch 128 cosine, {args.steps} steps, "
          f"{args.seeds} seeds: {cpu:.0f} CPU-s for the {len(results)} runs")
    real = results["real"]["loss"].sel(probe="real").mean("seed")
    print(f"{'rung':14s} {'for good':>9s} {'first':>6s} {'final loss':>10s}  (gmm_clone: k={args.gmm_k[0]})")
    for rung in steps:
        first = divergence_step(results["real"], results[rung], persistent=False)
        final = float(results[rung]["loss"].sel(probe="real").mean("seed")[-1])
        print(f"{rung:14s} {str(steps[rung]):>9s} {str(first):>6s} {final:10.3f}")
    print(f"{'real':14s} {'':>9s} {'':>6s} {float(real[-1]):10.3f}")


if __name__ == "__main__":
    main()
