"""The order-3 sampler matches mean, covariance and top-k third moments, and not order 4."""

from __future__ import annotations

import torch

from dsb_widgets.maxent3 import ThirdOrderSampler, fit_quadratic, quadratic_moments, third_moments
from dsb_widgets.stats import ClassStats


def _skewed_data(n: int = 40_000, d: int = 6, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Two classes of correlated vectors mixing skewed (gamma) and heavy-tailed symmetric (Laplace,
    kurtosis 6) sources."""
    gen = torch.Generator().manual_seed(seed)
    xs, ys = [], []
    torch.manual_seed(seed)
    for c, shape in enumerate((2.0, 4.0)):
        gamma = torch.distributions.Gamma(torch.full((d // 2,), shape), torch.ones(d // 2))
        g = (gamma.sample((n,)) - shape) / shape**0.5
        lap = torch.distributions.Laplace(torch.zeros(d - d // 2), torch.full((d - d // 2,), 2**-0.5)).sample((n,))
        mix = torch.eye(d) + 0.3 * torch.randn(d, d, generator=gen)
        xs.append(torch.cat([g, lap], 1) @ mix.T * 0.1 + 0.2 * c)
        ys.append(torch.full((n,), c))
    return torch.cat(xs).double(), torch.cat(ys)


def test_quadratic_moments_match_monte_carlo() -> None:
    """Isserlis formulas for Cov and E[zzz] of z = B g + C:(g g^T - I) vs a large sample."""
    gen = torch.Generator().manual_seed(1)
    k = 3
    b = torch.eye(k, dtype=torch.float64) + 0.2 * torch.randn(k, k, generator=gen, dtype=torch.float64)
    c = 0.15 * torch.randn(k, k, k, generator=gen, dtype=torch.float64)
    c = (c + c.mT) / 2
    cov, m3 = quadratic_moments(b, c)
    g = torch.randn(400_000, k, generator=gen, dtype=torch.float64)
    z = g @ b.T + torch.einsum("ijl,nj,nl->ni", c, g, g) - torch.einsum("ijj->i", c)
    assert torch.allclose(z.T @ z / len(z), cov, atol=0.02)
    assert torch.allclose(third_moments(z), m3, atol=0.05)


def test_fit_quadratic_reaches_target_moments() -> None:
    x, y = _skewed_data()
    xc = x[y == 0]
    w = (xc - xc.mean(0)) @ torch.linalg.inv(torch.linalg.cholesky(torch.cov(xc.T))).T
    target = third_moments(w)
    b, c, err = fit_quadratic(target)
    cov, m3 = quadratic_moments(b, c)
    assert err < 1e-4
    assert torch.allclose(cov, torch.eye(6, dtype=torch.float64), atol=1e-3)
    assert torch.allclose(m3, target, atol=1e-3)


def _whiten(s: ThirdOrderSampler, cl: int, x: torch.Tensor) -> torch.Tensor:
    top = s.basis[cl][:, : s.k] / s.scale[cl][: s.k]
    return (x - s.mean[cl]) @ top


def test_sampler_matches_orders_1_to_3_not_4() -> None:
    """Sample moments of the probe agree with the data's within ~5 standard errors for orders
    1-3 (mean, covariance, third moments in the top-k subspace); the fourth moments differ."""
    x, y = _skewed_data()
    stats = ClassStats.fit(x, y, num_classes=2)
    s = ThirdOrderSampler.fit(stats, x, y, k=4)
    assert float(s.fit_error.max()) < 1e-3
    n = 200_000
    lab = torch.zeros(n, dtype=torch.long)
    xs = s.sample(lab, generator=3).double()
    xr = x[y == 0]
    # order 1 and 2 (all d coordinates, complement included)
    sd = stats.cov[0].diagonal().sqrt()
    assert ((xs.mean(0) - stats.mean[0]).abs() / (sd / n**0.5)).max() < 5
    cov_s = torch.cov(xs.T)
    assert torch.allclose(cov_s, stats.cov[0], atol=5 * float(stats.cov[0].abs().max()) / n**0.5 * 3)
    # order 3 in the top-k subspace, against the standard error of each product
    ws, wr = _whiten(s, 0, xs), _whiten(s, 0, xr)
    prod = torch.einsum("ni,nm,nl->niml", ws, ws, ws)
    se = prod.std(0) / n**0.5
    z3 = (prod.mean(0) - third_moments(wr)).abs() / se
    assert z3.max() < 6, float(z3.max())
    # the target really is skewed (the test would be vacuous for Gaussian data)
    assert third_moments(wr).abs().max() > 0.3
    # order 4: the fourth moments of the samples are not the data's
    m4s, m4r = (ws**4).mean(0), (wr**4).mean(0)
    se4 = (ws**4).std(0) / n**0.5 + (wr**4).std(0) / len(wr) ** 0.5
    assert ((m4s - m4r).abs() / se4).max() > 6  # measured 8.6 standard errors


def test_complement_is_gaussian_and_labels_checked() -> None:
    x, y = _skewed_data(n=5000)
    s = ThirdOrderSampler.fit(ClassStats.fit(x, y, num_classes=2), x, y, k=2)
    assert s.k == 2 and s.order == 3
    a = s.sample(torch.tensor([0, 1, 1]), generator=0)
    b = s.sample(torch.tensor([0, 1, 1]), generator=0)
    assert torch.equal(a, b) and a.shape == (3, 6)
    try:
        s.sample(torch.tensor([2]))
    except ValueError as err:
        assert "0..1" in str(err)
    else:
        raise AssertionError("label 2 accepted")
