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
# # Clones: a BERT learns many-body token interactions in order
#
# Rende, Gerace, Laio & Goldt (NeurIPS 2024) ask *in which order* a transformer picks up the
# interactions between tokens. They build **clones** of a text corpus that keep interactions
# only up to a chosen order, and watch a BERT trained on the real text meet each clone.
#
# 1. **Factored attention.** A masked LM made of $L$ layers whose attention weights $A_{ij}$
#    depend only on positions, with a value matrix $V$ and an $x^2$ activation between layers
#    (`dsb_widgets.factored_attention`). Its conditionals $p(s_i \mid s_{-i})$ are polynomials of
#    degree $2^{L-1}$ in the other tokens: interactions of up to $2^{L-1}+1$ **bodies**
#    ($L = 1, 2, 3, 4, 6 \to 2, 3, 5, 9, 33$). One layer is a Potts model (see the notebook
#    *factored attention is a Potts model*).
# 2. **Sampling.** The conditionals of an MLM need not belong to any joint distribution, so we
#    sample with **Metropolis-Hastings** (Goyal et al. 2022, `dsb_widgets.mh_sampler`): energy
#    $E(s) = -\sum_t \log p(s_t \mid s_{-t})$, proposals from the conditional at one position,
#    exact acceptance ratio, many chains as one batch, started from real test sentences.
# 3. **The experiment.** A BERT trained on the *real* corpus, evaluated at log-spaced steps on
#    held-out real text and on every clone (masked-LM loss, nats/token). The paper's finding on
#    TinyStories: the loss on the 3- and 9-body clones saturates after ~3e4 steps, while the loss
#    on the 33-body clone and on real text keeps falling: low-order interactions are learned first.
#
# The same two steps from a shell: `dsb clone --corpus tinystories --layers 1 2 3 --out clones/`
# and `dsb run clones --clones clones/`. Here everything is small enough for a laptop CPU
# (top-1,000 GPT-2 tokens, 16-token windows); the scale is in the parameters cell.

# %% tags=["parameters"]
import os

FAST = os.environ.get("DSB_FAST", "0") == "1"
LAYERS = (1, 2) if FAST else (1, 2, 3)  # factored layers per clone -> 2, 3 (, 5) bodies
VOCAB = 200 if FAST else 1000  # top-V tokens (the rest -> <unk>)
CONTEXT = 8 if FAST else 16  # tokens per sequence
CLONE_STEPS = 40 if FAST else 1500  # factored-model training steps
CHAINS = 8 if FAST else 128  # MH chains (from real test windows)
SWEEPS, WINDOW = (4, 2) if FAST else (4000, 100)  # most sweeps; stop once stationary (window >= WINDOW)
TEMPERATURES = 8  # parallel tempering, beta 1 .. 0.5 (the `dsb clone` default); 1 = plain MH
BERT_STEPS = 16 if FAST else 4096
PROBE_SIZE = 32 if FAST else 512
SEED = 0

# %%
import tempfile
from pathlib import Path

import numpy as np
import panel as pn
import plotly.graph_objects as go
import torch

from dsb_widgets.clones import CloneConfig, load_clones, make_clones
from dsb_widgets.engine.clones import plateau_observed, saturation_step, saturation_steps
from dsb_widgets.engine.loop import train
from dsb_widgets.engine.task import RunConfig

pn.extension("plotly", inline=True)
torch.set_num_threads(1 if FAST else 2)

# %% [markdown]
# ## The corpus
#
# TinyStories from `$DSB_DATA_DIR` when it is there (GPT-2 BPE tokens). Without it we fall back
# to an English text every Python ships (the help topics of `pydoc_data`), character-level, so
# the notebook always runs; say which one you used when you quote a number.

# %%
data = os.environ.get("DSB_DATA_DIR")
workdir = Path(tempfile.mkdtemp(prefix="dsb_clones_"))
if data and Path(data, "tinystories").is_dir() and Path(data, "tokenizers", "gpt2").is_dir():
    CORPUS, TOKENIZER = "tinystories", "gpt2"
