# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Taylor expansion of the expected loss
#
# Belrose et al. (ICML 2024, Sec. 2) explain the distributional simplicity bias with a Taylor
# expansion. Fix a class $y$, write $L(x) = \ell(f(x), y)$ for the loss of the network $f$ on
# input $x \in \mathbb{R}^d$, and let $x$ have class mean $\mu$ and covariance $\Sigma$. Expanding
# around $\mu$ and taking expectations term by term,
#
# $$
# \mathbb{E}[L(x)] = L(\mu) + \underbrace{\langle \nabla L(\mu), \mathbb{E}[x-\mu] \rangle}_{=0}
#   + \tfrac12 \langle H(\mu), \Sigma \rangle
#   + \sum_{k \ge 3} \tfrac{1}{k!} \langle D^k L(\mu), \mathbb{E}[(x-\mu)^{\otimes k}] \rangle .
# $$
#
# The order-$k$ term contracts the $k$-th derivative with the $k$-th central moment. So **if the
# first two terms explain the loss, the network cannot tell the data from any other distribution
# with the same mean and covariance**, e.g. the maximum-entropy one, $\mathcal{N}(\mu, \Sigma)$
# (the `maxent2` probe). Early in training this is what Belrose et al. observe; later the network
# uses higher moments and the loss on real data falls below the order-2 prediction.
#
# What we compute (`dsb_widgets.taylor`, recorded by the engine with `-o taylor=true`,
# `dsb_widgets.engine.taylor_probe`), per class and averaged with the `maxent2` probe's class
# weights:
#
# * `taylor0` $= \sum_y w_y L_y(\mu_y)$: the loss predicted from the class means alone;
# * `taylor2` $= \sum_y w_y \left[L_y(\mu_y) + \tfrac12 \operatorname{tr}(H_y \Sigma_y)\right]$,
#   with $\operatorname{tr}(H\Sigma) = \sum_i \lambda_i u_i^\top H u_i$ over the eigenpairs of
#   $\Sigma$, each quadratic form by two nested forward-mode derivatives (`torch.func.jvp`), never
#   forming $H$;
# * `taylor4` adds $\tfrac{1}{24}\mathbb{E}[D^4 L(\mu)[v]^4]$, $v \sim \mathcal{N}(0, \Sigma)$ (the
#   Gaussian's next nonzero term; $T_3 = 0$ for a Gaussian) by Monte Carlo.
#
# $\Sigma_y$ is exactly the covariance the `maxent2` probe samples from, so `taylor2` vs `maxent2`
# measures the truncation error of the expansion and `taylor2` vs `real` what the higher moments
# of real images add.
#
# **A caveat the numbers below make visible.** The default MLP uses ReLU, so $f$ is piecewise
# linear: every derivative at $\mu$ is that of the linear piece containing $\mu$, and the
# curvature comes from the softmax alone. The kinks (units switching on or off across the
# Gaussian) contribute to $\mathbb{E}[L]$ but to no term of the expansion. At initialisation this
# is invisible ($10^{-4}$ nats); after a few steps $\tfrac12\operatorname{tr}(H\Sigma)$ explains
# only part of $\mathbb{E}[L] - L(\mu)$ (see `tests/test_taylor_probe.py` for measured numbers).

# %% tags=["parameters"]
import os

FAST = os.environ.get("DSB_FAST", "0") == "1"
STEPS = 128 if FAST else 4096  # training steps (the default image run has 4096)
PER_OCTAVE = 2 if FAST else 3  # checkpoints per doubling of the step count
PROBE_SIZE = 300 if FAST else 1000  # examples per probe set
ORDER = 2 if FAST else 4  # 4 also records taylor4 (Monte Carlo fourth-order term)
SEED = 0
GAP = 0.10  # "explains" = within 10% of the measured loss

# %%
import math
import time

import numpy as np
import panel as pn
import plotly.graph_objects as go
import torch

from dsb_widgets.engine.loop import train
from dsb_widgets.engine.task import RunConfig, build_task
from dsb_widgets.ui.colors import probe_colors

pn.extension("plotly", inline=True)
torch.set_num_threads(1)  # the Taylor terms are many tiny ops: extra threads only add sync overhead on CPU

# %% [markdown]
# ## Train with the Taylor probe on
#
# The default image run (sklearn digits, 8x8, MLP 64-256-256-10, AdamW lr 1e-3, batch 64), with
# the `real` and `maxent2` probes and the Taylor predictions, per class too
# (`taylor_per_class`), recorded at log-spaced checkpoints. The engine times the Taylor
# measurement separately (`TaylorMeasure.seconds`): we build the task ourselves
# (`build_task`), hand it to `train`, and read the cost from its measurement.

