"""Gaussian OT: the map matches concept-erasure, is symmetric PSD, and moves the first two moments."""

from __future__ import annotations

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from sklearn.datasets import load_digits

import dsb_widgets.gaussian_ot as got
from dsb_widgets.data import ImageData
from dsb_widgets.gaussian_ot import GaussianOT, ot_matrix, psd_sqrt_rsqrt
from dsb_widgets.stats import ClassStats

F64 = torch.float64


def random_spd(d: int, g: torch.Generator, batch: tuple[int, ...] = (), ridge: float = 1e-2) -> torch.Tensor:
    a = torch.randn(*batch, d, d, generator=g, dtype=F64)
    return a @ a.mT / d + ridge * torch.eye(d, dtype=F64)


def digits() -> tuple[torch.Tensor, torch.Tensor]:
    d = load_digits()
    return torch.tensor(d.images / 16.0, dtype=torch.float32)[:, None], torch.tensor(d.target)


@settings(max_examples=20, deadline=None)
@given(d=st.integers(1, 24), seed=st.integers(0, 2**31 - 1))
def test_agrees_with_concept_erasure(d: int, seed: int) -> None:
    from concept_erasure.optimal_transport import ot_map

    g = torch.Generator().manual_seed(seed)
    sp, sq = random_spd(d, g, (3,)), random_spd(d, g, (3,))
    torch.testing.assert_close(ot_matrix(sp, sq), ot_map(sp, sq), atol=1e-5, rtol=0)


