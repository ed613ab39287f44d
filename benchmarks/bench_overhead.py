"""Engine overhead: ``train()`` vs a minimal hand-written loop on the same job, side by side.

    python benchmarks/bench_overhead.py --model mlp --steps 1024 --repeats 3

Same task (digits, probes built once and shared), same model initialisation, batch, AdamW
settings, cosine schedule and log-spaced checkpoints with every probe evaluated. The minimal
loop is what one would write by hand: index sampling, forward, cross-entropy, backward,
``torch.optim.AdamW`` step, a plain forward per probe at each checkpoint (loss and accuracy,
read to the host as the engine does). The engine runs
without an output file (``out=None``), with one (one netCDF record appended per checkpoint,
``engine/results.py``), and, for the before/after comparison, with the whole file rewritten at
every checkpoint as it was before (``ResultsWriter`` forced to rewrite).
Reports CPU seconds (one thread; steadier than wall time on a shared machine), best of
``--repeats``, alternating, and the ratios engine / minimal (issue 17's goal: <= 1.15x; it
measured 1.41x before the engine changes). Measured, never asserted by tests.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from dsb_widgets.engine import RunConfig, results, train
from dsb_widgets.engine.schedule import log_checkpoints, lr_at
from dsb_widgets.engine.task import build_task, resolve_config


def minimal(cfg: RunConfig, task) -> float:  # type: ignore[no-untyped-def]
    t0 = time.process_time()
    torch.manual_seed(cfg.seed)
    model = task.make_model(cfg.seed)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": rest, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, cfg.beta2))
    gen = torch.Generator().manual_seed(cfg.seed + 1_000_003)
    ckpts = set(log_checkpoints(cfg.steps, cfg.per_octave))
    for step in range(cfg.steps + 1):
        if step in ckpts:
            model.eval()
            with torch.no_grad():
                for p in task.probes:  # the engine records loss and accuracy per probe: so does this loop
                    logits = model(p.x)
                    float(F.cross_entropy(logits, p.y)), float((logits.argmax(-1) == p.y).float().mean())
            model.train()
        if step == cfg.steps:
            break
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg.lr, cfg.steps, cfg.warmup, cfg.schedule)
        x, y = task.sample_batch(gen, cfg.batch_size)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return time.process_time() - t0


def engine(cfg: RunConfig, task, out: Path | None, rewrite: bool = False) -> float:  # type: ignore[no-untyped-def]
    """CPU seconds of ``train()``; ``rewrite``: the old results path (whole file every checkpoint)."""
    append = results.ResultsWriter.write
    if rewrite:
        def write_whole(self: results.ResultsWriter, table: results.ResultsTable) -> None:
            self.on_disk = None  # never append: rewrite as before
            append(self, table)
        results.ResultsWriter.write = write_whole  # type: ignore[method-assign]
    try:
        t0 = time.process_time()
        train(cfg, task=task, out=out, force=True)
        return time.process_time() - t0
    finally:
        results.ResultsWriter.write = append  # type: ignore[method-assign]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="mlp")
    ap.add_argument("--steps", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    cfg = resolve_config(RunConfig(experiment="images", model=args.model, steps=args.steps))
    task = build_task(cfg)
    minimal(cfg, task)  # warm-up: first-call costs (allocator, lazy imports) out of the timings
    times: dict[str, list[float]] = {"minimal loop": [], "engine": [], "engine + results file": [],
                                     "  before: file rewritten": []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            times["minimal loop"].append(minimal(cfg, task))
            times["engine"].append(engine(cfg, task, None))
            times["engine + results file"].append(engine(cfg, task, Path(tmp) / f"r{r}.nc"))
            times["  before: file rewritten"].append(engine(cfg, task, Path(tmp) / f"w{r}.nc", rewrite=True))
    best = {k: min(v) for k, v in times.items()}
    print(f"digits {args.model}, {cfg.steps} steps, batch {cfg.batch_size}, {len(task.probes)} probes, "
          f"{len(log_checkpoints(cfg.steps, cfg.per_octave))} checkpoints; CPU s, best of {args.repeats}")
    for k, v in best.items():
        print(f"  {k:<28}{v:>8.2f}   {v / best['minimal loop']:.2f}x")
    print(f"engine + results file / minimal loop: {best['engine + results file'] / best['minimal loop']:.2f}x "
          "(goal <= 1.15x)")


if __name__ == "__main__":
    main()
