"""Tests for dsb_widgets.taylor: the moment-order Taylor expansion of E[L] (Belrose et al. 2024).

Functions with known derivatives (quadratic, cubic, quartic) give analytic expectations; an
MLP with cross-entropy is checked against its full Hessian (torch.func.hessian) and against
Monte-Carlo expectations under N(mean, cov).
"""

from __future__ import annotations

import math
import time

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

from dsb_widgets.taylor import (
    CovFactor,
    class_taylor_expansion,
    class_taylor_terms,
    directional_derivatives,
    factor_covs,
    taylor_expansion,
    taylor_terms,
)

DT = torch.float64


def _spd(d: int, gen: torch.Generator, rank: int | None = None) -> Tensor:
    a = torch.randn(d, rank or d, generator=gen, dtype=DT)
    return a @ a.T / (rank or d)


def _quadratic(q: Tensor, b: Tensor, c: float):
    return lambda x: 0.5 * ((x @ q) * x).sum(1) + x @ b + c  # (B, d) -> (B,)


def _mlp(d: int, n_classes: int = 3, hidden: int = 16, seed: int = 0, gain: float = 1.0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Linear(d, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, n_classes)
    ).to(DT)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(gain)
    return model


def _ce_fn(model: torch.nn.Module, y: int):
    return lambda x: F.cross_entropy(model(x), torch.full((x.shape[0],), y), reduction="none")


# ---------------------------------------------------------------- quadratic: order 2 is exact
@pytest.mark.parametrize("method", ["exact", "topk", "hutchinson", "auto"])
def test_quadratic_prediction_equals_gaussian_expectation(method: str) -> None:
    gen = torch.Generator().manual_seed(1)
    d = 6
    q, b, mu, cov = _spd(d, gen) - 0.3 * torch.eye(d, dtype=DT), torch.randn(d, generator=gen, dtype=DT), torch.randn(d, generator=gen, dtype=DT), _spd(d, gen)  # noqa: E501
    loss = _quadratic(q, b, 0.7)
    truth = loss(mu[None])[0] + 0.5 * torch.trace(q @ cov)  # E under N(mu, cov), analytic
    res = taylor_expansion(loss, mu, cov, method=method, top_k=d if method == "topk" else None, n_samples=256)
    assert set(res.terms) == {0, 1, 2} and res.terms[1] == 0
    assert torch.allclose(sum(res.terms.values()), res.prediction)
    err = (res.prediction - truth).abs()
    if method == "hutchinson":
        assert res.stderr[2] > 0 and err < 4 * res.stderr[2]
    else:
        assert err < 1e-10 and res.stderr[2] == 0
    # and the analytic value is what a Monte-Carlo average gives
    x = torch.distributions.MultivariateNormal(mu, cov).sample((200_000,))
    vals = loss(x)
    assert (vals.mean() - truth).abs() < 4 * vals.std() / math.sqrt(len(vals))


@settings(max_examples=25, deadline=None)
@given(d=st.integers(1, 12), seed=st.integers(0, 10_000), rank_frac=st.floats(0.2, 1.0), k_frac=st.floats(0.0, 1.0))
def test_quadratic_random_spd_all_methods(d: int, seed: int, rank_frac: float, k_frac: float) -> None:
    gen = torch.Generator().manual_seed(seed)
    rank = max(1, round(rank_frac * d))  # rank-deficient covariances included
    q, b, mu, cov = _spd(d, gen), torch.randn(d, generator=gen, dtype=DT), torch.randn(d, generator=gen, dtype=DT), _spd(d, gen, rank)  # noqa: E501
    loss = _quadratic(q, b, -1.0)
    truth = loss(mu[None])[0] + 0.5 * torch.trace(q @ cov)
    exact = taylor_terms(loss, mu, cov, method="exact")
    assert abs(sum(exact.values()) - truth) < 1e-9 * (1 + truth.abs())
    k = round(k_frac * d)
    for method in ("topk", "hutchinson"):
        res = taylor_expansion(loss, mu, cov, method=method, top_k=k, n_samples=64, seed=seed)
        assert abs(res.prediction - truth) <= 5 * res.stderr[2] + 1e-9 * (1 + truth.abs())
        assert res.n_hvp <= (k if method == "topk" else 0) + 64


