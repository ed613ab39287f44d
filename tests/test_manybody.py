"""The synthetic many-body ladder: exact conditionals, an equilibrated sampler, references that
recover their generator, and the depth ordering on a small instance."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dsb_widgets.manybody import (
    ManyBody,
    fit_reference,
    gibbs,
    integrated_autocorr_time,
    ladder,
    random_manybody,
    sample,
    select_reference,
)
from dsb_widgets.potts import exact_distribution

torch.set_num_threads(1)


def small(seed: int = 0, L: int = 6, q: int = 3, g: float = 0.8) -> ManyBody:
    return random_manybody(L, q, beta2=0.8, g3=g, g4=g, seed=seed).double()


def test_conditionals_are_exact_energy_differences() -> None:
    """log_softmax(logits) at site i equals the Boltzmann conditional from H itself, for every site
    (and site_logits equals the full computation)."""
    m = small()
    s = torch.randint(3, (7, 6), generator=torch.Generator().manual_seed(1))
    logits = m.logits(s)
    for i in range(6):
        e = torch.stack([m.energy(torch.cat([s[:, :i], torch.full((7, 1), a), s[:, i + 1 :]], 1)) for a in range(3)], 1)
        torch.testing.assert_close(torch.log_softmax(logits[:, i], -1), torch.log_softmax(-e, -1))
        torch.testing.assert_close(m.site_logits(s, i), logits[:, i])


def test_factored_windows_are_window_strengths_times_shared_colour_tensors() -> None:
    """A factored reference (heads = 2) has exactly the conditionals, energies and single-site
    logits of the free-table model whose window tables are C @ S (and those are exact conditionals)."""
    m = ManyBody(6, 3, orders=(3, 4), heads=2, seed=1).double()
    with torch.no_grad():
        for p in m.parameters():
            p.normal_()
    tables = {k: (getattr(m, f"C{k}") @ getattr(m, f"S{k}")).detach() for k in (3, 4)}
    assert tables[4].shape == (3, 81)
    free = ManyBody(6, 3, J=m.J.detach(), h=m.h.detach(), tables=tables).double()
    s = torch.randint(3, (9, 6), generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(m.logits(s), free.logits(s))
    torch.testing.assert_close(m.energy(s), free.energy(s))
    torch.testing.assert_close(m.site_logits(s, 2), free.logits(s)[:, 2])
    e = torch.stack([m.energy(torch.cat([s[:, :3], torch.full((9, 1), a), s[:, 4:]], 1)) for a in range(3)], 1)
    torch.testing.assert_close(torch.log_softmax(m.logits(s)[:, 3], -1), torch.log_softmax(-e, -1))


def test_the_four_body_terms_are_four_body() -> None:
    """Mixed differences: the conditional at site 0 depends on sites 1, 2, 3 jointly (4-body) but has
    no 5-body part."""
    m = random_manybody(6, 3, beta2=0.0, g3=0.0, g4=1.0, seed=2).double()
    base = torch.zeros(1, 6, dtype=torch.long)

    def mixed(sites: tuple[int, ...]) -> float:
        import itertools

        tot = torch.zeros(3, dtype=torch.float64)
        for flips in itertools.product([0, 1], repeat=len(sites)):
            s = base.clone()
            for j, f in zip(sites, flips):
                s[0, j] = (s[0, j] + f) % 3
            lp = torch.log_softmax(m.logits(s)[0, 0], -1)
            tot += (-1) ** (len(sites) - sum(flips)) * (lp - lp[0])
        return float(tot.abs().max())

    assert mixed((1, 2, 3)) > 1e-3 and mixed((1, 2, 3, 4)) < 1e-9


def test_gibbs_is_equilibrated_on_an_enumerable_case() -> None:
    """L = 6, q = 3 (729 states) with 2-, 3-, 4-body terms: the sampled pair and triple marginals
    agree with exact enumeration within 4.5 standard errors; split-R-hat ~ 1; tau small."""
    m = small(seed=3)
    states, p = exact_distribution(m.energy, 6, 3)
    x, diag = sample(m, 20_000, seed=0, chains=500, burn_in=30)
    assert diag["rhat"] < 1.02 and 0.5 <= diag["tau"] < 5.0  # tau < 1: anticorrelated sweeps
    onehot = torch.nn.functional.one_hot(x, 3).double()  # (N, 6, 3)
    ex = torch.nn.functional.one_hot(states, 3).double()
    for sites in ((0, 1), (2, 5), (0, 1, 2), (1, 2, 3)):
        emp = torch.ones(x.shape[0], dtype=torch.float64)
        feats = [onehot[:, i] for i in sites]
        exact_f = [ex[:, i] for i in sites]
        e_tab = torch.einsum("na,nb,n->ab", exact_f[0], exact_f[1], p) if len(sites) == 2 else \
            torch.einsum("na,nb,nc,n->abc", *exact_f, p)
        per = torch.einsum("na,nb->nab", feats[0], feats[1]) if len(sites) == 2 else \
            torch.einsum("na,nb,nc->nabc", *feats)
        del emp
        mean = per.mean(0)
        se = per.std(0) / np.sqrt(x.shape[0] / diag["thin"]) + 1e-4  # conservative: thinned count
        assert ((mean - e_tab).abs() / se).max() < 4.5, sites


def test_autocorrelation_time_of_independent_and_correlated_traces() -> None:
    g = torch.Generator().manual_seed(0)
    iid = torch.randn(400, 50, generator=g, dtype=torch.float64)
    assert abs(integrated_autocorr_time(iid) - 1.0) < 0.3
    ar = torch.zeros(400, 50, dtype=torch.float64)
    for t in range(1, 400):  # AR(1), rho = 0.8: tau = (1 + rho) / (1 - rho) = 9
        ar[t] = 0.8 * ar[t - 1] + torch.randn(50, generator=g, dtype=torch.float64)
    assert 6.0 < integrated_autocorr_time(ar) < 12.0


def centred(logits: torch.Tensor) -> torch.Tensor:
    return logits - logits.mean(-1, keepdim=True)


def test_references_recover_their_generating_couplings() -> None:
    """A k-body reference fitted on samples of a k-body Hamiltonian reproduces its conditionals
    (gauge-free: centred conditional logits on fresh states) and reaches the true conditional loss."""
    for k, (g3, g4) in ((3, (0.8, 0.0)), (4, (0.5, 0.5))):
        truth = random_manybody(6, 3, beta2=0.5, g3=g3, g4=g4, seed=4)
        x, _ = sample(truth, 12_000, seed=1, chains=400, burn_in=30)
        fitted, out = fit_reference(x[:10_000], 3, k, l2=1e-6, iters=200, test=x[10_000:])
        probe = x[10_000:]  # typical states (rare ones are barely constrained by the data)
        a, b = centred(fitted.logits(probe)), centred(truth.logits(probe))
        rel = float((a - b).norm() / b.norm())
        assert rel < 0.15, (k, rel)
        assert abs(out["test_loss"] - truth.conditional_loss(x[10_000:])) < 0.01


def test_reference_ladder_is_ordered_and_the_four_body_one_reaches_the_truth() -> None:
    """On 4-body data (8 sites, 3 colours): held-out loss 2-body > 3-body > 4-body >= true - noise,
    with clear gaps, and the 4-body reference (the generator's structure) lands on the true loss."""
    truth = random_manybody(8, 3, beta2=0.5, g3=0.8, g4=1.0, seed=6)
    x, _ = sample(truth, 8000, seed=2, chains=400, burn_in=30)
    losses = [fit_reference(x[:6000], 3, k, iters=100, test=x[6000:])[1]["test_loss"] for k in (2, 3, 4)]
    true = truth.conditional_loss(x[6000:])
    assert losses[0] > losses[1] + 0.01 and losses[1] > losses[2] + 0.01
    assert true - 0.01 < losses[2] < true + 0.01, (losses, true)


def test_select_reference_chooses_l2_on_training_validation_split() -> None:
    """The chosen l2 is the validation argmin (an absurd penalty loses), the returned validation loss
    is that candidate's, and the test set plays no part in the choice."""
    truth = random_manybody(6, 3, beta2=0.5, g3=0.8, g4=0.0, seed=5)
    x, _ = sample(truth, 3000, seed=3, chains=300, burn_in=20)
    _, out = select_reference(x[:2500], 3, 3, l2_grid=(1.0, 1e-5), iters=40, test=x[2500:])
    _, out2 = select_reference(x[:2500], 3, 3, l2_grid=(1.0, 1e-5), iters=40, test=x[2500:][:10])
    assert out["l2"] == 1e-5 and out["val_loss"] == min(out["val_losses"].values())
    assert out["val_losses"][1.0] > out["val_losses"][1e-5] + 0.05
    assert out2["l2"] == out["l2"] and out2["train_loss"] == pytest.approx(out["train_loss"])
    with pytest.raises(ValueError, match="val_frac"):
        select_reference(x, 3, 3, val_frac=1.5)


def test_gibbs_shapes_and_bad_reference_order() -> None:
    m = small()
    states, energies = gibbs(m, 5, 3, torch.Generator().manual_seed(0))
    assert states.shape == (3, 5, 6) and energies.shape == (3, 5)
    with pytest.raises(ValueError, match="bodies"):
        fit_reference(states[0], 3, 5)


@pytest.mark.slow
def test_ladder_orders_losses_by_depth_on_a_small_instance() -> None:
    """A toy ladder (10 sites, 5 colours, 2,000 sequences, 60 Adam steps per depth, a 150-step BERT;
    ~16 CPU-s): held-out losses fall with depth, one layer near the 2-body line, three layers below
    the 3-body line, references ordered 2 > 3 > 4 >= true (measured 1.332 / 1.114 / 1.051 vs
    references 1.300 / 1.072 / 1.011, true 0.931); the DSB outputs are there and well-formed."""
    ds = ladder(L=10, q=5, n_train=2000, n_test=500, steps=60, chains=128, burn_in=20, ref_iters=20, d_embed=16,
                n_heads=2, bert_steps=150, bert_probe=128)
    final = ds.test_loss.isel(step=-1).values
    ref = ds.reference_loss.values
    assert set(ds.test_loss.dims) == {"layers", "step"} and list(ds.bodies.values) == [2, 3, 4]
    assert final[0] > final[1] > final[2]
    assert abs(final[0] - ref[0]) < 0.06 and final[2] < ref[1]
    assert ref[0] > ref[1] > ref[2] > float(ds.true_loss) - 0.02
    assert (ds.val_reference_loss.values > ds.train_reference_loss.values).all()
    assert ds.attrs["sampler_rhat"] < 1.05
    assert list(ds.probe.values) == ["real", "2-body", "3-body", "5-body"]
    assert ds.bert_loss.shape == (4, ds.bert_step.size) and np.isfinite(ds.bert_loss.values).all()
    assert ((ds.saturation_step.values >= 0) & (ds.saturation_step.values <= 150)).all()
    assert float(ds.bert_loss.sel(probe="real").isel(bert_step=0)) == pytest.approx(np.log(5), abs=0.1)


def test_marginal_tv_is_exact_on_hand_made_samples() -> None:
    """0 for a sample against itself, 1 for disjoint supports, and a hand-computed value: site 0
    of x is always colour 0, of ref half 0 and half 1 -> TV 0.5 at site 0, 0 at site 1."""
    from dsb_widgets.manybody_dsb import marginal_tv

    x = torch.randint(3, (50, 5), generator=torch.Generator().manual_seed(0))
    for k in (1, 2, 3, 4):
        assert marginal_tv(x, x, 3, k) == 0.0
        assert marginal_tv(torch.zeros(4, 5, dtype=torch.long), torch.ones(6, 5, dtype=torch.long), 3, k) == 1.0
    a = torch.tensor([[0, 2], [0, 2]])
    b = torch.tensor([[0, 2], [1, 2]])
    assert marginal_tv(a, b, 3, 1) == pytest.approx(0.25)  # mean of 0.5 (site 0) and 0 (site 1)
    assert marginal_tv(a, b, 3, 2) == pytest.approx(0.5)  # one pair: {02: 1} vs {02: .5, 12: .5}


def test_saturation_ordered_needs_strictly_increasing_observed_plateaus() -> None:
    """Ordered only if 2- < 3- < 5-body < real strictly; a probe still falling is infinitely late."""
    from dsb_widgets.manybody_dsb import saturation_ordered

    steps = {"2-body": 100, "3-body": 400, "5-body": 1600, "real": 6400}
    yes = dict.fromkeys(steps, True)
    assert saturation_ordered(steps, yes)
    assert saturation_ordered(steps, {**yes, "real": False})  # real still falling: still last
    assert not saturation_ordered(steps, {**yes, "5-body": False})  # 5-body still falling, real flat
    assert not saturation_ordered(steps, {**yes, "5-body": False, "real": False})  # two still falling: a tie
    assert not saturation_ordered({**steps, "3-body": 1600}, yes)  # same checkpoint: a tie
    assert not saturation_ordered({**steps, "2-body": 500}, yes)


def test_ladder_dsb_on_a_tiny_instance_is_consistent_with_its_parts() -> None:
    """ladder_dsb (tiny: 5 sites, 3 colours, two 64-step BERT seeds) equals its parts run by hand:
    the exact true loss of the real probe, the saturation rule on each seed's curve and on the seed
    mean, the ordering flag, TV 0 of the real probe to itself; a BERT scored from saved weights
    (what benchmarks/manybody_dsb/run.py does) gives the live losses; step 0 is at ~log q."""
    from dsb_widgets.manybody_dsb import (
        bert_on_clones,
        ladder_data,
        ladder_dsb,
        ladder_probes,
        log_marks,
        masked_probes,
        probe_losses,
        saturation_ordered,
        train_bert,
    )
    from dsb_widgets.models.bert import Bert, BertConfig
    from dsb_widgets.saturation import plateau_observed, saturation_step

    kw = dict(L=5, q=3, n_train=300, n_bert_train=600, steps=20, d_embed=8, n_heads=1, chains=32, burn_in=5,
              clone_chains=16, max_sweeps=12, window=3, n_probe=96)
    ds = ladder_dsb(0, bert_seeds=(0, 1), bert_steps=64, per_octave=2, **kw)
    assert list(ds.probe.values) == ["2-body", "3-body", "5-body", "real"]
    assert ds.loss.dims == ("seed", "probe", "step") and list(ds.step.values) == log_marks(64, 2)
    truth, parts, _ = ladder_data(0, L=5, q=3, n_fit=600, clone_chains=16, n_probe=96, chains=32, burn_in=5)
    assert float(ds.true_loss.sel(data="real")) == pytest.approx(truth.conditional_loss(parts["real"]), rel=1e-6)
    assert float(ds.tv.sel(data="real", order=2)) == 0.0 and float(ds.tv.sel(data="baseline", order=2)) > 0.0
    steps = ds.step.values
    for i in range(2):
        for j in range(4):
            assert int(ds.saturation_step[i, j]) == saturation_step(steps, ds.loss.values[i, j])
    mean = ds.loss.values.mean(0)
    msat = [saturation_step(steps, row) for row in mean]
    assert list(ds.mean_saturation_step.values) == msat
    names = list(ds.probe.values)
    assert ds.attrs["ordered_mean"] == int(saturation_ordered(
        dict(zip(names, msat, strict=True)), {p: plateau_observed(steps, s) for p, s in zip(names, msat, strict=True)}))
    assert np.allclose(ds.loss.values[:, :, 0], np.log(3), atol=0.1)
    lp = ladder_probes(0, **kw)  # deterministic: the same probes again
    assert torch.equal(lp.bert_train, parts["fit"][:600]) and torch.equal(lp.probes["real"], parts["real"])
    live = bert_on_clones(lp.bert_train, lp.probes, 3, steps=64, per_octave=2, seed=1)
    np.testing.assert_allclose(live.loss.sel(probe=names).values, ds.loss.values[1], rtol=1e-6)
    saved: dict[int, dict[str, torch.Tensor]] = {}
    train_bert(lp.bert_train, 3, lambda s, m: saved.__setitem__(s, {k: v.clone() for k, v in m.state_dict().items()}),
               steps=64, per_octave=2, seed=1)
    model, masked = Bert(BertConfig(3, 5)), masked_probes(lp.probes, 3, seed=1)
    model.load_state_dict(saved[64])
    assert probe_losses(model, masked) == pytest.approx(dict(zip(names, ds.loss.values[1, :, -1], strict=True)),
                                                        rel=1e-6)
