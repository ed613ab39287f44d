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
# # Coordinatewise quantile normalization (CQN)
#
# Belrose et al. (ICML 2024, *Neural networks learn statistics of increasing complexity*) edit
# real images so that they carry the **first-order** statistics of another class while keeping
# everything else. For an image $x$ of class $a$ and a target class $b$, each pixel $k$ is sent
# through its own CDF in class $a$ and the quantile function of the same pixel in class $b$:
#
# $$x'_k = Q_{b,k}\big(F_{a,k}(x_k)\big), \qquad k = 1, \dots, d.$$
#
# If $x_k$ has CDF $F_{a,k}$, then $F_{a,k}(x_k)$ is uniform on $[0, 1]$ and $Q_{b,k}$ of a
# uniform variable has CDF $F_{b,k}$: **every one-dimensional marginal of the edited class-$a$
# images is exactly class $b$'s** (mean, variance, every quantile of every pixel). In one
# dimension this monotone rearrangement is also the $W_2$-optimal transport map, so CQN is
# "optimal transport, one pixel at a time". What it does not touch is the *dependence* between
# pixels: the copula, and in particular the correlations, stay those of class $a$.
#
# That makes CQN the mirror image of Gaussian OT (see `gaussian_ot.ipynb`):
#
# | edit | matches the target's | keeps the source's |
# |---|---|---|
# | Gaussian OT | mean and **covariance** (joint 2nd order) | non-Gaussian shape of the marginals |
# | CQN | every **marginal** (all 1-D statistics) | correlations / copula |
#
# A network that relies on per-pixel intensity statistics answers $b$ on CQN images; Belrose et
# al. find that accuracy on the target label $b$ rises early in training and falls later.
#
# **Implementation** (`dsb_widgets.quantile.QuantileNormalizer`): per class and pixel a table of
# `num_quantiles` quantiles (256 here, as Belrose et al.), linearly interpolated, so $Q$ is
# continuous. Pixels have atoms (many exact zeros), where $F$ is multivalued; the randomised
# probability integral transform draws $F$ uniformly over the atom's range, so atoms of the
# source are spread over the target's distribution instead of collapsing to one value.

# %% tags=["parameters"]
import os

FAST = os.environ.get("DSB_FAST", "0") == "1"
DATA_DIR = os.environ.get("DSB_DATA_DIR")  # folder with fashion-mnist/ and cifar10/ (optional)
NUM_QUANTILES = 256
MAX_TRAIN = 6_000 if FAST else None  # training images for tables and moments (None: all)
USE_CIFAR = not FAST  # CIFAR-10's Gaussian OT comparison costs ~1 min per class pair on 2 cores
N_SHOW = 8
SEED = 0

# %%
import pandas as pd
import panel as pn
import plotly.express as px
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from dsb_widgets.data.images import load_if_available
from dsb_widgets.ui.colors import probe_colors
from dsb_widgets.ui.figures import image_grid
from dsb_widgets.gaussian_ot import GaussianOT
from dsb_widgets.quantile import QuantileNormalizer
from dsb_widgets.stats import ClassStats, ks_per_coordinate

pn.extension("plotly", inline=True)
torch.set_num_threads(1 if FAST else torch.get_num_threads())
GEN = torch.Generator().manual_seed(SEED)

# %% [markdown]
# ## Data and fitted tables
#
# sklearn's 8×8 **digits** always (17 grey levels: strong atoms); **Fashion-MNIST** and
# **CIFAR-10** when `DSB_DATA_DIR` points at local copies (see `data/README.md`). Quantile tables
# and class moments come from the training split; edits are applied to held-out test images.

# %%
DATA, QN, OT, STATS = {}, {}, {}, {}
for name in ["digits", "fashion_mnist"] + (["cifar10"] if USE_CIFAR else []):
    got = load_if_available(name, DATA_DIR)
    if got is None:
        continue
    train, test = got
    n = len(train) if MAX_TRAIN is None else min(MAX_TRAIN, len(train))
    DATA[name] = (train.x[:n], train.y[:n], test, train.classes)
    QN[name] = QuantileNormalizer.fit(train.x[:n], train.y[:n], num_quantiles=NUM_QUANTILES)
    STATS[name] = ClassStats.fit(train.x[:n], train.y[:n], num_classes=train.num_classes)
    OT[name] = GaussianOT.fit(STATS[name], shrinkage="optimal")  # shrunk: well conditioned
    print(f"{name}: {n} training images, d = {STATS[name].dim}")

# %% [markdown]
# ## Marginals before and after
#
# Take class $a$ = "3" and $b$ = "8" on digits and three pixels where the two classes differ
# most (largest two-sample KS distance). Each panel overlays the pixel's histogram in class $a$
# (test images), in class $b$ (training images: the distribution the tables describe) and after
# CQN. The edited histogram lies on top of the target's, atoms included.