def test_hutchinson_is_unbiased_with_calibrated_stderr() -> None:
    """Over seeds: mean estimate = truth, and E[stderr^2] = Var(estimate) (calibrated error bars)."""
    gen = torch.Generator().manual_seed(3)
    d, n_seeds = 8, 100
    q, cov, mu = _spd(d, gen) - 0.5 * torch.eye(d, dtype=DT), _spd(d, gen), torch.zeros(d, dtype=DT)
    loss = _quadratic(q, torch.zeros(d, dtype=DT), 0.0)
    t2 = 0.5 * torch.trace(q @ cov)
    for dist in ("rademacher", "gaussian"):
        runs = [taylor_expansion(loss, mu, cov, method="hutchinson", n_samples=32, seed=s, distribution=dist) for s in range(n_seeds)]  # noqa: E501
        est = torch.stack([r.terms[2] for r in runs])  # (n_seeds,)
        se = torch.stack([r.stderr[2] for r in runs])
        assert (est.mean() - t2).abs() < 4 * est.std() / math.sqrt(n_seeds), dist  # unbiased
        assert 0.6 < (se**2).mean() / est.var() < 1.6, dist  # ~3 sigma band for 100 seeds
        assert ((est - t2).abs() > 4 * se).float().mean() < 0.03, dist
        assert len(set(est.tolist())) == n_seeds  # seeds really change the probes


def test_topk_deflation_reduces_error() -> None:
    """With a fast-decaying spectrum, deflating the top directions shrinks the Hutchinson error."""
    gen = torch.Generator().manual_seed(4)
    d = 40
    u, _ = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=DT))
    cov = u @ torch.diag(0.5 ** torch.arange(d, dtype=DT)) @ u.T
    q = _spd(d, gen)
    loss, mu = _quadratic(q, torch.zeros(d, dtype=DT), 0.0), torch.zeros(d, dtype=DT)
    hut = taylor_expansion(loss, mu, cov, method="hutchinson", n_samples=64)
    top = taylor_expansion(loss, mu, cov, method="topk", top_k=8, n_samples=64)
    assert top.stderr[2] < 0.05 * hut.stderr[2]
    auto = taylor_expansion(loss, mu, cov, method="topk", top_energy=0.999)
    assert auto.n_hvp == 10 + 128  # 1 - 2^-10 > 0.999 > 1 - 2^-9
    assert taylor_expansion(loss, mu, cov, exact_max_dim=d).method == "exact"
    assert taylor_expansion(loss, mu, cov, exact_max_dim=d - 1).method == "topk"


# ---------------------------------------------------------------- cubic: order 3 from samples
def _cubic_setup(d: int = 4):
    gen = torch.Generator().manual_seed(5)
    t = torch.randn(d, d, d, generator=gen, dtype=DT)
    t = sum(t.permute(*p) for p in [(0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0)]) / 6
    q, b = _spd(d, gen), torch.randn(d, generator=gen, dtype=DT)
    def loss(x: Tensor) -> Tensor:  # (B, d) -> (B,): 1/6 T[x, x, x] + 1/2 x^T Q x + b^T x
        txx = (x @ t.reshape(d, d * d)).reshape(-1, d, d)  # (B, d, d) = T[x, ., .]
        return (((txx @ x[:, :, None])[..., 0] / 6 + 0.5 * x @ q) * x).sum(1) + x @ b

    mu = 0.3 * torch.randn(d, generator=gen, dtype=DT)
    a = 0.5 * torch.randn(d, d, generator=gen, dtype=DT)  # x = mu + A (e - 1), e_l ~ Exp(1) iid

    def sample(n: int, g: torch.Generator) -> Tensor:
        e = -torch.log(torch.rand(n, d, generator=g, dtype=DT))
        return mu + (e - 1) @ a.T

    cov = a @ a.T
    m3 = 2 * torch.einsum("il,jl,kl->ijk", a, a, a)  # Exp(1) has third central moment 2
    h = q + torch.einsum("ijk,k->ij", t, mu)
    terms = {0: loss(mu[None])[0], 2: 0.5 * torch.trace(h @ cov), 3: (t * m3).sum() / 6}
    return loss, mu, cov, m3, sample, terms