@settings(max_examples=20, deadline=None)
@given(d=st.integers(1, 16), seed=st.integers(0, 2**31 - 1))
def test_map_is_symmetric_psd_and_pushes_covariance(d: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    sp, sq = random_spd(d, g), random_spd(d, g)
    a = ot_matrix(sp, sq)
    torch.testing.assert_close(a, a.mT, atol=1e-12, rtol=0)
    assert torch.linalg.eigvalsh(a).min() > -1e-10
    torch.testing.assert_close(a @ sp @ a, sq, atol=1e-8, rtol=1e-8)  # A S_p A = S_q exactly
    torch.testing.assert_close(ot_matrix(sp, sp), torch.eye(d, dtype=F64), atol=1e-8, rtol=0)


def test_singular_source_uses_pseudo_inverse() -> None:
    g = torch.Generator().manual_seed(1)
    b = torch.randn(6, 3, generator=g, dtype=F64)
    sp = b @ b.T  # rank 3 of 6
    sq = random_spd(6, g)
    _, rsqrt = psd_sqrt_rsqrt(sp)
    assert torch.isfinite(rsqrt).all()
    a = ot_matrix(sp, sq)
    proj = sp @ torch.linalg.pinv(sp)  # projector on range(S_p)
    torch.testing.assert_close(a @ sp @ a, proj @ sq @ proj, atol=1e-8, rtol=1e-8)


@settings(max_examples=10, deadline=None)
@given(d=st.integers(2, 8), seed=st.integers(0, 2**31 - 1))
def test_transport_of_gaussian_samples_hits_target_moments(d: int, seed: int) -> None:
    """Empirical check within sampling error: n samples of N(mu_p, S_p) -> N(mu_q, S_q)."""
    g = torch.Generator().manual_seed(seed)
    n = 20_000
    cov = random_spd(d, g, (2,), ridge=0.1)
    mu = torch.randn(2, d, generator=g, dtype=F64)
    chol = torch.linalg.cholesky(cov)
    z = torch.randn(2, n, d, generator=g, dtype=F64)
    x = mu[:, None] + z @ chol.mT  # (2, n, d)
    stats = ClassStats.fit(x.reshape(2 * n, d), torch.arange(2).repeat_interleave(n))
    # fit on the population moments, transport fresh samples: the test is about the map
    ot = GaussianOT.from_moments(mu, cov)
    moved = ot.transport(x[0], 0, 1)  # (n, d)
    sd = cov[1].diagonal().sqrt()
    assert ((moved.mean(0) - mu[1]).abs() / sd).max() < 5 / n**0.5  # 5-sigma bound on the mean
    emp = torch.cov(moved.T)
    corr_err = (emp - cov[1]) / torch.outer(sd, sd)
    assert corr_err.abs().max() < 6 / n**0.5 * 2**0.5  # entrywise sd of a sample cov <= sqrt(2/n)
    assert stats.num_classes == 2


def test_fit_from_stats_on_digits_moves_class_moments() -> None:
    x, y = digits()
    stats = ClassStats.fit(x, y)
    ot = GaussianOT.fit(stats, dtype=F64)
    assert ot.maps.shape == (10, 10, 64, 64)
    # the maps solve A S_p A = P S_q P as accurately as concept-erasure's (relative residual)
    from concept_erasure.optimal_transport import ot_map

    for p, q in [(3, 5), (0, 1), (8, 2)]:
        sp, sq = stats.cov[p], stats.cov[q]
        proj = sp @ torch.linalg.pinv(sp, hermitian=True)
        ours, ref = ot.map(p, q), ot_map(sp, sq)
        res = [((a @ sp @ a - proj @ sq @ proj).norm() / sq.norm()).item() for a in (ours, ref)]
        assert res[0] < max(10 * res[1], 1e-11), res
        assert (ours - ref).norm() / ref.norm() < 1e-4  # ill-conditioned directions differ ~2e-5
    src, tgt = 3, 8
    xs = x[y == src].double()
    moved = ot.transport(xs, src, tgt)
    assert moved.shape == xs.shape
    flat = moved.reshape(len(xs), -1)
    # digits have pixels that are always 0 in class 3: those directions cannot be transported,
    # so compare on range(S_p) for the covariance, and everywhere for the mean
    torch.testing.assert_close(flat.mean(0), stats.mean[tgt], atol=1e-10, rtol=0)
    cov_s = stats.cov[src]
    proj = cov_s @ torch.linalg.pinv(cov_s, hermitian=True)
    torch.testing.assert_close(torch.cov(flat.T), proj @ stats.cov[tgt] @ proj, atol=1e-8, rtol=0)
    before = (torch.cov(xs.reshape(len(xs), -1).T) - stats.cov[tgt]).norm()
    after = (torch.cov(flat.T) - stats.cov[tgt]).norm()
    assert after < 0.5 * before
    # diagonal maps are projectors onto range(S_p): identity on the class's own images (to
    # ~sqrt(eps): the smallest kept eigenvalues of S_p are ~1e-14 lambda_max, so B = S_p^2 in
    # the eigenbasis resolves them only to sqrt(eps) relative; measured max error 2e-8)
    torch.testing.assert_close(ot.transport(xs, src, src), xs, atol=1e-7, rtol=0)


def test_vectorised_labels_t_and_clamp() -> None:
    x, y = digits()
    ot = GaussianOT.fit(ClassStats.fit(x, y))
    xs = x[:50]
    tgt = (y[:50] + 1) % 10
    batch = ot.transport(xs, y[:50], tgt)
    for i in [0, 7, 31]:
        single = ot.transport(xs[i : i + 1], int(y[i]), int(tgt[i]))
        torch.testing.assert_close(batch[i : i + 1], single, atol=1e-5, rtol=0)
    half = ot.transport(xs, y[:50], tgt, t=0.5)
    torch.testing.assert_close(half, 0.5 * xs + 0.5 * batch, atol=1e-5, rtol=0)
    clamped = ot.transport(xs, y[:50], tgt, clamp=True)
    assert clamped.min() >= 0 and clamped.max() <= 1 and batch.min() < 0  # clamping bites
    with pytest.raises(ValueError, match="labels must lie in"):
        ot.transport(xs, 0, 10)
    with pytest.raises(ValueError, match="features per sample"):
        ot.transport(torch.zeros(2, 10), 0, 1)


def test_fashion_mnist_transport_if_present(fashion_mnist_test: ImageData) -> None:
    data = fashion_mnist_test
    keep = data.y < 3  # three classes keep the test to a few seconds
    stats = ClassStats.fit(data.x[keep], data.y[keep])
    ot = GaussianOT.fit(stats, shrinkage="optimal", dtype=F64)
    xs = data.x[data.y == 0].double()
    flat = ot.transport(xs, 0, 2).reshape(len(xs), -1)
    torch.testing.assert_close(flat.mean(0), stats.mean[2], atol=1e-8, rtol=0)
    target = stats.covariance("optimal")[2]
    source = stats.covariance("optimal")[0]
    a = ot.map(0, 2).double()
    torch.testing.assert_close(a @ source @ a, target, atol=1e-6, rtol=0)



def test_float64_maps_match_target_covariance_where_a_float32_cut_does_not(fashion_mnist_test: ImageData) -> None:
    """Why the maps stay float64: Belrose et al. run concept-erasure on float32 statistics, whose
    pseudo-inverse cut (lambda_max * d * eps32) drops hundreds of Fashion-MNIST source directions
    (362 of 784 here), so edited images miss the target covariance (measured 0.070 relative
    Frobenius here, 0.254 on the full training split); ours match it to 0.006 (the residual is the
    shrinkage: the map targets the shrunk covariance)."""
    from concept_erasure.optimal_transport import ot_map

    data = fashion_mnist_test
    keep = data.y < 3
    stats = ClassStats.fit(data.x[keep], data.y[keep])
    cov = stats.covariance("optimal")
    xs = data.x[data.y == 0].double().flatten(1)
    ours = GaussianOT.fit(stats, shrinkage="optimal", dtype=F64).transport(xs, 0, 2)
    a32 = ot_map(cov[0].float(), cov[2].float())
    theirs = ((xs.float() - stats.mean[0].float()) @ a32.T + stats.mean[2].float()).double()

    def err(moved: torch.Tensor) -> float:
        return float((torch.cov(moved.T) - cov[2]).norm() / cov[2].norm())

    assert err(ours) < 0.02 < 0.04 < err(theirs), (err(ours), err(theirs))

@settings(max_examples=10, deadline=None)
@given(d=st.integers(1, 12), k=st.integers(2, 4), rank=st.integers(1, 12), seed=st.integers(0, 2**31 - 1))
@example(d=9, k=2, rank=9, seed=79)  # failures hypothesis found during development
@example(d=2, k=2, rank=1, seed=0)
@example(d=6, k=2, rank=1, seed=0)
def test_lazy_factored_maps_equal_direct_formula(d: int, k: int, rank: int, seed: int) -> None:
    """The cached W diag(h) W^T factorisation is the formula, including singular sources."""
    g = torch.Generator().manual_seed(seed)
    cov = random_spd(d, g, (k,))
    # class 0 possibly singular (pseudo-inverse branch): eigenvalues in [0.25, 4] or exactly null.
    # (A Gaussian b b^T can have condition ~1e9, where both formulas are right only to ~sqrt(eps)
    # and legitimately disagree on whether the smallest direction is null: hypothesis found one.)
    q_basis = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=F64))[0][:, : min(rank, d)]
    scale = 0.5 + 1.5 * torch.rand(min(rank, d), generator=g, dtype=F64)
    cov[0] = (q_basis * scale**2) @ q_basis.T
    mean = torch.randn(k, d, generator=g, dtype=F64)
    ot = GaussianOT.from_moments(mean, cov, dtype=F64)
    direct = ot_matrix(cov[:, None], cov[None, :])  # (K, K, d, d)
    eps = torch.finfo(F64).eps
    for p in range(k):
        for q in range(k):
            # well-conditioned pairs agree to ~1e-12. A rank-deficient class leaves round-off
            # eigenvalues ~eps ||M|| (M = S_p^1/2 S_q S_p^1/2) that the square root turns into
            # ~sqrt(eps ||M||), then S_p^-1/2 twice amplifies: hypothesis found 1.5e-6 relative
            # (d=6, rank=1, seed=0, singular *target*), above the old fixed 1e-6 bound
            lam_p, lam_q = torch.linalg.eigvalsh(cov[p]), torch.linalg.eigvalsh(cov[q])
            kept = lam_p[lam_p > lam_p[-1] * d * eps]
            sqrt_roundoff = (d * eps * float(lam_p[-1] * lam_q[-1])) ** 0.5 / float(kept.min())
            singular = rank < d and 0 in (p, q)
            tol = 1e-6 * float(direct[p, q].abs().max()) + (4 * sqrt_roundoff if singular else 0.0)
            torch.testing.assert_close(ot.map(p, q), direct[p, q], atol=tol, rtol=1e-6)
    x = torch.randn(30, d, generator=g, dtype=F64)
    src = torch.randint(0, k, (30,), generator=g)
    tgt = torch.randint(0, k, (30,), generator=g)
    want = torch.einsum("nij,nj->ni", direct[src, tgt], x - mean[src]) + mean[tgt]
    torch.testing.assert_close(ot.transport(x, src, tgt), want, atol=1e-6 * float(want.abs().max()), rtol=1e-6)


