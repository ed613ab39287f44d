"""Belrose et al.'s CIFAR-10 protocol: this engine vs the same protocol written the HF Trainer way.

    python benchmarks/paper_scale.py              # the paper's scale (a GPU: about an hour each)
    python benchmarks/paper_scale.py --tiny       # CPU smoke run (digits, CNN, 64 steps)
    python benchmarks/paper_scale.py --compile    # the engine side through torch.compile

Protocol (Belrose et al., ICML 2024; EleutherAI/features-across-time): 2^16 steps, batch 128,
AdamW lr 1e-3, betas (0.9, 0.95), weight decay 0.05, cosine schedule with 2,000 warm-up steps, a
ResNet-class model (here the CIFAR ResNet-18), evaluation at the 17 log checkpoints 2^0..2^16
on 5 probe sets (real, maxent1, maxent2, ot, cqn; 1,000 examples each).

The two sides share the task (data, probe sets, model initialisation) and differ in the loop:

* ``engine``: :func:`dsb_widgets.engine.train` (its sampler, its optimizer, its evaluation);
* ``hf``: ``transformers.Trainer`` with a ``TrainerCallback`` that evaluates the probe sets at
  the same steps, the way features-across-time does (needs ``pip install 'dsb-widgets[bench]'``:
  transformers + accelerate).

Prints wall seconds, the share spent on probes, steps/s, and on CUDA the model FLOP utilisation
(MFU = 3 x forward multiply-adds x 2 FLOPs x steps / wall / ``--peak-tflops``), with the wall
clock taken from CUDA events. The ratio hf/engine is the number to quote. Not a test.
"""

from __future__ import annotations

import argparse
import math
import time
from typing import Any

import torch
import torch.nn.functional as F

from dsb_widgets.engine import RunConfig, train
from dsb_widgets.engine.schedule import log_checkpoints
from dsb_widgets.engine.task import build_task, pick_device
from dsb_widgets.threads import step_flops

PROBES = ("real", "maxent1", "maxent2", "ot", "cqn")


def protocol(tiny: bool, data_dir: str | None) -> RunConfig:
    if tiny:
        return RunConfig(experiment="images", dataset="digits", model="cnn", steps=64, batch_size=32,
                         optimizer="adamw", lr=1e-3, weight_decay=0.05, warmup=8, per_octave=1,
                         probes=PROBES, probe_size=64, data_dir=data_dir)
    return RunConfig(experiment="images", dataset="cifar10", model="resnet", steps=2**16, batch_size=128,
                     optimizer="adamw", lr=1e-3, weight_decay=0.05, warmup=2000, per_octave=1,
                     probes=PROBES, probe_size=1000, data_dir=data_dir)


