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
# # Maximum-entropy sampling: images that keep only low-order statistics
#
# Belrose et al. (ICML 2024, *Neural networks learn statistics of increasing complexity*)
# evaluate a network during training on **synthetic** images that share only the first one or
# two moments with each real class. Loss on these probes falls early in training (the network
# uses the class means and covariances) and rises later (it starts relying on higher-order
# structure the probes lack): the distributional simplicity bias. Refinetti, Ingrosso & Goldt
# (ICML 2023) make the same point with a class-conditional Gaussian "clone" of CIFAR-10.
#
# Which synthetic distribution? The one that assumes **nothing beyond the constraints**: the
# maximum-entropy distribution. Maximising $H(p) = -\int p\log p$ subject to
# $\mathbb E_p[f_i(x)] = c_i$ gives an exponential family $p(x) \propto \exp(-\sum_i \theta_i f_i(x))$.
#
# **Order 1** (class mean $\mu_k$ of each pixel, support $[0, 1]^d$): $f_k(x) = x_k$, so
# $p(x) = \prod_k b_k e^{-b_k x_k} / (1 - e^{-b_k})$: pixels are **independent**, each a
# truncated exponential on $[0, 1]$ whose rate solves
# $$\mu(b) = \frac1b - \frac1{e^b - 1} = \mu_k$$
# ($b = 0$ is uniform, $\mu = 1/2$; $b \to \pm\infty$ a point mass at 0 or 1). Belrose et al.'s
# "independent" variant instead matches each pixel's whole marginal (still independent):
# the max-entropy distribution with all one-dimensional marginals fixed is their product.
#
# **Order 2** (mean and covariance on $\mathbb R^d$): $f = (x_k, x_k x_l)$ gives the
# **Gaussian** $\mathcal N(\mu_y, \Sigma_y)$. It is not confined to $[0, 1]$; clamping makes valid
# pixels but shifts the mean and shrinks the variance of saturated pixels. Refinetti et al.'s
# clone is this Gaussian per class *and per channel* with a tiny ridge, clamped.
#
# In the package: `dsb_widgets.maxent.ExponentialMaxEnt`, `IndependentMarginals`,
# `GaussianSampler`, `gaussian_clone`; all sample reproducibly from a seed.

# %% tags=["parameters"]
import os

FAST = os.environ.get("DSB_FAST", "0") == "1"
DATA_DIR = os.environ.get("DSB_DATA_DIR")  # folder with fashion-mnist/ and cifar10/ (optional)
MAX_TRAIN = 6_000 if FAST else None  # training images for the statistics (None: all)
N_PER_CLASS = 200 if FAST else 2_000  # samples per class for the moment checks
USE_CIFAR = not FAST
CIFAR_FULL_COV = False  # full 3072x3072 Gaussian per class: ~10 eighs, several minutes on 2 cores
SEED = 0

# %%
import pandas as pd
import panel as pn
import plotly.express as px
import plotly.graph_objects as go
import torch

from dsb_widgets.data.images import load_if_available
from dsb_widgets.ui.figures import image_grid
from dsb_widgets.maxent import (REFINETTI_RIDGE, ExponentialMaxEnt, GaussianSampler, IndependentMarginals,
                                exp_icdf, exp_mean, solve_rate)
from dsb_widgets.stats import ClassStats, ks_per_coordinate

pn.extension("plotly", inline=True)
torch.set_num_threads(1 if FAST else torch.get_num_threads())

# %% [markdown]
# ## The order-1 density on $[0, 1]$
#
# One pixel with class mean $\mu$: the max-entropy density is $\propto e^{-bx}$. Dark pixels
# (small $\mu$) get a steep decreasing density, bright ones an increasing one, mid-grey the
# uniform density. Histograms of samples (by inverse CDF, `exp_icdf`) lie on the curves.

# %%
grid = torch.linspace(0, 1, 201, dtype=torch.float64)
fig = go.Figure()
for i, m in enumerate([0.05, 0.2, 0.5, 0.8]):
    b = solve_rate(torch.tensor([m], dtype=torch.float64))
    dens = (b * torch.exp(-b * grid) / -torch.expm1(-b)) if m != 0.5 else torch.ones_like(grid)
    u = torch.rand(20_000, generator=torch.Generator().manual_seed(i), dtype=torch.float64)
    color = px.colors.qualitative.Plotly[i]
    fig.add_trace(go.Histogram(x=exp_icdf(u, b.expand_as(u)).numpy(), histnorm="probability density",
                               nbinsx=50, opacity=0.35, marker_color=color, showlegend=False))
    fig.add_trace(go.Scatter(x=grid, y=dens, line=dict(color=color), name=f"μ = {m}, b = {float(b):.2f} "
                             f"(mean of samples {float(exp_mean(b)):.3f})"))
fig.update_layout(barmode="overlay", height=360, title="max-entropy density on [0, 1] with a given mean",
                  xaxis_title="pixel value", yaxis_title="density")
