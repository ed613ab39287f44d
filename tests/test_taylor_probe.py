"""Taylor predictions recorded by the engine (dsb_widgets.engine.taylor_probe).

One tiny digits run (MLP, 2 seeds, 4 steps) with ``-o taylor=true`` is shared by the tests
marked slow (the first jvp in a process imports ~5-30 s of torch internals on a busy 2-core
machine); each checks the recorded numbers against an independent computation on the same model:
taylor0 = sum_y w_y L(f(mu_y), y) by a plain forward pass, taylor2 - taylor0 = 1/2 tr(H Sigma)
with the reverse-mode Hessian, and taylor2 = E L under N(mu_y, Sigma_y) by Monte Carlo.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import dsb_widgets.engine.taylor_probe as tp
from dsb_widgets.data import load_images
from dsb_widgets.engine.ensemble import ModelStack
from dsb_widgets.engine.grouped import load_stack_state
from dsb_widgets.engine.loop import train
from dsb_widgets.engine.schedule import log_checkpoints
from dsb_widgets.engine.task import ConfigError, RunConfig, build_task, resolve_config
from dsb_widgets.models.vision import VisionConfig, make_vision_model
from dsb_widgets.taylor import class_taylor_expansion, taylor_expansion

STEPS = 4
CFG = RunConfig(experiment="images", dataset="digits", steps=STEPS, seeds=2, probe_size=400,
                probes=("real", "maxent2"), options={"taylor": True, "taylor_per_class": True})


@pytest.fixture(scope="module")
def digits():
    return load_images("digits", split="train")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    torch.set_num_threads(1)
    task = build_task(CFG)  # the built task holds the measurement the engine calls
    out = tmp_path_factory.mktemp("taylor") / "run.nc"
    res = train(CFG, out=out, task=task)
    assert isinstance(task.measure, tp.TaylorMeasure)
    return res, task.measure, out


def _stack_at(out, step: int, cfg: RunConfig) -> ModelStack:
    """Seeds' models at step 0 (re-initialised as the engine does) or at the final step (saved)."""
    cfg = resolve_config(cfg)
    vcfg = VisionConfig((1, 8, 8), 10, width=256)
    models = []
    for s in range(cfg.seeds):
        torch.manual_seed(cfg.seed + s)
        models.append(make_vision_model(str(cfg.model), vcfg))
    stack = ModelStack(models)
    if step != 0:
        state = torch.load(out.with_name(out.stem + ".state.pt"), weights_only=True)
        assert int(state["step"]) == step
        load_stack_state(stack, state["model"])  # the engine may have stacked the seeds another way
    return stack.eval()


def _plain_mc(model, means, covs, weights, n: int, seed: int = 1) -> tuple[float, float]:
    """sum_y w_y E L(f(x), y), x ~ N(mu_y, Sigma_y), and its standard error (float64 samples)."""
    gen = torch.Generator().manual_seed(seed)
    est, var = 0.0, 0.0
    for y, (mu, cov, w) in enumerate(zip(means, covs, weights.tolist())):
        lam, u = torch.linalg.eigh(cov)
        z = torch.randn(n, mu.shape[0], generator=gen, dtype=torch.float64)
        x = (mu + (z * lam.clamp_min(0).sqrt()) @ u.T).float().view(-1, 1, 8, 8)
        with torch.no_grad():
            loss = F.cross_entropy(model(x), torch.full((n,), y), reduction="none").double()
        est += w * loss.mean().item()
        var += w**2 * loss.var().item() / n
    return est, math.sqrt(var)


def _hessian_t2(model, means, covs, weights) -> float:
    """sum_y w_y 1/2 tr(H_y Sigma_y) with H_y the full reverse-mode input Hessian at mu_y."""
    out = 0.0
    for y, (mu, cov, w) in enumerate(zip(means, covs, weights.tolist())):
        f = lambda x, y=y: F.cross_entropy(model(x.view(1, 1, 8, 8)), torch.tensor([y]))  # noqa: E731
        h = torch.autograd.functional.hessian(f, mu.float()).double()  # (d, d)
        out += w * 0.5 * (h * cov).sum().item()
    return out