def test_cache_is_bounded_reused_and_chunking_does_not_change_results() -> None:
    g = torch.Generator().manual_seed(3)
    k, d = 5, 16
    cov, mean = random_spd(d, g, (k,)), torch.randn(k, d, generator=g, dtype=F64)
    pair_bytes = d * d * 8 + d * 8
    small = GaussianOT.from_moments(mean, cov, dtype=F64, cache_bytes=3 * pair_bytes)
    big = GaussianOT.from_moments(mean, cov, dtype=F64)
    x = torch.randn(200, d, generator=g, dtype=F64)
    src, tgt = torch.randint(0, k, (200,), generator=g), torch.randint(0, k, (200,), generator=g)
    torch.testing.assert_close(small.transport(x, src, tgt), big.transport(x, src, tgt), atol=1e-10, rtol=0)
    assert small.cache_info["bytes"] <= 3 * pair_bytes  # bounded: at most 3 of the 25 pairs kept
    assert big.cache_info["entries"] == k + len(torch.unique(src * k + tgt))  # class eighs + pairs
    before = big.cache_info["misses"]
    again = big.transport(x, src, tgt)
    assert big.cache_info["misses"] == before  # second call: every factor from the cache
    torch.testing.assert_close(again, big.transport(x, src, tgt), atol=0, rtol=0)


