"""Bounded shift: edited images stay in [0, 1] and their class mean is the target's."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dsb_widgets.mean_shift import BoundedShift, clipped_mean, solve_shift
from dsb_widgets.quantile import QuantileNormalizer


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 10_000), st.floats(0.0, 1.0))
def test_solve_shift_hits_the_target_mean(seed: int, target: float) -> None:
    gen = torch.Generator().manual_seed(seed)
    table = torch.rand(5, 64, generator=gen, dtype=torch.float64).sort(-1).values
    t = torch.full((5,), target, dtype=torch.float64)
    delta = solve_shift(table, t, iters=50)
    assert torch.allclose(clipped_mean(table, delta), t, atol=1e-9)


def test_edit_moves_class_means_inside_the_box() -> None:
    gen = torch.Generator().manual_seed(0)
    n, d = 4000, 12
    x = torch.cat([torch.rand(n, d, generator=gen) ** 3, 1 - torch.rand(n, d, generator=gen) ** 2])  # skewed
    y = torch.cat([torch.zeros(n), torch.ones(n)]).long()
    qn = QuantileNormalizer.fit(x, y, num_quantiles=256)
    shift = BoundedShift.fit(qn)
    src = torch.zeros(n, dtype=torch.long)
    out = shift.transform(x[:n], src, torch.ones(n, dtype=torch.long))
    assert out.min() >= 0 and out.max() <= 1
    assert (out.mean(0) - x[n:].mean(0)).abs().max() < 0.01  # target mean, up to the quantile table
    naive = (x[:n] - x[:n].mean(0) + x[n:].mean(0)).clamp(0, 1)  # a clipped plain shift misses it
    assert (naive.mean(0) - x[n:].mean(0)).abs().max() > 0.03
    same = shift.transform(x[:n], src, src)  # onto its own class: (almost) unchanged
    assert (same - x[:n]).abs().max() < 1e-3