fig

# %% [markdown]
# ## Fitting the samplers
#
# sklearn's **digits** always; **Fashion-MNIST** and **CIFAR-10** when `DSB_DATA_DIR` points at
# local copies (see `data/README.md`). Statistics come from the training split. For CIFAR-10
# the full-covariance Gaussian needs one 3072×3072 eigendecomposition per class, so by default
# it uses the per-channel covariance (Refinetti et al.'s choice) for both order-2 samplers.

# %%
DATA, SAMPLERS = {}, {}
for name in ["digits", "fashion_mnist"] + (["cifar10"] if USE_CIFAR else []):
    got = load_if_available(name, DATA_DIR)
    if got is None:
        continue
    train, test = got
    n = len(train) if MAX_TRAIN is None else min(MAX_TRAIN, len(train))
    x, y = train.x[:n], train.y[:n]
    stats = ClassStats.fit(x, y, num_classes=train.num_classes)
    per_channel = name == "cifar10" and not CIFAR_FULL_COV
    gauss = GaussianSampler.fit(stats, per_channel=per_channel)
    clone = GaussianSampler.fit(stats, ridge=REFINETTI_RIDGE, per_channel=True)
    DATA[name] = (x, y, train.classes, test)
    SAMPLERS[name] = {
        "order 1: exponential max-ent": lambda lab, seed, s=ExponentialMaxEnt.fit(stats): s.sample(lab, seed),
        "order 1: independent marginals": lambda lab, seed, s=IndependentMarginals.fit(x, y): s.sample(lab, seed),
        "order 2: Gaussian": lambda lab, seed, s=gauss: s.sample(lab, seed),
        "order 2: Gaussian, clamped": lambda lab, seed, s=gauss: s.sample(lab, seed, clamp=True),
        "Refinetti clone": lambda lab, seed, s=clone: s.sample(lab, seed, clamp=True),
    }
    print(f"{name}: {n} training images, d = {stats.dim}")

# %% [markdown]
# ## Samples per class and order, next to real images
#
# Columns are the classes; the first row holds real training images, then one sample of each
# sampler (unclamped Gaussians are clipped for display only). Order-1 samples are
# independent-pixel noise around the class mean: the class is visible only as a blurry average.
# Order-2 samples add the class's correlations and already look like noisy versions of the
# class; what is missing is higher-order structure (sharp edges, consistent strokes).

# %%
def sample_grid(name: str, seed: int = SEED) -> go.Figure:
    x, y, classes, _ = DATA[name]
    k = len(classes)
    lab = torch.arange(k)
    real = torch.stack([x[(y == c).nonzero()[seed % int((y == c).sum()), 0]] for c in range(k)])
    rows = [real] + [f(lab, seed).reshape(real.shape) for f in SAMPLERS[name].values()]
    short = ["real", "exp. max-ent", "marginals", "Gaussian", "Gauss. clamped", "clone"]
    return image_grid(torch.cat(rows), short, k, f"{name}: one sample per class (columns: {', '.join(classes)})")


grids = {name: sample_grid(name) for name in DATA}
grids["digits"]

# %%
grids.get("fashion_mnist", "Fashion-MNIST not available: set DSB_DATA_DIR")

# %%
grids.get("cifar10", "CIFAR-10 skipped (FAST mode or not in DSB_DATA_DIR)")

# %% [markdown]
# ## Each sampler reproduces the moments it claims, and nothing more
#
# `N_PER_CLASS` samples per class from each sampler, compared with the real training images of
# the class (averaged over classes):
#
# * **mean error**: $\max_k |\bar x_k - \mu_k|$, every sampler's constraint;
# * **variance ratio**: mean over pixels of $\widehat{\mathrm{var}}_k / \mathrm{var}_k$: only the
#   marginal and Gaussian samplers fix it; the exponential density has its own variance;
# * **off-diagonal covariance error**: $\|\mathrm{off}(\hat\Sigma - \Sigma)\|_F /
#   \|\mathrm{off}(\Sigma)\|_F$: near 1 for order 1 (no correlations at all), near 0 for order 2;
# * **mean KS**: per-pixel two-sample KS distance to the real marginal: near 0 only for the
#   independent-marginals sampler; the Gaussian matches two moments of a marginal, not its shape.
#
# Sampling error sets the floor: with $n$ = `N_PER_CLASS` samples a pixel mean is off by
# $\sigma/\sqrt n$ ($\sigma \le 0.5$), so the maximum over hundreds of pixels is a few times
# $0.5/\sqrt n$ (0.035–0.1 in fast mode) even for a perfect sampler; ratios and KS are taken
# over pixels whose class standard deviation exceeds 0.03.

