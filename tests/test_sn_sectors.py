"""Tests for the S_n sector targets, the simplified block's kernel and the symmetry experiment
(Lavie, Gur-Ari & Ringel, ICML 2024): every target lies in the isotypic component it claims
(character projectors over all of S_4 / S_5), has unit variance, and the kernel is S_n
equivariant; the engine's MSE path; and (slow) a transformer learns the trivial sector first."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st

from dsb_widgets import sn_sectors as sn
from dsb_widgets.sn_kernel import block_kernel, kernel_regression_error, p_star, random_feature_kernel
from dsb_widgets.symmetry_bias import steps_to_fraction

IRREPS = ("trivial", "standard", "pair")


@pytest.mark.parametrize("n", [4, 5])
def test_characters_are_irreducible(n: int) -> None:
    """<chi, chi> = 1, <chi, chi'> = 0 over S_n and chi(identity) = dimension."""
    perms = [np.array(p) for p in itertools.permutations(range(n))]
    table = np.array([[sn.character(ir, p) for p in perms] for ir in IRREPS], dtype=float)
    gram = table @ table.T / len(perms)
    np.testing.assert_allclose(gram, np.eye(3), atol=1e-12)
    for ir, row in zip(IRREPS, table):
        assert row[0] == sn.irrep_dim(ir, n)  # perms[0] is the identity


@settings(max_examples=6, deadline=None)
@given(n=st.sampled_from([4, 5]), seed=st.integers(0, 10_000), feature=st.sampled_from(["linear", "hermite2"]))
def test_targets_lie_in_their_isotypic_component(n: int, seed: int, feature: str) -> None:
    """P_chi F = F for the claimed irrep and P F = 0 for the other two, pointwise (exact)."""
    t = sn.SectorTargets.make(n, 6, seed=seed, feature=feature)  # type: ignore[arg-type]
    x = sn.sample_contexts(20, n, 6, np.random.default_rng(seed + 1))
    frac = sn.sector_fractions(t, x)
    for k, sector in enumerate(t.sectors):
        for ir in IRREPS:
            expected = 1.0 if ir == sn.IRREP[sector] else 0.0
            assert frac[ir][k] == pytest.approx(expected, abs=1e-9), (sector, ir)


def test_pair_coefficients_structure() -> None:
    b = sn.pair_coefficients(7, np.random.default_rng(0))
    np.testing.assert_allclose(b, b.T, atol=1e-14)
    np.testing.assert_allclose(np.diag(b), 0.0, atol=1e-14)
    np.testing.assert_allclose(b.sum(1), 0.0, atol=1e-12)
    assert 2 * np.sum(b * b) == pytest.approx(1.0)
    a = sn.standard_coefficients(7, np.random.default_rng(0))
    assert a.sum() == pytest.approx(0.0, abs=1e-12) and a @ a == pytest.approx(1.0)
    with pytest.raises(ValueError, match="n >= 4"):
        sn.pair_coefficients(3, np.random.default_rng(0))


@pytest.mark.parametrize("feature", ["linear", "hermite2"])
def test_equal_unit_variance_and_uncorrelated(feature: str) -> None:
    """Exact variances are 1; Monte Carlo agrees within 4 standard errors; sectors uncorrelated."""
    t = sn.SectorTargets.make(8, 8, seed=3, feature=feature)  # type: ignore[arg-type]
    np.testing.assert_allclose(t.exact_variance(), 1.0, atol=1e-12)
    m = 100_000
    y = t(sn.sample_contexts(m, 8, 8, np.random.default_rng(0)))
    kurt = np.mean(y ** 4, axis=0)  # Var of the variance estimate ~ (E y^4 - 1) / m
    np.testing.assert_array_less(np.abs(y.var(axis=0) - 1.0), 4 * np.sqrt((kurt - 1.0) / m))
    corr = np.corrcoef(y.T) - np.eye(4)
    assert np.abs(corr).max() < 4 * np.sqrt(kurt.max() / m)


def test_sector_targets_do_not_depend_on_the_other_sectors() -> None:
    full = sn.SectorTargets.make(6, 8, seed=1)
    part = sn.SectorTargets.make(6, 8, sectors=("pair", "standard"), seed=1)
    x = sn.sample_contexts(5, 6, 8, np.random.default_rng(0))
    np.testing.assert_allclose(part(x), full(x)[:, [3, 1]])


