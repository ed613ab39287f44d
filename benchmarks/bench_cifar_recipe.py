"""CIFAR-10 on one CPU thread: test accuracy against training CPU-seconds of ``airbench``.

Trains ``models/airbench.py`` (width 128) as ``dsb run images --dataset cifar10 --model airbench
-o width=128`` does (CIFAR-10's resolved defaults: SGD momentum 0.9, weight decay 5e-4 on
conv/linear weights, linear warm-up then cosine decay, random horizontal flips, batches drawn
with replacement) but without probes, and prints the full 10,000-image test accuracy at a few
points. CPU-seconds are ``time.process_time`` of the training steps only (whitening included,
evaluation excluded), with ``torch.set_num_threads(1)``: the honest unit on a shared machine
(wall time depends on the load).

    DSB_DATA_DIR=/work/shared/data python benchmarks/bench_cifar_recipe.py [--steps 1536] [--evals 6]
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import torch
import torch.nn.functional as F

from dsb_widgets.data import load_images
from dsb_widgets.engine import RunConfig
from dsb_widgets.engine.schedule import lr_at
from dsb_widgets.engine.task import required, resolve_config
from dsb_widgets.models.vision import VisionConfig, init_statistics, make_vision_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=None, help="default: the cifar10 default run's")
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--width", type=int, default=None)
    ap.add_argument("--evals", type=int, default=6)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    over = {k: v for k, v in {"steps": a.steps, "lr": a.lr}.items() if v is not None}
    cfg = resolve_config(RunConfig(dataset="cifar10", model="airbench", seed=a.seed, **over,
                                   options={"width": a.width or 128}))
    steps, bs, lr = required(cfg.steps, "steps"), required(cfg.batch_size, "batch_size"), required(cfg.lr, "lr")
    train, test = load_images("cifar10", "train"), load_images("cifar10", "test")
    gen = torch.Generator().manual_seed(a.seed + 1)

    def batch(g: torch.Generator, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.randint(len(train.y), (n,), generator=g)
        x = train.x[idx]
        flip = torch.rand(n, generator=g) < 0.5
        return torch.where(flip[:, None, None, None], x.flip(-1), x), train.y[idx]

    t0 = time.process_time()
    torch.manual_seed(a.seed)
    init = init_statistics("airbench", batch(torch.Generator().manual_seed(0), 5000)[0])  # as engine/images.py
    net = make_vision_model("airbench", VisionConfig(train.shape, 10, width=int(cfg.options["width"])), init)
    decay = [p for p in net.parameters() if p.requires_grad and p.dim() >= 2]
    rest = [p for p in net.parameters() if p.requires_grad and p.dim() < 2]
    groups: list[dict[str, Any]] = [{"params": decay, "weight_decay": cfg.weight_decay},
                                    {"params": rest, "weight_decay": 0.0}]
    opt = torch.optim.SGD(groups,
                          lr=lr, momentum=cfg.momentum)
    cpu = time.process_time() - t0
    marks = {round(steps * (i + 1) / a.evals) for i in range(a.evals)}
    rows = []
    for step in range(steps):
        t0 = time.process_time()
        for g in opt.param_groups:
            g["lr"] = lr_at(step, lr, steps, required(cfg.warmup, "warmup"), cfg.schedule)
        x, y = batch(gen, bs)
        loss = F.cross_entropy(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        cpu += time.process_time() - t0
        if step + 1 in marks:
            net.eval()
            with torch.no_grad():
                out = torch.cat([net(test.x[i:i + 1000]) for i in range(0, len(test.y), 1000)])
            net.train()
            acc = (out.argmax(1) == test.y).float().mean().item()
            rows.append({"step": step + 1, "epochs": round((step + 1) * bs / len(train.y), 2),
                         "train_cpu_s": round(cpu, 1), "test_acc": round(acc, 4),
                         "test_loss": round(F.cross_entropy(out, test.y).item(), 4)})
            print(json.dumps(rows[-1]), flush=True)
    print(json.dumps({"config": json.loads(cfg.to_json()), "curve": rows}))


if __name__ == "__main__":
    main()