def test_cubic_order3_from_samples_matches_analytic() -> None:
    loss, mu, cov, m3, sample, exact = _cubic_setup()
    gen = torch.Generator().manual_seed(0)
    res = taylor_expansion(loss, mu, cov, order=3, samples=sample(20_000, gen))
    assert abs(res.terms[3] - exact[3]) < 4 * res.stderr[3]
    assert abs(res.terms[3]) > 10 * res.stderr[3]  # a real, resolved skewness contribution
    assert res.n_higher == 20_000
    for k in (0, 2):
        assert torch.allclose(res.terms[k], exact[k], atol=1e-10)
    via_tensor = taylor_terms(loss, mu, cov, order=3, third_moment=m3)
    assert torch.allclose(via_tensor[3], exact[3], atol=1e-10)
    # Gaussian default: the third central moment vanishes
    assert taylor_terms(loss, mu, cov, order=3)[3] == 0


def test_cubic_order3_prediction_matches_monte_carlo_order2_does_not() -> None:
    loss, mu, cov, _, sample, _ = _cubic_setup()
    gen = torch.Generator().manual_seed(1)
    res = taylor_expansion(loss, mu, cov, order=3, samples=sample(20_000, gen))
    mc = loss(sample(400_000, gen))  # independent draws
    mc_mean, mc_se = mc.mean(), mc.std() / math.sqrt(len(mc))
    se = (mc_se**2 + res.prediction_stderr**2).sqrt()
    assert abs(res.prediction - mc_mean) < 4 * se
    assert abs(res.terms[0] + res.terms[2] - mc_mean) > 10 * se
    # with cov=None the order-2 term uses the covariance of the samples about mean
    from_samples = taylor_expansion(loss, mu, None, order=3, samples=sample(20_000, gen))
    assert abs(from_samples.prediction - mc_mean) < 0.05 * abs(res.terms[2] + res.terms[3])


def test_quartic_order4_gaussian_and_samples() -> None:
    """L = (w.x)^4 under N(mu, cov): E = s^4 + 6 s^2 s2 + 3 s2^2, s = w.mu, s2 = w^T cov w."""
    gen = torch.Generator().manual_seed(6)
    d = 5
    w, mu, cov = torch.randn(d, generator=gen, dtype=DT), 0.3 * torch.randn(d, generator=gen, dtype=DT), _spd(d, gen)
    loss = lambda x: (x @ w) ** 4  # noqa: E731
    s, s2 = w @ mu, w @ cov @ w
    res = taylor_expansion(loss, mu, cov, order=4, n_samples=4096)
    assert torch.allclose(res.terms[0], s**4) and torch.allclose(res.terms[2], 6 * s**2 * s2)
    assert res.terms[3] == 0 and res.stderr[4] > 0
    assert abs(res.terms[4] - 3 * s2**2) < 4 * res.stderr[4]
    x = torch.distributions.MultivariateNormal(mu, cov).sample((8192,))
    res_s = taylor_expansion(loss, mu, cov, order=4, samples=x)
    assert abs(res_s.terms[3]) < 4 * res_s.stderr[3]  # Gaussian samples: no skew
    assert abs(res_s.terms[4] - 3 * s2**2) < 4 * res_s.stderr[4]


