"""The Gaussian-mixture clone (gaussian_mixture.py): k-means oracle, exact moments, span, skewness."""

from __future__ import annotations

import pytest
import torch

from dsb_widgets.data import load_images
from dsb_widgets.gaussian_mixture import GaussianMixtureSampler, kmeans


def _blobs(gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    centres = torch.tensor([[0.0, 0.0, 0.0], [10.0, 0.0, 0.0], [0.0, 10.0, 0.0], [0.0, 0.0, 10.0]])
    truth = torch.arange(4).repeat_interleave(torch.tensor([50, 80, 30, 40]))
    return centres[truth] + 0.3 * torch.randn(len(truth), 3, generator=gen), truth


def test_kmeans_recovers_separated_blobs_exactly() -> None:
    x, truth = _blobs(torch.Generator().manual_seed(0))
    assign = kmeans(x, 4, torch.Generator().manual_seed(1))
    # the same partition up to relabelling: each found cluster is exactly one true blob
    pairs = {(int(a), int(t)) for a, t in zip(assign, truth)}
    assert len(pairs) == 4 and len({a for a, _ in pairs}) == 4 and len({t for _, t in pairs}) == 4
    with pytest.raises(ValueError, match="1 <= k <= n"):
        kmeans(x[:3], 4, torch.Generator())


def test_mixture_keeps_class_mean_and_covariance_exactly() -> None:
    """Law of total covariance on the fitted parameters: sum_c w_c mu_c = mu_y and
    sum_c w_c (S_c + (mu_c - mu_y)(mu_c - mu_y)^T) = Sigma_y (ML), S_c = X_c^T X_c / n_c."""
    tr = load_images("digits", "train")
    mix = GaussianMixtureSampler.fit(tr.x, tr.y, k=6)
    for label in (0, 7):
        xr = tr.x.reshape(len(tr.x), -1)[tr.y == label].double()
        mu_y, sigma_y = xr.mean(0), torch.cov(xr.T, correction=0)
        first = int(mix.first[label])
        w = mix.weights[label, :6]
        assert float(w.sum()) == pytest.approx(1.0)
        mean = torch.zeros_like(mu_y)
        cov = torch.zeros_like(sigma_y)
        for c in range(6):
            lo, hi = int(mix.starts[first + c]), int(mix.starts[first + c + 1])
            xc = mix.members[lo:hi].double()  # centred members (n_c, d)
            assert torch.allclose(xc.mean(0), torch.zeros_like(mu_y), atol=1e-5)
            assert w[c] == pytest.approx((hi - lo) / len(xr))
            mu_c = mix.means[first + c]
            mean += w[c] * mu_c
            cov += w[c] * (xc.T @ xc / (hi - lo) + torch.outer(mu_c - mu_y, mu_c - mu_y))
        assert torch.allclose(mean, mu_y, atol=1e-10)
        assert torch.allclose(cov, sigma_y, atol=1e-6)


def test_samples_match_moments_and_stay_in_each_components_span() -> None:
    tr = load_images("digits", "train")
    mix = GaussianMixtureSampler.fit(tr.x, tr.y, k=4)
    y = torch.full((40_000,), 2)
    x = mix.sample(y, torch.Generator().manual_seed(0)).double()  # (B, 64)
    xr = tr.x.reshape(len(tr.x), -1)[tr.y == 2].double()
    assert torch.allclose(x.mean(0), xr.mean(0), atol=0.01)
    rel = (torch.cov(x.T) - torch.cov(xr.T, correction=0)).norm() / torch.cov(xr.T).norm()
    assert float(rel) < 0.03
    # one component: x - mu_c lies in the span of its centred members (rank n_c - 1 < d when n_c is small)
    first = int(mix.first[2])
    comp = mix.components(y[:2000], torch.Generator().manual_seed(0))
    draws = mix.sample(y[:2000], torch.Generator().manual_seed(0)).double()
    c = int(comp[0])
    lo, hi = int(mix.starts[c]), int(mix.starts[c + 1])
    basis = torch.linalg.qr(mix.members[lo:hi].double().T).Q  # (d, n_c)
    resid = draws[comp == c] - mix.means[c]
    assert float((resid - resid @ basis @ basis.T).abs().max()) < 1e-4
    assert first <= c < first + 4
    # same generator, same draws
    again = mix.sample(y[:2000], torch.Generator().manual_seed(0)).double()
    assert torch.equal(draws, again)


def test_more_components_keep_the_third_moments_one_gaussian_loses() -> None:
    """Skewness along a class's top principal directions: zero for one Gaussian (k = 1), close
    to the data's for a mixture (k = 16). Digits, class 3: data skewness up to -0.66."""
    tr = load_images("digits", "train")
    xr = tr.x.reshape(len(tr.x), -1)[tr.y == 3].double()
    mu = xr.mean(0)
    top = torch.linalg.eigh(torch.cov(xr.T)).eigenvectors[:, -4:]  # (d, 4)

    def skew(z: torch.Tensor) -> torch.Tensor:
        w = (z - mu) @ top
        return (w ** 3).mean(0) / (w ** 2).mean(0) ** 1.5

    data = skew(xr)
    y = torch.full((40_000,), 3)
    errs = {}
    for k in (1, 16):
        draws = GaussianMixtureSampler.fit(tr.x, tr.y, k=k).sample(y, torch.Generator().manual_seed(0)).double()
        errs[k] = float((skew(draws) - data).abs().max())
    assert float(data.abs().max()) > 0.5
    assert errs[1] > 0.5  # a Gaussian has no skewness
    assert errs[16] < 0.15 and errs[16] < errs[1] / 4


def test_duplicate_images_fewer_than_k_give_a_valid_mixture() -> None:
    """Fewer distinct images than k: k-means leaves a cluster empty (here: 3 copies of one image and
    1 other, k = 4). No NaN component, weights sum to 1, and every draw is one of the two images
    (a component of copies has no spread)."""
    a, b = torch.tensor([0.8936, 0.3435, 0.1249]), torch.tensor([0.8995, 0.6658, 0.4798])
    assert (torch.bincount(kmeans(torch.stack([a, b, a, a]), 4, torch.Generator().manual_seed(0)),
                           minlength=4) == 0).any()  # the case the fit must handle
    x = torch.cat([torch.stack([a, b, a, a]), torch.rand(4, 3, generator=torch.Generator().manual_seed(1))])
    y = torch.tensor([0] * 4 + [1] * 4)
    mix = GaussianMixtureSampler.fit(x, y, k=4)
    assert not torch.isnan(mix.means).any()
    assert float(mix.weights[0].sum()) == pytest.approx(1.0) and float(mix.weights[1].sum()) == pytest.approx(1.0)
    draws = mix.sample(torch.zeros(200, dtype=torch.long), torch.Generator().manual_seed(0))
    assert not torch.isnan(draws).any()
    near = (draws - a).abs().amax(1).lt(1e-6) | (draws - b).abs().amax(1).lt(1e-6)
    assert bool(near.all()) and 0 < int((draws - b).abs().amax(1).lt(1e-6).sum()) < 200


def test_a_class_without_images_is_a_clear_error() -> None:
    x = torch.rand(10, 4)
    y = torch.tensor([0] * 5 + [2] * 5)
    with pytest.raises(ValueError, match="class 1 has no training images"):
        GaussianMixtureSampler.fit(x, y, k=2)
