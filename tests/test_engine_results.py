"""Results files that grow by appended records: same bytes as a full write, constant cost per
checkpoint, valid for readers at every moment, and exact resume after a SIGKILL mid-append."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st

from dsb_widgets.engine import RunConfig, load_results, nc_records, train
from dsb_widgets.engine import results as results_mod
from dsb_widgets.engine.nc_records import LayoutMismatch, append_records, read_layout
from dsb_widgets.engine.results import METRICS, NETCDF_ENGINE, ResultsTable, ResultsWriter, write_atomic

CFG = RunConfig(dataset="digits", model="mlp", steps=64, seeds=2, per_octave=2, probe_size=100,
                probes=("real", "maxent2", "ot"), device="cpu", options={"width": 32}, save_interval_s=0.0)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _table(n_probe: int, n_seed: int, rows: int, seed: int = 0) -> ResultsTable:
    rng = np.random.default_rng(seed)
    t = ResultsTable([f"p{i}" for i in range(n_probe)], [float(i) for i in range(n_probe)],
                     list(range(n_seed)), attrs={"config": "{}", "experiment": "x"},
                     floors=[np.nan] * n_probe)
    for k in range(rows):
        m = {mm: rng.normal(size=(n_probe, n_seed)) for mm in METRICS}
        m["target_loss"][0] = np.nan
        t.add(k * 3, 0.25 * k, m, rng.normal(size=n_seed))
    return t


def _grow(table: ResultsTable, path: Path) -> ResultsWriter:
    """Write ``table`` row by row through a writer, as the training loop does."""
    part = ResultsTable(table.probes, table.orders, table.seeds, attrs=table.attrs, floors=table.floors)
    writer = ResultsWriter(path)
    for i in range(len(table.steps)):
        part.add(table.steps[i], table.wall[i], {m: table.values[m][i] for m in METRICS}, table.train_loss[i])
        writer.write(part)
    return writer


@settings(max_examples=15, deadline=None)
@given(st.integers(1, 4), st.integers(1, 3), st.integers(1, 12))
def test_appended_file_is_byte_identical_to_a_full_write(tmp_path_factory: pytest.TempPathFactory, n_probe: int,
                                                         n_seed: int, rows: int) -> None:
    tmp = tmp_path_factory.mktemp("nc")
    table = _table(n_probe, n_seed, rows)
    writer = _grow(table, tmp / "appended.nc")
    write_atomic(table.to_dataset(), tmp / "whole.nc")
    assert (tmp / "appended.nc").read_bytes() == (tmp / "whole.nc").read_bytes()
    assert writer.rewrites == 1  # only the first row rewrote the file
    assert load_results(tmp / "appended.nc").identical(table.to_dataset())


def test_each_append_writes_one_record_whatever_the_rows_before(tmp_path: Path) -> None:
    table = _table(5, 3, 40)
    sizes = []
    part = ResultsTable(table.probes, table.orders, table.seeds, attrs=table.attrs, floors=table.floors)
    writer = ResultsWriter(tmp_path / "r.nc")
    for i in range(40):
        part.add(table.steps[i], table.wall[i], {m: table.values[m][i] for m in METRICS}, table.train_loss[i])
        writer.write(part)
        sizes.append(writer.last_bytes)
    record = 4 * 5 * 3 * 8 + 3 * 8 + 8 + 4  # four metrics + train_loss (float64), wall_time, step (int32)
    assert sizes[1:] == [record + 4] * 39  # + the 4-byte numrecs update
    assert writer.rewrites == 1


def test_training_writes_constant_bytes_per_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Counting bytes (not timing): after the first checkpoint creates the file, every checkpoint
    writes the same number of bytes to it, and no checkpoint rewrites it."""
    pwrites: list[int] = []
    rewrites: list[Path] = []
    real_pwrite, real_write = nc_records._pwrite, results_mod.write_atomic

    def count_pwrite(fd: int, data: bytes, offset: int) -> int:
        pwrites.append(len(data))
        return real_pwrite(fd, data, offset)

    def count_rewrite(ds: xr.Dataset, path: str | os.PathLike[str]) -> None:
        rewrites.append(Path(path))
        real_write(ds, path)

    monkeypatch.setattr(nc_records, "_pwrite", count_pwrite)
    monkeypatch.setattr(results_mod, "write_atomic", count_rewrite)
    res = train(CFG, out=tmp_path / "run.nc")
    n = res.dataset.sizes["step"]
    assert n >= 12
    assert rewrites == [tmp_path / "run.nc"]  # created once
    records, headers = pwrites[0::2], pwrites[1::2]
    assert len(records) == n - 1 and headers == [4] * (n - 1)
    assert len(set(records)) == 1  # checkpoint 13 costs what checkpoint 2 did
    assert load_results(tmp_path / "run.nc").identical(res.dataset)


