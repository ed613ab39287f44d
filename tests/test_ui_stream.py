"""Dashboard logic without a browser: seed aggregation, draining into Bokeh sources, sweep facets,
form validation messages and session bookkeeping."""

from __future__ import annotations

import html
import math
import threading
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("panel")

from bokeh.models import HoverTool, Legend

from dsb_widgets.engine.task import RunConfig
from dsb_widgets.runs import RowStore, RunHandle, RunRegistry
from dsb_widgets.ui import sessions
from dsb_widgets.ui.colors import FAMILIES, probe_colors
from dsb_widgets.ui.plots import make_plots
from dsb_widgets.ui.stream import SeedAggregator, format_eta, order_color, probe_styles, summarize_saved
from dsb_widgets.ui.sweep_view import SweepView, extra_dims, facet_cells, facet_curves, sweep_name
from dsb_widgets.ui.viewer import RunViewer

PROBES = ["real", "maxent1", "maxent2"]
ORDERS = [math.inf, 1.0, 2.0]


def rows(step: int, seed: int, base: float = 2.0) -> list[dict]:
    """One checkpoint's rows for one seed (engine layout: one row per probe and seed)."""
    return [{"step": step, "wall_time": 0.1 * step, "probe": p, "order": o, "seed": seed,
             "loss": base + i + 0.1 * seed, "accuracy": 0.1 * i + 0.01 * seed,
             "target_loss": math.nan, "target_accuracy": math.nan if p != "maxent2" else 0.5}
            for i, (p, o) in enumerate(zip(PROBES, ORDERS))]


def fake_run(seeds: list[int], floors: list[float] | None = None) -> RunHandle:
    """A RunHandle whose store we feed by hand (its thread is never started)."""
    store = RowStore()
    store.meta = {"probes": PROBES, "orders": ORDERS, "floors": floors or [math.nan] * 3, "seeds": seeds}
    store.status, store.total = "running", 100
    cfg = RunConfig(experiment="images", dataset="digits", model="mlp", steps=100, seeds=len(seeds))
    return RunHandle("runX", cfg, None, store, threading.Event(), threading.Thread(target=lambda: None))


def feed(run: RunHandle, new: list[dict]) -> None:
    with run.store._lock:
        run.store._rows.extend(new)


# -- aggregation ----------------------------------------------------------------------------
def test_partial_steps_are_held_until_every_seed_arrived() -> None:
    agg = SeedAggregator(PROBES, seeds=[0, 1, 2])
    assert agg.add(rows(0, 0) + rows(0, 1)) == {}
    assert agg.pending == 3
    out = agg.add(rows(0, 2))
    assert set(out) == set(PROBES) and agg.pending == 0
    loss = [2.0, 2.1, 2.2]
    np.testing.assert_allclose(out["real"]["loss"], [np.mean(loss)])
    np.testing.assert_allclose(out["real"]["loss_lo"], [2.0])
    np.testing.assert_allclose(out["real"]["loss_hi"], [2.2])
    np.testing.assert_allclose(out["real"]["x"], [1.0])  # step 0 at x = 1 on the log axis
    assert agg.has_target == {"real": False, "maxent1": False, "maxent2": True}


@settings(max_examples=30, deadline=None)
@given(st.lists(st.floats(-5, 5), min_size=2, max_size=6), st.sampled_from(["minmax", "std"]))
def test_band_matches_numpy(values: list[float], band: str) -> None:
    agg = SeedAggregator(["real"], seeds=list(range(len(values))), band=band)
    out = agg.add([{"step": 3, "probe": "real", "seed": s, "loss": v, "accuracy": 0.0}
                   for s, v in enumerate(values)])["real"]
    v = np.asarray(values)
    lo, hi = (v.min(), v.max()) if band == "minmax" else (v.mean() - v.std(), v.mean() + v.std())
    np.testing.assert_allclose([out["loss"][0], out["loss_lo"][0], out["loss_hi"][0]], [v.mean(), lo, hi],
                               atol=1e-9)