@pytest.mark.slow
def test_extra_probes_recorded_finite_with_orders(run):
    res, measure, _ = run
    ds = res.dataset
    probes = list(ds.probe.values)
    for name, order in (("taylor0", 1.0), ("taylor2", 2.0)):
        assert name in probes
        assert float(ds.probe_order.sel(probe=name)) == order
        vals = ds.loss.sel(probe=name).values  # (step, seed)
        assert vals.shape == (len(log_checkpoints(STEPS, 3)), 2)
        assert np.isfinite(vals).all()
        assert np.isnan(ds.accuracy.sel(probe=name).values).all()  # loss-only
    assert all(f"taylor2_c{k}" in probes for k in range(10))
    # the seeds are different models, so their predictions differ
    assert not np.allclose(ds.loss.sel(probe="taylor2").values[0, 0], ds.loss.sel(probe="taylor2").values[0, 1])


@pytest.mark.slow
def test_per_checkpoint_cost_reported(run):
    res, measure, _ = run
    assert len(measure.seconds) == res.dataset.sizes["step"]
    assert all(s > 0 for s in measure.seconds)
    assert sum(measure.seconds) <= res.timings["eval_s"]  # measured inside the engine's evaluation
    assert len(measure.per_class) == len(measure.seconds)
    assert measure.per_class[0].shape == (2, 10, 2)  # (S, K, [T0, T0 + T2])


@pytest.mark.slow
def test_taylor0_is_loss_at_class_means(run, digits):
    res, measure, out = run
    weights = measure.weights
    for step in (0, STEPS):
        stack = _stack_at(out, step, CFG)
        mu = measure.means.view(10, 1, 8, 8)
        with torch.no_grad():
            logits = stack(mu, shared=True)  # (S, K, 10)
        ce = torch.stack([F.cross_entropy(lg, torch.arange(10), reduction="none") for lg in logits]).double()
        expect = (ce * weights).sum(1).numpy()
        got = res.dataset.loss.sel(probe="taylor0", step=step).values
        np.testing.assert_allclose(got, expect, rtol=1e-5)


@pytest.mark.slow
def test_weights_are_the_maxent2_probe_labels(run, digits):
    res, measure, out = run
    probes = torch.load(out.with_name(out.stem + ".probes.pt"), weights_only=True)
    counts = torch.bincount(probes["maxent2"]["y"], minlength=10).double()
    np.testing.assert_allclose(measure.weights.numpy(), (counts / counts.sum()).numpy())
    ds = res.dataset
    per_class = np.stack([ds.loss.sel(probe=f"taylor2_c{k}").values for k in range(10)], -1)  # (step, S, K)
    np.testing.assert_allclose(ds.loss.sel(probe="taylor2").values, per_class @ measure.weights.numpy(), rtol=1e-10)


@pytest.mark.slow
@pytest.mark.parametrize("step", [0, STEPS])
def test_taylor2_term_is_half_trace_of_hessian_times_maxent2_cov(run, digits, step):
    """taylor2 - taylor0 = sum_y w_y 1/2 tr(H_y Sigma_y), H_y by reverse-mode autograd (no jvp),
    Sigma_y the maxent2 covariance in float64: catches a wrong covariance, label or weight."""
    res, measure, out = run
    stack = _stack_at(out, step, CFG)
    means, covs = tp.maxent2_gaussians(digits)
    t2 = (res.dataset.loss.sel(probe="taylor2", step=step) - res.dataset.loss.sel(probe="taylor0", step=step)).values
    for s in range(stack.size):
        ref = _hessian_t2(stack.member(s), means, covs, measure.weights)
        assert t2[s] == pytest.approx(ref, rel=2e-3), (step, s)
        assert ref > 1e-5  # the term is resolved, not zero


@pytest.mark.slow
@pytest.mark.parametrize("step", [0, STEPS])
def test_taylor2_matches_monte_carlo_expected_loss_early(run, digits, step):
    """Early in training taylor2 predicts E L under the maxent2 Gaussians (2000 draws per class).

    Tolerance: 4 standard errors + 1e-3 at step 0, + 5e-3 at step 4. The allowance is the
    ReLU-kink part of E L, which no derivative at mu can see (a ReLU MLP is piecewise linear, so
    every D^k L(mu) comes from the softmax alone). Measured with 4000 draws per class (both seeds):
    step 0: E L - taylor0 = 2.8e-4 and -1.6e-4 vs T2 = 1.7e-4 (MC se 8e-5); step 4:
    E L - taylor0 = 3.5e-3 and 3.5e-3 vs T2 = 3.2e-4 and 3.3e-4 (se 1.3e-4). So already after 4
    AdamW steps the second-order term explains ~10% of E L - L(mu); the prediction is still within
    0.15% of the loss. A wrong label, class weight or mean moves taylor0 by 1e-2 or more.
    """
    res, measure, out = run
    stack = _stack_at(out, step, CFG)
    means, covs = tp.maxent2_gaussians(digits)
    t2 = res.dataset.loss.sel(probe="taylor2", step=step).values
    for s in range(stack.size):
        mc, se = _plain_mc(stack.member(s), means, covs, measure.weights, 2000)
        assert abs(t2[s] - mc) < 4 * se + (1e-3 if step == 0 else 5e-3), (step, s, t2[s], mc, se)