# %%
cfg = RunConfig(experiment="images", dataset="digits", model="mlp", steps=STEPS, per_octave=PER_OCTAVE,
                probe_size=PROBE_SIZE, probes=("real", "maxent2"), seed=SEED,
                options={"taylor": True, "taylor_order": ORDER, "taylor_per_class": True})
t_start = time.perf_counter()
task = build_task(cfg)  # probes, sampler, model factory and the Taylor measurement
result = train(cfg, task=task, progress=not FAST)
wall = time.perf_counter() - t_start
measure = task.measure
ds = result.dataset.isel(seed=0)
steps = ds.step.values
loss = {p: ds.loss.sel(probe=p).values for p in ds.probe.values}
secs = np.array(measure.seconds)
print(f"run: {wall:.1f} s, {len(steps)} checkpoints; Taylor terms {secs.sum():.1f} s in all "
      f"({secs.sum() / wall:.0%} of the run), first call {secs[0]:.2f} s (includes torch.func's "
      f"one-off imports), then median {np.median(secs[1:]):.3f} s per checkpoint")

# %% [markdown]
# ## Measured vs predicted loss
#
# Solid: measured loss on held-out real digits and on `maxent2` samples. Dashed: the Taylor
# predictions from class means (order 0) and from means and covariances (order 2, 4). The
# shaded region starts at the first checkpoint where the real-data loss is more than
# 10% away from the order-2 prediction.
#
# Measured on the full default run (4096 steps, seed 0, this CPU): for the first ~10 steps all
# curves agree to within 1% (`maxent2 - taylor2` = 0.0005 nats at step 0, 0.007 at step 4). By
# step 16 the order-2 term carries only ~20% of what the covariance adds to the loss, and real
# digits leave the order-2 prediction by >10% at step 40 (0.79 vs 0.70). Later `taylor0` and
# `taylor2` go to ~0 (the class means are classified with certainty and the softmax is flat
# there) while `maxent2` stays at 0.04-0.07: its loss then comes from Gaussian samples far from
# the mean, across decision boundaries and ReLU kinks, which no local expansion sees. Note that on
# digits the held-out loss stays *above* `maxent2` (1,797 images: the MLP overfits; the class
# Gaussians are easy to separate), unlike Belrose et al.'s larger datasets.

# %%
x = steps + 1  # log axis: step 0 plotted at 1


def first_departure(measured: np.ndarray, predicted: np.ndarray, tol: float = GAP) -> int | None:
    """Index of the first checkpoint where |measured - predicted| > tol * measured (None: never)."""
    bad = np.abs(measured - predicted) > tol * np.abs(measured)
    return int(np.argmax(bad)) if bad.any() else None


i_real = first_departure(loss["real"], loss["taylor2"])
i_me2 = first_departure(loss["maxent2"], loss["taylor2"])
fig = go.Figure()
# colours of every view (dsb_widgets.ui.colors): real black, order 1 oranges, order 2 blues; dashed = prediction
TAYLOR_ORDERS = {"real": math.inf, "maxent2": 2.0, "taylor0": 1.0, "taylor2": 2.0, "taylor4": 2.0}
COLOURS = probe_colors(list(TAYLOR_ORDERS), list(TAYLOR_ORDERS.values()))
for name, dash in (("real", None), ("maxent2", None), ("taylor0", "dash"), ("taylor2", "dash"), ("taylor4", "dot")):
    color = COLOURS[name]
    if name in loss:
        fig.add_trace(go.Scatter(x=x, y=loss[name], name=name, mode="lines+markers",
                                 line=dict(color=color, dash=dash), marker=dict(size=5)))
if i_real is not None:
    fig.add_vrect(x0=x[i_real], x1=x[-1], fillcolor="grey", opacity=0.12, line_width=0,
                  annotation_text=f"real leaves order 2 (step {steps[i_real]})", annotation_position="top left")
fig.update_layout(xaxis=dict(type="log", title="training step + 1"),
                  yaxis=dict(type="log", title="loss (nats)", range=[-3, math.log10(3)]),
                  title="Measured loss vs Taylor prediction", height=420, width=760)
fig

# %%
for label, i in (("real", i_real), ("maxent2", i_me2)):
    where = "never (within the run)" if i is None else f"at step {steps[i]}"
    print(f"{label:8s} departs from the order-2 prediction by > {GAP:.0%} {where}")
