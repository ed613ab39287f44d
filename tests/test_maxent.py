"""Max-ent samplers reproduce the moments they claim (and nothing more), reproducibly from a seed."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.integrate import quad
from sklearn.datasets import load_digits

from dsb_widgets.maxent import (
    REFINETTI_RIDGE,
    ExponentialMaxEnt,
    GaussianSampler,
    IndependentMarginals,
    exp_icdf,
    exp_mean,
    gaussian_clone,
    solve_rate,
)
from dsb_widgets.stats import ClassStats

F64 = torch.float64


@pytest.fixture(scope="module")
def digits() -> tuple[torch.Tensor, torch.Tensor, ClassStats]:
    d = load_digits()
    x = torch.tensor(d.images / 16.0, dtype=torch.float32)[:, None]
    y = torch.tensor(d.target)
    return x, y, ClassStats.fit(x, y)


def ks_per_coordinate(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Two-sample KS statistic per column (as in test_quantile.py)."""
    a_s, b_s = a.T.contiguous().sort(dim=1).values, b.T.contiguous().sort(dim=1).values
    z = torch.cat([a_s, b_s], dim=1)
    fa = torch.searchsorted(a_s, z, side="right").double() / a_s.shape[1]
    fb = torch.searchsorted(b_s, z, side="right").double() / b_s.shape[1]
    return (fa - fb).abs().amax(dim=1)


