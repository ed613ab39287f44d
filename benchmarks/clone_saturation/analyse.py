"""Saturation step per probe and seed, with eval noise and a chain-clustered bootstrap (issue 12).

Reads the per-sequence .npz files of ``sat_run.py`` or ``sat_eval.py`` (one per training seed)
and prints, per file and probe (real text, each clone): final and minimum loss, the
checkpoint-to-checkpoint noise (``curve_noise``), the step after which the loss stops improving
(``saturation_step``) and whether the run went on long enough to call it a plateau
(``plateau_observed``, one octave), the drop from that step to the end with its eval standard
error, the drop over the last one and two octaves, and the 5/50/95 % of the saturation step
under a bootstrap of the probe sequences. Clone sequences are resampled in clusters by MH chain
(sequence j came from chain j mod 128, the ``dsb clone`` default --chains), real windows one by
one; 200 resamples, seed 0. With several files it then prints the same for the seed-mean curve and
a table of the seed-mean loss at a few steps. Rende, Gerace, Laio, Goldt, NeurIPS 2024: a BERT
trained on real text learns the low-order clones first, so their curves should flatten first.

How to run the pipeline (dsb clone -> sat_run.py -> sat_eval.py -> analyse.py): README.md in this folder.

Measured (TinyStories, gpt2 tokens top-1,000, T = 16, 2/3-body clones with 128 chains; BERT
2 layers x d 64, lr 1e-3 constant, 30,000 steps; seeds 0 and 1): the 2-body clone stops
improving at ~5.5k steps (5,312 / 5,793, then rises), the 3-body clone at ~1e4 (12,634 / 9,742),
real text is still falling at 3e4; the bootstrap ranges of 2- and 3-body do not overlap. Cost:
~13 CPU-min per seed at 1 thread for the two scripts before this one; this one takes seconds.
"""

from __future__ import annotations

import sys

import numpy as np

from dsb_widgets.saturation import curve_noise, plateau_observed, saturation_step

CHAINS = 128  # MH chains of the clone set: clone sequence j came from chain j % CHAINS
N_BOOT = 200
TABLE_STEPS = (0, 256, 1024, 4096, 8192, 16384)  # rows of the seed-mean table (plus the last step)


def curve(r: np.lib.npyio.NpzFile, pi: int, idx: np.ndarray | None = None) -> np.ndarray:
    """Mean loss per masked token of probe ``pi`` at every checkpoint, over sequences ``idx`` (all)."""
    s, c = r["sums"][pi], r["counts"][pi]  # (C, n), (n,)
    if idx is not None:
        s, c = s[:, idx], c[idx]
    return s.sum(1) / c.sum()


def verdict(steps: np.ndarray, s: int) -> str:
    return "plateau" if plateau_observed(steps, s) else f"STILL FALLING at {steps[-1]}"


def report_run(path: str, r: np.lib.npyio.NpzFile, names: list[str]) -> None:
    """One line per probe of one run; the bootstrap resamples sequences (clones: whole chains)."""
    steps = r["steps"]
    print(f"== {path}: {len(steps)} checkpoints to step {steps[-1]}")
    rng = np.random.default_rng(0)
    for pi, nm in enumerate(names):
        y = curve(r, pi)
        sig = curve_noise(y)
        s = saturation_step(steps, y)
        n = r["sums"].shape[2]
        # eval sampling noise of the drop from step s to the end (paired, clustered by MH chain for clones)
        i = int(np.searchsorted(steps, s))
        d = r["sums"][pi, i] - r["sums"][pi, -1]  # (n,)
        cl = np.arange(n) % CHAINS if nm != "real" else np.arange(n)
        boots = []
        bsat = []
        for _ in range(N_BOOT):
            pick = rng.choice(np.unique(cl), np.unique(cl).size)
            idx = np.concatenate([np.nonzero(cl == k)[0] for k in pick])
            boots.append(d[idx].sum() / r["counts"][pi][idx].sum())
            bsat.append(saturation_step(steps, curve(r, pi, idx)))
        half = int(np.searchsorted(steps, steps[-1] / 2))
        quarter = int(np.searchsorted(steps, steps[-1] / 4))
        print(f"{nm:>7} final {y[-1]:.3f} min {y.min():.3f}@{steps[y.argmin()]} noise {sig:.4f} sat {s} "
              f"{verdict(steps, s)} | drop sat->end {y[i] - y[-1]:+.4f} "
              f"(eval s.e. {np.std(boots):.4f}) | last octave {y[half] - y[-1]:+.4f} "
              f"last 2 oct {y[quarter] - y[-1]:+.4f} "
              f"| boot sat 5/50/95% {np.percentile(bsat, [5, 50, 95]).astype(int).tolist()}")


def report_seed_mean(runs: list[np.lib.npyio.NpzFile], names: list[str]) -> None:
    n = min(len(r["steps"]) for r in runs)
    steps = runs[0]["steps"][:n]
    print("== seed mean")
    for pi, nm in enumerate(names):
        y = np.mean([curve(r, pi)[:n] for r in runs], 0)
        s = saturation_step(steps, y)
        print(f"{nm:>7} final {y[-1]:.3f} noise {curve_noise(y):.4f} sat {s} {verdict(steps, s)}")


def print_table(runs: list[np.lib.npyio.NpzFile], names: list[str]) -> None:
    steps = runs[0]["steps"]
    sel = [i for i, s in enumerate(steps) if s in TABLE_STEPS or i == len(steps) - 1]
    print("step  " + " ".join(f"{nm:>8}" for nm in names))
    for i in sel:
        row = " ".join(f"{np.mean([curve(rr, pi)[i] for rr in runs]):8.3f}" for pi in range(len(names)))
        print(f"{steps[i]:>6} " + row)


def main(files: list[str]) -> None:
    if not files:
        raise SystemExit("usage: analyse.py RUN.npz [RUN.npz ...] (from sat_run.py or sat_eval.py)")
    runs = [np.load(f) for f in files]
    names = list(runs[0]["names"])
    for path, r in zip(files, runs):
        report_run(path, r, names)
    if len(runs) > 1:
        report_seed_mean(runs, names)
    print_table(runs, names)


if __name__ == "__main__":
    main(sys.argv[1:])
