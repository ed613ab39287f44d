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
# # Gaussian optimal transport between classes
#
# Belrose et al. (ICML 2024, *Neural networks learn statistics of increasing complexity*) ask
# whether a network early in training uses only the **first two moments** of each class. Their
# test edits real images: take an image $x$ of class $p$ and move it, as little as possible, so
# that the class-$p$ images as a whole acquire the mean $\mu_q$ and covariance $\Sigma_q$ of
# another class $q$. A classifier that only looks at means and covariances must then answer
# $q$; one that uses higher-order structure (strokes, textures, shapes) still answers $p$.
# Accuracy on the *target* label $q$ rises early in training and falls later: the
# distributional simplicity bias.
#
# **The map.** Among all maps $T$ that push $\mathcal N(\mu_p, \Sigma_p)$ onto
# $\mathcal N(\mu_q, \Sigma_q)$, the one with the least mean squared displacement
# $\mathbb E\|T(x) - x\|^2$ (the $W_2$-optimal transport map; Knott & Smith 1984) is affine,
#
# $$T(x) = A\,(x - \mu_p) + \mu_q, \qquad
#   A = \Sigma_p^{-1/2}\big(\Sigma_p^{1/2}\,\Sigma_q\,\Sigma_p^{1/2}\big)^{1/2}\Sigma_p^{-1/2}.$$
#
# **Derivation sketch.** (1) An affine map $x \mapsto A(x-\mu_p)+\mu_q$ sends
# $\mathcal N(\mu_p,\Sigma_p)$ to $\mathcal N(\mu_q, A\Sigma_pA^\top)$, so we need
# $A\Sigma_pA^\top = \Sigma_q$. (2) Brenier's theorem: the optimal map is the gradient of a
# convex function; for an affine map that means $A$ is **symmetric positive semi-definite**.
# (3) With $A = A^\top$, multiply $A\Sigma_pA = \Sigma_q$ on both sides by $\Sigma_p^{1/2}$:
# $(\Sigma_p^{1/2}A\Sigma_p^{1/2})^2 = \Sigma_p^{1/2}\Sigma_q\Sigma_p^{1/2}$. The PSD square root
# is unique, so $\Sigma_p^{1/2}A\Sigma_p^{1/2} = (\Sigma_p^{1/2}\Sigma_q\Sigma_p^{1/2})^{1/2}$,
# which gives the formula. The cost of the optimal plan is the Bures–Wasserstein distance
# $W_2^2 = \|\mu_p-\mu_q\|^2 + \operatorname{tr}\Sigma_p + \operatorname{tr}\Sigma_q
# - 2\operatorname{tr}(\Sigma_p^{1/2}\Sigma_q\Sigma_p^{1/2})^{1/2}$.
#
# Pixel covariances are often singular (pixels that never vary in a class, or $d > n$): then
# $\Sigma_p^{-1/2}$ is a pseudo-inverse (eigenvalues below $\lambda_{\max} d\,\varepsilon$
# dropped, as in `concept_erasure.ot_map`), and $A\Sigma_pA = P\Sigma_qP$ with $P$ the projector
# on the range of $\Sigma_p$: directions the source never moves along cannot be transported.
#
# In this package: `dsb_widgets.gaussian_ot.ot_matrix(cov_p, cov_q)` is the formula;
# `GaussianOT` factors it through one eigendecomposition per class and one per class pair,
# computed on demand and cached (all 90 CIFAR-10 maps at once would take 3.4 GB);
# `GaussianOT.fit(stats)` takes the moments from `ClassStats` and `transport(x, source, target, t=...)` applies $(1-t)\,x + t\,T(x)$.

# %% tags=["parameters"]
import os

FAST = os.environ.get("DSB_FAST", "0") == "1"
DATA_DIR = os.environ.get("DSB_DATA_DIR")  # folder with fashion-mnist/ and cifar10/ (optional)
N_SYNTH = 20_000 if FAST else 200_000  # Gaussian samples for the numerical check
MAX_TRAIN = 6_000 if FAST else None  # training images per dataset for the statistics (None: all)
USE_CIFAR = not FAST  # CIFAR-10 (d = 3072): one class pair costs ~1 min on a 2-core CPU
N_SHOW = 8  # images per grid row
SEED = 0

# %%
import numpy as np
import pandas as pd
import panel as pn
import plotly.express as px
import plotly.graph_objects as go
import torch

