"""Parallel tempering: ladders, exchange bookkeeping, and exactness of the target with the new moves."""

from __future__ import annotations

import math

import pytest
import torch
from mh_cases import L, Q, pll_target, small_potts

from dsb_widgets.factored_attention import FactoredAttention, FactoredAttentionConfig, IncrementalConditionals
from dsb_widgets.mh_sampler import metropolis_hastings
from dsb_widgets.mh_tempering import Ladder, geometric_ladder

torch.set_num_threads(1)


def test_geometric_ladder() -> None:
    b = geometric_ladder(4, 0.125)
    assert b is not None and geometric_ladder(1, 0.3) is None
    torch.testing.assert_close(torch.tensor(b), torch.tensor([1.0, 0.5, 0.25, 0.125]))


def test_gaussian_energies_swap_at_erfc_half_z() -> None:
    """The rule's premise: energies N(mu(beta), sigma^2) with d mu / d beta = -sigma^2 swap between beta and
    beta - dbeta with mean acceptance erfc(z / 2), z = sigma dbeta (Monte Carlo, 400k pairs)."""
    g = torch.Generator().manual_seed(0)
    sigma, beta = 3.0, 0.8
    for dbeta in (0.1, 0.3, 0.6):
        cold = -sigma**2 * beta + sigma * torch.randn(400_000, generator=g, dtype=torch.float64)
        hot = -sigma**2 * (beta - dbeta) + sigma * torch.randn(400_000, generator=g, dtype=torch.float64)
        rate = float(torch.exp(dbeta * (cold - hot)).clamp(max=1.0).mean())
        assert rate == pytest.approx(math.erfc(sigma * dbeta / 2), abs=3e-3)


def _always_swap(ladder: Ladder, calls: int) -> list[list[int]]:
    """Run ``calls`` exchanges with equal energies (log swap ratio 0: every attempt accepted)."""
    B = ladder.K * ladder.n
    seen = []
    for _ in range(calls):
        s = torch.arange(B)[:, None]
        E = torch.zeros(B, dtype=torch.float64)
        perm = torch.arange(B)
        assert ladder.exchange(s, E, None, perm) == 1.0
        seen.append(ladder.label.tolist())
    return seen


def test_ladder_tracks_labels_and_counts_round_trips() -> None:
    """K = 3, one chain each, every attempted swap accepted: even/odd pairs alternate; replica 0 reaches
    the hot end after 2 exchanges and is back at the cold end after 5: one round trip."""
    ladder = Ladder(torch.tensor([1.0, 0.6, 0.3], dtype=torch.float64), 3)
    seen = _always_swap(ladder, 5)
    assert seen == [[1, 0, 2], [1, 2, 0], [2, 1, 0], [2, 0, 1], [0, 2, 1]]
    assert int(ladder.trips.sum()) == 1 and int(ladder.trips[0]) == 1
    assert ladder.counts.tolist() == [[3, 2], [3, 2]]  # pair 0 tried 3x, pair 1 2x, all accepted
    many = Ladder(torch.tensor([1.0, 0.6, 0.3], dtype=torch.float64), 3, rounds=5)
    _always_swap(many, 1)  # 5 rounds in one exchange: the same permutation as 5 calls of one round, but
    assert many.label.tolist() == [0, 2, 1] and int(many.trips.sum()) == 0  # rungs count only where a sweep runs


def _z_pairs(target: torch.Tensor, states: torch.Tensor, samples: torch.Tensor) -> float:
    """max |z| of the MH pair marginals against the enumerated ones (s.e. from independent chains)."""
    S, B, _ = samples.shape
    ex = torch.nn.functional.one_hot(states, Q).double()
    exact = torch.einsum("nia,njb,n->ijab", ex, ex, target.double())
    x = torch.nn.functional.one_hot(samples, Q).double()
    per_chain = torch.einsum("sbia,sbjc->bijac", x, x) / S
    z = (per_chain.mean(0) - exact).abs() / (per_chain.std(0) / B**0.5 + 1e-12)
    iu = torch.triu_indices(L, L, 1)
    return float(z[iu[0], iu[1]].max())


@pytest.mark.parametrize("fast", [False, True])
def test_swap_rounds_and_tempered_proposals_keep_the_target_exact(fast: bool) -> None:
    """Several exchange rounds per sweep and hot chains proposing from q^beta: the beta = 1 chains still
    sample exp(sum_t log p(s_t | s_-t)) exactly (enumerated), generic loop and fast path."""
    fn, states, target = pll_target(fast)
    res = metropolis_hastings(fn, torch.zeros(3 * 1500, L, dtype=torch.long), n_sweeps=30, burn_in=10,  # type: ignore[arg-type]
                              betas=[1.0, 0.5, 0.2], swap_rounds=4, tempered_proposals=True,
                              generator=torch.Generator().manual_seed(5))
    assert res.samples.shape == (20, 1500, L) and res.tempering is not None
    t = res.tempering
    assert len(t["swap_rate_per_pair"]) == 2 and min(t["swap_rate_per_pair"]) > 0.2 and t["round_trips"] > 0
    assert len(t["tau_per_temperature"]) == 3 and t["swap_rounds_per_sweep"] == 4
    assert _z_pairs(target, states, res.samples) < 4.5


def test_fast_path_equals_generic_with_tempered_proposals_and_rounds() -> None:
    torch.manual_seed(3)
    model = FactoredAttention(FactoredAttentionConfig(6, 5, n_layers=3, n_heads=2, d_embed=4, init_std=0.8,
                                                      branch_init=1.0)).double()
    inc = IncrementalConditionals(model)
    init = torch.randint(6, (24, 5), generator=torch.Generator().manual_seed(2))
    kw: dict = {"n_sweeps": 6, "betas": [1.0, 0.5, 0.25], "swap_rounds": 3, "tempered_proposals": True}
    fast = metropolis_hastings(inc, init, generator=torch.Generator().manual_seed(7), **kw)
    slow = metropolis_hastings(lambda x: inc(x), init, generator=torch.Generator().manual_seed(7), **kw)
    assert torch.equal(fast.samples, slow.samples) and torch.equal(fast.final, slow.final)
    assert fast.tempering is not None and slow.tempering is not None
    assert fast.tempering["swap_rate_per_pair"] == slow.tempering["swap_rate_per_pair"]


def test_bad_swap_rounds_raise() -> None:
    with pytest.raises(ValueError, match="swap rounds"):
        metropolis_hastings(small_potts().conditionals, torch.zeros(4, L, dtype=torch.long), n_sweeps=2,
                            betas=[1.0, 0.5], swap_rounds=0)
