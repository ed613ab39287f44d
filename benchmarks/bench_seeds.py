"""Several seeds at once vs one after another, per stacking strategy (issue 17).

    python benchmarks/bench_seeds.py --seeds 4 [--device cuda]
    python benchmarks/bench_seeds.py --whole-runs-only      # whole `dsb run` processes, CPU-s

For each model (digits-shaped 1x8x8 inputs, batch 64, AdamW as the engine uses it), times the
training step of ``--seeds`` models run one after another (the plain model, S=1) against the
same seeds stacked by each strategy of :func:`dsb_widgets.engine.grouped.make_stack`:
``vmap`` (the old default for BatchNorm-free models), ``loop`` (the old path for BatchNorm
models), ``grouped`` (one wide model, grouped convolutions) and ``auto`` (what the engine now
picks on this device). Also times shared-input probe evaluation (2,048 examples). Prints the
speed-up over sequential runs (> 1: stacking wins). Measured, never asserted by tests.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from dsb_widgets.engine.grouped import GROUPED_MAX_CHANNELS, GroupedStack, make_stack, max_conv_channels
from dsb_widgets.engine.optim import AdamW
from dsb_widgets.models.vision import VisionConfig, make_vision_model

STEPS = {"mlp": 60, "cnn": 12, "convnet": 12, "resnet": 2}


def _models(name: str, n: int, device: torch.device) -> list[torch.nn.Module]:
    out = []
    for s in range(n):
        torch.manual_seed(s)
        out.append(make_vision_model(name, VisionConfig((1, 8, 8), 10)).to(device))
    return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _clock(device: torch.device) -> float:
    """CPU seconds of this process on CPU (steadier than wall time on a shared machine), else wall."""
    return time.process_time() if device.type == "cpu" else time.perf_counter()


def time_steps(stack: torch.nn.Module, n: int, steps: int, device: torch.device, batch: int = 64) -> float:
    opt = AdamW(stack.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.05)
    x = torch.rand(n, batch, 1, 8, 8, device=device)
    y = torch.randint(0, 10, (n, batch), device=device)
    stack.train()
    for i in range(steps + 1):
        if i == 1:  # the first step allocates optimizer state: not timed
            _sync(device)
            t0 = _clock(device)
        out = stack(x)
        loss = F.cross_entropy(out.reshape(-1, 10), y.reshape(-1)) * n
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    _sync(device)
    return (_clock(device) - t0) / steps


@torch.no_grad()
def time_eval(stack: torch.nn.Module, device: torch.device, n_examples: int = 2048) -> float:
    x = torch.rand(n_examples, 1, 8, 8, device=device)
    stack.eval()
    stack(x[:64], shared=True)
    _sync(device)
    t0 = _clock(device)
    stack(x, shared=True)
    _sync(device)
    return _clock(device) - t0


def whole_runs(models: list[str], seeds: int) -> None:
    """`dsb run images --seeds S` vs S runs `--seeds 1` (one per seed), child CPU seconds."""
    import os
    import resource
    import subprocess
    import sys
    import tempfile

    steps = {"mlp": 256, "cnn": 64, "convnet": 64, "resnet": 8}
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    cli = "import sys; from dsb_widgets.cli import main; sys.exit(main(sys.argv[1:]))"

    def cpu(args: list[str], out: str, stacking: str | None = None) -> float:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        run_env = {**env, "DSB_STACKING": stacking} if stacking else env
        subprocess.run([sys.executable, "-c", cli, "run", "images", *args, "--out", out, "--force", "--threads", "1",
                        "--probe-size", "200", "--per-octave", "1"], env=run_env, capture_output=True, check=True)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)

    print("\nwhole runs (imports, data, probes, training, checkpoints), child CPU seconds:")
    with tempfile.TemporaryDirectory() as tmp:
        for name in models:
            common = ["--model", name, "--steps", str(steps.get(name, 32))]
            seq = sum(cpu(common + ["--seeds", "1", "--seed", str(s)], f"{tmp}/{name}{s}.nc") for s in range(seeds))
            stacked = cpu(common + ["--seeds", str(seeds)], f"{tmp}/{name}S.nc")
            line = (f"  {name:<8} {seeds} runs of 1 seed {seq:7.1f} s   --seeds {seeds} {stacked:7.1f} s   "
                    f"speed-up {seq / stacked:.2f}x")
            if max_conv_channels(_models(name, 1, torch.device("cpu"))[0]) > GROUPED_MAX_CHANNELS:
                grouped = cpu(common + ["--seeds", str(seeds)], f"{tmp}/{name}G.nc", stacking="grouped")
                line += f"   (before, grouped: {grouped:.1f} s, {seq / grouped:.2f}x)"
            print(line, flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--models", nargs="+", default=["mlp", "cnn", "resnet"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--whole-runs", action="store_true", help="also time complete `dsb run` processes")
    ap.add_argument("--whole-runs-only", action="store_true", help="only the complete `dsb run` processes")
    args = ap.parse_args()
    if args.whole_runs_only:
        whole_runs(args.models, args.seeds)
        return
    torch.set_num_threads(args.threads)
    dev, n = torch.device(args.device), args.seeds
    print(f"{n} seeds on {dev} ({args.threads} thread(s)); per-step {'CPU ' if dev.type == 'cpu' else ''}seconds; "
          "speed-up = sequential / stacked")
    print(f"{'model':<8}{'strategy':<10}{'step s':>10}{'speed-up':>10}{'eval s':>10}{'eval speed-up':>15}")
    for name in args.models:
        steps = STEPS.get(name, 10)
        single = make_stack(_models(name, 1, dev), dev)
        seq = n * time_steps(single, 1, steps, dev)
        seq_eval = n * time_eval(single, dev)
        print(f"{name:<8}{'1 by 1':<10}{seq:>10.4f}{1.0:>9.2f}x{seq_eval:>10.4f}{1.0:>14.2f}x", flush=True)
        for strategy in ("vmap", "loop", "grouped", "auto"):
            stack = make_stack(_models(name, n, dev), dev, torch.rand(2, 1, 8, 8), strategy=strategy)
            if strategy == "grouped" and not isinstance(stack, GroupedStack):
                continue
            t, te = time_steps(stack, n, steps, dev), time_eval(stack, dev)
            kind = type(stack).__name__ + ("(vmap)" if getattr(stack, "vectorized", False) else "")
            print(f"{'':<8}{strategy:<10}{t:>10.4f}{seq / t:>9.2f}x{te:>10.4f}{seq_eval / te:>14.2f}x  {kind}",
                  flush=True)
    if args.whole_runs:
        whole_runs(args.models, n)


if __name__ == "__main__":
    main()