# ---------------------------------------------------------------- MLP + cross-entropy
def test_mlp_exact_matches_full_hessian_and_estimators_agree() -> None:
    d = 10
    model = _mlp(d)
    gen = torch.Generator().manual_seed(7)
    mu, cov = torch.randn(d, generator=gen, dtype=DT), _spd(d, gen)
    loss = _ce_fn(model, 1)
    h = torch.func.hessian(lambda x: loss(x[None])[0])(mu)  # (d, d) oracle
    exact = taylor_expansion(loss, mu, cov, method="exact")
    assert torch.allclose(exact.terms[2], 0.5 * torch.trace(h @ cov), rtol=1e-10)
    assert exact.n_hvp == d
    v = torch.randn(7, d, generator=gen, dtype=DT)
    dd = directional_derivatives(loss, mu, v, 2, chunk_size=3)
    assert torch.allclose(dd, torch.einsum("bi,ij,bj->b", v, h, v), rtol=1e-10)
    for method in ("topk", "hutchinson"):
        est = taylor_expansion(loss, mu, cov, method=method, top_k=3, n_samples=256)
        assert est.stderr[2] > 0 and abs(est.terms[2] - exact.terms[2]) < 4 * est.stderr[2], method


def test_mlp_order2_prediction_matches_monte_carlo_for_small_cov() -> None:
    d = 8
    model = _mlp(d, hidden=32, seed=2, gain=2.0)
    gen = torch.Generator().manual_seed(8)
    mu, cov = torch.randn(d, generator=gen, dtype=DT), 0.1 * _spd(d, gen)
    loss = _ce_fn(model, 0)
    res = taylor_expansion(loss, mu, cov, order=4, n_samples=2048)
    torch.manual_seed(8)
    c = torch.distributions.MultivariateNormal(torch.zeros(d, dtype=DT), cov).sample((100_000,))
    with torch.no_grad():
        pairs = 0.5 * (loss(mu + c) + loss(mu - c))  # antithetic: odd terms cancel per pair
    mc, mc_se = pairs.mean(), pairs.std() / math.sqrt(len(pairs))
    gap0 = abs(mc - res.terms[0])  # what the covariance term must explain (measured 0.032)
    gap2 = abs(mc - res.terms[0] - res.terms[2])  # measured 0.0014
    assert gap0 > 50 * mc_se
    assert gap2 < 0.1 * gap0  # order 2 explains > 90% of E[L] - L(mu)
    assert gap2 > 4 * mc_se  # ... but not all of it: the remainder is the order-4 term
    assert abs(mc - res.prediction) < 4 * (mc_se**2 + res.prediction_stderr**2).sqrt()


def test_class_taylor_terms_rows_match_per_class_calls_and_cnn_shape() -> None:
    n_classes, shape = 3, (1, 4, 4)
    d = math.prod(shape)
    torch.manual_seed(9)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.Tanh(), torch.nn.Dropout(0.5),
        torch.nn.Flatten(), torch.nn.Linear(4 * d, n_classes),
    ).to(DT)  # fmt: skip
    model.train()
    gen = torch.Generator().manual_seed(9)
    means = torch.rand(n_classes, d, generator=gen, dtype=DT)
    covs = torch.stack([0.01 * _spd(d, gen) for _ in range(n_classes)])
    out = class_taylor_terms(model, means, covs, input_shape=shape, order=2, method="exact")
    assert out.shape == (n_classes, 3) and model.training  # train mode restored
    model.eval()
    for k in range(n_classes):
        loss = lambda x, k=k: F.cross_entropy(model(x.view(-1, *shape)), torch.full((x.shape[0],), k), reduction="none")  # noqa: E731
        ref = taylor_terms(loss, means[k], covs[k], method="exact")
        assert torch.allclose(out[k], torch.stack([ref[0], ref[1], ref[2]]), rtol=1e-10)
    factors = factor_covs(covs)  # reused eigendecompositions give the same answer
    again = class_taylor_terms(model, means, factors, labels=[0, 1, 2], input_shape=shape, method="exact")
    assert torch.allclose(again, out, rtol=1e-10)
    rich = class_taylor_expansion(model, means, factors, input_shape=shape, method="hutchinson", n_samples=8)
    assert [r.n_hvp for r in rich] == [8] * n_classes


def test_cov_factor_reuse_gives_identical_terms() -> None:
    d, gen = 6, torch.Generator().manual_seed(10)
    model, mu, cov = _mlp(d), torch.randn(d, generator=gen, dtype=DT), _spd(d, gen)
    loss = _ce_fn(model, 2)
    for method in ("exact", "hutchinson", "topk"):
        a = taylor_terms(loss, mu, cov, method=method, top_k=2)
        b = taylor_terms(loss, mu, CovFactor.from_cov(cov), method=method, top_k=2)
        assert all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------- bad input
