"""Is an MCMC energy trace stationary? Diagnostics for :mod:`dsb_widgets.mh_sampler` (and the
many-body ladder's heat-bath chains).

- :func:`split_rhat`: split-R-hat (Gelman et al., BDA3 eq. 11.4) over the 2B half-chains.
- :func:`autocorr_time`: multi-chain integrated autocorrelation time (BDA3 eq. 11.7), Sokal window.
- :func:`stationarity`: the criterion: split-R-hat of the last 2W sweeps < 1.05 AND the last two
  W-sweep window means within 2 standard errors.
- The window is adaptive: W = max(W_min, WINDOW_TAU * tau). For a stationary trace with
  autocorrelation time tau, E[split-R-hat] ~ (1 - (tau - 1) / W)^(-1/2), above 1.05 whenever
  W < ~11 (tau - 1): a fixed short window rejects any slowly mixing but stationary trace
  (tested on an AR(1) series in ``tests/test_mh_sampler.py``).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

__all__ = ["split_rhat", "autocorr_time", "stationarity", "WINDOW_TAU"]

WINDOW_TAU = 20.0  # adaptive stationarity window W = WINDOW_TAU * tau


def split_rhat(trace: Tensor) -> float:
    """Split-R-hat (Gelman et al. 2013, BDA3 eq. 11.4) of a (S, B) trace of B chains: each chain
    cut in two halves, between/within variance of the 2B half-chains. 1.0 = mixed."""
    S = trace.shape[0] // 2
    if S < 2:
        return float("nan")
    x = torch.cat([trace[:S], trace[S : 2 * S]], dim=1).double()  # (S, 2B)
    means, var = x.mean(0), x.var(0)
    W, Bv = var.mean(), S * means.var()
    vhat = (S - 1) / S * W + Bv / S
    return float(torch.sqrt(vhat / W.clamp_min(1e-300)))


def autocorr_time(trace: Tensor, c: float = 5.0) -> float:
    """Integrated autocorrelation time tau = 1 + 2 sum_{k>=1} rho_k (in sweeps) of a (S, B) trace.

    Multi-chain estimate (Gelman et al., BDA3 eq. 11.7; Vehtari et al. 2021): with W the mean
    within-chain variance, acov_k the chain-averaged lag-k autocovariance (FFT, each chain centred on
    its own mean) and var+ = (S-1)/S W + Var(chain means),

        rho_k = 1 - (W - acov_k) / var+,

    so chains sitting at different levels (between-chain variance) count as slow correlation rather
    than vanishing. Summed up to Sokal's self-consistent window, the smallest M with M >= c tau(M)
    (Sokal 1997). Var(mean of n sweeps) = sigma^2 tau / n; tau = 1 for independent sweeps."""
    S = trace.shape[0]
    if S < 4:
        return float("nan")
    x = trace.double()
    y = x - x.mean(0)
    f = torch.fft.rfft(y, n=2 * S, dim=0)
    acov = torch.fft.irfft(f * f.conj(), n=2 * S, dim=0)[:S].mean(1) / S  # (S,) biased autocovariance
    within = float(y.pow(2).sum(0).mean()) / (S - 1)
    var_plus = (S - 1) / S * within + (float(x.mean(0).var()) if x.shape[1] > 1 else 0.0)
    if var_plus <= 0:
        return 1.0  # a constant trace
    rho = (1.0 - (within - acov) / var_plus).tolist()
    tau = 1.0
    for k in range(1, S):
        tau += 2.0 * rho[k]
        if k >= c * tau:
            break
    return max(tau, 1e-3)


def stationarity(energies: Tensor, window: int, rhat_max: float = 1.05, z_max: float = 2.0) -> dict[str, Any]:
    """Is a per-chain energy trace (S, B) stationary over its last two windows of ``window`` sweeps?

    Criterion: split-R-hat of the last 2W sweeps < ``rhat_max`` AND |mean(last W) - mean(previous
    W)| < ``z_max`` standard errors (each window's s.e. from its B per-chain means)."""
    if energies.shape[0] < 2 * window:
        return {"stationary": False, "rhat": float("nan"), "drift": float("nan"), "drift_se": float("nan"),
                "window": window, "sweeps": int(energies.shape[0])}
    a, b = energies[-2 * window : -window].double(), energies[-window:].double()  # (W, B)
    B = energies.shape[1]
    se = math.sqrt(float(a.mean(0).var() + b.mean(0).var()) / B)
    drift = float(b.mean() - a.mean())
    rhat = split_rhat(energies[-2 * window :])
    ok = rhat < rhat_max and abs(drift) < z_max * se
    return {"stationary": bool(ok), "rhat": rhat, "drift": drift, "drift_se": se, "window": window,
            "sweeps": int(energies.shape[0]), "rhat_max": rhat_max, "z_max": z_max}


def _check_window(trace: Tensor, min_window: int, window_tau: float | None,
                  history: list[dict[str, float]]) -> dict[str, Any]:
    """:func:`stationarity` of the (S, B) trace over W = max(min_window, ceil(window_tau * tau)) (tau of
    the trace's second half; a fixed ``min_window`` when window_tau is None); appends to ``history``."""
    tau = autocorr_time(trace[trace.shape[0] // 2 :]) if window_tau is not None else float("nan")
    W = max(min_window, math.ceil(window_tau * tau)) if window_tau is not None and math.isfinite(tau) else min_window
    check = stationarity(trace, W)
    check.update(tau=tau, min_window=min_window, window_tau=window_tau)
    history.append({k: float(check[k]) for k in ("sweeps", "window", "tau", "rhat", "drift", "drift_se")})
    check["history"] = list(history)
    return check