def test_rows_arriving_out_of_order_are_emitted_once_in_step_order() -> None:
    agg = SeedAggregator(PROBES, seeds=[0, 1])
    out = agg.add(rows(4, 1) + rows(2, 0) + rows(2, 1) + rows(4, 0))
    np.testing.assert_array_equal(out["real"]["step"], [2, 4])
    assert agg.emitted["real"] == 2 and agg.add([]) == {}


def test_summarize_saved_and_eta() -> None:
    arr = np.array([[1.0, 3.0], [np.nan, np.nan], [2.0, np.nan]])  # (T=3, S=2)
    m, lo, hi = summarize_saved(arr)
    np.testing.assert_allclose(m, [2.0, np.nan, 2.0])
    np.testing.assert_allclose(lo, [1.0, np.nan, 2.0])
    assert format_eta(None) == "ETA estimating..." and format_eta(5) == "ETA 5 s"
    assert format_eta(125) == "ETA 2 min 05 s"
    with pytest.raises(ValueError, match="step, seed"):
        summarize_saved(np.zeros(3))


def test_order_colours_are_fixed_and_distinct() -> None:
    cols = [order_color(o) for o in (1, 2, 3, 9, 33, math.inf)]
    assert len(set(cols)) == len(cols) and cols[-1] == "#000000"
    styles = probe_styles(["a", "b", "c"], [2.0, 2.0, 1.0])
    assert styles["a"].color != styles["b"].color and styles["a"].marker != styles["b"].marker  # distinct hues
    assert {styles["a"].color, styles["b"].color} <= set(FAMILIES["2"]) and styles["c"].color in FAMILIES["1"]
    # the same probe has the same colour whatever else the run holds
    assert probe_colors(["real", "gauss_clone"])["gauss_clone"] == probe_colors(
        ["maxent2", "gauss_clone", "ot"])["gauss_clone"]
    text = probe_colors(["real", "unigram", "bigram", "trigram", "shuffled"])
    assert len(set(text.values())) == 5 and text["real"] == "#000000"


def test_probe_families_split_dsb_and_edit_panels() -> None:
    probes, orders = ["real", "maxent1", "ot"], [math.inf, 1.0, 2.0]
    plots = make_plots(probes, orders, [math.nan] * 3, {"ot": True}, x_max=65)
    assert plots.kinds == {"real": "dsb", "maxent1": "dsb", "ot": "edit"}
    assert plots.loss.y_scale.__class__.__name__ == "LogScale"  # log-y by default
    loss_names = {r.name for r in plots.loss.renderers if r.name}
    assert "ot" not in loss_names and {"real", "maxent1"} <= loss_names  # no source-label edit loss
    assert "ot" in {r.name for r in plots.edit_acc.renderers}
    assert plots.edit_acc.renderers[1].glyph.y == "tacc" and plots.edit_loss.renderers[0].glyph.y == "tloss"
    hover = plots.loss.select({"type": HoverTool})
    assert hover and all(h.mode == "vline" for h in hover)
    text = make_plots(["real", "unigram"], [math.inf, 1.0], [math.nan, 1.5], {})
    assert text.edit_acc is None


def test_floor_lines_only_where_finite_inside_the_range_with_legend_samples() -> None:
    plots = make_plots(PROBES, ORDERS, [math.nan, 1.5, math.inf], {}, x_max=101)
    floors = [r for r in plots.loss.renderers if (r.name or "").startswith("floor:")]
    assert [r.name for r in floors] == ["floor:maxent1"]
    assert list(floors[0].data_source.data["y"]) == [1.5, 1.5] and floors[0].data_source.data["x"][-1] == 101
    item = next(i for i in plots.loss.select_one(Legend).items if "floor" in str(i.label))
    assert item.renderers == floors  # the legend sample is the dotted line itself
    assert floors[0].glyph.line_dash == [1, 3] or floors[0].glyph.line_dash == "dotted" or floors[0].glyph.line_dash


