"""Metropolis-Hastings on an MLM's conditionals: exact targets checked by enumeration."""

from __future__ import annotations

import time

import pytest
import torch
from mh_cases import L, Q, pll_target, small_potts

from dsb_widgets.factored_attention import FactoredAttention, FactoredAttentionConfig, IncrementalConditionals
from dsb_widgets.incremental import SiteChains
from dsb_widgets.mh_sampler import (
    WINDOW_TAU,
    SiteUpdates,
    autocorr_time,
    masked_conditionals,
    metropolis_hastings,
    pll_energy,
    split_rhat,
    stationarity,
)
from dsb_widgets.potts import PottsModel, enumerate_states, exact_distribution

torch.set_num_threads(1)


def pair_marginals(states: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """(N, L) states with weights (N,) or (N, K) -> P(s_i=a, s_j=b) (L, L, Q, Q[, K])."""
    x = torch.nn.functional.one_hot(states, Q).double()  # (N, L, Q)
    return torch.einsum("nia,njb,n...->ijab...", x, x, weights.double())


def check_against(target_p: torch.Tensor, states: torch.Tensor, samples: torch.Tensor, z_max: float) -> float:
    """Compare MH pair marginals with exact ones; standard errors from independent chains
    (each chain's average over kept sweeps is one independent draw). Returns max |z|."""
    S, B, T = samples.shape
    exact = pair_marginals(states, target_p)  # (L, L, Q, Q)
    x = torch.nn.functional.one_hot(samples, Q).double()  # (S, B, L, Q)
    per_chain = torch.einsum("sbia,sbjc->bijac", x, x) / S  # (B, L, L, Q, Q)
    emp = per_chain.mean(0)
    se = per_chain.std(0) / B**0.5 + 1e-12
    iu = torch.triu_indices(L, L, 1)
    z = ((emp - exact).abs() / se)[iu[0], iu[1]]  # only i < j: 10 * 9 comparisons
    assert z.max() < z_max, f"max |z| = {z.max():.2f}"
    return float(z.max())


def run(potts: PottsModel, energy: object, order: str = "random", seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    init = torch.zeros(1500, L, dtype=torch.long)  # a deliberately bad start: burn-in must fix it
    res = metropolis_hastings(
        potts.conditionals, init, n_sweeps=30, burn_in=10, order=order, energy=energy, generator=g
    )
    assert res.samples.shape == (20, 1500, L) and 0.2 < res.acceptance_rate <= 1.0
    return res.samples


@pytest.mark.parametrize("order", ["random", "sequential"])
def test_pll_energy_targets_exp_sum_log_conditionals(order: str) -> None:
    """(a) energy='pll' samples exactly pi(s) ∝ exp(sum_i log p(s_i|s_-i)), enumerated."""
    potts = small_potts()
    states, target = exact_distribution(pll_energy(potts.conditionals), L, Q)
    check_against(target, states, run(potts, "pll", order), z_max=4.5)


def test_potts_energy_recovers_potts_marginals() -> None:
    """(b) energy=H (the Potts energy) with Potts conditionals as proposals targets the Potts
    joint itself; proposals from the exact conditionals are then Gibbs moves (always accepted)."""
    potts = small_potts()
    states, target = exact_distribution(potts.energy, L, Q)
    samples = run(potts, potts.energy)
    check_against(target, states, samples, z_max=4.5)


def test_scores_energy_targets_raw_logit_sum() -> None:
    """energy='scores' targets exp(sum_i logit_i(s_i)); for Potts local fields that is a Potts
    model with J doubled, not the Potts joint."""
    potts = small_potts(seed=1, scale=0.5)
    states, target = exact_distribution(
        lambda s: -potts.local_fields(s).gather(-1, s[..., None]).squeeze(-1).sum(-1), L, Q
    )
    g = torch.Generator().manual_seed(1)
    res = metropolis_hastings(
        potts.local_fields, torch.zeros(1500, L, dtype=torch.long),
        n_sweeps=30, burn_in=10, energy="scores", generator=g,
    )
    check_against(target, states, res.samples, z_max=4.5)


def test_the_targets_differ_so_the_tests_discriminate() -> None:
    """PLL target vs Potts joint differ by far more than the sampling error: test (a) would fail
    against the Potts marginals, proving it can fail."""
    potts = small_potts()
    states, p_pll = exact_distribution(pll_energy(potts.conditionals), L, Q)
    _, p_potts = exact_distribution(potts.energy, L, Q)
    assert 0.5 * (p_pll - p_potts).abs().sum() > 0.1
    with pytest.raises(AssertionError, match="max \\|z\\|"):
        check_against(p_potts, states, run(potts, "pll"), z_max=4.5)


def test_exact_gibbs_proposals_always_accepted_and_callback_streams() -> None:
    potts = small_potts()
    seen: list[dict[str, float]] = []
    res = metropolis_hastings(
        potts.conditionals, torch.zeros(64, L, dtype=torch.long), n_sweeps=4, burn_in=1, thin=2,
        energy=potts.energy, generator=torch.Generator().manual_seed(0), on_sweep=seen.append,
    )
    assert res.acceptance_rate > 0.999  # MH with exact-conditional proposals = Gibbs
    assert len(seen) == 4 and seen == list(res.stats) and res.samples.shape == (1, 64, L)
    assert [r["burn_in"] for r in seen] == [1.0, 0.0, 0.0, 0.0]
    assert all(r["tokens_per_second"] > 0 and 0 <= r["change_rate"] <= r["acceptance_rate"] for r in seen)


def test_masked_conditionals_wrapper() -> None:
    """Wrapping masks s_t for row t: for a one-layer factored model (zero mask embedding, masked
    diagonal) it equals the direct forward; for two layers it removes the i -> j -> i leak."""
    torch.manual_seed(0)
    s = torch.randint(4, (6, 7), generator=torch.Generator().manual_seed(1))
    one = FactoredAttention(FactoredAttentionConfig(vocab_size=4, seq_len=7)).double()
    wrapped = masked_conditionals(one, one.cfg.mask_id, chunk=5)
    with torch.no_grad():
        torch.testing.assert_close(wrapped(s), one(s))
        two = FactoredAttention(FactoredAttentionConfig(vocab_size=4, seq_len=7, n_layers=2)).double()
        got = torch.log_softmax(masked_conditionals(two, two.cfg.mask_id, chunk=5)(s), -1)
        torch.testing.assert_close(got, two.conditionals(s))


def test_runs_on_a_two_layer_factored_model() -> None:
    torch.manual_seed(0)
    model = FactoredAttention(FactoredAttentionConfig(vocab_size=5, seq_len=6, n_layers=2, init_std=0.5))
    init = torch.randint(5, (8, 6), generator=torch.Generator().manual_seed(0))
    res = metropolis_hastings(model.conditionals, init, n_sweeps=3, generator=torch.Generator().manual_seed(0))
    assert res.final.shape == (8, 6) and 0 < res.acceptance_rate <= 1 and res.final.max() < 5


@pytest.mark.parametrize("n_layers, branch", [(1, 1.0), (2, 1.0), (3, 0.4)])
def test_incremental_factored_chains_target_the_pll_joint(n_layers: int, branch: float) -> None:
    """Batched chains on the fast path sample exactly pi(s) ∝ exp(sum_t log p(s_t|s_-t)) of a factored
    model (enumerated). (L = 3 with branch 1.0 puts 69% of the mass on one state: too peaked to mix.)"""
    torch.manual_seed(n_layers)
    model = FactoredAttention(FactoredAttentionConfig(vocab_size=Q, seq_len=L, n_layers=n_layers, n_heads=2,
                                                      d_embed=4, init_std=0.8, branch_init=branch)).double()
    inc = IncrementalConditionals(model)
    states, target = exact_distribution(pll_energy(inc), L, Q)
    res = metropolis_hastings(inc, torch.zeros(1500, L, dtype=torch.long), n_sweeps=30, burn_in=10,
                              generator=torch.Generator().manual_seed(3))
    check_against(target, states, res.samples, z_max=4.5)


@pytest.mark.parametrize("fast", [False, True])
def test_tempering_keeps_the_target_exact(fast: bool) -> None:
    """Parallel tempering (3 temperatures, replica exchange every sweep): the beta = 1 chains still
    sample pi(s) ∝ exp(sum_t log p(s_t|s_-t)) exactly (enumerated), on the generic loop (Potts
    conditionals) and on the fast path (2-layer factored model); the exchanges do happen."""
    fn, states, target = pll_target(fast)
    res = metropolis_hastings(fn, torch.zeros(3 * 1500, L, dtype=torch.long), n_sweeps=30, burn_in=10,  # type: ignore[arg-type]
                              betas=[1.0, 0.6, 0.3], generator=torch.Generator().manual_seed(4))
    assert res.samples.shape == (20, 1500, L) and res.final.shape == (1500, L)
    assert res.energies is not None and res.energies.shape == (31, 1500)
    assert min(r["swap_rate"] for r in res.stats) > 0.2
    check_against(target, states, res.samples, z_max=4.5)


def brute_pll_energy(model: FactoredAttention, s: torch.Tensor) -> torch.Tensor:
    """-sum_p log p(s_p | s_-p), each chain and site on its own hand-masked copy through model.forward."""
    E = torch.zeros(s.shape[0], dtype=torch.float64)
    for b in range(s.shape[0]):
        for p in range(s.shape[1]):
            x = s[b].clone()
            x[p] = model.cfg.mask_id
            E[b] -= torch.log_softmax(model(x[None])[0, p], -1)[s[b, p]]
    return E


VARIANTS = [{}, {"residual": False}, {"attention": "softmax", "d_embed": None, "readout": False}]
if "square_width" in FactoredAttentionConfig.__dataclass_fields__:  # wider squared features (h U)^2
    VARIANTS.append({"square_width": 7})


def tiny_model(n_layers: int, **kw: object) -> FactoredAttention:
    torch.manual_seed(n_layers)
    kw = {"d_embed": 4, **kw}
    cfg = FactoredAttentionConfig(6, 5, n_layers=n_layers, n_heads=2, init_std=0.8, branch_init=1.0, **kw)  # type: ignore[arg-type]
    return FactoredAttention(cfg).double()


@pytest.mark.parametrize("variant", range(len(VARIANTS)))
@pytest.mark.parametrize("n_layers", [1, 2, 3, 4])
def test_site_chains_energies_and_acceptance_equal_brute_force(n_layers: int, variant: int) -> None:
    """The fast path's energies (start, every candidate, after accepting some), proposal
    conditionals and MH log-ratios equal a per-chain recomputation by masking by hand (1e-5)."""
    model = tiny_model(n_layers, **VARIANTS[variant])
    g = torch.Generator().manual_seed(0)
    s = torch.randint(6, (7, 5), generator=g)
    with torch.no_grad():
        chains = SiteChains(model, s, "pll", chunk=3)  # chunks of 3: a ragged last block
        torch.testing.assert_close(chains.energy, brute_pll_energy(model, s), rtol=1e-5, atol=1e-5)
        for t in (2, 0, 4, 2, 1):
            logq = torch.log_softmax(chains.logits_at(t), -1)
            torch.testing.assert_close(logq, model.conditionals(chains.tokens)[:, t], rtol=1e-5, atol=1e-5)
            new = torch.randint(6, (7,), generator=g)
            cur, prop = chains.tokens.clone(), chains.tokens.clone()
            prop[:, t] = new
            E_new = chains.try_site(t, new)
            E_cur, E_prop = brute_pll_energy(model, cur), brute_pll_energy(model, prop)
            torch.testing.assert_close(E_new, E_prop, rtol=1e-5, atol=1e-5)
            rows = torch.arange(7)
            fast = chains.energy - E_new + logq[rows, cur[:, t]] - logq[rows, new]
            ref_q = torch.log_softmax(model(torch.where(torch.arange(5) == t, model.cfg.mask_id, cur)), -1)[:, t]
            brute = E_cur - E_prop + ref_q[rows, cur[:, t]] - ref_q[rows, new]
            torch.testing.assert_close(fast, brute, rtol=1e-5, atol=1e-5)
            chains.accept(torch.rand(7, generator=g) < 0.5)
        torch.testing.assert_close(chains.energy, brute_pll_energy(model, chains.tokens), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("n_layers", [1, 2, 3, 4])
def test_fast_path_reproduces_the_generic_chains(n_layers: int) -> None:
    """Same seed, same draws: the batched fast path (SiteChains) and the generic recompute-everything
    loop produce the same chains, energies and acceptance, for both energies it supports."""
    model = tiny_model(n_layers)
    inc = IncrementalConditionals(model)
    assert isinstance(inc, SiteUpdates)
    init = torch.randint(6, (20, 5), generator=torch.Generator().manual_seed(1))
    for energy in ("pll", "scores"):
        fast = metropolis_hastings(inc, init, n_sweeps=3, energy=energy, generator=torch.Generator().manual_seed(5))
        slow = metropolis_hastings(lambda x: inc(x), init, n_sweeps=3, energy=energy,
                                   generator=torch.Generator().manual_seed(5))
        assert torch.equal(fast.samples, slow.samples) and fast.acceptance_rate == slow.acceptance_rate
        assert [r["acceptance_rate"] for r in fast.stats] == [r["acceptance_rate"] for r in slow.stats]
        assert fast.energies is not None and slow.energies is not None
        torch.testing.assert_close(fast.energies, slow.energies, rtol=1e-9, atol=1e-9)
        assert 0.2 < fast.acceptance_rate < 1.0  # the test exercises both accepts and rejects


def test_depth_one_fast_path_samples_the_potts_boltzmann_distribution() -> None:
    """One one-hot factored layer IS a Potts model: logit_i(a) = f_i(a) + sum_j sum_h A^h_ij V^h[s_j, a].
    With energy="scores" the fast path targets exp(sum_i logit_i(s_i)), the Boltzmann distribution of
    H(s) = -sum_i f_i(s_i) - sum_{i != j} J_ij(s_i, s_j), J_ij(a, b) = sum_h A^h_ij V^h[b, a]; that
    distribution is enumerated here from the parameters (not through the model's code)."""
    torch.manual_seed(0)
    model = FactoredAttention(FactoredAttentionConfig(Q, L, n_heads=2, readout=False, init_std=0.6)).double()
    with torch.no_grad():
        model.fields.normal_(0, 0.5)  # type: ignore[union-attr]
        A, V = model.layers[0].attention(), model.layers[0].V  # (H, L, L), (H, Q, Q)
        J = torch.einsum("hij,hba->ijab", A, V)  # J_ij(a, b): site i colour a, site j colour b
        states = enumerate_states(L, Q)
        x = torch.nn.functional.one_hot(states, Q).double()
        H_s = -torch.einsum("nia,ia->n", x, model.fields) - torch.einsum("nia,njb,ijab->n", x, x, J)
        target = torch.softmax(-H_s, 0)
        res = metropolis_hastings(IncrementalConditionals(model), torch.zeros(1500, L, dtype=torch.long),
                                  n_sweeps=30, burn_in=10, energy="scores", generator=torch.Generator().manual_seed(2))
    check_against(target, states, res.samples, z_max=4.5)
    _, p_pll = exact_distribution(pll_energy(IncrementalConditionals(model)), L, Q)
    assert 0.5 * (p_pll - target).abs().sum() > 0.05  # the pll target differs: the test discriminates


def test_site_chains_rejects_other_energies() -> None:
    with pytest.raises(ValueError, match="pll' or 'scores"):
        SiteChains(tiny_model(1), torch.zeros(2, 5, dtype=torch.long), "logits")


def test_split_rhat_and_stationarity_detect_drift() -> None:
    g = torch.Generator().manual_seed(0)
    iid = torch.randn(40, 64, generator=g, dtype=torch.float64)
    assert abs(split_rhat(iid) - 1.0) < 0.03
    offsets = torch.randn(1, 64, generator=g, dtype=torch.float64) * 3  # chains that never mixed
    assert split_rhat(iid + offsets) > 1.5
    drifting = iid + torch.linspace(3, 0, 40, dtype=torch.float64)[:, None]  # energy still falling
    assert stationarity(iid, 10)["stationary"] and not stationarity(drifting, 10)["stationary"]
    assert not stationarity(iid[:15], 10)["stationary"]  # too short to judge


def ar1(phi: float, S: int, B: int, seed: int) -> torch.Tensor:
    """(S, B) stationary AR(1) chains x_k = phi x_(k-1) + sqrt(1 - phi^2) e_k: tau = (1 + phi) / (1 - phi)."""
    g = torch.Generator().manual_seed(seed)
    e = torch.randn(S, B, generator=g, dtype=torch.float64) * (1 - phi**2) ** 0.5
    x = torch.empty(S, B, dtype=torch.float64)
    x[0] = torch.randn(B, generator=g, dtype=torch.float64)  # started in equilibrium
    for k in range(1, S):
        x[k] = phi * x[k - 1] + e[k]
    return x


@pytest.mark.parametrize("phi", [0.0, 0.5, 0.9])
def test_autocorr_time_of_ar1(phi: float) -> None:
    tau = autocorr_time(ar1(phi, 2000, 64, 0))
    assert abs(tau - (1 + phi) / (1 - phi)) < 0.1 * (1 + phi) / (1 - phi)


def test_fixed_short_window_rejects_a_stationary_correlated_chain_adaptive_one_does_not() -> None:
    """The cause of 'never stationary' at W = 10: a perfectly stationary trace with tau = 19 sweeps
    (AR(1), phi = 0.9) fails split-R-hat < 1.05 over 2 x 10 sweeps (E[R-hat] ~ (1 - (tau-1)/W)^-1/2),
    while W = 20 tau passes with the SAME thresholds; a drifting trace still fails the adaptive check."""
    x = ar1(0.9, 1000, 128, 1)
    fixed = stationarity(x, 10)
    assert not fixed["stationary"] and fixed["rhat"] > 1.2
    W = round(WINDOW_TAU * autocorr_time(x[500:]))
    assert 250 < W < 450 and stationarity(x, W)["stationary"]  # tau on 500 sweeps: biased ~20% low
    drifting = x + torch.linspace(2.0, 0.0, 1000, dtype=torch.float64)[:, None]  # relaxing by 2 sigma
    assert not stationarity(drifting, W)["stationary"]
    res = metropolis_hastings(small_potts().conditionals, torch.zeros(64, L, dtype=torch.long), n_sweeps=60,
                              energy=small_potts().energy, generator=torch.Generator().manual_seed(0),
                              until_stationary=10, window_tau=WINDOW_TAU)
    st = res.stationarity
    assert st is not None and st["window"] >= max(10, WINDOW_TAU * st["tau"]) and len(st["history"]) >= 1
    assert res.samples.shape[0] == (st["window"] if st["stationary"] else 10)
    short = metropolis_hastings(small_potts().conditionals, torch.zeros(64, L, dtype=torch.long), n_sweeps=20,
                                energy=small_potts().energy, generator=torch.Generator().manual_seed(0),
                                until_stationary=10, window_tau=WINDOW_TAU)
    assert short.stationarity is not None and not short.stationarity["stationary"]  # 2 W > 20 sweeps
    assert short.samples.shape[0] == 10  # not stationary: the last W_min sweeps, not the whole trace


def test_until_stationary_stops_and_keeps_the_last_window() -> None:
    """From a bad start (all zeros) the energy drifts first; the chains stop once two windows agree,
    and the kept samples are the last window's states."""
    potts = small_potts()
    res = metropolis_hastings(potts.conditionals, torch.zeros(256, L, dtype=torch.long), n_sweeps=100,
                              energy=potts.energy, generator=torch.Generator().manual_seed(0), until_stationary=10)
    assert res.stationarity is not None and res.stationarity["stationary"]
    n = len(res.stats)
    assert n % 10 == 0 and n < 100 and res.samples.shape == (10, 256, L)
    assert res.energies is not None and res.energies.shape == (n + 1, 256)
    assert torch.equal(res.samples[-1], res.final)
    assert [r["burn_in"] for r in res.stats] == [1.0] * (n - 10) + [0.0] * 10


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(n_sweeps=0), "n_sweeps"),
        (dict(n_sweeps=3, burn_in=3), "burn_in"),
        (dict(n_sweeps=3, order="backwards"), "order"),
        (dict(n_sweeps=3, energy="logits"), "energy"),
        (dict(n_sweeps=3, until_stationary=2, window_tau=0.0), "window_tau"),
        (dict(n_sweeps=3, betas=[0.9, 0.5]), "betas"),
        (dict(n_sweeps=3, betas=[1.0, 0.5, 0.7]), "betas"),
        (dict(n_sweeps=3, betas=[1.0, 0.5, 0.3]), "multiple"),
    ],
)
def test_bad_arguments_raise(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        metropolis_hastings(small_potts().conditionals, torch.zeros(2, L, dtype=torch.long), **kwargs)
    with pytest.raises(ValueError, match="integer token ids"):
        metropolis_hastings(small_potts().conditionals, torch.zeros(2, L), n_sweeps=1)


@pytest.mark.bench
def test_bench_throughput() -> None:
    """Prints acceptance and chains x tokens per second (CPU, 1 thread)."""
    for name, fn, q, T in [
        ("potts L=20 q=10", small_potts_big().conditionals, 10, 20),
        ("factored 1 layer q=10 T=20", FactoredAttention(FactoredAttentionConfig(10, 20)).conditionals, 10, 20),
        ("factored 2 layers q=10 T=20",
         FactoredAttention(FactoredAttentionConfig(10, 20, n_layers=2)).conditionals, 10, 20),
    ]:
        init = torch.randint(q, (256, T), generator=torch.Generator().manual_seed(0))
        t0 = time.perf_counter()
        res = metropolis_hastings(fn, init, n_sweeps=3, generator=torch.Generator().manual_seed(0))
        dt = time.perf_counter() - t0
        print(f"{name}: acceptance {res.acceptance_rate:.3f}, {256 * T * 3 / dt:,.0f} chain-tokens/s")


def small_potts_big() -> PottsModel:
    from dsb_widgets.potts import random_factored_potts

    return random_factored_potts(20, 10, 1.0, torch.Generator().manual_seed(0))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_clamped_draw_gives_the_same_tokens_on_peaked_conditionals(dtype: torch.dtype) -> None:
    """_draw clamps log q at -87 before the exp (exp below -87 is 10-20x slower on CPU); on rows where most
    of log q lies below -87 (logit spread ~1e3) the draws equal the unclamped inversion, same uniforms."""
    from dsb_widgets.mh_sampler import _draw

    logits = torch.randn(4096, 1000, generator=torch.Generator().manual_seed(3), dtype=dtype) * 150
    logq = torch.log_softmax(logits, -1)
    assert float((logq < -87).double().mean()) > 0.8
    got = _draw(logq, torch.Generator().manual_seed(4))
    u = torch.rand(4096, 1, generator=torch.Generator().manual_seed(4), dtype=dtype)
    want = (logq.exp().cumsum(-1) < u).sum(-1).clamp_max(999)
    assert torch.equal(got, want)
    assert got.unique().numel() > 100  # many different tokens drawn: the comparison is not trivial


def test_fast_tempering_reproduces_the_generic_chains() -> None:
    """With replica exchange the fast path reorders its state instead of rebuilding it; same seed, same
    draws: the same chains, energies, acceptance and swap rates as the generic loop."""
    model = tiny_model(3)
    inc = IncrementalConditionals(model)
    init = torch.randint(6, (24, 5), generator=torch.Generator().manual_seed(2))
    kw: dict = {"n_sweeps": 6, "betas": [1.0, 0.5, 0.25]}
    fast = metropolis_hastings(inc, init, generator=torch.Generator().manual_seed(7), **kw)
    slow = metropolis_hastings(lambda x: inc(x), init, generator=torch.Generator().manual_seed(7), **kw)
    assert torch.equal(fast.samples, slow.samples) and torch.equal(fast.final, slow.final)
    assert [r["swap_rate"] for r in fast.stats] == [r["swap_rate"] for r in slow.stats]
    assert max(r["swap_rate"] for r in fast.stats) > 0  # exchanges happened
    assert fast.energies is not None and slow.energies is not None
    torch.testing.assert_close(fast.energies, slow.energies, rtol=1e-9, atol=1e-9)