def test_bad_inputs_raise_clear_errors() -> None:
    d, gen = 4, torch.Generator().manual_seed(11)
    mu, cov = torch.zeros(d, dtype=DT), _spd(d, gen)
    ok = _quadratic(torch.eye(d, dtype=DT), torch.zeros(d, dtype=DT), 0.0)
    with pytest.raises(ValueError, match="reduction='none'"):
        taylor_terms(lambda x: ok(x).mean(), mu, cov)
    with pytest.raises(ValueError, match="positive semi-definite"):
        taylor_terms(ok, mu, cov - 2 * cov.trace() * torch.eye(d, dtype=DT))
    with pytest.raises(ValueError, match="symmetric"):
        taylor_terms(ok, mu, cov + torch.triu(torch.ones(d, d, dtype=DT), 1))
    with pytest.raises(ValueError, match="order"):
        taylor_terms(ok, mu, cov, order=5)
    with pytest.raises(ValueError, match="flatten"):
        taylor_terms(ok, mu[None], cov)
    with pytest.raises(ValueError, match="dimension"):
        taylor_terms(ok, mu, cov[:3, :3])
    with pytest.raises(ValueError, match="needs cov"):
        taylor_terms(ok, mu)
    with pytest.raises(ValueError, match="method"):
        taylor_terms(ok, mu, cov, method="lanczos")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="samples="):
        big = torch.zeros(200, dtype=DT)
        taylor_terms(lambda x: (x**2).sum(1), big, torch.eye(200, dtype=DT), order=3, third_moment=big)
    with pytest.raises(ValueError, match="third_moment must have shape"):
        taylor_terms(ok, mu, cov, order=3, third_moment=torch.zeros(d, d, dtype=DT))
    with pytest.raises(ValueError, match="samples must have shape"):
        taylor_terms(ok, mu, cov, order=3, samples=torch.zeros(10, d + 1, dtype=DT))
    assert taylor_terms(ok, mu, order=0) == {0: ok(mu[None])[0]}


# ---------------------------------------------------------------- benchmark (pytest -m bench -s)
@pytest.mark.bench
def test_bench_cost_per_call() -> None:
    """Seconds per taylor_expansion call (order 2, float32, 1 thread); quoted in taylor.py."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    cnn = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Flatten(), torch.nn.Linear(32 * 8 * 8, 10),
    )  # fmt: skip
    cases = {
        "MLP 64-128-10, d=64": (torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10)), (64,)),  # noqa: E501
        "MLP 784-256-10, d=784": (torch.nn.Sequential(torch.nn.Linear(784, 256), torch.nn.ReLU(), torch.nn.Linear(256, 10)), (784,)),  # noqa: E501
        "CNN 3x32x32, d=3072": (cnn, (3, 32, 32)),
    }
    for name, (model, shape) in cases.items():
        d = math.prod(shape)
        u, _ = torch.linalg.qr(torch.randn(d, d))
        cov = (u * torch.exp(-torch.arange(d) / 20.0)) @ u.T  # image-like decaying spectrum
        t = time.perf_counter()
        factor = CovFactor.from_cov(cov)
        t_eig = time.perf_counter() - t
        loss = lambda x, m=model, s=shape: F.cross_entropy(m(x.view(-1, *s)), torch.zeros(x.shape[0], dtype=torch.long), reduction="none")  # noqa: E501, E731
        row = [f"{name}: eigh {t_eig:.3f}s"]
        for method in ("exact", "topk", "hutchinson"):
            t = time.perf_counter()
            res = taylor_expansion(loss, torch.rand(d), factor, method=method, n_samples=128)
            row.append(f"{method} {time.perf_counter() - t:.3f}s (n_hvp {res.n_hvp}, T2 {res.terms[2]:.4g} +- {res.stderr[2]:.2g})")  # noqa: E501
        print(" | ".join(row))
