"""The saturation criterion of ``dsb run clones`` (dsb_widgets/saturation.py) and the BERT's masked read-out.

Rende, Gerace, Laio, Goldt (NeurIPS 2024): a BERT's loss on low-order clones saturates while the
loss on higher-order ones keeps falling. "Saturates" here is a stated, noise-aware rule
(:func:`saturation_step`): the first checkpoint after which the half-octave running mean of the
loss never falls by more than k = 3 s.d. of a difference, the s.d. read off the curve's own
checkpoint-to-checkpoint jitter (:func:`curve_noise`). These tests pin it on curves whose answer is
known: an exponential approach to a floor plus white noise, and a power law that keeps falling.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st

from dsb_widgets.engine.schedule import log_checkpoints
from dsb_widgets.models.bert import IGNORE, Bert, BertConfig, mask_tokens
from dsb_widgets.saturation import (
    curve_noise,
    format_saturation,
    plateau_observed,
    saturation_step,
    smoothing_window,
)

STEPS = np.array(log_checkpoints(30_000, 8))  # 103 checkpoints, 8 per octave
T = np.maximum(STEPS, 1).astype(float)


def _plateau(tau: float, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """3 + 3 exp(-t / tau) + white noise: the remaining drop after t is 3 exp(-t / tau)."""
    return 3.0 + 3.0 * np.exp(-T / tau) + rng.normal(0.0, sigma, T.size)


def _power_law(sigma: float, rng: np.random.Generator) -> np.ndarray:
    """3 + 3 t^-0.3: still falls 0.031 nats in the last octave, 0.074 in the last two."""
    return 3.0 + 3.0 * T ** -0.3 + rng.normal(0.0, sigma, T.size)


def test_smoothing_window_is_half_an_octave() -> None:
    assert smoothing_window(STEPS) == 5
    assert smoothing_window(np.array(log_checkpoints(4096, 4))) == 3
    assert smoothing_window(np.array([0, 1, 2, 4, 8, 16, 32])) == 1


@pytest.mark.parametrize("sigma", [0.003, 0.03])
def test_curve_noise_recovers_the_jitter_of_a_falling_curve(sigma: float) -> None:
    """The median-of-second-differences estimate ignores the trend of a log-spaced curve."""
    rng = np.random.default_rng(0)
    est = [curve_noise(_power_law(sigma, rng)) for _ in range(40)]
    assert np.mean(est) == pytest.approx(sigma, rel=0.12)
    assert curve_noise(3.0 + 3.0 * T ** -0.3) < 2e-4  # no noise: the trend alone reads as ~0


@pytest.mark.parametrize("sigma", [0.003, 0.01, 0.03])
def test_saturation_step_is_where_the_remaining_drop_meets_the_noise(sigma: float) -> None:
    """The remaining drop after the saturation step is within a few noise s.d., and the curve had
    not flattened to far below the noise long before it (not called late)."""
    rng = np.random.default_rng(1)
    for _ in range(20):
        y = _plateau(1000.0, sigma, rng)
        s = saturation_step(STEPS, y)
        remaining = 3.0 * np.exp(-s / 1000.0)
        assert 0.05 * sigma < remaining < 5.0 * sigma
        assert plateau_observed(STEPS, s)


def test_a_curve_still_falling_by_three_noise_sd_per_octave_is_not_called_saturated() -> None:
    rng = np.random.default_rng(2)
    calls = [plateau_observed(STEPS, saturation_step(STEPS, _power_law(0.003, rng))) for _ in range(20)]
    assert not any(calls)


def test_faster_curves_saturate_first() -> None:
    """The DSB picture: a curve with a shorter time constant is called saturated earlier."""
    rng = np.random.default_rng(3)
    for _ in range(20):
        fast, slow = _plateau(300.0, 0.01, rng), _plateau(3000.0, 0.01, rng)
        assert saturation_step(STEPS, fast) < saturation_step(STEPS, slow)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), a=st.floats(1e-4, 0.1), b=st.floats(1e-4, 0.1))
def test_more_noise_never_delays_saturation(seed: int, a: float, b: float) -> None:
    """A larger noise s.d. only loosens every comparison: the step is monotone in ``noise``."""
    y = _plateau(1000.0, 0.01, np.random.default_rng(seed))
    lo, hi = sorted((a, b))
    assert saturation_step(STEPS, y, noise=hi) <= saturation_step(STEPS, y, noise=lo)


def test_format_saturation_names_plateau_and_still_falling_with_seeds() -> None:
    rng = np.random.default_rng(4)
    loss = np.stack([np.stack([_plateau(300.0, 0.01, rng), _power_law(0.003, rng)]) for _ in range(2)])
    ds = xr.Dataset({"loss": (("seed", "probe", "step"), loss)},
                    coords={"seed": [0, 1], "probe": ["3-body", "real"], "step": STEPS})
    three, real = format_saturation(ds).splitlines()[1:]
    assert "3-body" in three and "still falling" not in three
    assert "real" in real and "still falling at 30000" in real


def test_bert_features_then_head_is_the_forward_and_the_masked_loss() -> None:
    """Scoring only masked positions (head(features[sel])) gives the full-logit loss and gradients."""
    torch.manual_seed(0)
    model = Bert(BertConfig(50, 12, n_layer=2, n_head=2, d_model=16))
    x, y = mask_tokens(torch.randint(0, 50, (8, 12)), torch.Generator().manual_seed(0), 50)
    assert torch.equal(model(x), model.head(model.features(x)))
    full = F.cross_entropy(model(x).reshape(-1, 50), y.reshape(-1), ignore_index=IGNORE)
    g_full = torch.autograd.grad(full, list(model.parameters()))
    sel = y != IGNORE
    sparse = F.cross_entropy(model.head(model.features(x)[sel]), y[sel])
    g_sparse = torch.autograd.grad(sparse, list(model.parameters()))
    assert float(sparse) == pytest.approx(float(full), rel=1e-6)
    for a, b in zip(g_full, g_sparse):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
