"""The "bounded shift" edit: move images of class p onto class q's pixel means inside [0, 1].

Belrose et al. (ICML 2024) edit test images of class p so that a chosen statistic becomes that
of another class q, and track the accuracy on the *target* label q during training: besides
Gaussian OT (order 2, ``gaussian_ot.py``) and per-pixel quantile matching (CQN, order 1,
``quantile.py``) they use a bounded mean shift, an order-1 edit that changes as little as
possible. Here, per pixel k and class pair (p, q), the shift delta solves

    E_{x ~ class p}[ clip(x_k + delta, 0, 1) ] = mu_{q,k},

so edited images stay valid pixels *and* their class mean is exactly the target's (a plain
x - mu_p + mu_q leaves [0, 1] and a clipped one misses mu_q). f(delta) = E[clip(x + delta)] is
continuous and non-decreasing from 0 (delta = -1) to 1 (delta = 1), so bisection finds it; the
expectation runs over the class's quantile table (``QuantileNormalizer``, m quantiles per
pixel), i.e. the class marginal. Everything except each pixel's mean stays the source's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .quantile import QuantileNormalizer


def clipped_mean(table: Tensor, delta: Tensor) -> Tensor:
    """E[clip(x + delta, 0, 1)] for x uniform over ``table`` (..., m) with delta (...)."""
    return (table + delta[..., None]).clamp(0, 1).mean(-1)


def solve_shift(table: Tensor, target: Tensor, iters: int = 40) -> Tensor:
    """delta (...) with clipped_mean(table, delta) = target (...) in [0, 1], by bisection on [-1, 1]
    (|error| <= 2^-iters in delta; f is 1-Lipschitz, so the mean error is as small)."""
    lo = torch.full_like(target, -1.0)
    hi = torch.full_like(target, 1.0)
    for _ in range(iters):
        mid = (lo + hi) / 2
        low = clipped_mean(table, mid) < target
        lo = torch.where(low, mid, lo)
        hi = torch.where(low, hi, mid)
    return (lo + hi) / 2


@dataclass(frozen=True)
class BoundedShift:
    """Per-pixel shifts delta (K, K, d) for every (source, target) class pair."""

    delta: Tensor  # (K, K, d) float32
    image_shape: tuple[int, ...]

    @classmethod
    def fit(cls, quantiles: QuantileNormalizer, iters: int = 40) -> BoundedShift:
        tab = quantiles.fitted.double()  # (K, d, m)
        k, d, _ = tab.shape
        means = tab.mean(-1)  # (K, d) class means (of the marginal)
        delta = torch.empty(k, k, d, dtype=torch.float64)
        for p in range(k):  # per source class: (K targets, d, m) at a time
            delta[p] = solve_shift(tab[p].expand(k, d, -1), means, iters)
        return cls(delta.float(), tuple(quantiles.image_shape or (d,)))

    def transform(self, x: Tensor, source: Tensor, target: Tensor) -> Tensor:
        """clip(x + delta[source, target], 0, 1); x (N, ...) -> same shape."""
        n = x.shape[0]
        xf = x.reshape(n, -1).float()
        return (xf + self.delta[source.long(), target.long()]).clamp(0, 1).reshape(x.shape)
