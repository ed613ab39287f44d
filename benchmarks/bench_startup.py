"""Fixed costs of the CLI and the engine, before/after side by side (issue 17).

    python benchmarks/bench_startup.py --before 1d12042 --repeats 3

Exports the ``--before`` revision with ``git archive`` into a temporary folder and runs the same
commands with that code and with this checkout, alternating, each in a fresh one-thread process:

* ``dsb --help`` and a bad flag (``dsb run --steps abc``);
* ``dsb run images --steps 1 --probes real`` (import + data + model + one step + one write);
* the import costs that the engine no longer pays: ``torch._dynamo`` (pulled in by torch.optim's
  methods) and ``sklearn`` (was imported to load digits).

Prints medians of wall seconds and of CPU seconds (user + sys of the child: steadier than wall on
a shared machine) and the before/after ratios. Timings here are never asserted by tests.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def timed(cmd: list[str], pythonpath: Path, cwd: Path) -> tuple[float, float]:
    """(wall s, child CPU s) of one command with the package taken from ``pythonpath``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, env={**ENV, "PYTHONPATH": str(pythonpath)}, capture_output=True, check=False)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def export(rev: str, dest: Path) -> Path:
    data = subprocess.run(["git", "archive", rev], cwd=ROOT, capture_output=True, check=True).stdout
    tar = dest / "src.tar"
    tar.write_bytes(data)
    with tarfile.open(tar) as tf:
        tf.extractall(dest / "tree")
    return dest / "tree"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", default="1d12042", help="git revision to compare against")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    py = sys.executable
    cli = "import sys; from dsb_widgets.cli import main; sys.exit(main(sys.argv[1:]))"
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        trees = {"before": export(args.before, tmp_path), "after": ROOT}
        cases = {
            "dsb --help": [py, "-c", cli, "--help"],
            "dsb run --steps abc": [py, "-c", cli, "run", "--steps", "abc"],
            "dsb run images --steps 1": [py, "-c", cli, "run", "images", "--steps", "1", "--probes", "real",
                                         "--probe-size", "200", "--out", str(tmp_path / "r.nc"), "--force"],
        }
        parts = {"import torch": [py, "-c", "import torch"],
                 "+ torch._dynamo": [py, "-c", "import torch, torch._dynamo"],
                 "+ sklearn.datasets": [py, "-c", "import torch, sklearn.datasets"]}
        res: dict[tuple[str, str], list[tuple[float, float]]] = {}
        for _ in range(args.repeats):
            for name, cmd in cases.items():
                for which, tree in trees.items():
                    c = list(cmd)
                    if which == "before" and "--force" in c:
                        c.remove("--force")  # the old CLI has no --force
                        (tmp_path / "r.nc").unlink(missing_ok=True)
                    res[(name, which)] = res.get((name, which), []) + [timed(c, tree, tmp_path)]
                    print(f"  {name} [{which}]: {res[(name, which)][-1][0]:.2f} s wall, "
                          f"{res[(name, which)][-1][1]:.2f} CPU-s", flush=True)
                (tmp_path / "r.nc").unlink(missing_ok=True)
            for name, cmd in parts.items():
                res[(name, "-")] = res.get((name, "-"), []) + [timed(cmd, ROOT, tmp_path)]
    med = {k: (statistics.median(w for w, _ in v), statistics.median(c for _, c in v)) for k, v in res.items()}
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; "
          f"medians of {args.repeats} alternating runs")
    print(f"{'command':<28}{'before wall':>12}{'after wall':>12}{'ratio':>8}"
          f"{'before cpu':>12}{'after cpu':>11}{'ratio':>8}")
    for name in cases:
        (bw, bc), (aw, ac) = med[(name, "before")], med[(name, "after")]
        print(f"{name:<28}{bw:>12.2f}{aw:>12.2f}{bw / aw:>7.1f}x{bc:>12.2f}{ac:>11.2f}{bc / ac:>7.1f}x")
    base = med[("import torch", "-")]
    for name in ("+ torch._dynamo", "+ sklearn.datasets"):
        w, c = med[(name, "-")]
        print(f"{name:<28} costs {w - base[0]:+.2f} s wall, {c - base[1]:+.2f} CPU-s over `import torch` "
              f"({base[1]:.2f} CPU-s)")


if __name__ == "__main__":
    main()