from dsb_widgets.data.images import load_if_available
from dsb_widgets.ui.figures import image_grid
from dsb_widgets.gaussian_ot import GaussianOT, ot_matrix
from dsb_widgets.stats import ClassStats

pn.extension("plotly", inline=True)
BLUE, ORANGE, GREEN = "#0072B2", "#E69F00", "#009E73"  # Okabe-Ito, as in dsb_widgets.ui.colors
torch.set_num_threads(1 if FAST else torch.get_num_threads())  # tiny matrices: threads only contend
_ = torch.manual_seed(SEED)

# %% [markdown]
# ## 1. The map moves Gaussian samples onto the target moments
#
# First a check on exact Gaussians. In two dimensions we can look at it: samples of
# $\mathcal N(\mu_p, \Sigma_p)$ (blue), their images under $T$ (orange), and fresh samples of
# $\mathcal N(\mu_q, \Sigma_q)$ (green) for comparison. Lines join a few points to their images:
# the map is a linear stretch-and-rotate, with no crossings (it is the gradient of a convex
# function).

# %%
gen = torch.Generator().manual_seed(SEED)
mu = torch.tensor([[0.0, 0.0], [4.0, 1.0]], dtype=torch.float64)
cov = torch.tensor([[[2.0, 1.2], [1.2, 1.0]], [[0.6, -0.5], [-0.5, 1.5]]], dtype=torch.float64)
chol = torch.linalg.cholesky(cov)
pts = mu[:, None] + torch.randn(2, 600, 2, generator=gen, dtype=torch.float64) @ chol.mT  # (2, 600, 2)
ot2 = GaussianOT.from_moments(mu, cov, dtype=torch.float64)
moved2 = ot2.transport(pts[0], 0, 1)

fig = go.Figure()
for i in range(0, 600, 40):
    fig.add_trace(go.Scatter(x=[pts[0, i, 0], moved2[i, 0]], y=[pts[0, i, 1], moved2[i, 1]], mode="lines",
                             line=dict(color="gray", width=0.6), showlegend=False, hoverinfo="skip"))
for arr, name, colour in [(pts[0], "source N(mu_p, S_p)", BLUE), (moved2, "T(source)", ORANGE),
                          (pts[1], "target N(mu_q, S_q)", GREEN)]:  # colours named in the text above
    fig.add_trace(go.Scattergl(x=arr[:, 0], y=arr[:, 1], mode="markers", name=name,
                               marker=dict(size=4, opacity=0.6, color=colour)))
fig.update_layout(height=420, title="Gaussian OT in 2-D", yaxis_scaleanchor="x")
fig

# %% [markdown]
# In higher dimension we check the moments numerically: transport `N_SYNTH` samples of a random
# 32-dimensional Gaussian and compare the empirical mean and covariance of the result with the
# target's. Sampling error sets the scale: the standardised mean error is $O(1/\sqrt n)$ and a
# correlation entry's error at most $\sqrt{2/n}$ (one standard deviation; the maximum over 32 or
# 1024 entries is naturally ~3 times that). The map also solves its defining equation
# $A\Sigma_pA = \Sigma_q$ to machine precision.

# %%
d = 32
a = torch.randn(2, d, d, generator=gen, dtype=torch.float64)
cov_r = a @ a.mT / d + 0.05 * torch.eye(d, dtype=torch.float64)
mu_r = torch.randn(2, d, generator=gen, dtype=torch.float64)
xs = mu_r[0] + torch.randn(N_SYNTH, d, generator=gen, dtype=torch.float64) @ torch.linalg.cholesky(cov_r[0]).mT
moved = GaussianOT.from_moments(mu_r, cov_r).transport(xs, 0, 1)
sd = cov_r[1].diagonal().sqrt()
A = ot_matrix(cov_r[0], cov_r[1])
check = pd.DataFrame(
    {
        "measured": [
            float(((moved.mean(0) - mu_r[1]) / sd).abs().max()),
            float(((torch.cov(moved.T) - cov_r[1]) / torch.outer(sd, sd)).abs().max()),
            float((A @ cov_r[0] @ A - cov_r[1]).abs().max()),
            float((A - A.T).abs().max()),
            float(torch.linalg.eigvalsh(A).min()),
        ],
        "1-sd sampling scale": [1 / N_SYNTH**0.5, (2 / N_SYNTH) ** 0.5, 0.0, 0.0, 0.0],
    },
    index=["max |mean error| / sd", "max |corr. error|", "max |A S_p A - S_q|", "max |A - A^T|", "min eig(A) (>= 0)"],
)
check