# %%
def edits(name: str, a: int, b: int, t: float = 1.0, split: str = "test") -> dict[str, torch.Tensor]:
    """Flattened class-a images of ``split``, their CQN and OT edits (interpolated by t), and the
    class-b training images the tables and moments describe."""
    xtr, ytr, test, _ = DATA[name]
    xa = test.x[test.y == a] if split == "test" else xtr[ytr == a]
    cqn = QN[name].transform(xa, a, b, generator=torch.Generator().manual_seed(SEED))
    ot = OT[name].transport(xa, a, b)
    mix = lambda z: (1 - t) * xa + t * z  # noqa: E731
    flat = lambda z: z.reshape(len(z), -1).float()  # noqa: E731
    return {"source a": flat(xa), "CQN a→b": flat(mix(cqn)), "OT a→b": flat(mix(ot)),
            "target b": flat(xtr[ytr == b])}


def marginal_figure(name: str, a: int, b: int, pixels: list[int] | None = None, t: float = 1.0) -> go.Figure:
    e = edits(name, a, b, t)
    if pixels is None:
        pixels = ks_per_coordinate(e["source a"], e["target b"]).argsort(descending=True)[:3].tolist()
    fig = make_subplots(rows=1, cols=len(pixels), subplot_titles=[f"pixel {k}" for k in pixels])
    edit = probe_colors(["cqn", "ot"])  # the probes' colours in every view (dsb_widgets.ui.colors)
    colors = {"source a": "#7f7f7f", "target b": "#000000", "CQN a→b": edit["cqn"], "OT a→b": edit["ot"]}
    for c, k in enumerate(pixels, start=1):
        for label in ["source a", "target b", "CQN a→b", "OT a→b"]:
            fig.add_trace(go.Histogram(x=e[label][:, k].numpy(), name=label, histnorm="probability density",
                                       opacity=0.55, nbinsx=34, marker_color=colors[label],
                                       legendgroup=label, showlegend=c == 1), row=1, col=c)
    cls = DATA[name][3]
    fig.update_layout(barmode="overlay", height=330,
                      title=f"{name}: pixel marginals, '{cls[a]}' → '{cls[b]}' (t = {t:.2f})")
    return fig


marginal_figure("digits", 3, 8)

# %% [markdown]
# The Gaussian-OT edit (indigo; CQN vermillion, source grey, target black) gets the mean and variance of each pixel right but not the
# shape: it produces negative intensities and smears the atom at 0, because it moves pixels
# *jointly* and linearly. CQN reproduces the whole marginal.
#
# ## KS statistics over all pixels and class pairs
#
# For each ordered class pair we compute the two-sample Kolmogorov–Smirnov distance between
# every pixel's edited distribution and the target's, for the untouched images, CQN and OT,
# both for the training images the tables were fitted on ("train": the map itself) and for
# held-out test images ("test": includes sampling noise; the "critical 5%" column is the KS
# test's critical value at those sample sizes, the level pure noise stays below). Pixels that
# are constant in both classes have KS = 0 whatever the edit.

# %%
def ks_table(name: str, pairs: list[tuple[int, int]], split: str) -> pd.DataFrame:
    rows = []
    for a, b in pairs:
        e = edits(name, a, b, split=split)
        n1, n2 = len(e["source a"]), len(e["target b"])
        for label in ["source a", "CQN a→b", "OT a→b"]:
            ks = ks_per_coordinate(e[label], e["target b"])
            rows.append({"dataset": name, "a": a, "b": b, "edit": label, "mean KS": float(ks.mean()),
                         "max KS": float(ks.max()), "images": split, "critical 5%": 1.36 * ((n1 + n2) / (n1 * n2)) ** 0.5})
    return pd.DataFrame(rows)


def some_pairs(k: int, n: int) -> list[tuple[int, int]]:
    pairs = [(a, b) for a in range(k) for b in range(k) if a != b]
    idx = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(SEED))[:n]
    return [pairs[i] for i in idx.tolist()]


ks_all = pd.concat([ks_table(name, some_pairs(10, 5 if FAST else 90), split)
                    for name in DATA if name != "cifar10" for split in ("train", "test")])
ks_all.groupby(["dataset", "images", "edit"], sort=False)[["mean KS", "max KS", "critical 5%"]].mean().round(3)

# %%
fig = px.box(ks_all, x="edit", y="mean KS", color="dataset", facet_col="images", points="all",
             title="mean per-pixel KS distance to the target class (each point: one class pair)")
fig.update_layout(height=380)
fig

# %% [markdown]
# ## CQN matches marginals, not covariance; OT matches covariance, not marginals
#
# Same pairs, three numbers per edit: the mean error $\|\bar x' - \mu_b\|$ (both edits match
# the mean: it is a 1-D statistic *and* a moment), the relative covariance error
# $\|\hat\Sigma' - \Sigma_b\|_F / \|\Sigma_b\|_F$ (OT's target; CQN only fixes its diagonal),
# and the mean KS distance (CQN's target). The edits are applied to the training images of class
# $a$, whose statistics define both maps, so this measures the maps, not sampling noise. OT uses
# the shrunk covariance (`shrinkage="optimal"`: without it, held-out images blow up, see
# `gaussian_ot.ipynb`), so its covariance error is small but not zero.

