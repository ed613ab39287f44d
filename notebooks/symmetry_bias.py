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
# # Symmetry bias: transformers learn permutation-symmetric functions first
#
# Lavie, Gur-Ari & Ringel (ICML 2024, "Towards understanding inductive bias in transformers: a
# view from infinity") make two claims that belong together:
#
# 1. **Text is approximately permutation symmetric.** The notebook `permutation_symmetry`
#    measures this with `dsb_widgets.symmetry`: the covariance of text windows is close to an
#    exchangeable one (unchanged when positions are permuted).
# 2. **Transformers are biased toward permutation-symmetric functions.** In the infinite-width
#    (Gaussian-process) limit the kernel commutes with the group $S_n$ permuting the $n$
#    positions, so functions split into $S_n$ *isotypic sectors*, and the trivial (fully
#    symmetric) sector is learned with fewer samples than the others, with a scaling law in $n$.
#
# Together: a learner biased toward symmetric functions fits the bulk of text's structure
# early. This notebook shows (1) briefly, then tests (2) with the engine's `symmetry`
# experiment: regression targets built in chosen sectors, **equal variance**, learned by a
# small transformer (softmax attention, learned positional embeddings) and by an MLP control;
# then kernel regression with the infinite-width kernel of a simplified block as the theory line.
#
# Honesty note: only the paper's abstract-level claims are verified for this project; the
# targets, the block and the thresholds here are our design from those claims, not the
# paper's figures.

# %% tags=["parameters"]
import os

FAST = os.environ.get("DSB_FAST", "0") == "1"
TEXT_WINDOWS = [4, 8] if FAST else [4, 8, 16, 32]  # window lengths for the corpus measure
MAX_TOKENS = 100_000 if FAST else 300_000
CONTEXT = 8  # n for the training curves
STEPS = 256 if FAST else 1024
SEEDS = 2 if FAST else 3
MODEL_OPTIONS = {"d_model": 32, "n_layer": 1} if FAST else {}  # the experiment's defaults otherwise
PROBE_SIZE = 256 if FAST else 1024
KERNEL_CONTEXTS = [4, 8] if FAST else [4, 8, 16, 32]
KERNEL_SIZES = [4, 16, 64] if FAST else [4, 8, 16, 32, 64, 128, 256, 512]
THRESHOLD = 0.5  # relative error defining P*
SWEEP = "sweeps/symmetry/sweep.nc"  # made by: dsb sweep examples/sweep_symmetry.yaml
SEED = 0

# %%
import numpy as np
import pandas as pd
import panel as pn
import plotly.graph_objects as go
import torch
import xarray as xr
from plotly.subplots import make_subplots

from dsb_widgets import sn_sectors as sn
from dsb_widgets import symmetry as sym
from dsb_widgets.engine.loop import train
from dsb_widgets.engine.task import RunConfig
from dsb_widgets.sn_kernel import kernel_learning_curve, p_star
from dsb_widgets.symmetry_bias import steps_to_fraction, sweep_p_star

torch.set_num_threads(1)
pn.extension("plotly", inline=True)
COLORS = {"trivial": "#1f77b4", "standard": "#d62728", "trivial_pair": "#17becf", "pair": "#9467bd"}

# %% [markdown]
# ## 1. Text is approximately symmetric
#
# `dist_sym` $= \|C - S(C)\| / \|C\|$ is the distance of the window covariance $C$ from its
# group average $S(C)$, the closest exchangeable covariance, so $1 - \text{dist\_sym}^2$ is the
# share of the covariance's energy in the symmetric part. Shuffling positions inside each window
# gives the noise floor. WikiText-2 from `DSB_DATA_DIR` (GPT-2 BPE, top-64 tokens one-hot);
# without the data, an i.i.d. Zipf corpus (exactly exchangeable) stands in.

# %%
try:
    from dsb_widgets.data.text import tokenize_corpus

    corpus_name, tokens = "wikitext2", tokenize_corpus("wikitext2").train[:MAX_TOKENS]
except Exception as exc:  # no local data: a synthetic stand-in, said so
    print(f"wikitext2 unavailable ({type(exc).__name__}); using i.i.d. Zipf tokens")
    zipf = 1.0 / np.arange(1, 501)
    corpus_name, tokens = "iid-zipf", np.random.default_rng(SEED).choice(500, 200_000, p=zipf / zipf.sum())
rows = []
for n in TEXT_WINDOWS:
    s = sym.symmetry_scores(tokens, n, vocab_size=64, max_windows=2**13 if FAST else 2**16, seed=SEED)
    rows.append({"n": n, "dist_sym": s["dist_sym"], "dist_sym_shuffled": s["dist_sym_shuffled"],
                 "symmetric share": 1 - s["dist_sym"] ** 2})