# %% [markdown]
# ## 2. Real images: class statistics
#
# `ClassStats` accumulates each class's mean and covariance of flattened images in float64 in
# one streaming pass. We always use sklearn's 8×8 **digits** (bundled, offline) and add
# **Fashion-MNIST** and **CIFAR-10** when `DSB_DATA_DIR` points at local copies (see
# `data/README.md`). In fast mode only a subset of the training images is used.

# %%
names = ["digits", "fashion_mnist"] + (["cifar10"] if USE_CIFAR else [])
DATA, OTS, EXACT = {}, {}, {}
for name in names:
    got = load_if_available(name, DATA_DIR)
    if got is None:
        continue
    train, test = got
    n = len(train) if MAX_TRAIN is None else min(MAX_TRAIN, len(train))
    stats = ClassStats.fit(train.x[:n], train.y[:n], num_classes=train.num_classes)
    DATA[name] = (train, test)
    # maps are built lazily, per class pair, on first use
    OTS[name] = GaussianOT.fit(stats, shrinkage="optimal")  # for held-out images (see section 5)
    if name != "cifar10":
        EXACT[name] = GaussianOT.fit(stats, dtype=torch.float64)  # plain sample covariances
    print(f"{name}: {n} training images, d = {stats.dim}, classes = {train.classes}")

# %% [markdown]
# ## 3. Moving images of class $a$ onto class $b$
#
# Edits of held-out images use the shrunk covariances (`shrinkage="optimal"`, the
# Bodnar–Gupta–Parolya linear shrinkage Belrose et al. use for their order-2 statistics); section
# 5 shows why. Rows: test images of class $a$; the same images transported onto class $b$'s mean and
# covariance; real images of class $b$ for reference. Transported images are clipped to [0, 1]
# for display only (clipping is not moment-preserving; the moment checks below are unclipped).
# To a human they still look like class $a$ with a "ghost" of class $b$: the edit changes the
# first two moments but leaves most higher-order structure in place.

# %%
def transport_grid(name: str, a: int, b: int, t: float = 1.0) -> go.Figure:
    train, test = DATA[name]
    xa = test.x[test.y == a][:N_SHOW]
    xb = test.x[test.y == b][:N_SHOW]
    moved = OTS[name].transport(xa, a, b, t=t)
    cls = train.classes
    return image_grid(torch.cat([xa, moved, xb]), [f"{cls[a]}", f"{cls[a]} → {cls[b]}", f"{cls[b]}"], N_SHOW,
                      f"{name}: Gaussian OT of class '{cls[a]}' onto '{cls[b]}' (t = {t:.2f})")


PAIRS = {"digits": (3, 8), "fashion_mnist": (7, 1), "cifar10": (1, 9)}
figs = {name: transport_grid(name, *PAIRS[name]) for name in DATA}
figs["digits"]

# %%
figs.get("fashion_mnist", "Fashion-MNIST not available: set DSB_DATA_DIR")

# %%
figs.get("cifar10", "CIFAR-10 skipped (FAST mode or not in DSB_DATA_DIR)")

# %% [markdown]
# ## 4. Did the moments move? All class pairs on digits
#
# For every ordered pair $(a, b)$ we transport all images of class $a$ and measure the mean
# error $\|\bar x' - \mu_b\|$ and the covariance error $\|\hat\Sigma' - \Sigma_b\|_F / \|\Sigma_b\|_F$
# before (the untouched images of $a$) and after the edit, unclipped and clipped to [0, 1].
# The statistics are those of the same images, so unclipped the **mean** lands on $\mu_b$ up to
# round-off. The **covariance** does not, in general: class $a$ never varies along some
# directions (rank-deficient $\Sigma_a$: a few digit pixels are always 0), and an affine map
# cannot create variance there. Theory says exactly how much is left: the transported covariance
# is $A\Sigma_aA = P\Sigma_bP$ with $P$ the projector on the range of $\Sigma_a$, so the error
# should equal $\|P\Sigma_bP - \Sigma_b\|_F / \|\Sigma_b\|_F$ (column "rank limit"). The
# sentence under the table is computed from it.

