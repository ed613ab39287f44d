"""Parallel tempering for :func:`dsb_widgets.mh_sampler.metropolis_hastings` (replica exchange).

K temperatures beta_1 = 1 > beta_2 > ... > beta_K, each a group of B / K chains sampling
exp(-beta_k E); after each sweep neighbouring groups swap states with probability
min(1, exp((beta_k - beta_k+1)(E_i - E_j))) (Swendsen & Wang 1986; Geyer 1991), which leaves the
product of the K targets invariant, so the beta = 1 group samples the model's own target.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor


def temperature_ladder(betas: Sequence[float] | None, B: int, device: torch.device) -> Tensor | None:
    """betas (K,) on ``device``, checked (start at 1, strictly decreasing, > 0, K divides B); None: no tempering."""
    if betas is None:
        return None
    bt = torch.tensor([float(b) for b in betas], dtype=torch.float64)
    if bt.numel() < 1 or bt[0] != 1.0 or not bool((bt[1:] < bt[:-1]).all()) or not bool((bt > 0).all()):
        raise ValueError(f"betas must start at 1.0 and decrease, all > 0 (e.g. [1.0, 0.8, 0.6]); got {list(betas)}")
    if B % bt.numel():
        raise ValueError(f"{B} chains cannot be split into {bt.numel()} temperatures; pass a multiple of it")
    return bt.to(device)


def replica_swap(s: Tensor, E: Tensor, betas: Tensor, sweep: int, generator: torch.Generator | None,
          perm: Tensor | None = None) -> float:
    """Replica exchange in place between neighbouring temperatures: chain j of group k <-> chain j of
    group k+1 (k even on even sweeps, odd on odd ones), accepted with min(1, exp((b_k - b_k+1)(E_i - E_j))).
    ``perm`` (B,) is swapped alike. Returns the fraction of attempted swaps accepted (nan if none attempted)."""
    K, n = betas.shape[0], s.shape[0] // betas.shape[0]
    done, tried = 0, 0
    for k in range(sweep % 2, K - 1, 2):
        i = torch.arange(k * n, (k + 1) * n, device=s.device)
        j = i + n
        u = torch.rand(n, generator=generator, dtype=E.dtype, device=E.device)
        ok = torch.log(u) < (betas[k] - betas[k + 1]) * (E[i] - E[j])
        a, b = i[ok], j[ok]
        s[a], s[b] = s[b].clone(), s[a].clone()
        E[a], E[b] = E[b].clone(), E[a].clone()
        if perm is not None:
            perm[a], perm[b] = perm[b].clone(), perm[a].clone()
        done, tried = done + int(ok.sum()), tried + n
    return done / tried if tried else float("nan")
