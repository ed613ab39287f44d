"""Log-spaced checkpoints and the learning-rate schedule."""

from __future__ import annotations

import math


def log_checkpoints(steps: int, per_octave: int = 2) -> list[int]:
    """Steps 0, 1, 2, 4, ... with ``per_octave`` points per doubling, plus the final step.

    Belrose et al. (ICML 2024) evaluate at 2^0..2^16; Refinetti et al. (ICML 2023) take ~100
    log-spaced points. ``per_octave=1`` gives the powers of two; ``per_octave=4`` gives
    1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 13, 16, ... (rounded, duplicates removed).
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1 (got {steps}); pass e.g. --steps 512")
    if per_octave < 1:
        raise ValueError(f"per_octave must be >= 1 (got {per_octave})")
    points = {0, steps}
    k = 0
    while True:
        s = round(2 ** (k / per_octave))
        if s >= steps:
            break
        points.add(int(s))
        k += 1
    return sorted(points)


def lr_at(step: int, base_lr: float, total: int, warmup: int, schedule: str = "cosine") -> float:
    """Linear warm-up for ``warmup`` steps, then cosine decay to 0 (or constant)."""
    if warmup > 0 and step < warmup:
        return base_lr * (step + 1) / warmup
    if schedule == "constant":
        return base_lr
    if schedule != "cosine":
        raise ValueError(f"unknown schedule {schedule!r}; use 'cosine' or 'constant'")
    span = max(total - warmup, 1)
    progress = min(max(step - warmup, 0) / span, 1.0)
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * progress))