# %%
def moment_table(name: str) -> pd.DataFrame:
    x, y, classes, test = DATA[name]
    k, d = len(classes), x[0].numel()
    off = ~torch.eye(d, dtype=torch.bool)
    rows = []
    for label, f in SAMPLERS[name].items():
        lab = torch.arange(k).repeat_interleave(N_PER_CLASS)
        s = f(lab, SEED).reshape(len(lab), -1).double()
        for c in range(k):
            real = x[y == c].reshape(-1, d).double()
            sc = s[lab == c]
            var = real.var(0)
            live = var > 1e-3  # pixels that actually vary in the class (sd > 0.03)
            cr, cs = torch.cov(real.T), torch.cov(sc.T)
            rows.append({"dataset": name, "sampler": label,
                         "mean error (max)": float((sc.mean(0) - real.mean(0)).abs().max()),
                         "variance ratio": float((sc.var(0)[live] / var[live]).mean()),
                         "off-diag cov error": float((cs - cr)[off].norm() / cr[off].norm()),
                         "mean KS": float(ks_per_coordinate(sc.float(), real.float())[live].mean())})
    return pd.DataFrame(rows)


table = pd.concat([moment_table(name) for name in DATA if name != "cifar10"])
summary = table.groupby(["dataset", "sampler"], sort=False).mean(numeric_only=True).round(3)
summary

# %%
long = summary.reset_index().melt(id_vars=["dataset", "sampler"], var_name="statistic", value_name="value")
fig = px.bar(long, x="statistic", y="value", color="sampler", barmode="group", facet_row="dataset",
             title="moments of the samples vs the real class (ideal: mean error 0, variance ratio 1, "
                   "cov error 0, KS 0)")
fig.update_layout(height=320 * len(DATA) if "cifar10" not in DATA else 320 * (len(DATA) - 1))
fig

# %% [markdown]
# The independent-marginals sampler's variance ratio sits a little below 1: for pixels that are
# almost always 0, a 256-entry quantile table cannot hold an outlier of mass below 1/255, and
# linear interpolation spreads it out. Clamping the Gaussian to $[0, 1]$ moves the mean of pixels near the edges of the range and
# shrinks their variance (variance ratio below 1): valid pixels are bought with moments. The
# Refinetti clone also drops cross-channel covariances (irrelevant for grey-scale data) and is
# clamped, so it sits with the clamped Gaussian.
#
# ## Covariance of one class
#
# Real, order-1 and order-2 covariance of the digit "0" (64×64 pixels): order 1 is diagonal.

# %%
x, y, _, _ = DATA["digits"]
real0 = x[y == 0].reshape(-1, 64).double()
lab0 = torch.zeros(N_PER_CLASS * 4, dtype=torch.long)
covs = [torch.cov(real0.T)] + [torch.cov(SAMPLERS["digits"][s](lab0, SEED).reshape(len(lab0), -1).double().T)
                               for s in ["order 1: exponential max-ent", "order 2: Gaussian"]]
fig = px.imshow(torch.stack(covs).numpy(), facet_col=0, color_continuous_scale="RdBu_r", zmin=-0.15, zmax=0.15)
names = ["real", "order 1 (exponential)", "order 2 (Gaussian)"]
fig.for_each_annotation(lambda a: a.update(text=names[int(a.text.split("=")[1])]))
fig.update_layout(height=360, title="digits, class 0: pixel covariance")
fig

# %% [markdown]
# ## Dashboard
#
# `panel serve notebooks/maxent.ipynb`: choose a dataset, a class and a seed; each row is one
# sampler, with real images on top.

# %%
w_data = pn.widgets.Select(name="dataset", options=list(DATA), value="digits")
w_cls = pn.widgets.Select(name="class")
w_seed = pn.widgets.IntSlider(name="seed", start=0, end=99, value=SEED)


def _classes(dataset: str) -> None:
    w_cls.options = {c: i for i, c in enumerate(DATA[dataset][2])}  # class names
    w_cls.value = 0


_classes(w_data.value)
w_data.param.watch(lambda e: _classes(e.new), "value")


def class_grid(name: str, c: int, seed: int, n: int = 8) -> go.Figure:
    x, y, classes, _ = DATA[name]
    lab = torch.full((n,), c, dtype=torch.long)
    idx = (y == c).nonzero().flatten()
    real = x[idx[torch.randperm(len(idx), generator=torch.Generator().manual_seed(seed))[:n]]]
    rows = [real] + [f(lab, seed).reshape(real.shape) for f in SAMPLERS[name].values()]
    return image_grid(torch.cat(rows), ["real", "exp. max-ent", "marginals", "Gaussian", "Gauss. clamped", "clone"],
                      n, f"{name}: class '{classes[c]}', seed {seed}")


dashboard = pn.Column(
    "## Max-entropy samples (Belrose et al., ICML 2024; Refinetti et al., ICML 2023)",
    pn.Row(w_data, w_cls, w_seed),
    pn.bind(lambda d_, c_, s_: pn.pane.Plotly(class_grid(d_, c_, s_)), w_data, w_cls, w_seed),
)
dashboard.servable()
