"""When a loss curve stops improving: the saturation rule of the clones experiments.

Rende, Gerace, Laio, Goldt (NeurIPS 2024): a BERT's loss on low-order clones saturates while the
loss on higher-order clones and real text keeps falling. This module states "saturates" as a
test on one curve, used by ``dsb run clones`` (:mod:`dsb_widgets.engine.clones`) and by the
synthetic ladder's DSB stage (:mod:`dsb_widgets.manybody_dsb`); it imports no engine.

The rule: the first checkpoint t after which the loss, as a centred running mean over half an
octave of checkpoints (m_i, n_i points), never falls again by more than k = 3 s.d. of a
difference: m_i - m_j <= k sigma sqrt(1/n_i + 1/n_j) for all j > i. sigma is the curve's own
checkpoint-to-checkpoint noise (:func:`curve_noise`) or a given eval standard error. A plateau
counts only if the run went on to at least 2t (:func:`plateau_observed`). Tested on curves with
known answers (tests/test_clone_saturation.py).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def curve_noise(loss: np.ndarray) -> float:
    """Checkpoint-to-checkpoint noise (standard deviation) of one loss curve, robustly: over the
    second half of the checkpoints, sigma = 1.4826 * median|d2| / sqrt(6), d2 the second
    differences loss[i+1] - 2 loss[i] + loss[i-1] (white noise of s.d. sigma gives d2 of s.d.
    sigma sqrt(6); a trend that is locally linear in the checkpoint index, as log-spaced curves
    are late in training, adds little). At constant learning rate this is the SGD jitter that a
    real improvement must beat; the fixed probe set adds none."""
    tail = np.asarray(loss, dtype=float)[len(loss) // 2:]
    if tail.size < 3:
        return 0.0
    return float(1.4826 * np.median(np.abs(np.diff(tail, 2))) / math.sqrt(6.0))


def smoothing_window(steps: np.ndarray) -> int:
    """Odd number of checkpoints spanning half an octave at the end of the run (1 with few
    checkpoints): the running mean of :func:`saturation_step` averages over about that much."""
    st = np.asarray(steps, dtype=float)
    n_half = int(np.sum(st > st[-1] / math.sqrt(2.0)))
    return 2 * (max(n_half, 1) // 2) + 1


def saturation_step(steps: np.ndarray, loss: np.ndarray, noise: float | None = None, k: float = 3.0) -> int:
    """First checkpoint step t after which the smoothed loss never falls by more than k standard
    deviations of the difference (when the curve has saturated).

    Smoothed: centred running mean over w = :func:`smoothing_window` checkpoints (half an octave;
    fewer at the ends), m_i = mean(loss[i - w//2 : i + w//2 + 1]) over its n_i points, noise
    s_i = sigma / sqrt(n_i); sigma = ``noise`` (e.g. the eval's standard error) or
    :func:`curve_noise`, floored at 1e-6 of the total drop. t = steps[i] for the first i with
    m_i - m_j <= k sqrt(s_i^2 + s_j^2) for every j > i. The last step when the loss still falls
    there; :func:`plateau_observed` says whether the plateau lasted long enough to call it one.
    """
    y = np.asarray(loss, dtype=float)
    sigma = curve_noise(y) if noise is None else float(noise)
    sigma = max(sigma, 1e-6 * max(float(y[0] - y.min()), 1e-12))
    h = smoothing_window(steps) // 2
    lo = np.maximum(np.arange(y.size) - h, 0)
    hi = np.minimum(np.arange(y.size) + h + 1, y.size)
    csum = np.concatenate([[0.0], np.cumsum(y)])
    n = (hi - lo).astype(float)
    m = (csum[hi] - csum[lo]) / n  # (C,) smoothed loss
    var = sigma ** 2 / n  # (C,) its noise variance
    for i in range(y.size):
        if np.all(m[i] - m[i:] <= k * np.sqrt(var[i] + var[i:])):
            return int(np.asarray(steps)[i])
    return int(np.asarray(steps)[-1])


def plateau_observed(steps: np.ndarray, step: int, span: float = 2.0) -> bool:
    """A saturation step counts only if the run went on to at least ``span`` times it (one octave
    by default): a 'plateau' seen for a few checkpoints at the end is 'still falling at N'."""
    return float(np.asarray(steps)[-1]) >= span * max(step, 1)


def saturation_steps(ds: Any, k: float = 3.0) -> dict[str, int]:
    """Per probe of a ``dsb run clones`` result: the step after which its seed-mean loss stops
    improving (:func:`saturation_step`, noise from that curve's own jitter, :func:`curve_noise`)."""
    loss = ds.loss.mean("seed") if "seed" in ds.loss.dims else ds.loss
    steps = np.asarray(ds.step.values)
    return {str(p): saturation_step(steps, np.asarray(loss.sel(probe=p).values), k=k) for p in ds.probe.values}


def format_saturation(ds: Any, k: float = 3.0) -> str:
    """One line per probe of a ``dsb run clones`` result: the step where its loss stops improving
    (:func:`saturation_steps`), the curve's noise, and "still falling" unless the plateau lasted
    an octave (:func:`plateau_observed`)."""
    loss = ds.loss.mean("seed") if "seed" in ds.loss.dims else ds.loss
    steps = np.asarray(ds.step.values)
    sat = saturation_steps(ds, k)
    lines = [f"saturation (first step after which the smoothed loss never falls by more than {k:g} s.d.; "
             "a plateau must last an octave):"]
    for p in ds.probe.values:
        y = np.asarray(loss.sel(probe=p).values)
        lines.append(f"  {str(p):<8} step {sat[str(p)]:>7}  final {float(y[-1]):.3f}  noise {curve_noise(y):.4f}"
                     + ("" if plateau_observed(steps, sat[str(p)]) else f"  (still falling at {int(steps[-1])})"))
    return "\n".join(lines)
