"""Parallel tempering for :func:`dsb_widgets.mh_sampler.metropolis_hastings` (replica exchange).

K temperatures beta_1 = 1 > beta_2 > ... > beta_K, each a group of B / K chains sampling
exp(-beta_k E); after each sweep neighbouring groups swap states with probability
min(1, exp((beta_k - beta_k+1)(E_i - E_j))) (Swendsen & Wang 1986; Geyer 1991), which leaves the
product of the K targets invariant, so the beta = 1 group samples the model's own target.

``rounds`` exchange rounds per sweep (even pairs, then odd pairs, alternating) cost nothing next to a
sweep (no model evaluation); each round leaves the joint invariant, so any number of them is exact.

Diagnostics (:class:`Ladder`, Katzgraber et al. 2006; Earl & Deem 2005): swap acceptance per adjacent
pair, MH acceptance per temperature, and replica ROUND TRIPS: each state carries a label through the
exchanges; a round trip is a visit to the coldest rung, then the hottest, then the coldest again (a rung
counts where the state runs the next sweep, after all rounds of an exchange). Tempering
helps the beta = 1 chains only as fast as states make round trips (a cold state decorrelates by being
heated), so sweeps per round trip bound the target's autocorrelation time from below.

Measured (``benchmarks/clone_stationarity/README.md``, Tiny Shakespeare L = 1, 8 rungs): over beta 1 .. 0.3 the
swaps were fine (0.29-0.59 per pair) and the hot rungs mixed in 4-5 sweeps, but the cold rungs did not (tau
261 / 93 / 38 at beta 1 / 0.84 / 0.71), so round trips took 2,087 sweeps; 10 rounds per sweep or proposals
from q^beta left that at 1,422-1,548; beta 1 .. 0.5 cut it to 611 and the target's tau to 58, same cost.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
from torch import Tensor

from dsb_widgets.mh_stationarity import autocorr_time


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


def geometric_ladder(K: int, beta_min: float) -> list[float] | None:
    """beta_k = beta_min^(k / (K - 1)), k = 0 .. K-1 (1 .. beta_min; None for K = 1: plain MH)."""
    return None if K == 1 else [1.0] + [beta_min ** (k / (K - 1)) for k in range(1, K)]


def replica_swap(s: Tensor, E: Tensor, betas: Tensor, sweep: int, generator: torch.Generator | None,
                 perm: Tensor | None = None, counts: Tensor | None = None) -> float:
    """Replica exchange in place between neighbouring temperatures: chain j of group k <-> chain j of
    group k+1 (k even on even sweeps, odd on odd ones), accepted with min(1, exp((b_k - b_k+1)(E_i - E_j))).
    ``perm`` (B,) is swapped alike; ``counts`` (2, K - 1) += (accepted, attempted) per pair.
    Returns the fraction of attempted swaps accepted (nan if none attempted)."""
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
        if counts is not None:
            counts[0, k] += int(ok.sum())
            counts[1, k] += n
        done, tried = done + int(ok.sum()), tried + n
    return done / tried if tried else float("nan")


class Ladder:
    """Replica exchange with bookkeeping: ``exchange`` runs ``rounds`` rounds after a sweep and tracks
    each state's label (round trips); ``record`` keeps the energies of all K groups; ``summary`` reports."""

    def __init__(self, betas: Tensor, B: int, rounds: int = 1) -> None:
        if rounds < 1:
            raise ValueError(f"swap rounds per sweep must be >= 1, got {rounds}")
        self.betas, self.rounds = betas, rounds
        self.K, self.n = betas.shape[0], B // betas.shape[0]
        self.label = torch.arange(B, device=betas.device)  # which state (replica) each chain slot holds
        self.rung = torch.arange(B, device=betas.device) // self.n  # (B,) slot -> temperature index
        self.end = torch.where(self.rung == 0, 0, -1)  # per replica: last end of the ladder visited (0 cold, 1 hot)
        self.trips = torch.zeros(B, dtype=torch.long, device=betas.device)  # completed cold-hot-cold trips
        self.counts = torch.zeros(2, max(self.K - 1, 1), dtype=torch.long)  # (accepted, attempted) per pair
        self.accepted = torch.zeros(self.K, dtype=torch.float64)  # MH acceptances per temperature
        self.proposed = 0
        self.trace: list[Tensor] = []  # (B,) energies of every slot after each sweep
        self.calls = 0

    def exchange(self, s: Tensor, E: Tensor, generator: torch.Generator | None, perm: Tensor) -> float:
        """``rounds`` exchange rounds in place (s, E, perm as :func:`replica_swap`); returns their swap rate."""
        done = tried = 0.0
        for _ in range(self.rounds):
            before = self.counts.clone()
            replica_swap(s, E, self.betas, self.calls, generator, perm, self.counts)
            self.calls += 1
            d = self.counts - before
            done, tried = done + float(d[0].sum()), tried + float(d[1].sum())
        self.label = self.label[perm]
        rung_of = torch.empty_like(self.rung)
        rung_of[self.label] = self.rung  # replica -> its temperature index now
        hot, cold = rung_of == self.K - 1, rung_of == 0
        self.trips += (cold & (self.end == 1)).long()
        self.end = torch.where(cold, 0, torch.where(hot & (self.end == 0), 1, self.end))
        return done / tried if tried else float("nan")

    def record(self, E: Tensor, accepted: Tensor, T: int) -> None:
        """After a sweep: energies (B,) of every slot and MH acceptances (B,) out of T proposals each."""
        self.trace.append(E.detach().double().cpu())
        self.accepted += accepted.double().cpu().view(self.K, self.n).sum(1)
        self.proposed += self.n * T

    def summary(self) -> dict[str, Any]:
        """Per pair: swap acceptance; per temperature: beta, mean energy and tau (second half of the run),
        MH acceptance; round trips in all and sweeps per round trip (per replica)."""
        S = len(self.trace)
        tr = torch.stack(self.trace) if S else torch.zeros(0, self.K * self.n, dtype=torch.float64)
        half = tr[S // 2 :]
        groups = [half[:, k * self.n : (k + 1) * self.n] for k in range(self.K)]
        trips = int(self.trips.sum())
        c = self.counts.double()
        return {
            "betas": self.betas.tolist(), "swap_rounds_per_sweep": self.rounds,
            "swap_rate_per_pair": (c[0] / c[1].clamp_min(1)).tolist() if self.K > 1 else [],
            "mean_energy_per_temperature": [float(g.mean()) if g.numel() else math.nan for g in groups],
            "energy_sd_per_temperature": [float(g.std()) if g.numel() > 1 else math.nan for g in groups],
            "tau_per_temperature": [autocorr_time(g) for g in groups],
            "acceptance_per_temperature": (self.accepted / max(self.proposed, 1)).tolist(),
            "round_trips": trips,
            "sweeps_per_round_trip": S * self.K * self.n / trips if trips else None,
        }
