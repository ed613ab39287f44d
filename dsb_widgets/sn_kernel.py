"""Infinite-width kernel of a simplified positional block, and kernel regression per S_n sector.

Theory line for the symmetry experiment (Lavie, Gur-Ari & Ringel, ICML 2024, who analyse the
GP limit of transformers; only their abstract-level claims are verified here, so this block is
our simplification, not their kernel). The block::

    F(X) = 1/sqrt(D) sum_u v_u * (1/n) sum_i relu(w_u . x_i / sqrt(d) + p_{u,i})

token embedding ``w_u``, a *learned positional embedding* ``p_{u,i} ~ N(0, sigma_p^2)`` added
before the nonlinearity, mean pooling over positions, readout ``v_u ~ N(0, 1)``. It is what a
transformer block computes when its attention is uniform (as softmax attention is at
initialisation in the infinite-width limit with 1/D-scaled logits, where the logits vanish; the
uniform average of values is itself permutation symmetric, so positions enter only through p).
As D -> infinity its NNGP kernel is (Cho & Saul's arc-cosine kernel ``k1``)::

    K(X, X') = 1/n^2 sum_{i,j} k1(x_i . x'_j / d + sigma_p^2 [i = j];
                                 |x_i|^2 / d + sigma_p^2, |x'_j|^2 / d + sigma_p^2)
    k1(c; a, b) = sqrt(a b) / (2 pi) * (sin t + (pi - t) cos t),  cos t = c / sqrt(a b)

Split as ``K = 1/n^2 sum_{i,j} k1(no shared offset) + 1/n^2 sum_i [k1(shared) - k1(not)]``:
the first term is the permutation-averaged (fully S_n-symmetric) kernel, the second, the only
one that sees positions, carries n of the n^2 terms. Its eigenvalues on the non-trivial sectors
are therefore ~1/n of the trivial ones, and kernel ridge regression needs ~n times more samples
to fit a standard-sector target than a trivial one: the scaling this module measures
(:func:`kernel_learning_curve`) and :func:`p_star` reads off. The NNGP of softmax attention with
1/sqrt(D) logits (Hron et al. 2020) involves expectations of softmax over Gaussian logits and has
no closed form; we did not derive it.

Measured (d = 8, linear feature, sigma_p = 1, ridge 1e-6, 512 test contexts, seed 0): P* at
relative error 0.5 for the standard sector 36, 61, 110, 191 at n = 4, 8, 16, 32 (slope 0.80 in
log-log), trivial <= 16 at every n (10 at n = 32). The two-body targets are not fitted: their
error stays above 1 up to P = 1024 (n <= 16), the near-interpolating ridge overfits them. Cost:
n = 4, 8, 16 with P up to 1024 took 684 s, n = 32 up to P = 256 took 364 s, on 2 loaded cores.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import xarray as xr

from dsb_widgets.sn_sectors import SECTORS, SectorTargets


def arccos1(cov: np.ndarray, var_a: np.ndarray, var_b: np.ndarray) -> np.ndarray:
    """E[relu(a) relu(b)] for centred jointly Gaussian (a, b) with the given (co)variances."""
    norm = np.sqrt(var_a * var_b)
    cos = np.clip(cov / norm, -1.0, 1.0)
    t = np.arccos(cos)
    return norm / (2 * math.pi) * (np.sin(t) + (math.pi - t) * cos)


def block_kernel(x: np.ndarray, x2: np.ndarray, sigma_p: float = 1.0, chunk: int = 64) -> np.ndarray:
    """K(X, X') (P, P2) of the simplified block for contexts x (P, n, d), x2 (P2, n, d)."""
    p, n, d = x.shape
    s2 = sigma_p ** 2
    na = np.einsum("pid,pid->pi", x, x) / d + s2  # (P, n)
    nb = np.einsum("qjd,qjd->qj", x2, x2) / d + s2  # (P2, n)
    eye = np.eye(n)
    out = np.empty((p, x2.shape[0]))
    for a in range(0, p, chunk):
        g = np.einsum("pid,qjd->piqj", x[a:a + chunk], x2) / d  # (c, n, P2, n)
        g = g + s2 * eye[None, :, None, :]  # shared offset where i == j
        k = arccos1(g, na[a:a + chunk, :, None, None], nb[None, None, :, :])  # (c, n, P2, n)
        out[a:a + chunk] = k.mean(axis=(1, 3))
    return out


def random_feature_kernel(x: np.ndarray, x2: np.ndarray, sigma_p: float = 1.0, width: int = 20000,
                          seed: int = 0) -> np.ndarray:
    """Monte Carlo estimate of :func:`block_kernel` with ``width`` random units (for the tests)."""
    n, d = x.shape[1:]
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((d, width)) / math.sqrt(d)
    pos = rng.standard_normal((n, width)) * sigma_p

    def feats(z: np.ndarray) -> np.ndarray:
        return np.maximum(z @ w + pos, 0.0).mean(axis=1)  # (P, width)

    return feats(x) @ feats(x2).T / width


def kernel_regression_error(targets: SectorTargets, train_size: int, test_size: int = 512, sigma_p: float = 1.0,
                            ridge: float = 1e-6, seed: int = 0) -> np.ndarray:
    """Held-out MSE per sector (K,) of kernel ridge regression from ``train_size`` contexts.

    The targets have unit variance, so the MSE is the relative error (1 = predicting 0).
    ``ridge`` is relative to the mean diagonal of the train kernel.
    """
    rng = np.random.default_rng(seed)
    xtr = rng.standard_normal((train_size, targets.n, targets.d))
    xte = rng.standard_normal((test_size, targets.n, targets.d))
    ytr, yte = targets(xtr), targets(xte)
    ktr = block_kernel(xtr, xtr, sigma_p)
    kte = block_kernel(xte, xtr, sigma_p)
    lam = ridge * float(np.mean(np.diag(ktr)))
    coef = np.linalg.solve(ktr + lam * np.eye(train_size), ytr)  # (P, K)
    return np.mean((kte @ coef - yte) ** 2, axis=0)


def kernel_learning_curve(contexts: Sequence[int], train_sizes: Sequence[int], dim: int = 8,
                          sectors: Sequence[str] = ("trivial", "standard"), sigma_p: float = 1.0,
                          feature: str = "linear", test_size: int = 512, seed: int = 0) -> xr.DataArray:
    """Relative held-out error of kernel regression, dims (context, train_size, probe)."""
    err = np.full((len(contexts), len(train_sizes), len(sectors)), np.nan)
    for a, n in enumerate(contexts):
        usable = tuple(s for s in sectors if not (s == "pair" and n < 4))
        targets = SectorTargets.make(n, dim, usable, seed=seed, feature=feature)  # type: ignore[arg-type]
        for b, p in enumerate(train_sizes):
            e = kernel_regression_error(targets, int(p), test_size, sigma_p, seed=seed + 1)
            for k, s in enumerate(usable):
                err[a, b, list(sectors).index(s)] = e[k]
    return xr.DataArray(err, dims=("context", "train_size", "probe"),
                        coords={"context": list(contexts), "train_size": list(train_sizes), "probe": list(sectors)},
                        name="kernel_error")


def p_star(error: xr.DataArray, threshold: float = 0.5, dim: str = "train_size") -> xr.DataArray:
    """Smallest training-set size at which ``error`` first falls to ``threshold``.

    Log-linear interpolation in P between the last grid point above and the first at/below the
    threshold; NaN where the error never gets there (P* beyond the grid), the smallest P where it
    is already below (P* at most that).
    """
    def one(e: np.ndarray, ps: np.ndarray) -> float:
        below = np.nonzero(np.isfinite(e) & (e <= threshold))[0]
        if len(below) == 0:
            return math.nan
        i = int(below[0])
        if i == 0:
            return float(ps[0])
        e0, e1 = e[i - 1], e[i]
        t = (e0 - threshold) / (e0 - e1) if e0 > e1 else 1.0
        return float(np.exp(np.log(ps[i - 1]) + t * (np.log(ps[i]) - np.log(ps[i - 1]))))

    ps = np.asarray(error[dim].values, dtype=float)
    return xr.apply_ufunc(one, error, input_core_dims=[[dim]], kwargs={"ps": ps}, vectorize=True)


__all__ = ["arccos1", "block_kernel", "random_feature_kernel", "kernel_regression_error",
           "kernel_learning_curve", "p_star", "SECTORS"]
