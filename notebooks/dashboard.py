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
# What to look for (Belrose et al., ICML 2024). The **DSB panel** (log-y loss) holds real test
# images (black) and data that keep only low-order statistics of the training images (order 1,
# oranges: `maxent1`; order 2, blues: `maxent2`, `gauss_clone`; order 3, green: `maxent3`).
# Early in training their loss falls together with the real loss: the network uses means and
# covariances. Later it keeps falling only on real data and rises on the probes (each probe's
# minimum is starred), as the network starts to rely on higher-order structure. The **edit
# panel** shows OT/CQN-edited images (a test image of class a given class b's statistics) scored
# on the *target* label b: how often the network answers b. One line per probe under the plots
# says what it keeps and what a rise means; the colours are those of every view
# (`dsb_widgets.ui.colors`).
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
import time

import panel as pn
from IPython.display import SVG
import plotly.graph_objects as go
import torch

from dsb_widgets.engine.results import load_results
from dsb_widgets.engine.task import RunConfig
from dsb_widgets.runs import REGISTRY
from dsb_widgets.engine.results import probe_kinds
from dsb_widgets.ui.colors import probe_colors
from dsb_widgets.ui.figures import static_curves_svg
from dsb_widgets.ui.viewer import RunViewer

pn.extension("plotly", inline=True)
torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))  # leave a core for the kernel's loop

# %% [markdown]
# Start the run. `REGISTRY.start` validates the configuration at once (a bad one raises a
# one-line `ConfigError`) and returns a handle; training happens in the thread `dsb-train-run*`.

# %%
# Results are never overwritten: a rerun of this notebook writes a new, time-stamped file.
out = OUT if not os.path.exists(OUT) else OUT.replace(".nc", time.strftime("-%Y%m%d-%H%M%S.nc"))
run = REGISTRY.start(RunConfig(experiment="images", dataset="digits", model="mlp", steps=STEPS, seeds=SEEDS),
                     out=out)
view = RunViewer(run, period_ms=500)
view

# %% [markdown]
# The viewer above updates by itself while the kernel is idle. `run.stop()` would end the run
# after its current step (the state is saved; the viewer's **Resume** button, or
# `dsb run images --resume --out <the run's file>`, continues it). In batch mode the
# next cell waits for the run to finish.

# %%
if WAIT_FOR_RUN:
    run.join()
print(f"{run.id}: {run.store.status}, step {run.store.step}/{run.store.total}, {len(run.store)} rows")

# %% [markdown]
# A second viewer of the same run, built now: it starts from the run's first row, so it shows
# every checkpoint so far (in a saved copy of this notebook, the viewer above shows the state
# when its cell ran; this one shows the finished run). Each display is its own viewer: showing
# one viewer object twice would share Bokeh models between two outputs.

# %%
after = RunViewer(run, poll=not WAIT_FOR_RUN)
after.drain()
after

# %% [markdown]
# After (or during) the run, the saved netCDF is an `xarray.Dataset` with dims
# (step, probe, seed). A static Plotly summary of the seed-mean loss of the DSB probes (log-y,
# the same colours as the live view; edit probes are scored on their target label, not here):

# %%
ds = load_results(out)
mean = ds["loss"].mean("seed")
kinds = probe_kinds(ds)
colours = probe_colors([str(p) for p in ds.probe.values], [float(o) for o in ds.probe_order.values])
fig = go.Figure()
for probe, order in zip(ds.probe.values, ds.probe_order.values):
    if kinds[str(probe)] != "dsb":
        continue
    fig.add_trace(go.Scatter(x=ds.step.values + 1, y=mean.sel(probe=probe).values, mode="lines+markers",
                             name=f"{probe} (order {'all' if order == float('inf') else f'{order:g}'})",
                             line=dict(color=colours[str(probe)])))
fig.update_layout(xaxis_type="log", yaxis_type="log", xaxis_title="step + 1", yaxis_title="probe loss (nats, log)",
                  title=f"digits MLP, {ds.sizes['seed']} seed(s): seed-mean loss of the DSB probes", height=420)
summary = pn.pane.Plotly(fig, sizing_mode="stretch_width")
summary

# %% [markdown]
# The same curves as a static SVG (no JavaScript), so a saved copy of this notebook still shows
# them on GitHub or nbviewer, where Panel and Plotly outputs stay blank. Stars: minima inside the
# run.

# %%
SVG(static_curves_svg(ds, title=f"digits MLP, {ds.sizes['seed']} seed(s): DSB probes (static copy)"))

# %%
# `panel serve notebooks/dashboard.ipynb`: a fresh viewer (not `view` again: one viewer per display)
pn.Column(RunViewer(run), summary, sizing_mode="stretch_width").servable(title="dsb_widgets live run")
