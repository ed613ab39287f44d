"""Spine benchmark: data load (cold vs cached), class statistics, Gaussian OT maps, oracle agreement.

Run (real data from the shared copies; a temporary cache folder makes the first load cold):

    DSB_DATA_DIR=../shared/data python benchmarks/bench_spine.py [--full-cifar] [--threads 1]

Prints one table. Times are wall-clock seconds on whatever machine runs it (DEVELOPERS.md: quote
ratios side by side; absolute times are only indicative on a shared CPU). Memory is the peak
resident set size sampled during the step, minus the RSS at its start.

* load: ``load_images(name, "train")`` with an empty ``DSB_CACHE_DIR`` (cold: decode the IDX /
  JPEG files) and again (cached .npy).
* stats: ``ClassStats().fit`` on the train split (float64 streaming moments).
* ot: ``GaussianOT.fit(stats).transport`` of a 1000-image test probe with a random other class
  per image, as the engine does (all K(K-1) pairs). For CIFAR-10 this is ~45 min on 2 CPU cores,
  so by default one class eigh and one pair are timed and the full probe is extrapolated
  (K class eighs + K(K-1) pair factors); ``--full-cifar`` runs it.
* agreement (for the plain sample covariances and for ``shrinkage="optimal"``): our map vs
  ``concept_erasure.optimal_transport.ot_map`` on the same float64 covariances: max abs difference,
  relative Frobenius difference, and each map's relative residual ||A S_p A - P S_q P||_F / ||S_q||_F
  (P projects on range(S_p)), which shows whether a difference is error or the freedom of an
  ill-conditioned problem.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

import torch

from dsb_widgets.data import load_images
from dsb_widgets.gaussian_ot import GaussianOT
from dsb_widgets.stats import ClassStats

ROWS: list[tuple[str, str, str, str]] = []


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


CPU: list[float] = [0.0]  # CPU seconds of the last measured() call


def measured(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    """(result, wall seconds, peak RSS increase in MB) of fn(); its CPU seconds go to CPU[0]
    (on a shared machine CPU time is the steadier number: wall time includes waiting)."""
    start, peak, done = rss_bytes(), [0], threading.Event()

    def watch() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], rss_bytes())
            time.sleep(0.02)

    th = threading.Thread(target=watch, daemon=True)
    th.start()
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    sec = time.perf_counter() - t0
    CPU[0] = time.process_time() - c0
    done.set()
    th.join()
    return out, sec, (max(peak[0], rss_bytes()) - start) / 2**20


def row(dataset: str, step: str, value: str, note: str = "") -> None:
    ROWS.append((dataset, step, value, note))
    print(f"{dataset:14s} {step:34s} {value:>14s}  {note}", flush=True)


def agreement(cov_p: torch.Tensor, cov_q: torch.Tensor, ours: torch.Tensor) -> tuple[float, float, float, float]:
    from concept_erasure.optimal_transport import ot_map

    ref = ot_map(cov_p, cov_q)
    proj = cov_p @ torch.linalg.pinv(cov_p, hermitian=True)
    target = proj @ cov_q @ proj

    def resid(a: torch.Tensor) -> float:
        return float((a @ cov_p @ a - target).norm() / cov_q.norm())

    return float((ours - ref).abs().max()), float((ours - ref).norm() / ref.norm()), resid(ours), resid(ref)


def bench_dataset(name: str, data_dir: str | None, full: bool, pairs: list[tuple[int, int]],
                  shrinkages: list[str], skip_ot: bool) -> None:
    if name == "digits":
        train, test = load_images("digits", "train"), load_images("digits", "test")
    else:
        with tempfile.TemporaryDirectory() as tmp:
            os.environ["DSB_CACHE_DIR"] = tmp
            train, cold, _ = measured(lambda: load_images(name, "train", data_dir))
            cold_cpu = CPU[0]
            warm, warm_cpu = min((measured(lambda: load_images(name, "train", data_dir))[1], CPU[0]) for _ in range(3))
            test = load_images(name, "test", data_dir)
        row(name, "load train cold / cached, wall (s)", f"{cold:.2f} / {warm:.2f}", f"ratio {cold / warm:.1f}x")
        row(name, "load train cold / cached, CPU (s)", f"{cold_cpu:.2f} / {warm_cpu:.2f}",
            f"ratio {cold_cpu / warm_cpu:.1f}x; cached = best of 3")
    k, d = train.num_classes, train.x[0].numel()
    stats, sec, mb = measured(lambda: ClassStats.fit(train.x, train.y, num_classes=k))
    row(name, "ClassStats.fit train (wall s, MB)", f"{sec:.2f}, {mb:.0f}", f"CPU {CPU[0]:.1f} s; N={len(train)}, d={d}")
    ot = GaussianOT.fit(stats, dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    idx = torch.randperm(len(test), generator=gen)[:1000]
    x, y = test.x[idx], test.y[idx]
    b = (y + torch.randint(1, k, y.shape, generator=gen)) % k
    npairs = len(torch.unique(y * k + b))
    if skip_ot:
        pass
    elif d <= 1024 or full:
        _, sec, mb = measured(lambda: ot.transport(x, y, b))
        row(name, "OT 1000-image probe, cold (wall s, MB)", f"{sec:.1f}, {mb:.0f}",
            f"CPU {CPU[0]:.1f} s; {k} class eighs + {npairs} pair factors")
        _, sec2, _ = measured(lambda: ot.transport(x, y, b))
        info = ot.cache_info
        row(name, "  same probe again (wall s)", f"{sec2:.2f}",
            f"CPU {CPU[0]:.1f} s; cache {info['bytes'] / 2**20:.0f} MB, {info['hits']} hits / {info['misses']} misses")
    else:
        p, q = pairs[0]
        _, t_cls, mb1 = measured(lambda: ot._class_factor(p))
        c_cls = CPU[0]
        _, t_pair, mb2 = measured(lambda: ot.pair_factors(p, [q]))
        c_pair = CPU[0]
        row(name, "OT one class eigh (wall s, MB)", f"{t_cls:.1f}, {mb1:.0f}", f"CPU {c_cls:.1f} s")
        row(name, "OT one pair factor (wall s, MB)", f"{t_pair:.1f}, {mb2:.0f}", f"CPU {c_pair:.1f} s")
        row(name, "OT 1000-image probe, extrapolated", f"{(k * c_cls + npairs * c_pair) / 60:.0f} CPU min",
            f"{k} x eigh + {npairs} x pair; --full-cifar runs it")
    row(name, "OT cov storage (MB)", f"{ot.cov.numel() * 8 / 2**20:.0f}", "float64 (K, d, d)")
    for shrink in shrinkages:
        ots = ot if shrink == "none" else GaussianOT.fit(stats, shrinkage=shrink, dtype=torch.float64)
        worst = [0.0, 0.0, 0.0, 0.0]
        for p, q in pairs:
            got = agreement(ots.cov[p], ots.cov[q], ots.map(p, q))
            worst = [max(a, g) for a, g in zip(worst, got)]
        ev = torch.linalg.eigvalsh(ots.cov[pairs[0][0]])  # conditioning of the first source
        cond = "singular" if ev[0] <= ev[-1] * d * 2.2e-16 else f"{float(ev[-1] / ev[0]):.0e}"
        note = f"{len(pairs)} class pairs; cond(S_p) {cond}"
        row(name, f"vs ot_map, shrink={shrink}: max abs / rel F", f"{worst[0]:.1e} / {worst[1]:.1e}", note)
        row(name, f"  residual ours / ot_map, shrink={shrink}", f"{worst[2]:.1e} / {worst[3]:.1e}",
            "norm(A Sp A - P Sq P) / norm(Sq), worst pair")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--full-cifar", action="store_true", help="run the full CIFAR-10 OT probe (~45 min on CPU)")
    ap.add_argument("--datasets", default="digits,fashion_mnist,cifar10")
    ap.add_argument("--shrinkage", default="none,optimal", help="covariances for the ot_map agreement rows")
    ap.add_argument("--skip-ot-timing", action="store_true", help="only load, stats and agreement")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    data_dir = os.environ.get("DSB_DATA_DIR")
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    print(f"torch {torch.__version__}, {args.threads} thread(s), load average {load}, DSB_DATA_DIR={data_dir}")
    for name in args.datasets.split(","):
        if name != "digits" and not data_dir:
            print(f"skip {name}: set DSB_DATA_DIR (e.g. ../shared/data)")
            continue
        if name == "digits":
            pairs = [(p, q) for p in range(10) for q in range(10) if p != q]
        elif name == "fashion_mnist":
            pairs = [(0, 6), (2, 4), (5, 7), (8, 9)]
        else:
            pairs = [(3, 5)]
        bench_dataset(name, data_dir, args.full_cifar, pairs, args.shrinkage.split(","), args.skip_ot_timing)
    print("\n| dataset | step | value | note |\n|---|---|---|---|")
    for r in ROWS:
        print("| " + " | ".join(r) + " |")


if __name__ == "__main__":
    main()