text_table = pd.DataFrame(rows).set_index("n")
print(corpus_name)
text_table.round(4)

# %% [markdown]
# ## 2. Targets in chosen $S_n$ sectors, equal variance
#
# Tokens $x_i \sim N(0, I_d)$ i.i.d.; a per-token feature $f(x) = w \cdot x$ with a unit
# direction $w$ per target (orthogonal across targets). The four targets (see
# `dsb_widgets.sn_sectors`): **trivial** $\sum_i f(x_i)/\sqrt n$; **standard**
# $\sum_i a_i f(x_i)$ with $\sum_i a_i = 0$; **trivial_pair** $\propto \sum_{i \ne j} f(x_i) f(x_j)$;
# **pair** $\sum_{i\ne j} B_{ij} f(x_i) f(x_j)$ with $B$ symmetric, zero diagonal, zero row sums,
# the $(n-2, 2)$ irrep. All have variance exactly 1. The table projects each target onto the
# three isotypic components with the character projectors
# $P_\chi F(X) = \frac{d_\chi}{n!} \sum_{\pi \in S_n} \chi(\pi) F(\pi X)$ over all 24
# permutations of $S_4$: each target lies wholly in its sector (the tests check this exactly).

# %%
targets4 = sn.SectorTargets.make(4, 8, seed=SEED)
x4 = sn.sample_contexts(64, 4, 8, np.random.default_rng(SEED))
frac = sn.sector_fractions(targets4, x4)
sector_table = pd.DataFrame({ir: frac[ir] for ir in frac}, index=list(targets4.sectors))
sector_table["variance"] = targets4.exact_variance()
sector_table.round(6)

# %% [markdown]
# ## 3. A transformer learns the trivial sector first; an MLP does not care
#
# One run of `dsb run symmetry` trains one output head per sector on the same contexts (MSE),
# and the probes are the held-out losses of each head. The transformer embeds tokens, adds a
# learned positional embedding (the only way it can tell positions apart), runs softmax
# attention blocks and mean-pools. The control is an MLP on the flattened context: its
# initialisation is rotation invariant, so the two one-body targets (both linear, unit norm) are
# equally hard for it by symmetry.

# %%
def run(model: str) -> xr.Dataset:
    cfg = RunConfig(experiment="symmetry", model=model, steps=STEPS, seeds=SEEDS, probe_size=PROBE_SIZE,
                    per_octave=3, options={"context": CONTEXT, **(MODEL_OPTIONS if model == "transformer" else {})})
    return train(cfg).dataset


runs = {"transformer": run("transformer"), "mlp": run("mlp")}
fig_curves = make_subplots(rows=1, cols=2, subplot_titles=[f"{m} (n = {CONTEXT})" for m in runs], shared_yaxes=True)
for col, (model, ds) in enumerate(runs.items(), start=1):
    rel = ds["loss"] / ds["loss"].isel(step=0)
    for probe in ds["probe"].values:
        r = rel.sel(probe=probe)
        steps = np.maximum(ds["step"].values, 0.5)  # step 0 drawn at 0.5 on the log axis
        fig_curves.add_trace(go.Scatter(x=steps, y=r.mean("seed").values, name=str(probe), legendgroup=str(probe),
                                        showlegend=col == 1, line=dict(color=COLORS[str(probe)])), row=1, col=col)
fig_curves.update_xaxes(type="log", title="step")
fig_curves.update_yaxes(type="log", title="held-out MSE / step-0 MSE", row=1, col=1)
fig_curves.update_layout(height=380, title="loss by S_n sector (mean over seeds)")
fig_curves

# %%
halve = pd.concat({m: steps_to_fraction(ds).to_pandas() for m, ds in runs.items()}, names=["model", "probe"])
halve.columns = [f"seed {s}" for s in halve.columns]
halve  # first checkpoint where the held-out loss is half its step-0 value (NaN: never)

# %% [markdown]
# ## 4. Theory line: kernel regression with the infinite-width kernel of a simplified block
#
# The block $F(X) = \frac{1}{\sqrt D}\sum_u v_u \frac1n \sum_i \mathrm{relu}(w_u \cdot x_i/\sqrt d + p_{u,i})$
# (token embedding, learned positional offset $p$, mean pooling) is what a transformer block
# computes when attention is uniform, as it is at initialisation in the infinite-width limit
# with $1/D$-scaled logits. Its NNGP kernel (`dsb_widgets.sn_kernel`) is an arc-cosine kernel
# averaged over all $n^2$ position pairs, of which only the $n$ diagonal pairs see the positional
# offsets: the permutation-averaged kernel plus a $1/n$ positional correction. Non-trivial
# sectors therefore get eigenvalues $\sim 1/n$ of the trivial ones, and kernel ridge regression
# needs about $n$ times more samples for them. $P^*$: the training-set size at which the
# held-out relative error first reaches the threshold.

