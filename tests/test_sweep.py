"""Sweeps: grid expansion, the merged-result layout, and a real Dask sweep that survives a
killed worker, reports a failing run and does no repeated work when rerun."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xarray as xr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dsb_widgets.engine.results import ResultsTable, load_results, write_atomic
from dsb_widgets.engine.task import PROBE_SEEDING, ConfigError
from dsb_widgets.sweep import KEY_PREFIX, is_finished, merge_runs, read_attempts, run_path, run_sweep
from dsb_widgets.sweep_config import SweepConfig, SweepRun, expand, load_sweep, parse_sweep

REPO = Path(__file__).resolve().parents[1]
TINY = {"experiment": "images", "dataset": "digits", "steps": 64, "probe_size": 100,
        "save_interval_s": 0.0, "options": {"width": 32}}
GRID = {"model": ["mlp", "cnn"], "options.train_on": ["real", "gauss_clone"], "seed": [0, 1]}


# --- grid expansion --------------------------------------------------------------------------

def test_expand_is_the_cartesian_product_with_stable_distinct_keys(tmp_path: Path) -> None:
    sweep = parse_sweep({"base": TINY, "grid": GRID}, tmp_path)
    runs = expand(sweep)
    assert len(runs) == 8
    assert len({r.key for r in runs}) == 8
    assert [r.key for r in expand(sweep)] == [r.key for r in runs]  # deterministic names
    cells = {(r.config.model, r.config.options["train_on"], r.config.seed) for r in runs}
    assert cells == {(m, t, s) for m in GRID["model"] for t in GRID["options.train_on"] for s in GRID["seed"]}
    assert all(r.config.options["width"] == 32 and r.config.steps == 64 for r in runs)
    assert sweep.axes == ("model", "options.train_on")
    assert sweep.dims == {"model": "model", "options.train_on": "train_on"}


def test_dims_keep_the_options_prefix_when_the_short_name_is_taken(tmp_path: Path) -> None:
    sweep = parse_sweep({"base": {"experiment": "images"}, "grid": {"model": ["mlp"], "options.model": [1],
                                                                    "options.step": [2]}}, tmp_path)
    assert sweep.dims == {"model": "model", "options.model": "options.model", "options.step": "options.step"}


@pytest.mark.parametrize("spec, match", [
    ({"base": {}, "grid": {"modle": ["mlp"]}}, "unknown grid key 'modle'"),
    ({"base": {}, "grid": {"model": []}}, "non-empty list"),
    ({"base": {}, "grid": {"model": ["mlp", "mlp"]}}, "twice"),
    ({"base": {"model": "mlp"}, "grid": {"model": ["cnn"]}}, "both base: and grid:"),
    ({"base": {"options": {"width": 8}}, "grid": {"options.width": [16]}}, "both base: and grid:"),
    ({"base": {"lrr": 1}, "grid": {"model": ["mlp"]}}, "unknown base field 'lrr'"),
    ({"base": {}, "grid": {"model": ["mlp"]}, "retries": -1}, "retries"),
    ({"base": {}, "grid": {"model": ["mlp"]}, "colour": 1}, "unknown sweep key"),
    ({"base": {"seeds": 2}, "grid": {"seed": [0, 1]}}, "seed 1 is trained by two runs"),
    ({"base": {"experiment": "images"}, "grid": {"model": ["mlp", "transformer"]}}, "model=transformer"),
])
def test_bad_sweeps_fail_with_one_line_naming_the_fix(tmp_path: Path, spec: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match) as err:
        expand(parse_sweep(spec, tmp_path))
    assert "\n" not in str(err.value)


def test_example_sweep_file_parses() -> None:
    sweep = load_sweep(REPO / "examples" / "sweep_digits.yaml")
    assert len(expand(sweep)) == 12 and sweep.name == "digits"


# --- merged result from engine-format files (no training) -------------------------------------

def _fake_run(sweep: SweepConfig, run: SweepRun, value: float, last_step: int | None = None) -> None:
    """Write an engine-format netCDF for ``run`` whose every metric is ``value + step / 1000``."""
    cfg = run.config
    seeds = [cfg.seed + i for i in range(cfg.seeds)]
    table = ResultsTable(list(cfg.probes), [1.0] * len(cfg.probes), seeds,
                         attrs={"config": cfg.to_json(), "probe_seeding": PROBE_SEEDING})
    for step in (0, 1, 2, 4, cfg.steps if last_step is None else last_step):
        v = np.full((len(cfg.probes), len(seeds)), value + step / 1000)
        table.add(step, 0.1 * step, {m: v for m in ("loss", "accuracy", "target_loss", "target_accuracy")},
                  np.full(len(seeds), value))
    write_atomic(table.to_dataset(), run_path(sweep.out_dir, run.key))


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n_lr=st.integers(1, 3), n_seed=st.integers(1, 3), seeds_per_run=st.integers(1, 2),
       keep=st.lists(st.booleans(), min_size=18, max_size=18))
def test_merge_places_every_run_at_its_grid_cell(tmp_path_factory: pytest.TempPathFactory, n_lr: int,
                                                 n_seed: int, seeds_per_run: int, keep: list[bool]) -> None:
    out = tmp_path_factory.mktemp("merge")
    grid = {"model": ["mlp", "cnn"], "lr": [0.001 * (i + 1) for i in range(n_lr)],
            "seed": [seeds_per_run * i for i in range(n_seed)]}
    sweep = parse_sweep({"base": {"experiment": "images", "steps": 8, "seeds": seeds_per_run,
                                  "probes": ["real", "ot"]}, "grid": grid}, out)
    runs = expand(sweep)
    done = [r for r, k in zip(runs, keep) if k] or runs[:1]
    values = {r.key: float(i + 1) for i, r in enumerate(done)}
    for r in done:
        _fake_run(sweep, r, values[r.key])
    ds = merge_runs(sweep, runs)
    assert dict(ds.sizes) == {"step": 5, "probe": 2, "seed": n_seed * seeds_per_run, "model": 2, "lr": n_lr}
    assert ds["loss"].dims == ("step", "probe", "seed", "model", "lr")
    assert list(ds.model.values) == ["mlp", "cnn"] and np.allclose(ds.lr.values, grid["lr"])
    for r in runs:
        for s in range(r.config.seed, r.config.seed + r.config.seeds):
            cell = ds.sel(model=r.config.model, lr=r.config.lr, seed=s)
            if r.key in values:
                assert np.allclose(cell["loss"].sel(step=8), values[r.key] + 0.008)
                assert np.allclose(cell["train_loss"], values[r.key])
                assert str(cell["run_key"].values) == r.key
            else:
                assert np.isnan(cell["loss"]).all() and str(cell["run_key"].values) == ""
    assert set(json.loads(ds.attrs["runs"])) == set(values)
    assert len(json.loads(ds.attrs["missing"])) == len(runs) - len(done)
    assert json.loads(ds.attrs["axes"]) == ["model", "lr"] and ds["probe_order"].dims == ("probe",)
    path = out / "m.nc"
    write_atomic(ds, path)
    assert load_results(path)["loss"].equals(ds["loss"])  # round-trips through netCDF3


def test_is_finished_needs_the_last_step_and_the_same_config(tmp_path: Path) -> None:
    sweep = parse_sweep({"base": {"experiment": "images", "steps": 8}, "grid": {"model": ["mlp", "cnn"]}}, tmp_path)
    a, b = expand(sweep)
    _fake_run(sweep, a, 1.0, last_step=6)
    assert not is_finished(run_path(tmp_path, a.key), a.config)
    _fake_run(sweep, a, 1.0)
    assert is_finished(run_path(tmp_path, a.key), a.config)
    assert not is_finished(run_path(tmp_path, a.key), b.config)  # another config's file
    assert not is_finished(run_path(tmp_path, b.key), b.config)  # no file


def test_is_finished_reads_the_engines_final_step_and_has_no_per_experiment_case(tmp_path: Path) -> None:
    """An engine that decides where a run ends (checkpoint suites) saves the config as asked and the last
    step in ``attrs["final_step"]``: finished there, not at ``cfg.steps``. A saved config that differs from
    the asked one (in ``steps`` too, for every experiment) is another run."""
    sweep = parse_sweep({"base": {"experiment": "images", "steps": 8}, "grid": {"model": ["mlp"]}}, tmp_path)
    (run,) = expand(sweep)
    path = run_path(tmp_path, run.key)
    _fake_run(sweep, run, 1.0, last_step=32)  # ends at 32, asked steps 8
    assert not is_finished(path, run.config)
    ds = load_results(path)
    ds.attrs["final_step"] = 32
    write_atomic(ds, path)
    assert is_finished(path, run.config)
    ds.attrs["final_step"] = 64  # stopped before the engine's last step
    write_atomic(ds, path)
    assert not is_finished(path, run.config)
    ds.attrs["final_step"] = 32
    ds.attrs["config"] = run.config.replace(steps=32).to_json()  # the old checkpoints form: steps rewritten
    write_atomic(ds, path)
    assert not is_finished(path, run.config)
    assert not is_finished(path, run.config.replace(experiment="checkpoints"))
    import dsb_widgets.sweep as sweep_module

    assert not hasattr(sweep_module, "DERIVED_STEPS")


def test_cli_lists_runs_and_rejects_bad_sweeps(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from dsb_widgets.cli import main

    cfg = tmp_path / "s.yaml"
    cfg.write_text(json.dumps({"out_dir": str(tmp_path / "o"), "base": TINY, "grid": GRID}))
    assert main(["sweep", str(cfg), "--list"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 8 and all(line.startswith("todo") for line in lines)
    cfg.write_text(json.dumps({"out_dir": "o", "base": TINY, "grid": {"model": "mlp"}}))
    assert main(["sweep", str(cfg)]) == 2
    assert "grid.model must be a non-empty list" in capsys.readouterr().err


# --- a real sweep on a 2-process LocalCluster -------------------------------------------------

@pytest.fixture(scope="module")
def client() -> Any:
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                                  silence_logs=40) as cluster, distributed.Client(cluster) as c:
        yield c


def _kill_a_worker_mid_run(client: Any, out: Path, steps: int, stop: threading.Event) -> list[str]:
    """SIGKILL the worker that runs the first run seen between its first and last checkpoint."""
    while not stop.is_set():
        for nc in sorted((out / "runs").glob("*.nc")):
            if not nc.with_name(nc.stem + ".state.pt").exists():
                continue
            try:
                last = int(load_results(nc).step[-1])
            except Exception:  # noqa: BLE001 - a file being written right now: look again
                continue
            if not 1 <= last <= steps // 4:
                continue
            for addr, keys in client.processing().items():
                if any(str(k).startswith(f"{KEY_PREFIX}{nc.stem}-") for k in keys):
                    pid = client.run(os.getpid, workers=[addr])[addr]
                    os.kill(pid, signal.SIGKILL)
                    return [nc.stem]
        time.sleep(0.02)
    return []


@pytest.mark.slow
def test_sweep_survives_a_killed_worker_reports_failures_and_reruns_nothing(client: Any, tmp_path: Path) -> None:
    from dsb_widgets.engine.schedule import log_checkpoints
    from dsb_widgets.sweep import execute_run

    out = tmp_path / "sweep"
    spec = {"name": "t", "out_dir": str(out), "base": TINY, "grid": GRID, "retries": 2}
    stop, killed = threading.Event(), []
    killer = threading.Thread(target=lambda: killed.extend(_kill_a_worker_mid_run(client, out, 64, stop)))
    killer.start()
    try:
        res = run_sweep(spec, client=client, threads=1, progress=False)
    finally:
        stop.set()
        killer.join()
    assert len(killed) == 1, "no run was caught mid-way to kill its worker"
    victim = killed[0]
    # Every cell is there, nothing failed, the lost run was retried and resumed from its checkpoint.
    assert not res.failed and len(res.finished) == 8
    ds = xr.open_dataset(out / "sweep.nc", engine="scipy").load()
    n_steps = len(log_checkpoints(64, res.runs[0].config.per_octave))
    n_probes = len(res.runs[0].config.probes)  # the experiment's default probe set, as resolved
    assert dict(ds.sizes) == {"step": n_steps, "probe": n_probes, "seed": 2, "model": 2, "train_on": 2}
    assert not np.isnan(ds["loss"]).any() and (ds["run_key"] != "").all()
    assert json.loads(ds.attrs["missing"]) == []
    starts = {r.key: [a for a in read_attempts(run_path(out, r.key)) if a["event"] == "start"] for r in res.runs}
    assert len(starts[victim]) == 2 and starts[victim][1]["resume_step"] >= 1
    assert all(len(s) == 1 for k, s in starts.items() if k != victim)
    assert res.attempts[victim] == 2 and json.loads((out / "failures.json").read_text()) == []
    # The resumed run reproduces an uninterrupted one (the engine's determinism through Dask).
    run = next(r for r in res.runs if r.key == victim)
    client.submit(execute_run, run.config.to_json(), str(tmp_path / "ref.nc"), 1, pure=False).result()
    ref, got = load_results(tmp_path / "ref.nc"), load_results(run_path(out, victim))
    np.testing.assert_allclose(got["loss"].values, ref["loss"].values, rtol=1e-5, atol=1e-6)

    # A rerun skips every finished run: no new attempt is logged, the merge is identical.
    mtimes = {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*.nc")}
    again = run_sweep(spec, client=client, threads=1, progress=False)
    assert len(again.skipped) == 8 and not again.finished and not again.failed
    assert {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*.nc")} == mtimes
    assert all(len([a for a in read_attempts(run_path(out, r.key)) if a["event"] == "start"]) == len(starts[r.key])
               for r in res.runs)
    assert xr.open_dataset(out / "sweep.nc", engine="scipy").load()["loss"].equals(ds["loss"])

    # A run that raises is retried, then reported with its error; the other run still finishes. (A
    # config that cannot work is refused when the grid is expanded, so the failing cell is one that
    # passes validation and raises while training: a learning rate that diverges.)
    bad = {"name": "bad", "out_dir": str(tmp_path / "bad"), "retries": 1,
           "base": {**TINY, "steps": 8, "model": "mlp", "options": {}}, "grid": {"lr": [1e-3, 1e9]}}
    res = run_sweep(bad, client=client, threads=1, progress=False)
    assert len(res.finished) == 1 and len(res.failed) == 1
    (key, error), = res.failed.items()
    assert "diverged" in error and res.attempts[key] == 2  # first try + one retry
    report = json.loads((tmp_path / "bad" / "failures.json").read_text())
    assert report[0]["key"] == key and report[0]["coords"] == {"lr": 1e9} and report[0]["traceback"]
    merged = res.dataset
    assert not np.isnan(merged["loss"].sel(lr=1e-3)).any() and np.isnan(merged["loss"].sel(lr=1e9)).all()
