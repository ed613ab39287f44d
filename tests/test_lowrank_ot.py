"""PPCA Gaussian OT: exact for PPCA covariances, equal to full OT at full rank, cheap eigensolver."""

from __future__ import annotations

import torch

from dsb_widgets.gaussian_ot import GaussianOT
from dsb_widgets.lowrank_ot import LowRankOT, top_eigh
from dsb_widgets.stats import ClassStats


def _data(d: int = 12, n: int = 3000, k: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    xs = [torch.randn(n, d, generator=gen, dtype=torch.float64) @ torch.randn(d, d, generator=gen, dtype=torch.float64)
          * 0.1 + c for c in range(k)]
    return torch.cat(xs), torch.arange(k).repeat_interleave(n)


def test_full_rank_equals_gaussian_ot() -> None:
    x, y = _data()
    stats = ClassStats(3).fit(x, y)
    lr = LowRankOT.fit(stats, rank=12)
    ref = GaussianOT.fit(stats, dtype=torch.float64)
    src = torch.tensor([0, 0, 1, 2, 2, 1])
    tgt = torch.tensor([1, 2, 0, 0, 1, 2])
    pts = x[[0, 5, 3001, 6001, 6002, 3002]]
    assert torch.allclose(lr.transport(pts, src, tgt), ref.transport(pts, src, tgt), atol=1e-8)


def test_maps_push_ppca_moments_onto_the_target() -> None:
    """For rank r < d the transported source class has the target's PPCA mean and covariance
    (population moments, exactly: T is affine)."""
    x, y = _data(d=16)
    stats = ClassStats(3).fit(x, y)
    lr = LowRankOT.fit(stats, rank=4)
    for p, q in ((0, 1), (2, 0)):
        v, a, ratio = lr.pair(p, q)
        lin = v @ a @ v.T + ratio * (torch.eye(16, dtype=torch.float64) - v @ v.T)  # T(x) = lin (x - mu_p) + mu_q
        pushed = lin @ lr.covariance(p) @ lin.T
        assert torch.allclose(pushed, lr.covariance(q), atol=1e-10)
        assert torch.allclose(lin, lin.T, atol=1e-10)  # an OT map is the gradient of a convex function
        assert torch.linalg.eigvalsh(lin).min() > 0
    # the PPCA covariance keeps the top-r spectrum and the trace
    ev = torch.linalg.eigvalsh(stats.cov[0]).flip(0)
    assert torch.allclose(torch.linalg.eigvalsh(lr.covariance(0)).flip(0)[:4], ev[:4], atol=1e-8)
    assert torch.allclose(torch.diagonal(lr.covariance(0)).sum(), ev.sum(), atol=1e-8)


def test_randomised_top_eigh_matches_full() -> None:
    gen = torch.Generator().manual_seed(0)
    d = 300
    u = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64)).Q
    lam = 1.0 / torch.arange(1, d + 1, dtype=torch.float64) ** 1.5  # image-like power-law spectrum
    cov = (u * lam) @ u.T
    ev, vec = top_eigh(cov, 20)
    assert torch.allclose(ev, lam[:20], rtol=1e-6)
    assert torch.allclose((vec.T @ u[:, :20]).abs().diagonal(), torch.ones(20, dtype=torch.float64), atol=1e-4)
