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
# # Pretrained checkpoints: unigram before bigram, and the drift between n-gram predictors
#
# The most cited result of Belrose et al. (ICML 2024, "Neural networks learn statistics of
# increasing complexity", Sec. 5) is measured on *pretrained* models: across the public Pythia
# checkpoints (steps 0, 1, 2, 4, ..., 512, 1000, 2000, ..., 143000) the loss on sequences sampled
# from the Pile's **unigram** statistics reaches its minimum first (Pythia-70m: step 128,
# 8.48 nats/token), the loss on **bigram** sequences later (step 256, 6.69), and both rise
# afterwards while real-text loss keeps falling. On real text they also track how far the
# model's next-token distribution $q_t$ is from the n-gram predictors $p_t$:
#
# $$ \mathrm{KL}(p_t \,\|\, q_t) = \sum_v p_t(v) \log \frac{p_t(v)}{q_t(v)}, \qquad
#    \mathrm{JS}(p_t, q_t) = \tfrac12 \mathrm{KL}(p_t \,\|\, m_t) + \tfrac12 \mathrm{KL}(q_t \,\|\, m_t),
#    \quad m_t = \tfrac12 (p_t + q_t). $$
#
# `dsb run checkpoints` does exactly that for any suite of Hugging Face causal-LM checkpoints,
# with no training: a hub id with `step<N>` revisions (online) or a local folder of `step<N>/`
# checkpoints (offline). The probes are built from a corpus **with the suite's own tokenizer**;
# the result is the same xarray Dataset as every `dsb run` (dims `step`, `probe`, `seed`), so the
# dashboard and the other notebooks read it unchanged.
#
# Offline (and in CI) this notebook trains a toy GPT-NeoX suite (Pythia's architecture, 2 layers,
# width 64) on a corpus and saves it at step 0 and every power of two; then it evaluates the
# suite like Pythia.

# %% tags=["parameters"]
import os

FAST = os.environ.get("DSB_FAST", "0") == "1"
CORPUS = "tinyshakespeare"  # corpus name (tinystories, wikitext2, tinyshakespeare) or a text file path
MAX_STEP = 64 if FAST else 512  # the toy suite is saved at 0, 1, 2, 4, ..., MAX_STEP
VOCAB = 512 if FAST else 1024  # byte-level BPE trained on the corpus's train split
CONTEXT = 32 if FAST else 128  # tokens per evaluation window
PROBE_SIZE = 16 if FAST else 128  # windows per probe
RUN_PYTHIA = False  # True (online, a few GB of downloads): evaluate the real Pythia-70m suite too
SEED = 0

# %%
import math
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import panel as pn
import plotly.graph_objects as go
import torch

from dsb_widgets.checkpoint_suite import train_toy_suite
from dsb_widgets.data import DataNotFoundError
from dsb_widgets.data.text import load_corpus
from dsb_widgets.engine import RunConfig, train

pn.extension("plotly", inline=True)
torch.set_num_threads(min(2, torch.get_num_threads()))

# %% [markdown]
# ## 1. Online: Pythia-70m
#
# With the internet, the command line is
#
# ```
# dsb run checkpoints --model EleutherAI/pythia-70m --corpus tinystories \
#     --revisions step0 step1 step2 step4 step8 step16 step32 step64 step128 step256 step512 \
#                 step1000 step2000 step4000 step8000 step16000 step32000 step64000 step128000 step143000 \
#     --out runs/pythia-70m.nc
# ```
#
# (leave `--revisions` out for that same log-spaced set, read from the hub with
# `huggingface_hub.list_repo_refs`). Checkpoints are loaded one at a time (safetensors, or
# weights-only `torch.load`), evaluated in batches (`--batch-size` windows per forward pass) and
# written after each one: a killed run continues at the next checkpoint with `--resume`.
# Offline, a hub id fails at once with one line that names the local-folder option. The cell
# below does the same from Python; it only runs when `RUN_PYTHIA = True`.

# %%
PYTHIA_STEPS = [0] + [2**k for k in range(10)] + [1000 * 2**k for k in range(8)] + [143000]
if RUN_PYTHIA:
    pythia = train(RunConfig(experiment="checkpoints", model="EleutherAI/pythia-70m", dataset="tinystories",
                             probe_size=PROBE_SIZE, seed=SEED,
                             options={"revisions": [f"step{s}" for s in PYTHIA_STEPS], "context": 512}),
                   out="runs/pythia-70m.nc", resume=True, progress=True).dataset
else:
    pythia = None
    print("RUN_PYTHIA is False: skipping the hub download (set it to True online)")

# %% [markdown]
# ## 2. Offline: a toy GPT-NeoX suite
#
# `train_toy_suite` trains a 2-layer GPT-NeoX (d = 64, AdamW lr 1e-3 with beta2 = 0.95 as
# Pythia, warm-up then cosine, batch 32 x 64 tokens) on the corpus's TRAIN split, with a
# byte-level BPE tokenizer trained on the same text, and saves model + tokenizer with
# `save_pretrained` at step 0 and every power of two: the layout of a Pythia download. Without
# `DSB_DATA_DIR` a named corpus falls back to text from a random word-bigram chain.

# %%
workdir = Path(tempfile.mkdtemp(prefix="dsb-suite-"))
try:
    load_corpus(CORPUS)
    corpus = CORPUS
except (DataNotFoundError, OSError) as err:
    print(f"{CORPUS} is not available ({err}); using text from a random word-bigram chain instead")
    rng = np.random.default_rng(SEED)
    words = "the a cat dog bird sat ran saw on under big small red house tree mat and then".split()
    P = rng.dirichlet(np.full(len(words), 0.2), size=len(words))  # sparse-ish word transitions
    w, out = 0, []
    for i in range(60_000):
        w = int(rng.choice(len(words), p=P[w]))
        out.append(words[w] + ("\n\n" if i % 50 == 49 else ""))
    corpus = str(workdir / "fallback.txt")
    Path(corpus).write_text(" ".join(out))