rows = [0, min(len(steps) - 1, max(1, len(steps) // 3)), len(steps) - 1]
print(f"\n{'step':>6} {'real':>9} {'maxent2':>9} {'taylor0':>9} {'taylor2':>9} {'maxent2-taylor2':>16}")
for i in rows:
    print(f"{steps[i]:>6} {loss['real'][i]:9.4f} {loss['maxent2'][i]:9.4f} {loss['taylor0'][i]:9.4f} "
          f"{loss['taylor2'][i]:9.4f} {loss['maxent2'][i] - loss['taylor2'][i]:16.4f}")

# %% [markdown]
# ## How much of the Gaussian's loss does the second-order term carry?
#
# $\mathbb{E}_{\mathcal N}[L] - L(\mu)$ is what the covariance adds to the loss at the mean
# (measured by `maxent2` minus `taylor0`); $\tfrac12\operatorname{tr}(H\Sigma)$ is the expansion's
# account of it. Their ratio is 1 where the expansion is exact. The `maxent2` probe is a Monte
# Carlo estimate with its own noise (about $\sigma_L/\sqrt{N}$), which dominates the ratio while
# both numbers are tiny, at the first checkpoints.

# %%
added = loss["maxent2"] - loss["taylor0"]
t2 = loss["taylor2"] - loss["taylor0"]
ratio = np.where(np.abs(added) > 1e-3, t2 / np.where(added == 0, 1, added), np.nan)
fig_ratio = go.Figure()
fig_ratio.add_trace(go.Scatter(x=x, y=ratio, mode="lines+markers", name="T2 / (maxent2 - taylor0)"))
fig_ratio.add_hline(y=1, line_dash="dot", line_color="grey")
fig_ratio.update_layout(xaxis=dict(type="log", title="training step + 1"), yaxis_title="fraction explained",
                        title="Share of the Gaussian's extra loss carried by 1/2 tr(H Sigma)", height=350, width=760)
fig_ratio

# %% [markdown]
# ## Per-class terms at a checkpoint
#
# Move the slider through the checkpoints: bars are $L_y(\mu_y)$ (order 0) and
# $\tfrac12\operatorname{tr}(H_y\Sigma_y)$ (order 2) per class. Early on every class sits near
# $\log 10$ with a tiny curvature term; as training sharpens the classifier, $L_y(\mu_y)$ collapses
# (the mean digit is classified with confidence) and the order-2 term first grows, then
# shrinks as the softmax saturates at the means. (The slider needs a live kernel; the Panel app
# at the end also works when served.)

# %%
K = sum(1 for p in ds.probe.values if str(p).startswith("taylor0_c"))
per0 = np.stack([loss[f"taylor0_c{k}"] for k in range(K)], 1)  # (step, K)
per2 = np.stack([loss[f"taylor2_c{k}"] for k in range(K)], 1) - per0  # T2 per class


def class_terms_figure(checkpoint: int) -> go.Figure:
    i = checkpoint
    f = go.Figure()
    classes = [str(k) for k in range(K)]
    f.add_trace(go.Bar(x=classes, y=per0[i], name="L(mu_y)  (order 0)", marker_color="#fdae61"))
    f.add_trace(go.Bar(x=classes, y=per2[i], name="1/2 tr(H_y Sigma_y)  (order 2)", marker_color="#d7191c"))
    f.update_layout(barmode="group", yaxis=dict(type="log", title="nats"), xaxis_title="class",
                    title=f"Per-class Taylor terms at step {steps[i]}", height=350, width=760)
    return f


import ipywidgets as widgets

widgets.interactive(class_terms_figure, checkpoint=widgets.IntSlider(value=len(steps) // 2, min=0, max=len(steps) - 1,
                                                 description="checkpoint"))

# %% [markdown]
# ## Dashboard
#
# `panel serve notebooks/taylor.ipynb` serves the curves and the per-class slider.

# %%
w_step = pn.widgets.DiscreteSlider(name="step", options={str(s): i for i, s in enumerate(steps)},
                                   value=len(steps) // 2)
pn.Column(
    "## Taylor expansion of the expected loss (Belrose et al., ICML 2024)",
    pn.pane.Plotly(fig),
    pn.pane.Plotly(fig_ratio),
    w_step,
    pn.bind(lambda i: pn.pane.Plotly(class_terms_figure(i)), w_step),
).servable()