def test_minimum_is_starred_on_raw_seed_mean() -> None:
    run = fake_run([0])
    v = RunViewer(run, poll=False)
    for step, base in enumerate([3.0, 1.0, 2.0, 2.5]):
        feed(run, rows(step, 0, base))
        v.drain()
    star = v.plots.mins["maxent1"].data
    assert star["step"] == [1.0] and star["y"] == [2.0]  # maxent1 = base + 1, lowest at step 1
    feed(run, rows(4, 0, 0.5))  # a new lowest point at the newest step: still falling, no star
    v.drain()
    assert v.plots.mins["maxent1"].data["x"] == []
    feed(run, rows(5, 0, 0.7))
    v.drain()
    assert v.plots.mins["maxent1"].data["step"] == [4.0]
    v.smoothing = 0.5  # smoothing replays the curves; the star stays on the raw minimum
    assert v.plots.mins["maxent1"].data["y"] == [1.5]
    assert v.plots.sources["maxent1"].data["loss"][4] != 1.5


# -- draining into Bokeh sources (no server) ----------------------------------------------------
def test_drain_streams_only_complete_new_steps() -> None:
    run = fake_run([0, 1])
    v = RunViewer(run, poll=False)
    assert v.drain() == 0 and v.plots is None
    feed(run, rows(0, 0))
    v.drain()
    assert v.plots is None and v.points == 0  # seed 1 of step 0 still missing
    feed(run, rows(0, 1) + rows(1, 0) + rows(1, 1))
    v.drain()
    fig = v.plots.loss
    assert v.points == 2 * len(PROBES)
    np.testing.assert_allclose(v.plots.sources["maxent1"].data["loss"], [3.05, 3.05])
    feed(run, rows(2, 0) + rows(2, 1))
    assert v.drain() == 6 and v.drain() == 0
    assert v.plots.loss is fig  # streamed into the same figure, not rebuilt
    assert list(v.plots.sources["real"].data["step"]) == [0, 1, 2]


def test_two_viewers_have_independent_cursors_and_rollover() -> None:
    run = fake_run([0])
    a, b = RunViewer(run, poll=False), RunViewer(run, poll=False, rollover=2)
    for step in range(4):
        feed(run, rows(step, 0))
        a.drain()
    b.drain()
    assert len(a.plots.sources["real"].data["x"]) == 4
    assert list(b.plots.sources["real"].data["step"]) == [2, 3]  # rollover keeps the newest


def test_failed_run_shows_one_line_message() -> None:
    run = fake_run([0])
    run.store.status, run.store.error = "failed", "DataNotFoundError: no mnist under /x; set DSB_DATA_DIR\nTraceback..."
    v = RunViewer(run, poll=False)
    v.drain()
    assert v.alert.alert_type == "danger" and "DSB_DATA_DIR" in html.unescape(v.alert.object)
    assert "Traceback" not in v.alert.object


def test_overlay_of_saved_run(tmp_path: Path) -> None:
    ds = synthetic_sweep(extra={})
    v = RunViewer(fake_run([0, 1]), poll=False)
    assert v.add_overlay(ds, "saved") == 3
    names = [r.name for r in v.loss_pane.object.renderers if r.name]
    assert any(n.startswith("saved: ") for n in names)


# -- sweeps ---------------------------------------------------------------------------------------
def synthetic_sweep(extra: dict[str, list]) -> xr.Dataset:
    """(step, probe, seed, *extra) with loss = 1 + probe index + seed + 10 * (index on each extra dim)."""
    steps, seeds = np.array([0, 1, 3, 7]), np.array([0, 1, 2])
    shape = (len(steps), len(PROBES), len(seeds), *[len(v) for v in extra.values()])
    grids = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    loss = 1.0 + grids[1] + grids[2] + sum(10.0 * g for g in grids[3:])
    dims = ("step", "probe", "seed", *extra)
    data = {m: (dims, loss if m == "loss" else loss / 100) for m in ("loss", "accuracy")}
    data["target_accuracy"] = (dims, np.full(shape, np.nan))  # no edit probes
    coords = {"step": steps, "probe": PROBES, "seed": seeds, "probe_order": ("probe", ORDERS),
              "floor": ("probe", [math.nan, 0.5, math.nan]), **extra}
    return xr.Dataset(data, coords=coords)