def test_maps_refuses_huge_tensors(monkeypatch: pytest.MonkeyPatch) -> None:
    x, y = digits()
    ot = GaussianOT.fit(ClassStats.fit(x, y))
    monkeypatch.setattr(got, "MAPS_LIMIT_BYTES", 1000)
    with pytest.raises(MemoryError, match="use map"):
        _ = ot.maps
    assert ot.map(1, 2).shape == (64, 64)


def test_shrunk_digits_maps_agree_with_concept_erasure() -> None:
    """Well-conditioned (shrunk) real covariances: every lazily factored map equals ot_map
    (measured max abs difference 7e-12 over all 90 pairs)."""
    from concept_erasure.optimal_transport import ot_map

    x, y = digits()
    ot = GaussianOT.fit(ClassStats.fit(x, y), shrinkage="optimal", dtype=F64)
    cov = ot.cov
    for p in range(10):
        for q in range(10):
            torch.testing.assert_close(ot.map(p, q), ot_map(cov[p], cov[q]), atol=1e-8, rtol=0)


# --- shrinkage chosen by the edit's held-out moment error (ot_shrinkage.py) -------------------------


def _known_gaussians(d: int, k: int, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """n samples per class of K Gaussians, spectra 1 ... 1e-9 (Fashion-MNIST's lambda_max / lambda_min
    is ~1e9) in random bases."""
    g = torch.Generator().manual_seed(seed)
    cov = torch.stack([(q * torch.logspace(0, -9, d, dtype=F64)) @ q.T
                       for q in (torch.linalg.qr(torch.randn(d, d, generator=g, dtype=F64))[0] for _ in range(k))])
    mu = torch.randn(k, d, generator=g, dtype=F64)
    x = torch.cat([mu[c] + torch.randn(n, d, generator=g, dtype=F64) @ torch.linalg.cholesky(cov[c]).mT
                   for c in range(k)])
    return x, torch.arange(k).repeat_interleave(n), cov


def test_fold_complement_and_fast_error_equal_direct_computation() -> None:
    """complement() = ClassStats of the other folds; edit_cov_errors' eigenbasis shortcut = the
    inner product of the covariances of held-out images actually transported by GaussianOT."""
    from dsb_widgets.ot_shrinkage import complement, edit_cov_errors, fold_ids
    from dsb_widgets.stats import linear_shrinkage

    x, y, _ = _known_gaussians(6, 3, 40, seed=3)
    stats = ClassStats.fit(x, y)
    fid = fold_ids(y, 3, 4)
    assert all(int(((fid == f) & (y == c)).sum()) == 10 for f in range(4) for c in range(3))  # balanced
    fit = fid >= 2
    counts, mean, cov = complement(stats, ClassStats.fit(x[~fit], y[~fit]))
    direct = ClassStats.fit(x[fit], y[fit])
    torch.testing.assert_close(counts, direct.counts.double())
    torch.testing.assert_close(mean, direct.mean, atol=1e-12, rtol=0)
    torch.testing.assert_close(cov, direct.cov, atol=1e-12, rtol=0)
    h1, h2 = fid == 0, fid == 1
    v1, v2 = ClassStats.fit(x[h1], y[h1]).cov, ClassStats.fit(x[h2], y[h2]).cov
    grid, pairs = (0.001, 0.1, 0.7), [(0, 1), (2, 0)]
    fast = edit_cov_errors(cov, v1, v2, pairs, grid)
    for i, w in enumerate(grid):
        ot = GaussianOT.from_moments(mean, linear_shrinkage(cov, counts, w))
        for j, (p, q) in enumerate(pairs):
            e1, e2 = (torch.cov(ot.transport(x[h & (y == p)], p, q).T) - v[q] for h, v in ((h1, v1), (h2, v2)))
            want = (e1 * e2).sum() / (v1[q] * v2[q]).sum()
            torch.testing.assert_close(fast[i, j], want, atol=1e-9, rtol=1e-9)


def test_heldout_weight_nearly_minimises_population_moment_error_on_known_gaussians() -> None:
    """On Gaussians with known covariances (d = 40, 1200 per class, 5 draws), the maps fitted with
    the selected weight move the *population* source covariance onto the target's nearly as well as
    the best grid weight picked with the true covariances (an oracle), and better than Bodnar et
    al.'s "optimal" weight. Measured mean relative error: 0.0905 vs oracle 0.0900, Bodnar 0.105
    (no shrinkage 0.089: a smooth Gaussian has no held-out variation in its near-null directions;
    Fashion-MNIST's pixels that are constant in a training class do, see ot_shrinkage.py)."""
    from dsb_widgets.ot_shrinkage import GRID, heldout_shrinkage
    from dsb_widgets.stats import linear_shrinkage

    chosen, oracle, bodnar = [], [], []
    for seed in range(5):
        x, y, cov = _known_gaussians(40, 3, 1200, seed)
        stats = ClassStats.fit(x, y)

        def pop_error(w: float | str, stats: ClassStats = stats, cov: torch.Tensor = cov) -> float:
            s = linear_shrinkage(stats.cov, stats.counts, w)  # type: ignore[arg-type]
            errs = [(ot_matrix(s[p], s[q]) @ cov[p] @ ot_matrix(s[p], s[q]) - cov[q]).norm() / cov[q].norm()
                    for p in range(3) for q in range(3) if p != q]
            return float(sum(errs)) / len(errs)

        choice = heldout_shrinkage(x, y, stats)
        assert choice.weight in GRID and len(choice.errors) == len(GRID)
        chosen.append(pop_error(choice.weight))
        oracle.append(min(pop_error(w) for w in GRID))
        bodnar.append(pop_error("optimal"))
    mean = [sum(v) / 5 for v in (chosen, oracle, bodnar)]
    assert mean[0] < 1.05 * mean[1], mean
    assert mean[0] < 0.95 * mean[2], mean


def test_selected_weight_maps_push_shrunk_moments_exactly() -> None:
    """Whatever weight is selected, the OT map is exact for the shrunk class moments it was built
    from: A S_p(w) A = S_q(w), and transported source samples keep the target mean."""
    from dsb_widgets.ot_shrinkage import heldout_shrinkage

    x, y = digits()
    stats = ClassStats.fit(x, y)
    w = heldout_shrinkage(x, y, stats).weight
    assert 0 < w <= 1
    ot = GaussianOT.fit(stats, shrinkage=w, dtype=F64)
    cov = stats.covariance(w)
    for p, q in [(3, 5), (0, 1), (8, 2)]:
        a = ot.map(p, q)
        torch.testing.assert_close(a @ cov[p] @ a, cov[q], atol=1e-10, rtol=0)
        torch.testing.assert_close(ot.transport(x[y == p], p, q).double().flatten(1).mean(0), stats.mean[q],
                                   atol=1e-6, rtol=0)
