# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Factored attention is a Potts model
#
# Rende, Gerace, Laio & Goldt (NeurIPS 2024) build *clones* of a text dataset from masked
# language models made of $L$ layers of **factored attention**: attention weights $A_{ij}$ that
# depend only on the positions (not on the tokens), a value matrix $V$, and an $x^2$ activation
# between layers. With $L$ layers the model's conditionals contain interactions of up to
# $2^{L-1}+1$ tokens (1, 2, 3, 4, 6 layers give 2, 3, 5, 9, 33 bodies), which is how they make
# clones of controlled interaction order.
#
# One layer is exactly a **generalised Potts model**. Tokens $s_i \in \{1..q\}$ at positions
# $i = 1..L$, with energy
#
# $$H(s) = -\sum_{i<j} J_{ij}(s_i, s_j) - \sum_i h_i(s_i), \qquad p(s) \propto e^{-H(s)},$$
#
# has conditionals
#
# $$\log p(s_i = a \mid s_{-i}) = h_i(a) + \sum_{j \ne i} J_{ij}(a, s_j) - \log Z_i(s_{-i}).$$
#
# A factored layer with one-hot input $x_j = e_{s_j}$ and a masked diagonal ($A_{ii} = 0$, so
# position $i$ never sees its own token) outputs the logit
#
# $$\mathrm{logit}_i(a) = \sum_{j \ne i} A_{ij}\, V_{s_j a} + h_i(a),$$
#
# i.e. the Potts conditional with $J_{ij}(a, b) = A_{ij} V_{ba}$. Training it with the masked-LM
# loss on **all** sites at once is Besag's **pseudo-likelihood** estimator,
# $\min -\frac{1}{ML}\sum_{m,i} \log p(s^m_i \mid s^m_{-i})$, a consistent estimator of $J$:
# the error should shrink like $1/\sqrt{M}$ with the number of samples $M$.
#
# **Gauge.** Adding $u_{ij}(a)$ to $J_{ij}(a, \cdot)$ and subtracting it from $h_i(a)$ leaves the
# distribution unchanged, so couplings are only comparable in a fixed gauge. In the
# **zero-sum gauge** every row and column of each $J_{ij}$ sums to zero:
# $J'_{ij}(a,b) = J_{ij}(a,b) - J_{ij}(\cdot,b) - J_{ij}(a,\cdot) + J_{ij}(\cdot,\cdot)$.
# We report the relative Frobenius error $\|J'_{\rm learned} - J'_{\rm true}\|_F / \|J'_{\rm true}\|_F$.
#
# The ground truth: draw a symmetric $A^0$ (zero diagonal) and a symmetric $V$, set
# $J = \beta\, A^0 \otimes V$, draw $M$ samples by Gibbs sampling, train one factored layer on
# them, and watch it find $J$.

# %% tags=["parameters"]
import os

FAST = os.environ.get("DSB_FAST", "0") == "1"
L = 12 if FAST else 20  # sequence length (Potts sites)
Q = 6 if FAST else 10  # colours (vocabulary size)
BETA = 1.0  # inverse temperature
M_LIVE = 1000 if FAST else 4000  # samples for the live run
M_CURVE = [250, 500, 1000] if FAST else [500, 1000, 2000, 4000, 8000, 16000]
RESTARTS = 1 if FAST else 3  # random restarts (A*V is non-convex)
LIVE_EPOCHS = 6 if FAST else 15  # L-BFGS epochs shown live
ITERS_PER_EPOCH = 3
SEED = 0

# %%
import numpy as np
import panel as pn
import plotly.graph_objects as go
import torch
from IPython.display import display
from plotly.subplots import make_subplots

from dsb_widgets.potts import (
    fit_factored_potts,
    gibbs_sample,
    potts_from_model,
    random_factored_potts,
    relative_frobenius_error,
    zero_sum_gauge,
)

pn.extension("plotly", inline=True)
torch.set_num_threads(2)

# %% [markdown]
# ## A known Potts model and its samples
#
# `random_factored_potts` draws $A^0_{ij} \sim \mathcal N(0, 1/L)$ (symmetrised, zero diagonal)
# and $V_{ab} \sim \mathcal N(0, 1)$ (symmetrised), so the local field on a site is of order
# $\beta$. The Gibbs sampler runs many chains as one batch (burn-in 50 sweeps, thinning 5).

# %%
gen = torch.Generator().manual_seed(SEED)
true = random_factored_potts(L, Q, BETA, gen)
samples = gibbs_sample(true, M_LIVE, gen)  # (M, L)
true_pll = true.pseudo_likelihood_loss(samples).item()
print(f"{samples.shape[0]} samples of length {L}, q = {Q}; true model's PL loss {true_pll:.4f} nats")


def block_matrix(J: torch.Tensor) -> np.ndarray:
    """(L, L, q, q) zero-sum-gauge couplings as an (L*q, L*q) matrix, site blocks of q x q."""
    Jz, _ = zero_sum_gauge(J.double())
    n, q = Jz.shape[0], Jz.shape[2]
    return Jz.permute(0, 2, 1, 3).reshape(n * q, n * q).numpy()


true_block = block_matrix(true.J)
zmax = float(np.abs(true_block).max())

