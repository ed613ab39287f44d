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
# # The many-body ladder: deeper factored models learn higher-order interactions
#
# Rende, Gerace, Laio & Goldt (NeurIPS 2024), Fig. 2. Sequences of $L = 20$ sites with $q = 10$
# colours are drawn from a Hamiltonian with **2-, 3- and 4-body** interactions,
#
# $$H(s) = -\sum_{i<j} J_{ij}(s_i,s_j) - g_3\sum_i w^3_i\,\phi_3(s_i)\phi_3(s_{i+1})\phi_3(s_{i+2})
#          - g_4\sum_i w^4_i\,\phi_4(s_i)\cdots\phi_4(s_{i+3}),$$
#
# ($J$ a random factored Potts coupling, $\phi_k$ a balanced $\pm 1$ colour feature, $w$ Gaussian),
# sampled exactly enough: many heat-bath chains, with split-$\hat R$ and the integrated
# autocorrelation time reported. Factored-attention models with 1, 2, 3 layers have conditionals
# with at most 2, 3, 5 bodies (`dsb_widgets.factored_attention`); trained by pseudo-likelihood
# they should settle on the **2-body** and **3-body** reference lines (k-body energy-based models
# fitted on the same data) and, for 3 layers, below the 3-body line, towards the exact conditional
# loss of the true Hamiltonian.
#
# Our layer equations (the paper's are not public): $h^1 = \mathrm{Attn}_1(e)$,
# $h^l = h^{l-1} + \mathrm{Attn}_l(h^{l-1}\odot h^{l-1})$ - a residual that keeps the body count
# (it only adds lower-order terms) - and each depth starts from the trained shallower model with
# its new branch switched off (progressive stacking). See `dsb_widgets/manybody.py`.

# %% tags=["parameters"]
import os

FAST = os.environ.get("DSB_FAST", "0") == "1"
# FAST: a toy ladder (10 sites, 5 colours) that runs in seconds; {} = the ladder() defaults
# (L = 20, q = 10, 25,600 sequences; see dsb_widgets.manybody for sizes and CPU time)
OPTS = (dict(L=10, q=5, n_train=2000, n_test=500, steps=60, chains=128, burn_in=20, ref_iters=20, d_embed=16,
             n_heads=2) if FAST else {})

# %%
import numpy as np
import panel as pn
import plotly.graph_objects as go
import torch

from dsb_widgets.manybody import ladder

torch.set_num_threads(1)
pn.extension("plotly", inline=True)

# %%
ds = ladder(layers=(1, 2, 3), seed=0, **OPTS)
ds

# %% [markdown]
# The sampler's diagnostics (split-$\hat R$ of the energy over 512 chains, integrated
# autocorrelation time $\tau$ in sweeps, thinning) are in the attributes:

# %%
{k: round(float(v), 3) for k, v in ds.attrs.items() if k.startswith(("sampler_", "cpu_s_"))}

# %%
colours = {1: "#1f77b4", 2: "#ff7f0e", 3: "#2ca02c"}
fig = go.Figure()
steps = ds.step.values
for n in ds.layers.values:
    fig.add_trace(go.Scatter(x=np.maximum(steps, 1), y=ds.test_loss.sel(layers=n).values, mode="lines+markers",
                             name=f"{n} layer{'s' if n > 1 else ''} ({2 ** (n - 1) + 1}-body)",
                             line=dict(color=colours.get(int(n)))))
for k, dash in zip(ds.bodies.values, ("dash", "dashdot", "dot")):
    fig.add_hline(y=float(ds.reference_loss.sel(bodies=k)), line=dict(dash=dash, color="grey"),
                  annotation_text=f"{k}-body reference", annotation_position="right")
fig.add_hline(y=float(ds.true_loss), line=dict(color="black"), annotation_text="true H",
              annotation_position="right")
fig.update_layout(xaxis=dict(type="log", title="SGD step (each depth continues from the shallower model)"),
                  yaxis=dict(title="held-out pseudo-likelihood loss (nats/site)"), height=450, width=760,
                  title="Synthetic many-body ladder (Rende et al. Fig. 2)")
fig

# %%
final = ds.test_loss.isel(step=-1)
rows = [f"| {n} | {2 ** (n - 1) + 1} | {float(final.sel(layers=n)):.4f} |" for n in ds.layers.values]
refs = [f"| {k}-body reference | | {float(ds.reference_loss.sel(bodies=k)):.4f} |" for k in ds.bodies.values]
table = "\n".join(["| layers | bodies | final held-out loss |", "|---|---|---|", *rows, *refs,
                   f"| true Hamiltonian | | {float(ds.true_loss):.4f} |"])
pn.Column(pn.pane.Markdown("## The many-body ladder\n" + table), pn.pane.Plotly(fig)).servable()