def test_readers_see_the_counted_rows_while_a_record_is_half_written(tmp_path: Path) -> None:
    table = _table(3, 2, 6)
    path = tmp_path / "r.nc"
    _grow(table, path)
    with open(path, "ab") as fh:  # a writer killed after writing half of the next record
        fh.write(b"\x7f" * 100)
    with xr.open_dataset(path, engine=NETCDF_ENGINE) as ds:
        assert ds.sizes["step"] == 6
        np.testing.assert_array_equal(ds["loss"].values, np.stack(table.values["loss"]))
    # the next append overwrites the torn bytes
    more = _table(3, 2, 7)
    append_records(path, [more.row(6)], expect=6)
    assert load_results(path).identical(more.to_dataset())


def test_an_unexpected_file_is_rewritten_not_appended_to(tmp_path: Path) -> None:
    path = tmp_path / "r.nc"
    table = _table(2, 2, 4)
    table.to_dataset().isel(step=slice(0, 3)).to_netcdf(path, engine=NETCDF_ENGINE)  # old layout: fixed step
    with open(path, "rb") as fh:
        assert read_layout(fh).variables == ()
    with pytest.raises(LayoutMismatch):
        append_records(path, [table.row(3)])
    writer = ResultsWriter(path)
    writer.on_disk = 3  # a writer that believes it may append
    writer.write(table)
    assert writer.rewrites == 1 and load_results(path).identical(table.to_dataset())
    writer.on_disk = 2  # the file holds 4 rows, not 2: never appended to blindly
    table.add(99, 9.0, {m: np.zeros((2, 2)) for m in METRICS}, np.zeros(2))
    writer.write(table)
    assert writer.rewrites == 2 and load_results(path).identical(table.to_dataset())


KILLER = textwrap.dedent("""
    import os, signal, sys, torch
    from dsb_widgets.engine import RunConfig, train
    from dsb_widgets.engine import nc_records
    torch.set_num_threads(1)
    cfg = RunConfig.from_json(sys.argv[1])
    kill_at, seen = int(sys.argv[3]), [0]
    real = nc_records._pwrite
    def pwrite(fd, data, offset):
        if len(data) == 4:  # the numrecs update
            return real(fd, data, offset)
        n = real(fd, data[: len(data) // 2] if seen[0] == kill_at else data, offset)
        seen[0] += 1
        if seen[0] > kill_at:  # SIGKILL with half a record on disk, numrecs not yet updated
            os.kill(os.getpid(), signal.SIGKILL)
        return n
    nc_records._pwrite = pwrite
    train(cfg, out=sys.argv[2])
""")


def test_sigkill_mid_append_then_resume_is_bit_identical(tmp_path: Path) -> None:
    full = train(CFG, out=tmp_path / "full.nc")
    out = tmp_path / "killed.nc"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", KILLER, CFG.to_json(), str(out), "6"], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == -9, proc.stderr[-2000:]
    killed = load_results(out)
    assert killed.sizes["step"] == 7  # the row being appended is not counted; the 7 before it are intact
    for m in (*METRICS, "train_loss"):
        np.testing.assert_array_equal(killed[m].values, full.dataset[m].values[:7], err_msg=m)
    resumed = train(CFG, out=out, resume=True)
    assert resumed.status == "finished"
    on_disk = load_results(out)
    for ds in (resumed.dataset, on_disk):
        assert ds.step.values.tolist() == full.dataset.step.values.tolist()
        for m in (*METRICS, "train_loss"):  # bit for bit, not approximately
            np.testing.assert_array_equal(ds[m].values, full.dataset[m].values, err_msg=m)


def test_upload_checks_count_the_appended_steps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The dashboard's header check sees step = numrecs in an appended file (and its step limit)."""
    from dsb_widgets.ui import safety

    path = tmp_path / "r.nc"
    _grow(_table(3, 2, 9), path)
    header = safety.check_results_file(path)
    assert header.dims["step"] == 9
    assert safety.open_results_bytes(path.read_bytes(), "r.nc").sizes["step"] == 9
    monkeypatch.setattr(safety, "MAX_STEPS", 8)
    with pytest.raises(safety.UnsafeInputError, match="9 steps"):
        safety.check_results_file(path)
