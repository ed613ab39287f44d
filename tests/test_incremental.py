"""The batched MH fast path (:class:`dsb_widgets.incremental.SiteChains`) against masking by hand.

Complements ``tests/test_mh_sampler.py`` (energies, proposals and log-ratios at depths 1-4) with
the cases its shortcuts create: chains that propose their current token (not recomputed), copy t
(not recomputed, its term from the kept g_t and log Z_t), blocks of chains of every size (the
middle layers run in inner blocks of 8), and logit spreads of 1e4 (the clamped logsumexp).
"""

from __future__ import annotations

import pytest
import torch

from dsb_widgets.factored_attention import FactoredAttention, FactoredAttentionConfig
from dsb_widgets.incremental import SiteChains


def model_of(n_layers: int, seed: int = 0, **kw: object) -> FactoredAttention:
    torch.manual_seed(seed)
    cfg = FactoredAttentionConfig(7, 6, n_layers=n_layers, n_heads=2, d_embed=5, init_std=0.8,  # type: ignore[arg-type]
                                  branch_init=1.0, **kw)
    model = FactoredAttention(cfg).double()
    with torch.no_grad():
        assert model.fields is not None
        model.fields.normal_(0, 0.3)  # per-site fields: the copies' offsets are indexed per site
    return model


def by_hand(model: FactoredAttention, s: torch.Tensor) -> torch.Tensor:
    """-sum_p log p(s_p | s_-p) (B,), each site masked by hand and run through model.forward."""
    B, T = s.shape
    x = s.repeat_interleave(T, 0)  # (B T, T): row b*T + p is chain b with p masked
    x[torch.arange(B * T), torch.arange(T).repeat(B)] = model.cfg.mask_id
    logp = torch.log_softmax(model(x), -1).view(B, T, T, -1)  # (b, copy p, position, token)
    rows = logp[:, torch.arange(T), torch.arange(T)]  # (B, T, q): copy p at its own site
    return -rows.gather(-1, s[..., None]).squeeze(-1).sum(-1)


@pytest.mark.parametrize("n_layers", [1, 2, 3, 4])
def test_chains_that_propose_their_own_token_keep_their_energy(n_layers: int) -> None:
    model = model_of(n_layers)
    g = torch.Generator().manual_seed(1)
    s = torch.randint(7, (9, 6), generator=g)
    with torch.no_grad():
        chains = SiteChains(model, s, "pll", chunk=4)
        for t in (1, 5, 0, 3):
            new = torch.randint(7, (9,), generator=g)
            new[::2] = chains.tokens[::2, t]  # every other chain proposes its current token
            prop = chains.tokens.clone()
            prop[:, t] = new
            E_new = chains.try_site(t, new)
            torch.testing.assert_close(E_new, by_hand(model, prop), rtol=1e-10, atol=1e-10)
            assert torch.equal(E_new[::2], chains.energy[::2])  # not recomputed: bitwise E(s)
            chains.accept(torch.rand(9, generator=g) < 0.7)
            torch.testing.assert_close(chains.energy, by_hand(model, chains.tokens), rtol=1e-10, atol=1e-10)
        none_moves = chains.tokens[:, 2].clone()
        assert torch.equal(chains.try_site(2, none_moves), chains.energy)