suite = train_toy_suite(workdir / "suite", corpus=corpus, tokenizer="bpe", vocab_size=VOCAB, max_step=MAX_STEP,
                        seed=SEED)
print(f"{suite.parameters:,} parameters, {suite.train_tokens:,} train tokens, vocab {suite.vocab_size}, "
      f"steps {list(suite.steps)}, {suite.train_s:.0f} s")
sorted(p.name for p in (workdir / "suite").iterdir())

# %% [markdown]
# ## 3. Evaluate the suite
#
# The same call as for Pythia, with the folder in place of the hub id. Probes: `real`
# (held-out test windows), `unigram` / `bigram` / `trigram` (sequences of the train split's
# max-entropy n-gram chains, with their exact entropy floors), and on the real windows
# `kl_<n>` = KL(n-gram || model), `js_<n>` = JS(n-gram, model), nats per token.

# %%
cfg = RunConfig(experiment="checkpoints", model=str(workdir / "suite"), dataset=corpus, probe_size=PROBE_SIZE,
                seed=SEED, options={"context": CONTEXT})
result = train(cfg, out=workdir / "suite.nc", progress=True)
ds = result.dataset
loss = ds["loss"].isel(seed=0)
loss.to_pandas().round(3)

# %%
COLORS = {"real": "#222222", "unigram": "#1f77b4", "bigram": "#ff7f0e", "trigram": "#2ca02c"}


def loss_figure(ds) -> go.Figure:  # noqa: ANN001 - the engine's xarray Dataset
    """Loss by probe across checkpoints (x = step + 1, log), floors dotted."""
    fig = go.Figure()
    x = ds.step.values + 1
    for probe in ("real", "unigram", "bigram", "trigram"):
        if probe not in ds.probe.values:
            continue
        y = ds["loss"].isel(seed=0).sel(probe=probe).values
        fig.add_scatter(x=x, y=y, name=probe, mode="lines+markers", line={"color": COLORS[probe]})
        floor = float(ds["floor"].sel(probe=probe))
        if math.isfinite(floor):
            fig.add_scatter(x=[x[0], x[-1]], y=[floor, floor], mode="lines", showlegend=False,
                            line={"color": COLORS[probe], "dash": "dot"}, hoverinfo="skip")
    fig.update_layout(title="Loss on n-gram probes across checkpoints (dotted: exact floors)",
                      xaxis={"type": "log", "title": "checkpoint step + 1"}, yaxis_title="nats / token",
                      height=420)
    return fig


def divergence_figure(ds) -> go.Figure:  # noqa: ANN001
    """KL(n-gram || model) (solid) and JS (dashed) on real text across checkpoints."""
    fig = go.Figure()
    x = ds.step.values + 1
    for kind, dash in (("kl", "solid"), ("js", "dash")):
        for n in ("unigram", "bigram", "trigram"):
            name = f"{kind}_{n}"
            if name in ds.probe.values:
                fig.add_scatter(x=x, y=ds["loss"].isel(seed=0).sel(probe=name).values, name=name,
                                mode="lines+markers", line={"color": COLORS[n], "dash": dash})
    fig.update_layout(title="Model vs n-gram predictors on real text", height=420,
                      xaxis={"type": "log", "title": "checkpoint step + 1"}, yaxis_title="nats / token")
    return fig


def minima(ds) -> pd.DataFrame:  # noqa: ANN001
    rows = []
    for probe in ds.probe.values:
        y = ds["loss"].isel(seed=0).sel(probe=probe).values
        i = int(np.nanargmin(y))
        rows.append({"probe": str(probe), "min step": int(ds.step.values[i]), "min": round(float(y[i]), 3),
                     "final": round(float(y[-1]), 3), "floor": round(float(ds["floor"].sel(probe=probe)), 3)})
    return pd.DataFrame(rows)


fig_loss, fig_div, table = loss_figure(ds), divergence_figure(ds), minima(ds)
fig_loss

# %%
fig_div

# %%
table

# %% [markdown]
# Read the table from the top. The question of the paper is whether the `unigram` row's minimum
# step comes no later than the `bigram` row's: the model fits the unigram statistics first and
# leaves them behind when it starts to use context. In the divergence figure the same story
# reads as KL / JS to the unigram predictor falling early and flattening or rising, while the
# divergences to the bigram and trigram predictors keep falling. Measured on 2 CPU cores (see
# the README, "Pretrained checkpoint suites"): the unigram minimum comes before the bigram one
# on toy suites trained on TinyStories, WikiText-2 and Tiny Shakespeare (step 64 of 512), while
# the bigram loss is still falling at 512. Trained to 2048 steps (`MAX_STEP = 2048`), the
# TinyStories suite shows the whole ladder: unigram minimum at 64, bigram minimum at 512, trigram
# still falling, and the KL to each predictor bottoming out in the same order. FAST mode (64
# steps) is too short for any of this; set `DSB_FAST=0` for the full suite.
#
# With `RUN_PYTHIA = True` the cell below draws the Pythia curves the same way.

# %%
panes = [pn.pane.Plotly(fig_loss, sizing_mode="stretch_width"),
         pn.pane.Plotly(fig_div, sizing_mode="stretch_width"), pn.pane.DataFrame(table, index=False)]
if pythia is not None:
    panes += [pn.pane.Plotly(loss_figure(pythia), sizing_mode="stretch_width"),
              pn.pane.Plotly(divergence_figure(pythia), sizing_mode="stretch_width")]
pn.Column("# Pretrained checkpoints", *panes).servable()