@pytest.mark.slow
def test_taylor2_close_to_recorded_maxent2_at_init(run):
    """maxent2 is itself an MC estimate (400 samples); at step 0 the two agree to well within it."""
    ds = run[0].dataset
    gap = np.abs(ds.loss.sel(probe="taylor2", step=0) - ds.loss.sel(probe="maxent2", step=0)).values
    assert (gap < 5e-3).all(), gap


def test_bad_options_fail_with_the_fix(digits):
    for opts, match in (({"taylor_method": "svd"}, "taylor_method"), ({"taylor_order": 3}, "taylor_order"),
                        ({"taylor_weights": "x"}, "taylor_weights"), ({"taylor_samples": 1}, "taylor_samples"),
                        ({"taylor_per_class": "maybe"}, "true/false")):
        with pytest.raises(ConfigError, match=match):
            tp.make_taylor_measure(digits, opts)


def test_weights_fallbacks_and_settings(digits):
    prior = tp.class_weights("maxent2", None, digits)  # no task: the train prior
    counts = torch.bincount(digits.y, minlength=10).double()
    np.testing.assert_allclose(prior.numpy(), (counts / counts.sum()).numpy())
    np.testing.assert_allclose(tp.class_weights("uniform", None, digits).numpy(), np.full(10, 0.1))
    m = tp.make_taylor_measure(digits, {"taylor_order": 4, "taylor_per_class": "true"})
    names = m.extra_probes()
    assert names["taylor0"] == 1.0 and names["taylor2"] == 2.0 and names["taylor4"] == 2.0
    assert len(names) == 3 + 30


@pytest.mark.slow
def test_order4_adds_gaussian_fourth_moment_term(digits):
    """taylor4 - taylor2 is T4 of dsb_widgets.taylor under the same Gaussian and probe seed."""
    torch.set_num_threads(1)
    m = tp.make_taylor_measure(digits, {"taylor_order": 4, "taylor_samples": 64})
    torch.manual_seed(0)
    model = make_vision_model("mlp", VisionConfig((1, 8, 8), 10, width=32)).eval()
    terms = m.class_terms(model)  # (K, 3): T0, T0+T2, T0+T2+T4
    assert terms.shape == (10, 3) and torch.isfinite(terms).all()
    y = 3
    def fn(x):
        return F.cross_entropy(model(x.view(-1, 1, 8, 8)), torch.full((x.shape[0],), y), reduction="none")

    ref = taylor_expansion(fn, m.means[y], m.factors[y], 4, n_samples=64, seed=0)
    assert terms[y, 2] - terms[y, 1] == pytest.approx(ref.terms[4].item(), rel=1e-4, abs=1e-9)
    assert terms[y, 1] - terms[y, 0] == pytest.approx(ref.terms[2].item(), rel=1e-4)
    # a ReLU MLP is piecewise linear, so D^4 L comes from the softmax alone: T4 << T2 at init
    assert (terms[:, 2] - terms[:, 1]).abs().max() < (terms[:, 1] - terms[:, 0]).abs().min()


def test_batched_exact_path_equals_class_by_class(digits):
    """The one-batch order-2 path gives class_taylor_expansion's exact numbers for every class."""
    torch.set_num_threads(1)
    m = tp.make_taylor_measure(digits, {})
    assert m.batched
    torch.manual_seed(1)
    model = make_vision_model("mlp", VisionConfig((1, 8, 8), 10, width=64)).train()
    with torch.no_grad():  # a less trivial point than init: scale the weights up
        for p in model.parameters():
            p.mul_(3.0)
    got = m.class_terms(model)  # (K, 2)
    assert model.training  # mode restored
    ref = class_taylor_expansion(model, m.means, m.factors, input_shape=(1, 8, 8), order=2, method="exact")
    expect = torch.tensor([[r.terms[0].item(), r.terms[0].item() + r.terms[2].item()] for r in ref],
                          dtype=torch.float64)
    np.testing.assert_allclose(got.numpy(), expect.numpy(), rtol=1e-5, atol=1e-7)
    assert (got[:, 1] - got[:, 0] > 1e-4).all()  # the order-2 terms are resolved
    loop = tp.make_taylor_measure(digits, {"taylor_method": "topk", "taylor_samples": 4})
    assert not loop.batched