class Timer:
    """Wall seconds; CUDA events on a GPU (no host sync until read)."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def __enter__(self) -> "Timer":
        if self.cuda:
            self.start, self.end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            self.start.record()
        else:
            self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.cuda:
            self.end.record()
            torch.cuda.synchronize()
            self.seconds = self.start.elapsed_time(self.end) / 1000
        else:
            self.seconds = time.perf_counter() - self.t0


def run_engine(cfg: RunConfig, device: torch.device) -> dict[str, float]:
    task = build_task(cfg)  # data and probe sets: built outside the timed part, as for hf
    with Timer(device) as t:
        res = train(cfg, threads="auto", task=task)
    return {"wall_s": t.seconds, "eval_s": res.timings["eval_s"],
            "final_real_loss": float(res.dataset.loss.sel(probe="real").isel(step=-1).mean())}


def run_hf(cfg: RunConfig, device: torch.device) -> dict[str, float]:
    from transformers import Trainer, TrainerCallback, TrainingArguments

    task = build_task(cfg)
    torch.manual_seed(cfg.seed)
    net = task.make_model(cfg.seed)
    checkpoints = set(log_checkpoints(cfg.steps, cfg.per_octave))
    eval_s = [0.0]
    losses: dict[int, float] = {}

    class Wrapped(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
            logits = self.net(pixel_values)
            return {"loss": F.cross_entropy(logits.float(), labels), "logits": logits}

    class Stream(torch.utils.data.IterableDataset):  # the engine's sampler, one example at a time
        def __iter__(self):  # type: ignore[no-untyped-def]
            gen = torch.Generator().manual_seed(cfg.seed + 1_000_003)
            while True:
                x, y = task.sample_batch(gen, cfg.batch_size)
                for i in range(len(y)):
                    yield {"pixel_values": x[i], "labels": y[i]}

    @torch.no_grad()
    def evaluate(model: torch.nn.Module, step: int) -> None:  # features-across-time's callback body
        t0 = time.perf_counter()
        model.eval()
        for p in task.probes:
            tot, n = 0.0, 0
            for i in range(0, len(p), 1024):
                x, y = p.x[i:i + 1024].to(device), p.y[i:i + 1024].to(device)
                tot += float(F.cross_entropy(model.net(x).float(), y, reduction="sum"))
                n += len(y)
            if p.name == "real":
                losses[step] = tot / n
        model.train()
        eval_s[0] += time.perf_counter() - t0

    class ProbeCallback(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kw):  # type: ignore[no-untyped-def]
            evaluate(model, 0)

        def on_step_end(self, args, state, control, model=None, **kw):  # type: ignore[no-untyped-def]
            if state.global_step in checkpoints:
                evaluate(model, state.global_step)

    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        targs = TrainingArguments(
            output_dir=tmp, max_steps=cfg.steps, per_device_train_batch_size=cfg.batch_size,
            learning_rate=cfg.lr, weight_decay=cfg.weight_decay, adam_beta1=0.9, adam_beta2=cfg.beta2,
            lr_scheduler_type="cosine", warmup_steps=cfg.warmup, logging_steps=10**9, save_strategy="no",
            report_to=[], disable_tqdm=True, dataloader_num_workers=0, use_cpu=device.type != "cuda",
            bf16=device.type == "cuda", seed=cfg.seed)
        trainer = Trainer(model=Wrapped(), args=targs, train_dataset=Stream(), callbacks=[ProbeCallback()])
        with Timer(device) as t:
            trainer.train()
    return {"wall_s": t.seconds, "eval_s": eval_s[0], "final_real_loss": losses[max(losses)]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="digits + CNN, 64 steps: a CPU smoke run")
    ap.add_argument("--data-dir", help="folder with cifar10 (else $DSB_DATA_DIR)")
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="device peak (H100/H200 bf16 dense: 989)")
    ap.add_argument("--skip-hf", action="store_true")
    ap.add_argument("--compile", action="store_true", help="the engine side with torch.compile (dsb run --compile)")
    args = ap.parse_args()
    cfg = protocol(args.tiny, args.data_dir).replace(compile=args.compile)
    device = pick_device("auto")
    task = build_task(cfg)
    x, _ = task.sample_batch(torch.Generator().manual_seed(0), 1)
    macs = step_flops(task.make_model(0), x) * cfg.batch_size  # forward multiply-adds per step
    n_ckpt = len(log_checkpoints(cfg.steps, cfg.per_octave))
    print(f"{cfg.dataset} {cfg.model}: {cfg.steps} steps x batch {cfg.batch_size}, {n_ckpt} checkpoints, "
          f"{len(PROBES)} probe sets, device {device}; {macs:.3g} forward MACs/step")
    rows = {"engine": run_engine(cfg, device)}
    if not args.skip_hf:
        rows["hf"] = run_hf(cfg, device)
    print(f"{'loop':<8}{'wall s':>10}{'steps/s':>10}{'probe share':>13}{'MFU':>8}{'final real loss':>17}")
    for name, r in rows.items():
        mfu = 3 * 2 * macs * cfg.steps / r["wall_s"] / (args.peak_tflops * 1e12) if device.type == "cuda" else math.nan
        print(f"{name:<8}{r['wall_s']:>10.1f}{cfg.steps / r['wall_s']:>10.1f}{100 * r['eval_s'] / r['wall_s']:>12.1f}%"
              f"{100 * mfu:>7.1f}%{r['final_real_loss']:>17.4f}")
    if "hf" in rows:
        print(f"hf / engine wall time: {rows['hf']['wall_s'] / rows['engine']['wall_s']:.2f}x")


if __name__ == "__main__":
    main()
