"""Reading the symmetry experiment's results: steps to halve the loss, P* per sector and n.

Lavie, Gur-Ari & Ringel (ICML 2024) predict that the trivial (S_n-symmetric) sector is learned
with fewer samples than the others and that learnability follows a scaling law in the context
length n (abstract-level claims; see :mod:`dsb_widgets.engine.symmetry` for our design). Two
read-outs of the engine's Dataset (step, probe, seed[, context, train_size]):

- :func:`steps_to_fraction`: the first checkpoint at which a probe's held-out loss is at most
  ``fraction`` (default 1/2) of its step-0 value, per seed (NaN if never);
- :func:`sweep_p_star`: from a merged ``dsb sweep`` over ``options.context`` and
  ``options.train_size``, the final-step relative error (held-out MSE over the target variance,
  1) per cell, and P*, the training-set size where it first reaches ``threshold``
  (:func:`dsb_widgets.sn_kernel.p_star`, log-interpolated).
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from dsb_widgets.sn_kernel import p_star


def steps_to_fraction(ds: xr.Dataset, fraction: float = 0.5) -> xr.DataArray:
    """First step with loss <= fraction * loss(step 0), dims (probe, seed, ...); NaN if never."""
    loss = ds["loss"]
    rel = loss / loss.isel(step=0)
    hit = rel <= fraction
    steps = xr.DataArray(np.asarray(ds["step"].values, dtype=float), dims=("step",))
    first = hit.argmax("step")
    out = steps.isel(step=first).where(hit.any("step"))
    return out.drop_vars("step", errors="ignore").rename("steps_to_fraction")


def final_error(ds: xr.Dataset) -> xr.DataArray:
    """Held-out MSE at each run's last finished checkpoint (targets have unit variance)."""
    loss = ds["loss"]
    last = loss.notnull().cumsum("step").argmax("step")  # index of the last finite value
    return loss.isel(step=last).drop_vars("step", errors="ignore").rename("final_error")


def sweep_p_star(ds: xr.Dataset, threshold: float = 0.5) -> xr.DataArray:
    """P* per (probe, seed, context) from a sweep with a ``train_size`` dim."""
    if "train_size" not in ds.dims:
        raise ValueError("the sweep has no train_size axis; sweep options.train_size (examples/sweep_symmetry.yaml)")
    return p_star(final_error(ds), threshold, dim="train_size").rename("p_star")


def scaling_exponent(values: xr.DataArray, dim: str = "context") -> xr.DataArray:
    """Least-squares slope of log(values) against log(dim) (e.g. P* ~ n^slope), NaNs dropped."""
    def slope(v: np.ndarray, xs: np.ndarray) -> float:
        ok = np.isfinite(v) & (v > 0)
        if ok.sum() < 2:
            return float("nan")
        return float(np.polyfit(np.log(xs[ok]), np.log(v[ok]), 1)[0])

    xs = np.asarray(values[dim].values, dtype=float)
    return xr.apply_ufunc(slope, values, input_core_dims=[[dim]], kwargs={"xs": xs}, vectorize=True)