def test_sweep_facets_mean_and_spread_over_seed() -> None:
    ds = synthetic_sweep({"model": ["mlp", "cnn"], "lr": [0.001, 0.01]})
    assert extra_dims(ds) == ("model", "lr")
    cells = facet_cells(ds)
    assert len(cells) == 4 and cells[1].title == "model=mlp, lr=0.01"
    curves = {c.probe: c for c in facet_curves(cells[3].data, band="std")}  # model=cnn, lr=0.01
    seed_vals = 1.0 + 1 + np.array([0, 1, 2]) + 10 + 10  # probe maxent1
    np.testing.assert_allclose(curves["maxent1"].mean, np.full(4, seed_vals.mean()))
    np.testing.assert_allclose(curves["maxent1"].hi - curves["maxent1"].mean, np.full(4, seed_vals.std()))
    np.testing.assert_allclose(curves["maxent1"].x, [1, 2, 4, 8])
    assert curves["maxent1"].floor == 0.5 and math.isnan(curves["real"].floor)
    only = facet_cells(ds, {"model": "cnn", "lr": "all"})
    assert [c.coords for c in only] == [{"model": "cnn", "lr": 0.001}, {"model": "cnn", "lr": 0.01}]
    with pytest.raises(ValueError, match="choose one of"):
        facet_cells(ds, {"model": "resnet"})


def test_sweep_cells_without_data_are_dropped_and_view_draws_one_figure_per_cell() -> None:
    ds = synthetic_sweep({"dataset": ["digits", "mnist", "svhn"]})
    ds["loss"][dict(dataset=2)] = np.nan  # a failed run
    assert [c.coords["dataset"] for c in facet_cells(ds)] == ["digits", "mnist"]
    view = SweepView(ds, "test")
    assert len(view.grid.objects) == 2
    view.selectors["dataset"].value = "mnist"
    assert len(view.grid.objects) == 1
    fig = view.grid.objects[0].object
    assert fig.title.text == "dataset=mnist"
    assert [r.name for r in fig.renderers if r.name == "floor"] == ["floor"]  # maxent1's floor, in range
    assert fig.y_scale.__class__.__name__ == "LogScale"


def test_sweep_overlays_conditions_on_one_axis() -> None:
    ds = synthetic_sweep({"model": ["mlp", "cnn"], "lr": [0.001, 0.01]})
    ds.attrs["sweep"] = '{"name": "lr-grid"}'
    assert sweep_name(ds, "sweep") == "lr-grid" and sweep_name(synthetic_sweep({}), "x") == "x"
    view = SweepView(ds, "lr-grid")
    assert len(view.grid.objects) == 4
    view.overlay = "model"
    assert len(view.grid.objects) == 2  # one figure per lr, both models on its axis
    fig = view.grid.objects[0].object
    lines = [r for r in fig.renderers if getattr(r.glyph, "y", None) == "mean"]
    assert len({str(r.glyph.line_dash) for r in lines}) == 2  # one line style per model
    assert fig.title.text == "lr=0.001" and any("model=cnn" in r.name for r in lines)


def test_plain_run_is_not_a_sweep() -> None:
    ds = synthetic_sweep({})
    assert extra_dims(ds) == () and len(facet_cells(ds)) == 1
    with pytest.raises(ValueError, match="lacks dims"):
        extra_dims(ds.isel(seed=0))


# -- the form and sessions -------------------------------------------------------------------------
def test_bad_form_input_becomes_a_message_not_a_run(tmp_path: Path) -> None:
    from dsb_widgets.ui.app import Dashboard

    reg = RunRegistry()
    d = Dashboard(tmp_path, registry=reg)
    d.viewer.stop_polling()
    for field, value, text in [("steps", 0, "steps must be >= 1"), ("dataset", "nosuch", "unknown image dataset"),
                               ("seeds", None, "seeds is empty")]:
        d._fill_from_experiment()
        getattr(d, field).value = value
        assert d.start() is None
        assert d.message.visible and d.message.alert_type == "danger" and text in html.unescape(d.message.object)
        assert "Traceback" not in d.message.object
    assert reg.runs() == []