# %%
def compare(name: str, pairs: list[tuple[int, int]]) -> pd.DataFrame:
    st = STATS[name]
    means, covs = st.mean, st.cov
    rows = []
    for a, b in pairs:
        e = edits(name, a, b, split="train")
        for label in ["source a", "CQN a→b", "OT a→b"]:
            z = e[label].double()
            cz = torch.cov(z.T)
            off = ~torch.eye(st.dim, dtype=torch.bool)
            rows.append({"dataset": name, "edit": label,
                         "mean error": float((z.mean(0) - means[b]).norm()),
                         "cov rel. error": float((cz - covs[b]).norm() / covs[b].norm()),
                         "off-diag cov rel. error": float((cz - covs[b])[off].norm() / covs[b][off].norm()),
                         "mean KS": float(ks_per_coordinate(e[label], e["target b"]).mean())})
    return pd.DataFrame(rows)


cmp = pd.concat([compare(name, some_pairs(10, 4 if FAST else 30)) for name in DATA if name != "cifar10"])
cmp_summary = cmp.groupby(["dataset", "edit"], sort=False).mean().round(3)
cmp_summary

# %%
long = cmp_summary.reset_index().melt(id_vars=["dataset", "edit"], var_name="statistic", value_name="error")
fig = px.bar(long, x="statistic", y="error", color="edit", barmode="group", facet_col="dataset",
             title="what each edit matches (lower = closer to the target class)")
fig.update_layout(height=380)
fig

# %% [markdown]
# ## Image grids
#
# Rows: test images of class $a$, their CQN edit, their Gaussian-OT edit, and real images of
# class $b$. CQN keeps the source's shapes and re-maps intensities pixel by pixel; OT adds a
# smooth "ghost" of the target.

# %%
def edit_grid(name: str, a: int, b: int, t: float = 1.0) -> go.Figure:
    e = edits(name, a, b, t)
    cls, shape = DATA[name][3], tuple(DATA[name][2].x.shape[1:])
    x = torch.cat([e[k][:N_SHOW] for k in ["source a", "CQN a→b", "OT a→b", "target b"]])
    return image_grid(x.reshape(-1, *shape), [cls[a], "CQN", "OT", cls[b]], N_SHOW,
                      f"{name}: '{cls[a]}' → '{cls[b]}' (t = {t:.2f})")


PAIRS = {"digits": (3, 8), "fashion_mnist": (7, 1), "cifar10": (1, 9)}
grids = {name: edit_grid(name, *PAIRS[name]) for name in DATA}
grids["digits"]

# %%
grids.get("fashion_mnist", "Fashion-MNIST not available: set DSB_DATA_DIR")

# %%
grids.get("cifar10", "CIFAR-10 skipped (FAST mode or not in DSB_DATA_DIR)")

# %% [markdown]
# ## Interpolating $(1-t)\,x + t\,\mathrm{CQN}(x)$
#
# A slider between the original ($t = 0$) and the full edit ($t = 1$); marginals and images
# update together. (Needs a live kernel; the Panel app below also works when served.)

# %%
import ipywidgets as widgets


def show(dataset: str = "digits", a: int = 3, b: int = 8, t: float = 1.0) -> go.Figure:
    return marginal_figure(dataset, a, b, t=t)


widgets.interactive(show, dataset=list(DATA), a=(0, 9), b=(0, 9), t=widgets.FloatSlider(value=1.0, min=0.0, max=1.0, step=0.05))

# %% [markdown]
# ## Dashboard
#
# `panel serve notebooks/cqn.ipynb` serves it: pick a dataset, classes and $t$.

# %%
w_data = pn.widgets.Select(name="dataset", options=list(DATA), value="digits")
w_src = pn.widgets.Select(name="source class a")
w_tgt = pn.widgets.Select(name="target class b")
w_t = pn.widgets.FloatSlider(name="t", start=0.0, end=1.0, step=0.05, value=1.0)


def _classes(dataset: str) -> None:
    opts = {c: i for i, c in enumerate(DATA[dataset][3])}
    w_src.options, w_tgt.options = opts, opts
    w_src.value, w_tgt.value = PAIRS[dataset]


_classes(w_data.value)
w_data.param.watch(lambda e: _classes(e.new), "value")

dashboard = pn.Column(
    "## Coordinatewise quantile normalization (Belrose et al., ICML 2024)",
    pn.Row(w_data, w_src, w_tgt, w_t),
    pn.bind(lambda d_, a_, b_, t_: pn.pane.Plotly(marginal_figure(d_, a_, b_, t=t_)), w_data, w_src, w_tgt, w_t),
    pn.bind(lambda d_, a_, b_, t_: pn.pane.Plotly(edit_grid(d_, a_, b_, t_)), w_data, w_src, w_tgt, w_t),
)
dashboard.servable()