# %%
curve = kernel_learning_curve(KERNEL_CONTEXTS, KERNEL_SIZES, dim=8, sectors=("trivial", "standard"), seed=SEED)
fig_kernel = go.Figure()
for n in KERNEL_CONTEXTS:
    for probe in ("trivial", "standard"):
        fig_kernel.add_trace(go.Scatter(x=KERNEL_SIZES, y=curve.sel(context=n, probe=probe).values,
                                        name=f"{probe}, n = {n}", line=dict(color=COLORS[probe]),
                                        opacity=0.35 + 0.65 * (KERNEL_CONTEXTS.index(n) + 1) / len(KERNEL_CONTEXTS)))
fig_kernel.add_hline(y=THRESHOLD, line_dash="dot")
fig_kernel.update_layout(height=380, title="kernel regression (simplified block, NNGP): relative error vs P",
                         xaxis=dict(type="log", title="training-set size P"),
                         yaxis=dict(type="log", title="held-out MSE / variance"))
fig_kernel

# %%
kernel_pstar = p_star(curve, THRESHOLD).to_pandas()
kernel_pstar["standard / trivial"] = kernel_pstar["standard"] / kernel_pstar["trivial"]
kernel_pstar.round(1)  # trivial at the smallest P means P* <= that P

# %% [markdown]
# ## 5. The trained network's sample complexity (from a sweep)
#
# `dsb sweep examples/sweep_symmetry.yaml` trains the transformer on fixed training sets of
# $P$ contexts for $n \in \{4, 8, 16, 32\}$; `sweep_p_star` reads $P^*$ per sector from the
# merged result. The cell below shows it when the sweep has been run.

# %%
if os.path.exists(SWEEP):
    sweep = xr.open_dataset(SWEEP, engine="scipy")
    net_pstar = sweep_p_star(sweep, THRESHOLD).mean("seed").to_pandas().T
    fig_sweep = go.Figure([go.Scatter(x=net_pstar.index, y=net_pstar[p], name=str(p), line=dict(color=COLORS[str(p)]))
                           for p in net_pstar.columns])
    fig_sweep.update_layout(height=360, title=f"trained transformer: P* (relative error {THRESHOLD}) vs n",
                            xaxis=dict(type="log", title="context n"), yaxis=dict(type="log", title="P*"))
else:
    print(f"no sweep at {SWEEP}; run: dsb sweep examples/sweep_symmetry.yaml --workers 2 --threads 1")
    net_pstar, fig_sweep = pd.DataFrame(), go.Figure()
net_pstar

# %% [markdown]
# ## What this shows, and where it departs from the paper
#
# * The corpus measure and the learning bias meet: text windows keep most of their covariance
#   in the symmetric part (section 1), and a transformer fits symmetric functions of its context
#   first (section 3), so it captures the bulk of text's statistics before its positional
#   structure. With the defaults (n = 8 and 16, 3 seeds, 1024 steps) the trivial head halves its
#   loss at step 3-5 and the standard head at step 128-161 (n = 8) and 256-406 (n = 16).
# * The MLP control learns `trivial` and `standard` at the same rate: the bias is the
#   architecture's (weight sharing across positions plus mean pooling), not the targets'.
# * Kernel theory: P* of the standard sector grows like n^0.8 (36, 61, 110, 191 for n = 4, 8,
#   16, 32 at relative error 0.5) while the trivial sector's stays at or below 16: the 1/n
#   positional weight of the NNGP. The trained transformer (sweep, 512 steps) is steeper:
#   standard P* = 111, 657, 1540 for n = 4, 8, 16 (~n^1.9), trivial P* <= 32 throughout; its
#   P* also includes optimisation time, which the kernel's does not.
# * Departures: the paper's kernel is the GP limit of softmax attention; ours is a simplified
#   block with uniform attention, and its two-body sectors (`trivial_pair`, `pair`) are not
#   learned at these sample sizes by either the kernel or the network in our step budget, so we
#   cannot say whether the two-body trivial sector beats the (n-2, 2) sector. We measure steps
#   and P* for a small finite network under Adam, not the GP posterior.

# %%
pn.Column(
    "# Symmetry bias (Lavie, Gur-Ari & Ringel 2024)",
    pn.pane.DataFrame(text_table.round(4)),
    pn.pane.DataFrame(sector_table.round(6)),
    pn.pane.Plotly(fig_curves),
    pn.pane.DataFrame(halve),
    pn.pane.Plotly(fig_kernel),
    pn.pane.DataFrame(kernel_pstar.round(1)),
    pn.pane.Plotly(fig_sweep),
).servable()