else:
    from pydoc_data.topics import topics

    fallback = workdir / "pydoc_topics.txt"
    fallback.write_text("\n\n".join(topics.values()), encoding="utf-8")
    CORPUS, TOKENIZER, VOCAB = str(fallback), "char", min(VOCAB, 100)
print(f"corpus {CORPUS} ({TOKENIZER} tokens, top {VOCAB}), windows of {CONTEXT} tokens")

# %% [markdown]
# ## Making clones
#
# For each $L$, train the factored MLM, then run the MH chains until their energy trace is
# stationary: split-$\hat R$ over chains of the last two windows below 1.05 and the mean energy
# of the last window within 2 standard errors of the one before (`mh_sampler.stationarity`; the
# window is at least 20 autocorrelation times); the clone is the last window's states at $\beta = 1$.
# Plain MH chains condense into the model's own low-energy region and mix slowly there, so the
# default splits the chains over 8 inverse temperatures $\beta$ from 1 to 0.5 and swaps neighbours (parallel
# tempering, `dsb_widgets.mh_tempering`): on TinyStories it passes at $L$ = 1, 2, 3 after
# 300-800 sweeps (measured; README). Deeper models start from the trained shallower one with
# their new $x^2$ branch switched off (layers $h^l = h^{l-1} + \mathrm{Attn}_l(h^{l-1} \odot h^{l-1})$,
# see `dsb_widgets.factored_attention`), so depth can only add interactions. Growing means a
# deeper model has also trained longer, so a **control** is trained alongside: the one-layer
# model trained on for the same total steps (same number of warm-up + cosine cycles). Depth helps
# only where the deeper model beats its control, not just the shallower model. The acceptance rate
# per sweep is streamed as the chains run and saved in `provenance.json` with the energy trace and
# everything else that defines the clone. The change rate says how far the chains moved from
# the real sentences they started at.

# %%
cfg = CloneConfig(corpus=CORPUS, layers=LAYERS, tokenizer=TOKENIZER, vocab_size=VOCAB, context=CONTEXT,
                  steps=CLONE_STEPS, chains=CHAINS, sweeps=SWEEPS, window=WINDOW,
                  temperatures=TEMPERATURES, seed=SEED)
sweep_rows: list[dict] = []
prov = make_clones(cfg, workdir / "clones", progress=True,
                   on_sweep=lambda L, row: sweep_rows.append({"L": L, **row}))
for L, r in prov["orders"].items():
    ctl = f", control (1 layer, same steps) {r['control']['test_pll']:.3f}" if "control" in r else ""
    st = r["stationarity"] or {}
    print(f"L={L} ({r['bodies']}-body, {r['total_steps']} steps): test pseudo-likelihood {r['test_pll']:.3f} "
          f"nats/token{ctl}; MH {r['sweeps']} sweeps, stationary {st.get('stationary')} "
          f"(R-hat {st.get('rhat', float('nan')):.2f}), acceptance {r['acceptance_rate']:.3f}, "
          f"moved {r['fraction_changed_from_init']:.0%}")

fig_acc = go.Figure()
for L in LAYERS:
    rows = [r for r in sweep_rows if r["L"] == L]
    fig_acc.add_trace(go.Scatter(x=[r["sweep"] for r in rows], y=[r["acceptance_rate"] for r in rows],
                                 mode="lines+markers", name=f"L={L} ({2 ** (L - 1) + 1}-body)"))
burn = min(r["burn_in"] for r in prov["orders"].values())
fig_acc.add_vrect(x0=-0.5, x1=burn - 0.5, fillcolor="grey", opacity=0.15, line_width=0,
                  annotation_text="burn-in (until stationary)")
fig_acc.update_layout(xaxis_title="sweep", yaxis_title="MH acceptance rate", height=350, width=650,
                      title="Metropolis-Hastings acceptance per sweep")
fig_acc

# %% [markdown]
# ## Sample text, order by order
#
# Real test windows next to sequences of each clone (`<unk>` marks tokens outside the top-V
# vocabulary). A clone is only as good as its factored model: compare the test
# pseudo-likelihoods printed above with each other and with the controls.

