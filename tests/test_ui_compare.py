"""Comparing runs and serving: busy port, saved-file labels, config diff, duplicate overlays."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

pytest.importorskip("panel")

from dsb_widgets.engine.results import METRICS, write_atomic
from dsb_widgets.ui.compare import compare_html, config_diff, config_of, file_labels, port_problem


def _result(cfg: dict, extra: dict | None = None) -> xr.Dataset:
    extra = extra or {}
    shape = (3, 2, 1, *[len(v) for v in extra.values()])
    dims = ("step", "probe", "seed", *extra)
    data = {m: (dims, np.full(shape, np.nan) if m.startswith("target") else np.ones(shape)) for m in METRICS}
    ds = xr.Dataset(data, coords={"step": [0, 1, 2], "probe": ["real", "maxent1"], "seed": [0],
                                  "probe_order": ("probe", [np.inf, 1.0]), **extra})
    ds.attrs["config"] = json.dumps(cfg)
    return ds


def test_busy_port_is_one_line_exit_2_and_nothing_started() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert "--port" in (port_problem("127.0.0.1", port) or "")
        out = subprocess.run([sys.executable, "-m", "dsb_widgets.cli", "serve", "--start", "--address", "127.0.0.1",
                              "--port", str(port)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert out.stdout == ""  # no "started run1", no URL
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "--port" in lines[0] and str(port) in lines[0], out.stderr
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    assert port_problem("127.0.0.1", free) is None


def test_sweep_runs_are_labelled_by_grid_values(tmp_path: Path) -> None:
    sweep = _result({}, {"lr": [0.001, 0.01]})
    sweep.attrs["sweep"] = json.dumps({"name": "lr-grid"})
    sweep.attrs["runs"] = json.dumps({"abc123": {"coords": {"lr": 0.001}}, "def456": {"coords": {"lr": 0.01}}})
    write_atomic(sweep, tmp_path / "g" / "sweep.nc")
    for key in ("abc123", "def456"):
        write_atomic(_result({"lr": 1}), tmp_path / "g" / "runs" / f"{key}.nc")
    write_atomic(_result({}), tmp_path / "plain.nc")
    files = sorted(tmp_path.rglob("*.nc"))
    labels = file_labels(tmp_path, files)
    assert set(labels) == {"lr-grid (sweep, 2 runs)", "lr-grid: lr=0.001", "lr-grid: lr=0.01", "plain.nc"}
    assert labels["lr-grid: lr=0.01"].endswith("def456.nc")


def test_compare_table_lists_only_differing_config_keys() -> None:
    a, b = {"steps": 512, "lr": 0.001, "options": {"width": 32}}, {"steps": 512, "lr": 0.01, "options": {"width": 64}}
    flat = [config_of(_result(a)), config_of(_result(b))]
    assert config_diff(flat) == ["lr", "options.width"]
    html = compare_html([("run1 (live)", "solid", flat[0]), ("<b>x</b>", "dashed", flat[1])])
    assert "options.width" in html and "steps" not in html and "<b>x</b>" not in html  # escaped label
    assert compare_html([("only", "solid", flat[0])]) == ""


def test_same_file_twice_is_one_overlay(tmp_path: Path) -> None:
    from dsb_widgets.runs import RunRegistry
    from dsb_widgets.ui.app import Dashboard

    write_atomic(_result({"steps": 2}), tmp_path / "a.nc")
    d = Dashboard(tmp_path, registry=RunRegistry())
    d.viewer.stop_polling()
    assert d.files.value == str(tmp_path / "a.nc")  # an explicit selection, not a blank box
    d.open_file(str(tmp_path / "a.nc"))
    d.open_file(str(tmp_path / "a.nc"))
    assert d.viewer.overlays == ["a"]
    names = [r.name for r in d.viewer.loss_pane.object.renderers if (r.name or "").startswith("a: ")]
    assert sorted(names) == ["a: maxent1", "a: real"]


def test_sidebar_messages_expire_but_errors_stay(tmp_path: Path) -> None:
    from dsb_widgets.runs import RunRegistry
    from dsb_widgets.ui.app import MESSAGE_S, Dashboard

    d = Dashboard(tmp_path, registry=RunRegistry())
    d.viewer.stop_polling()
    d.say("Overlaid x", "success")
    d._refresh_runs()
    assert d.message.visible  # fresh
    d._said_at -= MESSAGE_S + 1
    d._refresh_runs()
    assert not d.message.visible  # stale success message gone
    d.say("Could not open y", "danger")
    d._said_at -= MESSAGE_S + 1
    d._refresh_runs()
    assert d.message.visible  # an error stays until the next action
