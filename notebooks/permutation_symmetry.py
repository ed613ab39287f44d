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
# # Permutation symmetry of text
#
# Lavie, Gur-Ari & Ringel (ICML 2024) study transformers in the infinite-width (Gaussian
# process) limit and find that they are biased toward functions that are **symmetric under
# permutations of the context positions**: the kernel's eigenfunctions organise into irreducible
# representations of the symmetric group $S_n$ acting on the $n$ positions, and the symmetric
# ones are learned first. Whether that bias helps depends on the data, and they argue that
# WikiText is *approximately* permutation symmetric.
#
# **Exchangeability.** A distribution over windows $(x_1, \dots, x_n)$ is exchangeable if it is
# unchanged by any permutation $\pi$ of positions. Embed each token as a fixed vector $e_x \in
# \mathbb{R}^d$ (one-hot over the top-$V$ tokens, or a random projection of it) and stack a
# window into $z \in \mathbb{R}^{nd}$. $S_n$ acts on $z$ by $P_\pi \otimes I_d$. Position space
# splits into two irreps: the **trivial** one (the all-ones direction, projector
# $P_{triv} = \mathbf{1}\mathbf{1}^\top / n$) and the **standard** one (its $n-1$-dimensional
# complement). An exchangeable covariance has the form
# $C = I_n \otimes A + \mathbf{1}\mathbf{1}^\top \otimes B$, so every principal component is
# either $\mathbf{1} \otimes v$ (trivial) or $z \otimes v$ with $z \perp \mathbf{1}$
# (non-trivial, $n-1$-fold degenerate).
#
# We measure two departures from this (see `dsb_widgets.symmetry`):
#
# 1. **`pc_asymmetry`**: for the top-$K$ PCs $u$, $w = \|(P_{triv} \otimes I)u\|^2$ and the mean
#    of $\min(w, 1-w)$: 0 when every PC is purely trivial or purely non-trivial.
#    Near-degenerate eigenvalues (closer than the sampling spread $4\sqrt{n/M}$) are grouped
#    and scored through their principal angles, because i.i.d. data has $n$-fold clusters whose
#    basis is arbitrary.
# 2. **`eps`** $= \mathbb{E}_\pi \|P_\pi C P_\pi^\top - C\|_F / \|C\|_F$: how much a random
#    reordering of positions changes the covariance.
#
# Each score is shown next to two controls: the **same windows with positions shuffled** inside
# each window (exchangeable in expectation, so it shows the sampling-noise floor at the same
# number of windows $M$) and a **deterministic ordered chain** (tokens cycling through the
# vocabulary), which is as far from exchangeable as a stationary sequence gets.

# %% tags=["parameters"]
import os

FAST = os.environ.get("DSB_FAST", "0") == "1"
WINDOWS = [4, 8] if FAST else [4, 8, 16, 32]  # window lengths n
MAX_WINDOWS = 2**12 if FAST else 2**17  # windows per covariance (seeded random subset)
MAX_TOKENS = 100_000 if FAST else None  # truncate corpora (None: everything available)
VOCAB = 64  # one-hot over the top-64 tokens + one <unk> coordinate (d = 65)
TOP_K = 10
SEED = 0

# %%
import numpy as np
import pandas as pd
import panel as pn
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from dsb_widgets import symmetry as sym

pn.extension("plotly", inline=True)

# %% [markdown]
# ## Data
#
# TinyStories (train head) and WikiText-2 (validation split, the "train" of the local copy),
# GPT-2 BPE tokens, read from `DSB_DATA_DIR` through the project's loader. Both are small
# local samples (about 1.0M and 0.26M tokens), not the full corpora. Without the data folder the
# notebook falls back to a synthetic corpus (i.i.d. Zipf tokens), so it still runs.

# %%
corpora: dict[str, np.ndarray] = {}
strings: dict[str, list[str]] = {}
try:
    from dsb_widgets.data.text import tokenize_corpus

    for name in ["tinystories", "wikitext2"]:
        tc = tokenize_corpus(name)
        corpora[name] = tc.train[:MAX_TOKENS]
        strings[name] = tc.token_strings
except Exception as exc:  # no DSB_DATA_DIR / no files: synthetic stand-in
    print(f"real corpora unavailable ({type(exc).__name__}: {exc}); using a synthetic corpus")
    p = 1.0 / np.arange(1, 501)
    corpora["iid-zipf (synthetic)"] = np.random.default_rng(SEED).choice(500, 200_000, p=p / p.sum())
{k: len(v) for k, v in corpora.items()}

# %% [markdown]
# The most frequent tokens (the first coordinates of the one-hot embedding). Note WikiText's
# `<unk>` marker, which GPT-2 splits into the deterministic three-token chain ` <`, `unk`, `>`:
# a small piece of perfectly ordered structure inside the corpus.