# %%
clones = load_clones(workdir / "clones")
real_init = torch.load(workdir / "clones" / f"clone_L{LAYERS[0]}.pt", weights_only=True)["init"]
n_show = 6
columns = {"real": [clones.decode(s) for s in real_init[:n_show]]}
for L in LAYERS:
    columns[f"{clones.bodies[L]}-body clone"] = [clones.decode(s) for s in clones.tokens[L][-n_show:]]
fig_text = go.Figure(go.Table(
    header=dict(values=list(columns), align="left"),
    cells=dict(values=[[t.replace("\n", " / ") for t in col] for col in columns.values()], align="left"),
))
fig_text.update_layout(height=120 + 45 * n_show, width=300 * len(columns), margin=dict(l=5, r=5, t=5, b=5))
fig_text

# %% [markdown]
# ## A BERT meets the clones
#
# The engine trains the BERT (pre-LN, 2 layers, $d = 64$) on the real corpus with the masked-LM
# objective and evaluates every probe at log-spaced checkpoints: the same xarray results and
# live streaming as every other experiment (`dsb serve` shows this run too). Each probe's
# *saturation step* is the first checkpoint after which its loss, averaged over half an octave
# of checkpoints, never falls again by more than 3 standard deviations, the standard deviation
# read off the curve's own checkpoint-to-checkpoint jitter (`saturation_steps`); a plateau
# counts only if the run went on for another octave, else the probe is *still falling*. The
# learning rate is constant after warm-up, so a flat curve is the model's doing, not a decayed
# learning rate. The paper predicts the low-order
# clones saturate first; the measured steps are printed below (and the full-size numbers, with
# their caveats, are in `dsb_widgets.engine.clones`).

# %%
run_cfg = RunConfig(experiment="clones", dataset=CORPUS, steps=BERT_STEPS, probe_size=PROBE_SIZE, seed=SEED,
                    device="cpu", options={"clones": str(workdir / "clones")})
result = train(run_cfg, out=workdir / "run.nc", progress=True)
ds = result.dataset
loss = ds.loss.mean("seed")
order = {p: float(o) for p, o in zip(ds.probe.values, ds.probe_order.values)}
steps = ds.step.values
fig_curves = go.Figure()
for p in sorted(order, key=order.get):
    y = loss.sel(probe=p).values
    sat = saturation_step(steps, y)
    label = f"saturates at step {sat}" if plateau_observed(steps, sat) else f"still falling at {int(steps[-1])}"
    fig_curves.add_trace(go.Scatter(x=np.maximum(steps, 1), y=y, mode="lines+markers", name=f"{p} ({label})"))
fig_curves.update_layout(xaxis=dict(type="log", title="training step (step 0 drawn at 1)"),
                         yaxis_title="masked-LM loss (nats/token)", height=420, width=750,
                         title=f"BERT trained on {Path(CORPUS).stem}: loss by interaction order")
sat_steps = saturation_steps(ds)
for p in sorted(order, key=order.get):
    state = "plateau" if plateau_observed(steps, sat_steps[p]) else f"still falling at {int(steps[-1])}"
    print(f"{p:>8}: final loss {float(loss.sel(probe=p)[-1]):.3f} nats/token, stops improving at step "
          f"{sat_steps[p]} ({state})")
fig_curves

# %%
acceptance = ", ".join(f"{r['acceptance_rate']:.2f}" for r in prov["orders"].values())
pn.Column(
    pn.pane.Markdown(
        f"## Clones of {Path(CORPUS).stem}\n"
        f"Clones of {', '.join(str(clones.bodies[L]) for L in LAYERS)} bodies "
        f"(MH acceptance {acceptance}); "
        f"a BERT trained on the real text for {BERT_STEPS} steps."
    ),
    pn.pane.Plotly(fig_acc),
    pn.pane.Plotly(fig_text),
    pn.pane.Plotly(fig_curves),
).servable()
