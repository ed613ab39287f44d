"""Engine benchmark: training throughput, share of wall time in probe evaluation, seed stacking.

Run ``python benchmarks/bench_engine.py`` (``--device cuda`` / ``all`` when a GPU is present,
``--dataset fashion_mnist`` with ``DSB_DATA_DIR`` set). It prints two tables:

1. per model (mlp, cnn, resnet) and device: training examples/s, the measured share of wall time
   spent evaluating probes, and the share projected for a full-length run (checkpoints grow as
   log(steps), training as steps, so short benchmark runs overstate the share);
2. seeds: S seeds stacked with ``torch.func`` vmap (one batched forward/backward) against S
   sequential single-seed runs, measured side by side, interleaved, best of ``--repeats``.

Measured results (digits, 1 thread, 2 shared CPU cores under heavy load from other jobs; ratios,
as DEVELOPERS.md asks, since absolute times on a shared CPU are not meaningful) are in the
module's ``RESULTS`` string below.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import torch

from dsb_widgets.engine import RunConfig, log_checkpoints, train

RESULTS = """
Measured 2026-11-23 with --quick --repeats 1: digits (8x8), batch 64, 6 probes (<=1000 examples
each), 1 torch thread, CPU only (no GPU on this machine), 2 cores shared with ~7 other jobs at
load average 12-18, so absolute figures are pessimistic and noisy; ratios are side by side.

model   device   steps  examples/s  probe share   projected share @ steps
mlp     cpu        256       1,570        32.9%               4.5% @ 4096
cnn     cpu         64         474        87.8%              18.9% @ 4096
resnet  cpu          8          24        92.3%               9.3% @ 4096

seeds: 4 stacked (vmap) vs 4 sequential runs, training time only
mlp     cpu        128       3.79 s        8.62 s    2.27x
cnn     cpu         32      10.54 s       13.13 s    1.25x

The default `dsb run images` (MLP, 4096 steps) spent 3.4% of its wall time on probes. Short
runs are dominated by the log-spaced early checkpoints (13 of them in the first 16 steps).
"""


@dataclass(frozen=True)
class Row:
    model: str
    device: str
    steps: int
    seeds: int
    examples_per_s: float
    eval_share: float
    projected_share: float
    projected_steps: int


def _run(cfg: RunConfig) -> dict[str, float]:
    return train(cfg).timings


def bench_model(model: str, device: str, steps: int, full_steps: int, dataset: str, batch: int) -> Row:
    """Train ``steps`` steps, report throughput and probe share (measured and for ``full_steps``)."""
    cfg = RunConfig(dataset=dataset, model=model, steps=steps, seeds=1, device=device, batch_size=batch)
    _run(cfg.replace(steps=2))  # warm-up: data load, caches, kernels
    t = _run(cfg)
    ck = len(log_checkpoints(steps, 3))
    per_step = t["train_s"] / steps
    per_eval = t["eval_s"] / ck
    full_ck = len(log_checkpoints(full_steps, 3))
    projected = full_ck * per_eval / (full_ck * per_eval + full_steps * per_step)
    return Row(model, device, steps, 1, steps * batch / t["train_s"], t["eval_s"] / t["total_s"], projected,
               full_steps)


def bench_seeds(model: str, device: str, seeds: int, steps: int, dataset: str, batch: int,
                repeats: int) -> tuple[float, float]:
    """Training seconds for S stacked seeds and for S sequential runs (best of ``repeats``)."""
    base = RunConfig(dataset=dataset, model=model, steps=steps, device=device, batch_size=batch,
                     probes=("real",), probe_size=100)
    _run(base.replace(steps=2, seeds=seeds))
    stacked, sequential = [], []
    for _ in range(repeats):  # interleaved, so load from other jobs hits both alike
        stacked.append(_run(base.replace(seeds=seeds))["train_s"])
        sequential.append(sum(_run(base.replace(seeds=1, seed=s))["train_s"] for s in range(seeds)))
    return min(stacked), min(sequential)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", help="cpu | cuda | all")
    ap.add_argument("--dataset", default="digits")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--quick", action="store_true", help="fewer steps (smoke test)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    if "cuda" in devices and not torch.cuda.is_available():
        print("no GPU visible: CPU only")
        devices = [d for d in devices if d != "cuda"]
    q = 4 if args.quick else 1
    gpu = {"mlp": 4096, "cnn": 2048, "resnet": 512}
    cpu = {"mlp": 1024 // q, "cnn": 256 // q, "resnet": 32 // q}
    full = {"mlp": 4096, "cnn": 4096, "resnet": 4096}
    print(f"engine benchmark: dataset={args.dataset} batch={args.batch_size} threads={args.threads} "
          f"torch={torch.__version__}")
    rows = []
    for dev in devices:
        for model in ("mlp", "cnn", "resnet"):
            steps = (gpu if dev == "cuda" else cpu)[model] // (q if dev == "cuda" else 1)
            rows.append(bench_model(model, dev, steps, full[model], args.dataset, args.batch_size))
            r = rows[-1]
            print(f"  measured {r.model}/{r.device}: {r.examples_per_s:,.0f} ex/s", flush=True)
    print(f"\n{'model':<8}{'device':<7}{'steps':>7}{'examples/s':>12}{'probe share':>13}"
          f"{'projected share @ steps':>26}")
    for r in rows:
        print(f"{r.model:<8}{r.device:<7}{r.steps:>7}{r.examples_per_s:>12,.0f}{100 * r.eval_share:>12.1f}%"
              f"{100 * r.projected_share:>18.1f}% @ {r.projected_steps}")
    print(f"\nseeds: {args.seeds} stacked (vmap) vs {args.seeds} sequential runs, training time only, "
          f"best of {args.repeats}")
    print(f"{'model':<8}{'device':<7}{'steps':>7}{'stacked s':>11}{'sequential s':>14}{'speed-up':>10}")
    for dev in devices:
        for model in ("mlp", "cnn"):
            steps = {"mlp": 512, "cnn": 128}[model] // q * (4 if dev == "cuda" else 1)
            st, sq = bench_seeds(model, dev, args.seeds, steps, args.dataset, args.batch_size, args.repeats)
            print(f"{model:<8}{dev:<7}{steps:>7}{st:>11.2f}{sq:>14.2f}{sq / st:>9.2f}x", flush=True)
    print("(resnet has BatchNorm: its seeds run one after another inside the stack, so no speed-up)")


if __name__ == "__main__":
    main()