# %%
for name, toks in corpora.items():
    _, kept, _ = sym.encode_top_vocab(toks, 12)
    words = [repr(strings[name][int(i)]) if name in strings else str(int(i)) for i in kept]
    print(f"{name:12s}", " ".join(words))

# %% [markdown]
# ## What the covariance looks like
#
# The block norms $\|C_{ij}\|_F$ between positions $i$ and $j$ ($n = 8$): exchangeable data has a
# constant diagonal and a constant off-diagonal. Text has a band: adjacent positions are far more
# correlated than distant ones. The shuffled control flattens the band; the ordered chain is all
# band.

# %%
def block_norms(cov: np.ndarray, n: int) -> np.ndarray:
    d = cov.shape[0] // n
    return np.linalg.norm(cov.reshape(n, d, n, d), axis=(1, 3))  # (n, n)


first = next(iter(corpora))
n_demo = 8
covs = {
    f"{first}": sym.window_covariance(corpora[first], n_demo, vocab_size=VOCAB, max_windows=MAX_WINDOWS).cov,
    "shuffled": sym.window_covariance(corpora[first], n_demo, vocab_size=VOCAB, max_windows=MAX_WINDOWS,
                                      shuffle=True).cov,
    "ordered chain": sym.window_covariance(sym.ordered_chain(len(corpora[first]), VOCAB + 1), n_demo,
                                           vocab_size=VOCAB, max_windows=MAX_WINDOWS).cov,
}
fig_blocks = make_subplots(rows=1, cols=3, subplot_titles=list(covs))
for col, cov in enumerate(covs.values(), start=1):
    norms = block_norms(cov, n_demo)
    fig_blocks.add_trace(go.Heatmap(z=np.log10(norms), coloraxis="coloraxis"), row=1, col=col)
    fig_blocks.update_yaxes(autorange="reversed", row=1, col=col)
fig_blocks.update_layout(height=330, title="log10 ||C_ij||_F between positions i, j (n = 8)",
                         coloraxis=dict(colorscale="Viridis"))
fig_blocks

# %% [markdown]
# ## Scores against window length
#
# For each corpus and $n$: the data, the shuffled control (same windows) and the ordered chain
# (same length, same number of codes). `dist_sym` is the distance to the nearest exchangeable
# covariance (the group average), `cross_frac` the weight of the blocks coupling the trivial and
# the standard irrep (zero for exchangeable data).

# %%
rows = []
for name, toks in corpora.items():
    for n in WINDOWS:
        r = sym.symmetry_scores(toks, n, top_k=TOP_K, vocab_size=VOCAB, seed=SEED, max_windows=MAX_WINDOWS,
                                ordered=True)
        for label, suffix in [("data", ""), ("shuffled", "_shuffled"), ("ordered", "_ordered")]:
            rows.append(dict(corpus=name, n=n, series=label, **{k: r[k + suffix] for k in
                             ["pc_asymmetry", "eps", "dist_sym", "cross_frac"]}, windows=int(r["n_windows"])))
scores = pd.DataFrame(rows)
scores.pivot_table(index=["corpus", "n"], columns="series", values=["eps", "pc_asymmetry"]).round(4)

# %%
fig_scores = make_subplots(rows=1, cols=2, subplot_titles=["eps (permutation change of C)",
                                                           "pc_asymmetry (top-K PCs)"])
dash = {"data": "solid", "shuffled": "dot", "ordered": "dash"}
palette = ["#1f77b4", "#d62728", "#2ca02c"]
for ci, name in enumerate(corpora):
    for series in ["data", "shuffled", "ordered"]:
        if series == "ordered" and ci > 0:
            continue  # the chain depends only on length and codes: one line is enough
        sub = scores[(scores.corpus == name) & (scores.series == series)]
        label = f"{name} {series}" if series != "ordered" else "ordered chain"
        color = "#7f7f7f" if series == "ordered" else palette[ci % len(palette)]
        for col, key in enumerate(["eps", "pc_asymmetry"], start=1):
            fig_scores.add_trace(go.Scatter(x=sub.n, y=sub[key].clip(lower=1e-5), name=label, legendgroup=label,
                                            showlegend=col == 1, mode="lines+markers",
                                            line=dict(dash=dash[series], color=color)), row=1, col=col)
fig_scores.update_xaxes(type="log", tickvals=WINDOWS, title="window n")
fig_scores.update_yaxes(type="log")
fig_scores.update_layout(height=420, title=f"Permutation symmetry vs window length ({MAX_WINDOWS} windows, "
                                           f"one-hot top-{VOCAB} + <unk>)")