# %%
def moment_table(name: str) -> pd.DataFrame:
    train, _ = DATA[name]
    n = len(train) if MAX_TRAIN is None else min(MAX_TRAIN, len(train))
    x, y = train.x[:n].double(), train.y[:n]
    ot, k = EXACT[name], train.num_classes
    st = ClassStats.fit(x, y, num_classes=k)
    means, covs = st.mean, st.cov  # (K, d), (K, d, d)
    rows = []
    for a in range(k):
        xa = x[y == a].reshape(-1, st.dim)
        for b in range(k):
            if a == b:
                continue
            ref = covs[b].norm()
            moved = ot.transport(xa, a, b)
            ev, vec = torch.linalg.eigh(covs[a])
            keep = vec[:, ev > ev.max() * st.dim * torch.finfo(torch.float64).eps]  # range of S_a (pinv threshold)
            proj = keep @ keep.T
            limit = float((proj @ covs[b] @ proj - covs[b]).norm() / ref)
            for label, z in [("before", xa), ("after", moved), ("after, clipped", moved.clamp(0, 1))]:
                rows.append({"a": a, "b": b, "edit": label,
                             "mean error": float((z.mean(0) - means[b]).norm()),
                             "cov rel. error": float((torch.cov(z.T) - covs[b]).norm() / ref),
                             "rank limit": limit})
    return pd.DataFrame(rows)


moments = moment_table("digits")
summary = moments.groupby("edit", sort=False)[["mean error", "cov rel. error"]].agg(["mean", "max"])
summary

# %%
aft = moments[moments.edit == "after"]
gap = (aft["cov rel. error"] - aft["rank limit"]).abs()
worst = aft.loc[aft["cov rel. error"].idxmax()]
print(f"After the edit (unclipped): mean error at most {aft['mean error'].max():.1e} (round-off); covariance "
      f"error {aft['cov rel. error'].mean():.3f} on average, at most {worst['cov rel. error']:.3f} "
      f"({int(worst.a)} -> {int(worst.b)}), down from {moments[moments.edit == 'before']['cov rel. error'].mean():.3f} "
      f"before. The rank limit ||P S_b P - S_b|| / ||S_b|| predicts it to within {gap.max():.1e} on every pair: "
      f"what is left is the variance of class b along pixels class a never varies, not a numerical error.")

# %%
after = moments[moments.edit == "after"].pivot(index="a", columns="b", values="cov rel. error")
before = moments[moments.edit == "before"].pivot(index="a", columns="b", values="cov rel. error")
fig = px.imshow(np.log10(np.stack([before.values, after.values]) + 1e-17), facet_col=0, zmin=-16, zmax=0,
                labels=dict(x="target b", y="source a", color="log10 rel. error"), color_continuous_scale="viridis")
fig.for_each_annotation(lambda a: a.update(text=["before the edit", "after OT"][int(a.text.split("=")[1])]))
fig.update_layout(height=380, title="digits: covariance error ||S' - S_b||_F / ||S_b||_F, all class pairs")
fig

# %% [markdown]
# ## 5. A caveat: near-singular covariances
#
# The formula divides by $\Sigma_p^{1/2}$. Pixel covariances have eigenvalues spread over many
# orders of magnitude (border pixels that are almost always 0), and the pseudo-inverse keeps
# every eigenvalue above $\lambda_{\max} d\,\varepsilon \approx 10^{-13}\lambda_{\max}$. On the
# images the statistics came from, that is harmless: their coordinates along tiny-variance
# directions are tiny too. A *held-out* image is not: a stray non-zero border pixel has a
# component along a direction of variance $10^{-12}$ and is amplified by up to $10^{6}$. The
# shrunk covariance $(1-s)\Sigma + s\,\tfrac{\operatorname{tr}\Sigma}{d}I$ bounds the condition
# number. Below: the range of pixel values after OT of test images, with and without shrinkage.

# %%
def blowup(name: str) -> pd.DataFrame:
    _, test = DATA[name]
    a, b = PAIRS[name]
    xa = test.x[test.y == a]
    rows = {}
    for label, ot in [("plain covariance", EXACT[name]), ('shrinkage="optimal"', OTS[name])]:
        z = ot.transport(xa, a, b)
        rows[label] = {"min pixel": float(z.min()), "max pixel": float(z.max()),
                       "share outside [-0.5, 1.5]": float(((z < -0.5) | (z > 1.5)).float().mean())}
    return pd.DataFrame(rows).T.round(4)


