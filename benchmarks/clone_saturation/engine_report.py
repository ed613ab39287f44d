"""Per-seed saturation of ``dsb run clones`` results (issue 12), readable mid-run.

Reads one or more results files of ``dsb run clones`` (each may hold several seeds, and may be a
run still in progress: the file is appended at every checkpoint) and prints, per seed and probe,
the loss at a few steps and :func:`~dsb_widgets.engine.clones.saturation_step` of that seed's
curve (its own noise, :func:`~dsb_widgets.engine.clones.curve_noise`), marked "still falling at
N" unless the plateau lasted an octave (:func:`~dsb_widgets.engine.clones.plateau_observed`),
then the seed-mean summary (:func:`~dsb_widgets.engine.clones.format_saturation`) of each file.

    python benchmarks/clone_saturation/engine_report.py run_s0.nc run_s1.nc [--steps 0 1024 4096 16384]
"""

from __future__ import annotations

import argparse

import numpy as np

from dsb_widgets.engine.clones import curve_noise, format_saturation, plateau_observed, saturation_step
from dsb_widgets.engine.results import load_results


def seed_lines(path: str, at: list[int]) -> list[str]:
    """One line per (seed, probe): losses at the checkpoints nearest ``at`` and the last, saturation."""
    ds = load_results(path)
    steps = np.asarray(ds.step.values)
    cols = sorted({int(steps[np.argmin(np.abs(steps - s))]) for s in at if s <= steps[-1]} | {int(steps[-1])})
    idx = [int(np.flatnonzero(steps == c)[0]) for c in cols]
    lines = [f"{path}: {len(steps)} checkpoints, last step {int(steps[-1])}",
             f"  {'seed':>4} {'probe':<8} " + " ".join(f"{c:>7}" for c in cols) + "  saturation"]
    for seed in ds.seed.values:
        for p in ds.probe.values:
            y = np.asarray(ds.loss.sel(seed=seed, probe=p).values, dtype=float)
            t = saturation_step(steps, y)
            tail = f"step {t:>6}" if plateau_observed(steps, t) else f"still falling at {int(steps[-1])} (t={t})"
            tail += f"  min {y.min():.3f} at {int(steps[int(np.argmin(y))])}, noise {curve_noise(y):.4f}"
            lines.append(f"  {int(seed):>4} {str(p):<8} " + " ".join(f"{y[i]:7.3f}" for i in idx) + "  " + tail)
    lines.append(format_saturation(ds))
    return lines


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results", nargs="+", help="netCDF results of `dsb run clones`")
    ap.add_argument("--steps", type=int, nargs="+", default=[0, 1024, 4096, 16384], help="steps of the loss table")
    a = ap.parse_args(argv)
    for path in a.results:
        print("\n".join(seed_lines(path, a.steps)))


if __name__ == "__main__":
    main()