def test_form_takes_the_datasets_own_defaults(tmp_path: Path) -> None:
    """Choosing a dataset with per-dataset defaults (images: convnet on Fashion-MNIST) switches the
    form's model, which the form always sends; back to digits gives the MLP again."""
    from dsb_widgets.engine.task import get_experiment
    from dsb_widgets.ui.app import Dashboard

    d = Dashboard(tmp_path, registry=RunRegistry())
    d.viewer.stop_polling()
    d._fill_from_experiment()
    by_dataset = get_experiment("images").defaults["by_dataset"]
    d.dataset.value = "fashion_mnist"
    assert d.model.value == by_dataset["fashion_mnist"]["model"] != "mlp"
    d.dataset.value = "digits"
    assert d.model.value == "mlp" and d.steps.value == get_experiment("images").defaults["steps"]


def test_sessions_register_and_release_idempotently() -> None:
    before = sessions.live_count()
    vid = sessions.register("test")
    assert sessions.live_count() == before + 1
    assert sessions.release(vid) and not sessions.release(vid)
    assert sessions.live_count() == before
    snap = sessions.snapshot()
    assert snap["rss_bytes"] > 0 and snap["stopped"] >= 1


def test_eta_uses_the_checkpoint_schedule_not_the_early_rate() -> None:
    """Log-spaced checkpoints front-load the evaluations: a plain rate extrapolation from the
    first seconds overestimates; the estimator splits time into per-step and per-evaluation."""
    from dsb_widgets.ui.stream import EtaEstimator

    ckpts = [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024]
    a, b = 0.01, 0.5  # true seconds per step and per evaluation

    def clock(step: int) -> float:
        return a * step + b * sum(1 for c in ckpts if c <= step)

    e = EtaEstimator(ckpts, min_train_s=0.1)
    seen = [e.update(clock(s), s, 1024) for s in (0, 1, 2, 3, 4, 6, 8, 12, 16, 24)]
    assert seen[0] is None  # estimating... until a checkpoint-free interval was measured
    eta = e.update(clock(40), 40, 1024)
    assert eta == pytest.approx(clock(1024) - clock(40), rel=1e-6)
    naive = clock(40) / 40 * (1024 - 40)  # what the old rate-based ETA said
    assert naive > 2 * eta
    assert e.update(0.5, 3, 1024) is None  # a new run: history dropped


def test_dashboard_opens_runs_and_sweeps_from_files(tmp_path: Path) -> None:
    from dsb_widgets.engine.results import write_atomic
    from dsb_widgets.ui.app import Dashboard, saved_files
    from dsb_widgets.ui.sweep_view import SweepView

    write_atomic(synthetic_sweep({}), tmp_path / "a-run.nc")
    write_atomic(synthetic_sweep({"model": ["mlp", "cnn"]}), tmp_path / "grid" / "sweep.nc")
    (tmp_path / "junk.nc").write_text("not netcdf")
    assert {p.name for p in saved_files(tmp_path)} == {"a-run.nc", "sweep.nc", "junk.nc"}
    d = Dashboard(tmp_path, registry=RunRegistry())
    d.viewer.stop_polling()
    assert set(d.files.options) == {"a-run.nc", "grid/sweep.nc", "junk.nc"}
    d.open_file(str(tmp_path / "a-run.nc"))
    assert d.message.alert_type == "success" and "Overlaid a-run" in d.message.object
    assert not d.sweep_area.visible and d.viewer._overlays[0][1] == "a-run"
    d.open_file(str(tmp_path / "grid" / "sweep.nc"))
    assert d.sweep_area.visible and isinstance(d.sweep_view, SweepView)
    assert len(d.sweep_view.grid.objects) == 2 and "model (2)" in d.message.object
    d.open_file(str(tmp_path / "junk.nc"))
    assert d.message.alert_type == "danger" and "Could not open junk.nc" in d.message.object


def test_floor_lines_span_a_checkpoint_suites_real_last_step() -> None:
    """`dsb run checkpoints` is asked for steps=1 and reports the suite's last step in its start event
    (engine/checkpoints.py): the plot spans that step, not the asked one."""
    run = fake_run([0], floors=[math.nan, 1.5, math.nan])
    run.store.meta["config"] = run.config.replace(steps=143_000)
    v = RunViewer(run, poll=False)
    feed(run, rows(0, 0))
    v.drain()
    assert list(v.plots.floors["maxent1"].data["x"]) == [1.0, 143_001.0]