pd.concat({name: blowup(name) for name in EXACT})

# %% [markdown]
# ## 6. Interpolating: $(1-t)\,x + t\,T(x)$
#
# The slider interpolates between the original image ($t = 0$) and its full OT edit ($t = 1$).
# Because $T$ is affine, the interpolant is the *displacement interpolation* (McCann): the
# class-$a$ images at time $t$ have mean $(1-t)\mu_a + t\mu_b$ and covariance
# $((1-t)I + tA)\,\Sigma_a\,((1-t)I + tA)$, the $W_2$ geodesic between the two Gaussians.
# (The ipywidgets slider needs a live kernel; the Panel app below also works when served. The
# figure is *displayed* by the callback: `widgets.interactive` shows a returned Plotly figure
# only as text in some front-ends. Below the slider, a static strip of t = 0, 0.5, 1 for a saved
# copy.)

# %%
import ipywidgets as widgets
from IPython.display import display


def show(dataset: str = "digits", a: int = 3, b: int = 8, t: float = 1.0) -> None:
    display(transport_grid(dataset, a, b, t))


# In FAST mode (CI) the slider is not built: nbclient intermittently hung (kernel idle, client
# waiting) on the Output widget that `interactive` fills while the cell executes.
slider = None if FAST else widgets.interactive(
    show, dataset=list(DATA), a=(0, 9), b=(0, 9), t=widgets.FloatSlider(value=1.0, min=0.0, max=1.0, step=0.05))
slider

# %%
a_, b_ = PAIRS["digits"]
xa_ = DATA["digits"][1].x[DATA["digits"][1].y == a_][:N_SHOW]
steps_ = [OTS["digits"].transport(xa_, a_, b_, t=t) for t in (0.0, 0.5, 1.0)]
image_grid(torch.cat(steps_), ["t = 0", "t = 0.5", "t = 1"], N_SHOW, f"digits: displacement interpolation {a_} → {b_}")

# %% [markdown]
# ## 7. Dashboard
#
# Pick a dataset, a source and a target class and the interpolation $t$; the table gives the
# moments of the transported class. `panel serve notebooks/gaussian_ot.ipynb` serves it. A new
# CIFAR-10 pair costs one eigendecomposition of a 3072×3072 matrix (~20–30 s on 2 CPU cores;
# pairs are cached); digits and Fashion-MNIST pairs are instant.

# %%
w_data = pn.widgets.Select(name="dataset", options=list(DATA), value="digits")
w_src = pn.widgets.Select(name="source class a")
w_tgt = pn.widgets.Select(name="target class b")
w_t = pn.widgets.FloatSlider(name="t", start=0.0, end=1.0, step=0.05, value=1.0)


def _classes(dataset: str) -> None:
    opts = {c: i for i, c in enumerate(DATA[dataset][0].classes)}
    w_src.options, w_tgt.options = opts, opts
    w_src.value, w_tgt.value = PAIRS[dataset]


_classes(w_data.value)
w_data.param.watch(lambda e: _classes(e.new), "value")


def _moments(dataset: str, a: int, b: int, t: float) -> pd.DataFrame:
    train, test = DATA[dataset]
    st = OTS[dataset]
    xa = test.x[test.y == a].reshape(-1, st.dim).double()
    z = st.transport(xa, a, b, t=t)
    ref = st.cov[b].norm()
    return pd.DataFrame({"mean error ||x̄ - μ_b||": [float((xa.mean(0) - st.mean[b]).norm()), float((z.mean(0) - st.mean[b]).norm())],
                         "cov rel. error": [float((torch.cov(xa.T) - st.cov[b]).norm() / ref), float((torch.cov(z.T) - st.cov[b]).norm() / ref)]},
                        index=["test images of a", f"after OT, t = {t:.2f}"]).round(4)


dashboard = pn.Column(
    "## Gaussian OT between classes (Belrose et al., ICML 2024)",
    pn.Row(w_data, w_src, w_tgt, w_t),
    pn.bind(lambda d_, a_, b_, t_: pn.pane.Plotly(transport_grid(d_, a_, b_, t_)), w_data, w_src, w_tgt, w_t),
    pn.bind(lambda d_, a_, b_, t_: pn.pane.DataFrame(_moments(d_, a_, b_, t_)), w_data, w_src, w_tgt, w_t),
)
dashboard.servable()