@pytest.mark.parametrize("n_layers", [3, 4])
def test_block_sizes_give_the_same_energies(n_layers: int) -> None:
    """Blocks of 1, 3, 11 (> the inner block of 8: a ragged inner block) and 40 chains agree."""
    model = model_of(n_layers, residual=n_layers == 3)
    s = torch.randint(7, (23, 6), generator=torch.Generator().manual_seed(2))
    new = torch.randint(7, (23,), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        got = [SiteChains(model, s, "pll", chunk=c) for c in (1, 3, 11, 40)]
        for chains in got:
            torch.testing.assert_close(chains.energy, by_hand(model, s), rtol=1e-10, atol=1e-10)
        cand = [chains.try_site(4, new) for chains in got]
        for E in cand[1:]:
            torch.testing.assert_close(E, cand[0], rtol=1e-12, atol=1e-12)


def test_energies_stay_exact_with_a_logit_spread_of_ten_thousand() -> None:
    """Deep untrained models reach logit spreads of 1e4; the clamped in-place logsumexp (exp below -87
    is slow on CPU) must still equal log_softmax, in float32 and float64."""
    model = model_of(3)
    with torch.no_grad():
        assert model.readout is not None
        model.readout.weight.mul_(3e3)
        s = torch.randint(7, (5, 6), generator=torch.Generator().manual_seed(4))
        want = by_hand(model, s)
        chains = SiteChains(model, s, "pll")
        logits = model.conditional_logits(s)
        assert float((logits.amax(-1) - logits.amin(-1)).max()) > 1e3
        torch.testing.assert_close(chains.energy, want, rtol=1e-10, atol=1e-8)
        f32 = SiteChains(model.float(), s, "pll")
        torch.testing.assert_close(f32.energy.double(), want, rtol=1e-5, atol=1e-2)


def test_refresh_removes_the_first_layers_drift_and_keeps_energies_exact() -> None:
    """b (the first layer) is the only incrementally updated state: in float32, 400 accepted rank-H updates
    leave it off a fresh computation; refresh() makes it equal bitwise, and the energies (recomputed from b at
    every proposal) stay those of masking by hand."""
    model = model_of(3, seed=5).float()
    g = torch.Generator().manual_seed(6)
    s = torch.randint(7, (16, 6), generator=g)
    with torch.no_grad():
        chains = SiteChains(model, s, "pll")
        for k in range(400):
            t = k % 6
            chains.try_site(t, torch.randint(7, (16,), generator=g))
            chains.accept(torch.ones(16, dtype=torch.bool))
        fresh = SiteChains(model, chains.tokens, "pll")
        assert not torch.equal(chains.b1, fresh.b1)  # rounding accumulated (the test can fail)
        chains.refresh()
        assert torch.equal(chains.b1, fresh.b1)
        want = by_hand(model.double(), chains.tokens).float()
        torch.testing.assert_close(chains.energy, want, rtol=1e-5, atol=1e-4)
        with pytest.raises(RuntimeError, match="accept"):
            chains.try_site(0, chains.tokens[:, 0])
            chains.refresh()


@pytest.mark.parametrize("n_layers", [1, 3])
def test_reorder_moves_whole_states_between_chains(n_layers: int) -> None:
    """After reorder(perm) chain b holds chain perm[b]'s state: its energies, and every later candidate,
    equal masking by hand (replica exchange without rebuilding the state)."""
    model = model_of(n_layers, seed=7)
    g = torch.Generator().manual_seed(8)
    s = torch.randint(7, (10, 6), generator=g)
    perm = torch.randperm(10, generator=g)
    with torch.no_grad():
        chains = SiteChains(model, s, "pll", chunk=4)
        chains.reorder(perm)
        assert torch.equal(chains.tokens, s[perm])
        torch.testing.assert_close(chains.energy, by_hand(model, s[perm]), rtol=1e-10, atol=1e-10)
        new = torch.randint(7, (10,), generator=g)
        prop = chains.tokens.clone()
        prop[:, 2] = new
        torch.testing.assert_close(chains.try_site(2, new), by_hand(model, prop), rtol=1e-10, atol=1e-10)


def test_flush_denormals_is_scoped_and_changes_no_log_probability() -> None:
    """Inside the block float32 denormals read as 0 and the mode is restored after (also when it was already
    on); log_softmax of rows spread over 1e3 (most exp arguments below -87) is bitwise the same."""
    from dsb_widgets.incremental import flush_denormals

    tiny = torch.tensor(1e-39)
    x = torch.randn(64, 1000, generator=torch.Generator().manual_seed(9)) * 300
    want = torch.log_softmax(x, -1)
    assert float(tiny * 2) > 0
    with flush_denormals():
        assert float(tiny * 2) == 0
        assert torch.equal(torch.log_softmax(x, -1), want)
    assert float(tiny * 2) > 0
    torch.set_flush_denormal(True)
    try:
        with flush_denormals():
            pass
        assert float(tiny * 2) == 0  # left on: it was on before
    finally:
        torch.set_flush_denormal(False)