def test_block_kernel_matches_random_features_and_is_equivariant() -> None:
    rng = np.random.default_rng(0)
    x, x2 = rng.standard_normal((5, 4, 6)), rng.standard_normal((4, 4, 6))
    k = block_kernel(x, x2, sigma_p=1.0)
    mc = random_feature_kernel(x, x2, sigma_p=1.0, width=100_000, seed=1)
    assert np.abs(k - mc).max() < 0.02 * np.abs(k).mean() + 0.01  # MC error ~ 1/sqrt(width)
    perm = np.array([2, 0, 3, 1])
    kp = block_kernel(sn.permute_positions(x, perm), sn.permute_positions(x2, perm), sigma_p=1.0)
    np.testing.assert_allclose(kp, k, rtol=1e-10)  # K(pi X, pi X') = K(X, X')
    k0 = block_kernel(sn.permute_positions(x, perm), x2, sigma_p=0.0)
    np.testing.assert_allclose(k0, block_kernel(x, x2, sigma_p=0.0), rtol=1e-10)  # no positions: symmetric
    assert not np.allclose(block_kernel(sn.permute_positions(x, perm), x2, sigma_p=1.0), k)


def test_kernel_regression_learns_trivial_with_fewer_samples() -> None:
    t = sn.SectorTargets.make(8, 8, sectors=("trivial", "standard"), seed=0)
    err = kernel_regression_error(t, train_size=64, test_size=256)
    assert err[0] < 0.05 < 0.2 < err[1]


def test_p_star_log_interpolation() -> None:
    err = xr.DataArray([[1.0, 0.8, 0.2, 0.1], [0.4, 0.3, 0.2, 0.1], [1.0, 1.0, 0.9, 0.8]],
                       dims=("probe", "train_size"), coords={"train_size": [10, 100, 1000, 10000]})
    ps = p_star(err, 0.5).values
    assert ps[0] == pytest.approx(10 ** 2.5)  # halfway between 0.8 and 0.2 at P=100..1000
    assert ps[1] == 10 and math.isnan(ps[2])


def test_steps_to_fraction() -> None:
    loss = np.array([[1.0, 2.0], [0.6, 1.5], [0.4, 1.2], [0.3, 0.9]])[:, :, None]
    ds = xr.Dataset({"loss": (("step", "probe", "seed"), loss)},
                    coords={"step": [0, 1, 4, 16], "probe": ["trivial", "standard"], "seed": [0]})
    out = steps_to_fraction(ds).sel(seed=0)
    assert float(out.sel(probe="trivial")) == 4.0 and float(out.sel(probe="standard")) == 16.0
    assert np.isnan(float(steps_to_fraction(ds, 0.1).sel(probe="trivial", seed=0)))


def test_mse_loss_masks_nan_targets() -> None:
    from dsb_widgets.engine.evaluate import score_mse, train_loss

    out = torch.tensor([[[1.0, 5.0], [2.0, 7.0]]])  # (S=1, B=2, K=2)
    y = torch.tensor([[0.0, float("nan")], [4.0, float("nan")]])
    total, _, count = score_mse(out, y)
    assert count == 2 and float(total[0]) == pytest.approx(1.0 + 4.0)
    assert float(train_loss(out, y[None], "mse")[0]) == pytest.approx(2.5)


def test_experiment_config_errors() -> None:
    from dsb_widgets.engine.task import ConfigError, RunConfig, resolve_config

    with pytest.raises(ConfigError, match="context >= 4"):
        resolve_config(RunConfig(experiment="symmetry", options={"context": 3}))
    cfg = resolve_config(RunConfig(experiment="symmetry", probes=("trivial", "standard"), options={"context": 3}))
    assert cfg.options["context"] == 3
    with pytest.raises(ConfigError, match="did you mean 'context'"):
        resolve_config(RunConfig(experiment="symmetry", options={"contxt": 8}))


def _small_run(model: str, steps: int) -> xr.Dataset:
    from dsb_widgets.engine.loop import train
    from dsb_widgets.engine.task import RunConfig

    cfg = RunConfig(experiment="symmetry", model=model, steps=steps, seeds=2, probe_size=256, per_octave=3,
                    probes=("trivial", "standard"), options={"context": 8, "d_model": 32, "n_layer": 1})
    return train(cfg).dataset


@pytest.mark.slow
def test_transformer_learns_trivial_sector_first() -> None:
    """Every seed: the trivial head halves its held-out loss before the standard head does."""
    torch.set_num_threads(1)
    ds = _small_run("transformer", 320)
    s = steps_to_fraction(ds)
    assert (ds["loss"].isel(step=0) > 0.5).all()
    triv, std = s.sel(probe="trivial").values, s.sel(probe="standard").values
    assert np.all(np.isfinite(triv)), triv
    assert np.all(~np.isfinite(std) | (triv < std)), (triv, std)


def test_scaling_exponent() -> None:
    from dsb_widgets.symmetry_bias import scaling_exponent

    n = np.array([4, 8, 16, 32])
    vals = xr.DataArray(np.stack([3.0 * n ** 1.5, 7.0 * n ** 0.0]), dims=("probe", "context"), coords={"context": n})
    np.testing.assert_allclose(scaling_exponent(vals).values, [1.5, 0.0], atol=1e-12)