def correlations(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Off-diagonal correlations among columns with variance, and the mask used."""
    keep = x.var(0) > 1e-8
    r = torch.corrcoef(x[:, keep].T)
    off = ~torch.eye(len(r), dtype=torch.bool)
    return r[off], keep


# --- the max-ent density on [0, 1] ------------------------------------------------------------------
def test_solve_rate_on_grid_with_edge_cases() -> None:
    grid = torch.tensor(
        [0, 1e-300, 1e-12, 1e-6, 1e-3, 0.1, 0.3, 0.5 - 1e-7, 0.5 - 1e-12, 0.5, 0.5 + 1e-12, 0.7, 0.999, 1 - 1e-9, 1],
        dtype=F64,
    )
    b = solve_rate(grid)
    assert (exp_mean(b) - grid).abs().max() < 1e-12  # spec asks 1e-6
    assert b[0] == math.inf and b[-1] == -math.inf and b[9] == 0
    assert (b.diff() < 0).all()  # mu is strictly decreasing in b
    mid = torch.linspace(1e-3, 1 - 1e-3, 999, dtype=F64)  # where 1 - m is exact enough
    torch.testing.assert_close(solve_rate(1 - mid), -solve_rate(mid), atol=1e-9, rtol=1e-9)  # mu(-b) = 1 - mu(b)
    dense = torch.linspace(0, 1, 10_001, dtype=F64)
    assert (exp_mean(solve_rate(dense)) - dense).abs().max() < 1e-12
    with pytest.raises(ValueError, match="lie in"):
        solve_rate(torch.tensor([1.2]))


@pytest.mark.parametrize("b", [-60.0, -3.0, -1e-5, 1e-9, 0.3, 7.0, 250.0])
def test_exp_mean_matches_quadrature(b: float) -> None:
    z = quad(lambda x: math.exp(-b * x), 0, 1, points=[0.01, 0.1])[0]
    m = quad(lambda x: x * math.exp(-b * x), 0, 1, points=[0.01, 0.1])[0] / z
    assert exp_mean(torch.tensor(b, dtype=F64)).item() == pytest.approx(m, abs=1e-10)


@settings(max_examples=30, deadline=None)
@given(b=st.floats(-300, 300))
def test_exp_icdf_inverts_the_cdf(b: float) -> None:
    u = torch.linspace(0, 1, 101, dtype=F64)
    x = exp_icdf(u, torch.full_like(u, b))
    assert (x.diff() >= 0).all() and x.min() >= 0 and x.max() <= 1
    if abs(b) > 1e-12:  # F(x) = expm1(-b x) / expm1(-b), evaluated in log space when it overflows
        f = torch.expm1(-b * x) / math.expm1(-b) if b > -700 else torch.exp(b * (1 - x))
        torch.testing.assert_close(f, u, atol=1e-9, rtol=0)
    else:
        torch.testing.assert_close(x, u)


# --- order 1 -------------------------------------------------------------------------------------------
def test_exponential_maxent_has_class_means_and_no_correlations(digits) -> None:
    x, y, stats = digits
    sampler = ExponentialMaxEnt.fit(stats)
    torch.testing.assert_close(sampler.mean, stats.mean, atol=1e-12, rtol=0)
    n = 4000
    labels = torch.full((n,), 4)
    s = sampler.sample(labels, generator=0)
    assert s.shape == (n, 1, 8, 8) and s.min() >= 0 and s.max() <= 1
    flat = s.reshape(n, -1).double()
    sd = flat.std(0).clamp_min(1e-12)
    assert ((flat.mean(0) - stats.mean[4]).abs() / sd).max() < 5 / n**0.5
    r, _ = correlations(flat)
    assert r.abs().max() < 5 / n**0.5  # independent pixels
    r_real, _ = correlations(x[y == 4].reshape(-1, 64).double())
    assert r_real.abs().max() > 0.5  # the real class is strongly correlated: the test can fail
    # "nothing more": the variance is the max-ent density's, Var(b) = 1/b^2 - 1/(4 sinh^2(b/2)),
    # not the data's
    b = sampler.rate[4]
    bs = torch.where(b.abs() < 1e-3, 1.0, b)
    var_density = torch.where(b.abs() < 1e-3, 1 / 12, 1 / bs**2 - 1 / (4 * torch.sinh(bs / 2) ** 2))
    var_density = torch.where(b.isinf(), 0.0, var_density)
    live = var_density > 1e-3
    ratio = flat.var(0)[live] / var_density[live]
    assert (ratio - 1).abs().max() < 0.15
    data_ratio = stats.var[4][live] / var_density[live]
    assert (data_ratio - 1).abs().mean() > 0.3


def test_independent_marginals_have_class_marginals_and_no_correlations(digits) -> None:
    x, y, stats = digits
    sampler = IndependentMarginals.fit(x, y)
    n = 4000
    labels = torch.full((n,), 2)
    flat = sampler.sample(labels, generator=1).reshape(n, -1).double()
    real = x[y == 2].reshape(-1, 64).double()
    sd = real.std(0).clamp_min(1e-3)
    assert ((flat.mean(0) - stats.mean[2]).abs() / sd).max() < 5 / n**0.5 + 0.02  # + table error
    ks = ks_per_coordinate(flat, real)
    assert ks.max() < 1.95 * math.sqrt(1 / n + 1 / len(real))  # 0.1% critical value
    r, _ = correlations(flat)
    assert r.abs().max() < 5 / n**0.5


# --- order 2 -------------------------------------------------------------------------------------------
def test_gaussian_sampler_matches_mean_and_covariance(digits) -> None:
    _, _, stats = digits
    sampler = GaussianSampler.fit(stats)
    torch.testing.assert_close(sampler.cov, stats.cov, atol=1e-10, rtol=0)
    n = 20_000
    for c in (0, 7):
        flat = sampler.sample(torch.full((n,), c), generator=c).reshape(n, -1).double()
        cov = stats.cov[c]
        v = cov.diagonal()
        se_mean = (v / n).sqrt().clamp_min(1e-6)  # float32 output
        assert ((flat.mean(0) - stats.mean[c]).abs() / se_mean).max() < 5
        # entrywise sd of a sample covariance: sqrt((v_i v_j + c_ij^2) / n)
        se_cov = ((torch.outer(v, v) + cov**2) / n).sqrt().clamp_min(1e-7)
        assert ((torch.cov(flat.T) - cov).abs() / se_cov).max() < 6


def test_clamping_moves_moments_as_documented(digits) -> None:
    _, _, stats = digits
    sampler = GaussianSampler.fit(stats)
    n = 4000
    flat = sampler.sample(torch.full((n,), 5), generator=3, clamp=True).reshape(n, -1).double()
    assert flat.min() >= 0 and flat.max() <= 1
    var = stats.var[5]
    keep = var > 1e-6
    assert (flat.var(0)[keep] / var[keep]).mean() < 0.8  # variance shrinks
    assert (flat.mean(0) - stats.mean[5]).abs().mean() > 0.005  # means move toward the interior


def test_per_channel_drops_cross_channel_covariance() -> None:
    g = torch.Generator().manual_seed(0)
    base = torch.randn(3000, 1, 2, 2, generator=g, dtype=F64)
    x = torch.cat([base, base + 0.1 * torch.randn(3000, 1, 2, 2, generator=g, dtype=F64)], dim=1)  # (N, 2, 2, 2)
    stats = ClassStats.fit(x, torch.zeros(3000, dtype=torch.long))
    full = GaussianSampler.fit(stats)
    split = GaussianSampler.fit(stats, per_channel=True)
    assert split.factor.shape == (1, 2, 4, 4) and full.factor.shape == (1, 1, 8, 8)
    cov = stats.cov[0]
    torch.testing.assert_close(split.cov[0, :4, :4], cov[:4, :4], atol=1e-10, rtol=0)
    torch.testing.assert_close(split.cov[0, 4:, 4:], cov[4:, 4:], atol=1e-10, rtol=0)
    assert split.cov[0, :4, 4:].abs().max() == 0 and cov[:4, 4:].abs().max() > 0.5
    s = split.sample(torch.zeros(4000, dtype=torch.long), generator=0).reshape(4000, -1).double()
    assert torch.corrcoef(s.T)[:4, 4:].abs().max() < 5 / 4000**0.5


def test_gaussian_clone_follows_refinetti_recipe(digits) -> None:
    _, _, stats = digits
    labels = torch.arange(10).repeat(20)
    x = gaussian_clone(stats, labels, generator=0, quantize=True)
    assert x.shape == (200, 1, 8, 8) and x.min() >= 0 and x.max() <= 1
    torch.testing.assert_close(x * 255, (x * 255).round(), atol=1e-4, rtol=0)
    assert pytest.approx(1e-3 / 255**2) == REFINETTI_RIDGE
    ridged = GaussianSampler.fit(stats, ridge=REFINETTI_RIDGE)
    torch.testing.assert_close(ridged.cov, stats.cov + REFINETTI_RIDGE * torch.eye(64, dtype=F64), atol=1e-12, rtol=0)


# --- reproducibility and errors ------------------------------------------------------------------------
def test_reproducible_from_seed(digits) -> None:
    x, y, stats = digits
    labels = torch.arange(10).repeat(5)
    for sampler in (ExponentialMaxEnt.fit(stats), IndependentMarginals.fit(x, y), GaussianSampler.fit(stats)):
        a = sampler.sample(labels, generator=123)
        b = sampler.sample(labels, generator=torch.Generator().manual_seed(123))
        c = sampler.sample(labels, generator=124)
        assert torch.equal(a, b) and not torch.equal(a, c)
        assert sampler.order in (1, 2)


def test_bad_input_errors(digits) -> None:
    _, _, stats = digits
    sampler = ExponentialMaxEnt.fit(stats)
    with pytest.raises(ValueError, match=r"labels must lie in 0\.\.9"):
        sampler.sample(torch.tensor([10]))
    with pytest.raises(ValueError, match="1-D integer"):
        sampler.sample(torch.tensor([1.0]))
    shifted = ClassStats.fit(torch.rand(20, 3) + 1, torch.zeros(20, dtype=torch.long))
    with pytest.raises(ValueError, match="scaled to"):
        ExponentialMaxEnt.fit(shifted)


def test_hypercube_maxent2_matches_moments_inside_the_cube() -> None:
    """Belrose's order 2 on [0, 1]^d: valid pixels whose mean and covariance match the class's far
    better than the clamped Gaussian (which shrinks variance at the box edges)."""
    from dsb_widgets.maxent import GaussianSampler, hypercube_maxent2

    gen = torch.Generator().manual_seed(0)
    d, n = 10, 3000
    z = torch.randn(n, d, generator=gen) @ (torch.eye(d) + 0.4 * torch.randn(d, d, generator=gen)).T
    x = torch.sigmoid(1.5 * z - 1.0)  # pixels piled up near 0
    stats = ClassStats.fit(x, torch.zeros(n, dtype=torch.long), num_classes=1)
    lab = torch.zeros(300, dtype=torch.long)
    cube = hypercube_maxent2(stats, lab, generator=1, steps=150).double()
    assert cube.min() >= 0 and cube.max() <= 1
    clamped = GaussianSampler.fit(stats).sample(lab, 1, clamp=True).double()

    def errors(s: torch.Tensor) -> tuple[float, float]:
        me = float((s.mean(0) - stats.mean[0]).norm() / stats.mean[0].norm())
        ce = float((torch.cov(s.T) - stats.cov[0]).norm() / stats.cov[0].norm())
        return me, ce

    (m_cube, c_cube), (_, c_cl) = errors(cube), errors(clamped)
    assert m_cube < 0.01 and c_cube < 0.05
    assert c_cube < c_cl / 2