# %% [markdown]
# ## Training one factored layer, live
#
# Full-batch L-BFGS on the pseudo-likelihood. After every few iterations we convert the layer to
# Potts couplings (`potts_from_model`: $J_{ij}(a,b) = A_{ij}V_{ba}$, symmetrised) and redraw the
# learned couplings next to the true ones. Run the notebook to watch the right panel sharpen.

# %%
fig = make_subplots(
    rows=1, cols=3, column_widths=[0.36, 0.36, 0.28],
    subplot_titles=("true J (zero-sum gauge)", "learned A*V", "relative error"),
)
heat = dict(colorscale="RdBu", zmid=0, zmin=-zmax, zmax=zmax)
fig.add_trace(go.Heatmap(z=true_block, showscale=False, **heat), row=1, col=1)
fig.add_trace(go.Heatmap(z=np.zeros_like(true_block), colorbar=dict(x=0.69), **heat), row=1, col=2)
fig.add_trace(go.Scatter(x=[], y=[], mode="lines+markers", name="error"), row=1, col=3)
for c in (1, 2):
    fig.update_yaxes(autorange="reversed", scaleanchor=f"x{c}", row=1, col=c)
fig.update_xaxes(title_text="L-BFGS iterations", row=1, col=3)
fig.update_yaxes(type="log", row=1, col=3)
fig.update_layout(height=420, width=1100, showlegend=False)
handle = display(fig, display_id=True)

live_errors: list[tuple[int, float]] = []


def on_epoch(restart: int, epoch: int, loss: float, model: torch.nn.Module) -> None:
    """Stream the learned couplings and error into the figure (first restart only)."""
    if restart > 0:
        return
    learned = potts_from_model(model)
    err = relative_frobenius_error(learned.J, true.J)
    live_errors.append(((epoch + 1) * ITERS_PER_EPOCH, err))
    fig.data[1].z = block_matrix(learned.J)
    fig.data[2].x, fig.data[2].y = [e[0] for e in live_errors], [e[1] for e in live_errors]
    fig.layout.annotations[1].text = f"learned A*V (epoch {epoch + 1}, PL loss {loss:.4f})"
    if handle is not None:
        handle.update(fig)


fit = fit_factored_potts(
    samples, Q, restarts=RESTARTS, epochs=LIVE_EPOCHS, iters_per_epoch=ITERS_PER_EPOCH,
    seed=SEED, reference_loss=true_pll, on_epoch=on_epoch,
)
live_error = relative_frobenius_error(fit.potts.J, true.J)
fig.data[1].z = block_matrix(fit.potts.J)
print(
    f"best of {RESTARTS} restarts: PL loss {fit.loss:.4f} (true model {true_pll:.4f}; "
    f"stalled={fit.stalled}); relative error {live_error:.3f} at M = {M_LIVE}"
)

# %% [markdown]
# The training loss ends *below* the true model's pseudo-likelihood loss on the same samples:
# the fit is maximum pseudo-likelihood over a family that contains the truth, so it also fits
# some sampling noise. A fit whose loss stays above the true model's has stalled in a bad local
# minimum of the non-convex $A \cdot V$ product (about a quarter of random starts at
# $\beta = 2$); `fit_factored_potts` flags it (`stalled=True`) and restarts guard against it.
#
# ## Error versus number of samples
#
# Pseudo-likelihood is consistent and asymptotically normal, so the error should fall like
# $c/\sqrt{M}$. (Measured at $L = 20$, $q = 10$, $\beta = 1$: 0.166 at $M = 1000$, 0.084 at
# $M = 4000$.)

# %%
curve = []
for m in M_CURVE:
    g = torch.Generator().manual_seed(SEED + m)
    s = gibbs_sample(true, m, g)
    f = fit_factored_potts(s, Q, restarts=RESTARTS, epochs=2, iters_per_epoch=20, seed=SEED)
    curve.append(relative_frobenius_error(f.potts.J, true.J))
    print(f"M = {m:6d}: relative error {curve[-1]:.3f}")

Ms = np.array(M_CURVE, dtype=float)
c = float(np.exp(np.mean(np.log(np.array(curve) * np.sqrt(Ms)))))  # least squares in log space
fig_curve = go.Figure(
    [
        go.Scatter(x=Ms, y=curve, mode="lines+markers", name="factored layer (PL)"),
        go.Scatter(x=Ms, y=c / np.sqrt(Ms), mode="lines", name=f"{c:.1f} / sqrt(M)", line=dict(dash="dash")),
    ]
)
fig_curve.update_layout(
    xaxis=dict(type="log", title="samples M"), yaxis=dict(type="log", title="relative error (zero-sum gauge)"),
    height=380, width=650, title=f"Coupling recovery, L = {L}, q = {Q}, beta = {BETA}",
)
fig_curve

# %%
pn.Column(
    pn.pane.Markdown(
        f"## Factored attention is a Potts model\n"
        f"One layer trained on {M_LIVE} samples recovers the couplings to relative error "
        f"**{live_error:.3f}** (zero-sum gauge); the error falls like {c:.1f}/sqrt(M)."
    ),
    pn.pane.Plotly(fig),
    pn.pane.Plotly(fig_curve),
).servable()
