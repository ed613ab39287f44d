"""CQN: edited images have the target's per-pixel marginals (KS), the map is monotone per pixel,
and source == target is the identity."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import ks_2samp
from sklearn.datasets import load_digits

from dsb_widgets.data import ImageData
from dsb_widgets.quantile import QuantileNormalizer


def digits() -> tuple[torch.Tensor, torch.Tensor]:
    d = load_digits()
    return torch.tensor(d.images / 16.0, dtype=torch.float32)[:, None], torch.tensor(d.target)


def ks_per_coordinate(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Two-sample KS statistic sup_z |F_a(z) - F_b(z)| for every column; a (n1, d), b (n2, d)."""
    a_s = a.T.contiguous().sort(dim=1).values.double()  # (d, n1)
    b_s = b.T.contiguous().sort(dim=1).values.double()
    z = torch.cat([a_s, b_s], dim=1)  # (d, n1 + n2): the sup is attained at a data point
    fa = torch.searchsorted(a_s, z, side="right").double() / a_s.shape[1]
    fb = torch.searchsorted(b_s, z, side="right").double() / b_s.shape[1]
    return (fa - fb).abs().amax(dim=1)


def step_cqn(x: torch.Tensor, q_src: torch.Tensor, q_tgt: torch.Tensor) -> torch.Tensor:
    """The step-function design of concept-erasure's quantile tools, re-derived here as a
    comparison: right-continuous ECDF p = #{knots <= x} / m, inverse = knot at floor(p m)."""
    m = q_src.shape[-1]
    p = torch.searchsorted(q_src, x.T.contiguous(), side="right") / m  # (d, n)
    idx = torch.nextafter(p * m, torch.tensor(0.0, dtype=p.dtype)).long().clamp(0, m - 1)
    return q_tgt.gather(1, idx).T


def test_own_ks_matches_scipy() -> None:
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(50, 3, generator=g).round(decimals=1), torch.rand(70, 3, generator=g) ** 2
    ours = ks_per_coordinate(a, b)
    for k in range(3):
        assert ours[k].item() == pytest.approx(ks_2samp(a[:, k], b[:, k]).statistic, abs=1e-12)


def test_marginals_match_target_on_digits() -> None:
    x, y = digits()
    qn = QuantileNormalizer.fit(x, y, num_quantiles=256)
    ours, step, before = [], [], []
    for s in range(10):
        xs = x[y == s].reshape(-1, 64)
        for t in [(s + j) % 10 for j in (1, 4, 7)]:  # 30 ordered pairs
            xt = x[y == t].reshape(-1, 64)
            out = qn.transform(xs, s, t, generator=torch.Generator().manual_seed(s * 10 + t))
            ours.append(ks_per_coordinate(out, xt))
            step.append(ks_per_coordinate(step_cqn(xs, qn.tables[s], qn.tables[t]), xt))
            before.append(ks_per_coordinate(xs, xt))
    ks, ks_step, ks_before = torch.stack(ours), torch.stack(step), torch.stack(before)  # (30, 64)
    # ~180 images per class: the 0.1% two-sample KS critical value is 1.95 sqrt(2/180) = 0.21
    assert ks.max() < 0.21
    assert ks.mean() < 0.04  # measured 0.022
    assert ks_before.mean() > 0.25  # the classes do differ, so the test can fail
    assert ks_step.mean() > 3 * ks.mean()  # atoms collapse under the step design (measured 0.27)


def test_identity_when_source_is_target() -> None:
    x, y = digits()
    qn = QuantileNormalizer.fit(x, y, num_quantiles=64)
    for c in range(10):
        xs = x[y == c]
        torch.testing.assert_close(qn.transform(xs, c, c), xs, atol=1e-5, rtol=0)
        torch.testing.assert_close(qn.transform(xs, c, c, ties="mid"), xs, atol=1e-5, rtol=0)


@settings(max_examples=15, deadline=None)
@given(m=st.integers(2, 300), seed=st.integers(0, 2**31 - 1), ties=st.sampled_from(["random", "mid"]))
def test_monotone_per_pixel(m: int, seed: int, ties: str) -> None:
    g = torch.Generator().manual_seed(seed)
    n, d = 120, 5
    x = torch.rand(n, d, generator=g)
    x[: n // 3] = 0.0  # an atom, as with black background pixels
    x[:, 2] = (x[:, 2] * 4).round() / 4  # a coarsely quantized coordinate
    y = torch.randint(0, 2, (n,), generator=g)
    y[:2] = torch.tensor([0, 1])
    qn = QuantileNormalizer.fit(x, y, num_quantiles=m)
    grid = torch.linspace(-0.2, 1.2, 401)[:, None].expand(401, d)
    for s, t in [(0, 1), (1, 0)]:
        out = qn.transform(grid, s, t, ties=ties, generator=torch.Generator().manual_seed(seed))
        assert (out.diff(dim=0) >= -1e-6).all()
        assert (out >= qn.tables[t, :, 0] - 1e-6).all() and (out <= qn.tables[t, :, -1] + 1e-6).all()


def test_cdf_is_uniform_and_icdf_inverts() -> None:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(4000, 2, generator=g)  # continuous: no atoms
    y = torch.zeros(4000, dtype=torch.long)
    qn = QuantileNormalizer.fit(x, y, num_quantiles=512)
    p = qn.cdf(x, 0)
    assert ks_per_coordinate(p, torch.rand(4000, 2, generator=g)).max() < 0.04
    torch.testing.assert_close(qn.icdf(p, 0), x, atol=1e-4, rtol=0)  # float32 p, steep tails
    # the tables are the class quantiles
    np.testing.assert_allclose(qn.tables[0, 0].numpy(), np.quantile(x[:, 0].numpy(), np.linspace(0, 1, 512)), atol=1e-5)


def test_vectorised_labels_and_reproducible_ties() -> None:
    x, y = digits()
    qn = QuantileNormalizer.fit(x, y)
    tgt = (y[:40] + 3) % 10
    a = qn.transform(x[:40], y[:40], tgt, generator=torch.Generator().manual_seed(5))
    b = qn.transform(x[:40], y[:40], tgt, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    mid = qn.transform(x[:40], y[:40], tgt, ties="mid")
    for i in [0, 13]:
        one = qn.transform(x[i : i + 1], int(y[i]), int(tgt[i]), ties="mid")
        torch.testing.assert_close(mid[i : i + 1], one)
    with pytest.raises(RuntimeError, match="not fitted"):
        QuantileNormalizer().transform(x, 0, 1)
    with pytest.raises(ValueError, match="ties must be"):
        qn.transform(x[:2], 0, 1, ties="left")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="class 3 has no samples"):
        QuantileNormalizer.fit(x[:5], torch.tensor([0, 1, 2, 4, 4]))


def test_fashion_mnist_marginals_if_present(fashion_mnist_test: ImageData) -> None:
    data = fashion_mnist_test
    qn = QuantileNormalizer.fit(data.x, data.y, num_quantiles=256)
    xs, xt = data.flat()[data.y == 0], data.flat()[data.y == 9]
    ks = ks_per_coordinate(qn.transform(xs, 0, 9), xt)
    # 0.1% critical value for n = m = 1000: 1.95 sqrt(2/1000) = 0.087
    assert ks.max() < 0.087 and ks.mean() < 0.03
    assert ks_per_coordinate(xs, xt).mean() > 0.2