fig_scores

# %% [markdown]
# ## Which principal components are trivial?
#
# Top eigenvalues of $C$ ($n = 8$), coloured by their trivial weight $w$. For exchangeable
# data every $w$ is 0 or 1 (up to noise); for the ordered chain the PCs are Fourier modes over
# positions with intermediate $w$ at low frequency.

# %%
fig_pcs = go.Figure()
for label, cov in covs.items():
    res = sym.pc_asymmetry(cov, n_demo, top_k=24, rtol=0.0)
    fig_pcs.add_trace(go.Scatter(x=np.arange(1, len(res["eigvals"]) + 1), y=res["eigvals"], mode="markers",
                                 name=label, marker=dict(color=res["weights"], cmin=0, cmax=1, size=10,
                                                         colorscale="RdBu", symbol=["circle", "square", "diamond"][
                                                             list(covs).index(label)], showscale=label == first,
                                                         colorbar=dict(title="w"))))
fig_pcs.update_layout(height=380, yaxis_type="log", xaxis_title="PC rank", yaxis_title="eigenvalue",
                      title="Top PCs coloured by trivial weight w (n = 8)")
fig_pcs

# %% [markdown]
# ## Sensitivity to the embedding ($n = 8$)
#
# `oov="zero"` drops the `<unk>` coordinate (tokens outside the top 64 embed to zero);
# `"random"` projects the one-hot vectors to 64 Gaussian dimensions.

# %%
sens = []
for name, toks in corpora.items():
    for label, kw in [("onehot + <unk>", {}), ("onehot, oov dropped", {"oov": "zero"}),
                      ("random 64-d", {"embedding": "random"})]:
        r = sym.symmetry_scores(toks, 8, top_k=TOP_K, vocab_size=VOCAB, seed=SEED, max_windows=MAX_WINDOWS, **kw)
        sens.append(dict(corpus=name, embedding=label, **{k: round(r[k], 4) for k in
                         ["pc_asymmetry", "pc_asymmetry_shuffled", "eps", "eps_shuffled"]}))
sensitivity = pd.DataFrame(sens)
sensitivity

# %% [markdown]
# ## What this says
#
# * **Text is neither exchangeable nor ordered.** `eps` for both corpora sits far above the
#   shuffled floor and well below the ordered chain at every $n$ (full-mode numbers on this
#   machine: TinyStories 0.35-0.48, WikiText-2 0.48-0.64, shuffled 0.02-0.06, chain 1.1-1.4). The
#   covariance's departure from symmetry is the band of short-range correlations (bigrams,
#   multi-token words, WikiText's ` <unk>` chain).
# * **Its top principal components are nearly symmetric, more so for longer windows.**
#   `pc_asymmetry` falls from about 0.1-0.15 at $n = 4$ to below 0.005 at $n = 32$, under the
#   ordered chain's 0.016-0.03: the leading PCs are almost purely trivial or purely non-trivial,
#   which is the sense of "approximately permutation symmetric" in Lavie et al. The short-range
#   band matters less as the window grows because it is a vanishing fraction of the $n^2$ pairs.
#   Caveat: score 1 only sees the trivial/standard split, and is blind to some orderings (a KMS
#   covariance $0.8^{|i-j|}$ scores 0.003; see the tests); read it with `eps`.
# * **Clones.** Factored attention (Rende et al. 2024) sees positions only through the
#   input-independent matrix $A_{ij}$, with a position-independent value matrix $V$. Its 2-body
#   couplings are $J_{ij} = A_{ij} V$: the same token-token interaction at every pair of
#   positions, scaled by a position pattern. On near-exchangeable data the best $A$ is close to
#   constant off the diagonal and the model is close to the $S_n$-symmetric sector the
#   infinite-width analysis favours; on text, what $A_{ij}$ has to learn is exactly the band seen
#   above (the non-trivial part measured by `eps`), a low-dimensional, lag-dependent pattern.
#   Clones built from factored attention therefore reproduce the symmetric bulk of the
#   statistics cheaply and the positional structure only through $A$.
#
# Scale caveat: small local samples of the corpora (about 1.0M and 0.26M GPT-2 tokens), at most
# $2^{17}$ windows per covariance, top-64 vocabulary; on a machine with the full datasets the
# same call runs unchanged.

# %%
pn.Column(
    "# Permutation symmetry of text",
    pn.pane.DataFrame(scores.round(4), sizing_mode="stretch_width", max_height=300),
    pn.pane.Plotly(fig_scores),
    pn.pane.Plotly(fig_blocks),
    pn.pane.Plotly(fig_pcs),
    pn.pane.DataFrame(sensitivity),
).servable()
