"""ClassStats: streaming per-class moments equal the two-pass estimates; shrinkage is the oracle's."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.datasets import load_digits

from dsb_widgets.data import ImageData
from dsb_widgets.stats import ClassStats, linear_shrinkage


def digits() -> tuple[torch.Tensor, torch.Tensor]:
    d = load_digits()
    x = torch.tensor(d.images / 16.0, dtype=torch.float32)[:, None]  # (1797, 1, 8, 8)
    return x, torch.tensor(d.target, dtype=torch.int64)


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(3, 200),
    d=st.integers(1, 6),
    k=st.integers(1, 4),
    batch=st.integers(1, 64),
    seed=st.integers(0, 2**31 - 1),
)
def test_streaming_matches_two_pass(n: int, d: int, k: int, batch: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64) * 3 + 5  # offset stresses round-off
    y = torch.randint(0, k, (n,), generator=g)
    stats = ClassStats.fit(x, y, batch_size=batch, num_classes=k)
    assert stats.num_classes == k
    for c in range(k):
        xc = x[y == c]
        assert int(stats.counts[c]) == len(xc)
        if len(xc) == 0:
            continue
        torch.testing.assert_close(stats.mean[c], xc.mean(0), atol=1e-12, rtol=1e-12)
        if len(xc) >= 2:
            ref = torch.cov(xc.T).reshape(d, d)
            torch.testing.assert_close(stats._m2[c] / (len(xc) - 1), ref, atol=1e-10, rtol=1e-10)


def test_update_equals_fit_and_grows_classes() -> None:
    x, y = digits()
    whole = ClassStats.fit(x, y)
    # batches where early ones lack the high classes: the table must grow
    order = torch.argsort(y)
    parts = ClassStats()
    for idx in torch.split(order, 300):
        parts.update(x[idx], y[idx])
    assert parts.num_classes == whole.num_classes == 10
    assert parts.image_shape == (1, 8, 8)
    torch.testing.assert_close(parts.mean, whole.mean, atol=1e-12, rtol=0)
    torch.testing.assert_close(parts.cov, whole.cov, atol=1e-12, rtol=0)
    ref = np.cov(x[y == 3].reshape(-1, 64).double().numpy(), rowvar=False)
    np.testing.assert_allclose(whole.cov[3].numpy(), ref, atol=1e-12)
    assert whole.cov.dtype == torch.float64


def test_shrinkage_matches_concept_erasure_oracle() -> None:
    from concept_erasure.shrinkage import optimal_linear_shrinkage

    g = torch.Generator().manual_seed(0)
    d, n = 40, 25  # d > n: singular sample covariance
    x = torch.randn(n, d, generator=g, dtype=torch.float64) @ torch.randn(d, d, generator=g, dtype=torch.float64)
    s = torch.cov(x.T)
    ours = linear_shrinkage(s, n, "optimal")
    theirs = optimal_linear_shrinkage(s, n)
    torch.testing.assert_close(ours, theirs, atol=1e-10, rtol=1e-8)
    assert torch.linalg.eigvalsh(s)[0] < 1e-8 < torch.linalg.eigvalsh(ours)[0]  # now positive definite
    # a fixed weight is the convex combination with tr(S)/d I and keeps the trace
    half = linear_shrinkage(s, n, 0.5)
    torch.testing.assert_close(half, 0.5 * s + 0.5 * torch.eye(d, dtype=s.dtype) * s.trace() / d)
    torch.testing.assert_close(half.trace(), s.trace())


def test_covariance_options_and_errors() -> None:
    x, y = digits()
    stats = ClassStats.fit(x, y)
    assert torch.equal(stats.covariance(None), stats.cov)
    assert stats.covariance("optimal").shape == (10, 64, 64)
    with pytest.raises(ValueError, match="lie in"):
        stats.covariance(1.5)
    with pytest.raises(ValueError, match="integer class labels"):
        ClassStats.fit(x, y.float())
    with pytest.raises(RuntimeError, match=r"ClassStats.fit\(x, y\) or call update"):
        _ = ClassStats().cov
    lonely = ClassStats.fit(x[:12], torch.tensor([0] * 11 + [1]))
    with pytest.raises(ValueError, match=r"classes \[1\] have fewer than 2"):
        _ = lonely.cov


def test_to_device_roundtrip() -> None:
    x, y = digits()
    stats = ClassStats.fit(x, y)
    moved = stats.to("cpu")
    assert moved is not stats and torch.equal(moved.cov, stats.cov)
    if torch.cuda.is_available():
        gpu = ClassStats.fit(x, y, device="cuda")
        torch.testing.assert_close(gpu.cov.cpu(), stats.cov, atol=1e-12, rtol=0)


def test_fashion_mnist_moments_if_present(fashion_mnist_test: ImageData) -> None:
    data = fashion_mnist_test
    stats = ClassStats.fit(data.x, data.y)
    assert stats.num_classes == 10 and int(stats.counts.sum()) == len(data)
    xf = data.flat().double()
    torch.testing.assert_close(stats.mean[0], xf[data.y == 0].mean(0), atol=1e-10, rtol=0)
    evals = torch.linalg.eigvalsh(stats.cov)
    assert (evals > -1e-10).all()  # PSD up to round-off


def test_ks_per_coordinate_equals_scipy_two_sample_ks() -> None:
    from scipy.stats import ks_2samp

    from dsb_widgets.stats import ks_per_coordinate

    g = torch.Generator().manual_seed(0)
    a = torch.randn(300, 5, generator=g)
    b = torch.randn(200, 5, generator=g) * torch.tensor([1.0, 1.0, 2.0, 1.0, 1.0]) + torch.tensor([0, 0.5, 0, 0, 0])
    b[:, 4] = torch.round(b[:, 4])  # ties
    ours = ks_per_coordinate(a, b)
    ref = torch.tensor([ks_2samp(a[:, k].numpy(), b[:, k].numpy()).statistic for k in range(5)], dtype=torch.float64)
    torch.testing.assert_close(ours, ref, atol=1e-12, rtol=0)
    assert ours[1] > 0.15 and ours[2] > 0.1  # shifted / wider coordinates are detected


def test_fit_is_one_convention_everywhere() -> None:
    """``Class.fit(x, y, **settings)`` returns a NEW fitted instance and mutates nothing (concept-erasure's
    convention; streaming accumulation is ``update``). The instance spelling means the same."""
    from dsb_widgets.gaussian_ot import GaussianOT
    from dsb_widgets.maxent import ExponentialMaxEnt, GaussianSampler, IndependentMarginals
    from dsb_widgets.quantile import QuantileNormalizer

    for cls in (ClassStats, QuantileNormalizer, GaussianOT, GaussianSampler, ExponentialMaxEnt, IndependentMarginals):
        assert getattr(cls.fit, "__self__", None) is cls, f"{cls.__name__}.fit is not a classmethod-style fit"
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(60, 2, 3, generator=g), torch.arange(60) % 3
    empty = ClassStats(4)
    fitted = empty.fit(x, y)
    assert fitted is not empty and int(empty.counts.sum()) == 0 and empty.mean.numel() == 0  # not mutated
    ref = ClassStats.fit(x, y, num_classes=4)
    assert fitted.num_classes == ref.num_classes == 4 and torch.equal(fitted.mean, ref.mean)
    again = fitted.fit(x[:30], y[:30])  # refitting an instance starts afresh, leaving it untouched
    assert int(again.counts.sum()) == 30 and int(fitted.counts.sum()) == 60
    qn = QuantileNormalizer(8)
    q1, q2 = qn.fit(x, y), QuantileNormalizer.fit(x, y, num_quantiles=8)
    assert qn.tables is None and torch.equal(q1.tables, q2.tables) and q1.tables.shape == (3, 6, 8)
