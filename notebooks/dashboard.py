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
# # The live dashboard inside JupyterLab
#
# `dsb serve` shows a browser dashboard; this notebook shows the **same viewer object**
# (`dsb_widgets.ui.viewer.RunViewer`) live inside JupyterLab.
#
# A digits classifier trains in a background thread owned by the package's run registry
# (`dsb_widgets.runs.REGISTRY`), so the cell that starts it returns at once. The engine
# evaluates every probe set at log-spaced checkpoints and appends rows to a thread-safe store;
# the viewer drains new rows from a periodic callback on the kernel's event loop and streams
# them into Bokeh with `ColumnDataSource.stream`, so only new points travel to the browser.
# The callback fires while the kernel is idle: keep working in other cells and the curves keep
# growing.
#
# What to look for (Belrose et al., ICML 2024): the probes keep only low-order statistics of the
# training images (order 1: class means, `maxent1`/`cqn`; order 2: class covariances,
# `maxent2`/`gauss_clone`/`ot`; black: real test images). Early in training the loss on the
# low-order probes falls together with the real loss: the network is using means and
# covariances. Later it falls only on real data and rises on the probes, as the network starts
# to rely on higher-order structure. On the accuracy plot, the dash-dot lines show how often
# OT/CQN-edited images are classified as the class whose statistics they were given.
#
# `pn.extension(..., inline=True)` bundles the JavaScript into the notebook so it renders with
# no network.

# %% tags=["parameters"]
import os

FAST = os.environ.get("DSB_FAST", "0") == "1"
STEPS = 64 if FAST else 4096  # training steps (log-spaced checkpoints: ~3 per doubling)
SEEDS = 1 if FAST else 3  # seeds trained together; the band shows their spread
WAIT_FOR_RUN = FAST  # batch runs wait for the end; interactively, watch it live instead
OUT = "runs/notebook-digits.nc"

# %%
import panel as pn
import plotly.graph_objects as go
import torch

from dsb_widgets.engine.results import load_results
from dsb_widgets.engine.task import RunConfig
from dsb_widgets.runs import REGISTRY
from dsb_widgets.ui.stream import order_color
from dsb_widgets.ui.viewer import RunViewer

pn.extension("plotly", inline=True)
torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))  # leave a core for the kernel's loop

# %% [markdown]
# Start the run. `REGISTRY.start` validates the configuration at once (a bad one raises a
# one-line `ConfigError`) and returns a handle; training happens in the thread `dsb-train-run*`.

# %%
run = REGISTRY.start(RunConfig(experiment="images", dataset="digits", model="mlp", steps=STEPS, seeds=SEEDS),
                     out=OUT)
view = RunViewer(run, period_ms=500)
view

# %% [markdown]
# The viewer above updates by itself. `run.stop()` would end the run after its current step
# (the state is saved; `dsb run images --resume --out runs/notebook-digits.nc` continues it).
# In batch mode the next cell waits for the run to finish and flushes the last points.

# %%
if WAIT_FOR_RUN:
    run.join()
    view.drain()
print(f"{run.id}: {run.store.status}, step {run.store.step}/{run.store.total}, {len(run.store)} rows")

# %% [markdown]
# After (or during) the run, the saved netCDF is an `xarray.Dataset` with dims
# (step, probe, seed). A static Plotly summary of the seed-mean loss, same colours as the
# live view (colour = interaction order):

# %%
ds = load_results(OUT)
mean = ds["loss"].mean("seed")
fig = go.Figure()
for probe, order in zip(ds.probe.values, ds.probe_order.values):
    fig.add_trace(go.Scatter(x=ds.step.values + 1, y=mean.sel(probe=probe).values, mode="lines+markers",
                             name=f"{probe} (order {'all' if order == float('inf') else f'{order:g}'})",
                             line=dict(color=order_color(float(order)))))
fig.update_layout(xaxis_type="log", xaxis_title="step + 1", yaxis_title="probe loss (nats)",
                  title=f"digits MLP, {ds.sizes['seed']} seed(s): seed-mean probe loss", height=420)
summary = pn.pane.Plotly(fig, sizing_mode="stretch_width")
summary

# %%
pn.Column(view, summary, sizing_mode="stretch_width").servable(title="dsb_widgets live run")
