"""Bad input fails fast with one line (exit 2), and no result is ever lost (issue 18, items 7-12).

Every CLI case here patches the data loaders to fail loudly, so "fails before any data loading"
is checked, not assumed.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dsb_widgets.cli import main
from dsb_widgets.engine import RunConfig

FAST = ["--steps", "4", "--probe-size", "50", "--probes", "real", "maxent1", "--device", "cpu", "-o", "width=16"]


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture
def no_data(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any data loading fails the test: the error must come before it."""
    import dsb_widgets.engine.images as images

    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("data was loaded before the bad input was refused")

    monkeypatch.setattr(images, "load_images", boom)


def _one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    """The single ``dsb: error:`` line on stderr (a progress bar may precede it), no traceback."""
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err, err
    last = err.splitlines()[-1] if err else ""
    assert last.startswith("dsb: error:") and err.count("dsb: error:") == 1, err
    return last


# --- item 10: typed experiment options -------------------------------------------------------------
@pytest.mark.parametrize(("option", "needle"), [
    ("widht=64", "did you mean 'width'"),
    ("foo=bar", "unknown option 'foo'"),
    ("taylor=maybe", "-o taylor=true"),
    ("width=0", "width' must be >= 1"),
    ("width=abc", "integer"),
    ("train_on=fake", "gauss_clone"),
    ("ot_shrinkage=lots", "ot_shrinkage=optimal"),
    ("taylor_method=magic", "hutchinson"),
])
def test_bad_image_option_exits_2_before_data_loading(option: str, needle: str, tmp_path: Path, no_data: None,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "images", *FAST, "-o", option, "--out", str(tmp_path / "r.nc")]) == 2
    assert needle in _one_line_error(capsys)
    assert not (tmp_path / "r.nc").exists()


@pytest.mark.parametrize(("args", "needle"), [
    (["-o", "n_head=3"], "not divisible"),
    (["--context", "1"], "context' must be >= 2"),
    (["-o", "mask_prob=2"], "mask_prob"),
    (["--tokenizer", "words"], "gpt2"),
    (["-o", "contxt=8"], "did you mean 'context'"),
])
def test_bad_text_option_exits_2(args: list[str], needle: str, tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "text", "--corpus", "tinyshakespeare", *args, "--out", str(tmp_path / "t.nc")]) == 2
    assert needle in _one_line_error(capsys)


def test_options_of_another_experiment_are_refused(tmp_path: Path, no_data: None,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "images", *FAST, "--context", "8", "--out", str(tmp_path / "r.nc")]) == 2
    assert "unknown option 'context' for experiment 'images'" in _one_line_error(capsys)


def test_run_help_lists_every_experiments_options(capsys: pytest.CaptureFixture[str]) -> None:
    from dataclasses import fields

    from dsb_widgets.options_clones import CloneOptions
    from dsb_widgets.options_images import ImageOptions
    from dsb_widgets.options_text import TextOptions

    with pytest.raises(SystemExit):
        main(["run", "--help"])
    out = capsys.readouterr().out
    for schema in (ImageOptions, TextOptions, CloneOptions):
        for f in fields(schema):
            assert f"    {f.name}=" in out, f.name


def test_options_are_stored_typed_and_builders_read_them() -> None:
    from dsb_widgets.engine import RunConfig, get_experiment, resolve_config
    from dsb_widgets.options_images import ImageOptions

    cfg = resolve_config(RunConfig(options={"width": "64", "taylor": "false", "ot_shrinkage": 0.5}))
    assert cfg.options["width"] == 64 and cfg.options["taylor"] is False
    opts = get_experiment("images").parse(cfg)
    assert isinstance(opts, ImageOptions) and opts.shrinkage == 0.5
    assert ImageOptions(ot_shrinkage="none").shrinkage is None


def test_one_list_of_datasets_per_experiment() -> None:
    from dsb_widgets.data.images import KNOWN_IMAGE_DATASETS
    from dsb_widgets.data.text import CORPORA
    from dsb_widgets.engine import get_experiment

    assert get_experiment("images").datasets is KNOWN_IMAGE_DATASETS
    assert get_experiment("text").datasets is CORPORA
    assert get_experiment("clones").datasets is CORPORA


def test_sweep_cells_use_the_same_schema(tmp_path: Path) -> None:
    from dsb_widgets.errors import ConfigError
    from dsb_widgets.sweep_config import expand, parse_sweep

    spec = {"out_dir": str(tmp_path), "base": {"experiment": "images", "steps": 4},
            "grid": {"options.widht": [16, 32]}}
    with pytest.raises(ConfigError, match="did you mean 'width'"):
        expand(parse_sweep(spec))


# --- item 7: never clobber a result ------------------------------------------------------------------
def _digits_cfg(**kw: object) -> RunConfig:

    base: dict[str, object] = dict(steps=4, probe_size=50, probes=("real", "maxent1"), device="cpu",
                                   options={"width": 16})
    base.update(kw)
    return RunConfig(**base)  # type: ignore[arg-type]


def test_same_out_without_resume_is_refused_and_the_result_kept(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "r.nc"
    assert main(["run", "images", *FAST, "--out", str(out)]) == 0
    before = out.read_bytes()
    capsys.readouterr()
    assert main(["run", "images", *FAST, "--steps", "1", "--out", str(out)]) == 2
    err = _one_line_error(capsys)
    assert "--resume" in err and "--force" in err
    assert out.read_bytes() == before  # untouched
    assert main(["run", "images", *FAST, "--steps", "2", "--out", str(out), "--force"]) == 0
    from dsb_widgets.engine import load_results

    assert int(load_results(out).step[-1]) == 2  # --force overwrote it


def test_default_out_writes_beside_an_earlier_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["run", "images", *FAST]) == 0
    assert main(["run", "images", *FAST]) == 0
    names = sorted(p.name for p in (tmp_path / "runs").glob("*.nc"))
    assert names == ["images-digits-mlp-2.nc", "images-digits-mlp.nc"]


def test_python_api_and_registry_refuse_an_existing_result(tmp_path: Path, no_data: None) -> None:
    from dsb_widgets.engine import train
    from dsb_widgets.errors import ResultExistsError
    from dsb_widgets.runs import RunRegistry

    out = tmp_path / "r.nc"
    out.write_bytes(b"CDF\x01 an earlier result")
    with pytest.raises(ResultExistsError, match="--resume"):
        train(_digits_cfg(), out=out)  # before any data loads (no_data)
    with pytest.raises(ResultExistsError):
        RunRegistry().start(_digits_cfg(), out=out)  # in the caller's thread: the form shows it
    assert out.read_bytes() == b"CDF\x01 an earlier result"


def test_resume_without_state_never_overwrites_another_config(tmp_path: Path) -> None:
    from dsb_widgets.engine import train
    from dsb_widgets.errors import ConfigError

    out = tmp_path / "r.nc"
    train(_digits_cfg(), out=out)
    out.with_name("r.state.pt").unlink()
    before = out.read_bytes()
    with pytest.raises(ConfigError, match="another config"):
        train(_digits_cfg(lr=0.5), out=out, resume=True)
    assert out.read_bytes() == before
    train(_digits_cfg(), out=out, resume=True)  # same config: recomputed identically, allowed


# --- item 8: unique names for runs started in the same second ---------------------------------------
def test_reserved_run_paths_are_unique_across_threads(tmp_path: Path) -> None:
    import threading

    from dsb_widgets.engine import resolve_config
    from dsb_widgets.runs import reserve_run_path

    cfg = resolve_config(_digits_cfg())
    paths: list[Path] = []
    barrier = threading.Barrier(8)

    def grab() -> None:
        barrier.wait()
        paths.append(reserve_run_path(tmp_path, cfg, when=1_700_000_000.0))  # all "in the same second"

    threads = [threading.Thread(target=grab) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(paths)) == 8 and all(p.exists() and p.stat().st_size == 0 for p in paths)


def test_two_dashboard_runs_started_together_both_finish(tmp_path: Path) -> None:
    import threading

    from dsb_widgets.engine import load_results, resolve_config
    from dsb_widgets.runs import RunRegistry
    from dsb_widgets.ui.app import run_path

    reg = RunRegistry()
    cfg = resolve_config(_digits_cfg())
    handles = []
    barrier = threading.Barrier(2)

    def start() -> None:
        barrier.wait()
        handles.append(reg.start(cfg, out=run_path(tmp_path, cfg)))

    starters = [threading.Thread(target=start) for _ in range(2)]
    for t in starters:
        t.start()
    for t in starters:
        t.join()
    for h in handles:
        h.join(120)
    assert [h.store.status for h in handles] == ["finished", "finished"], [h.store.error for h in handles]
    assert handles[0].out != handles[1].out
    for h in handles:
        assert int(load_results(h.out).step[-1]) == 4


def test_concurrent_writers_of_one_file_never_fail(tmp_path: Path) -> None:
    import threading

    import xarray as xr

    from dsb_widgets.engine.results import write_atomic

    ds = xr.Dataset({"a": ("x", [1.0, 2.0])})
    errors: list[BaseException] = []

    def write() -> None:
        try:
            for _ in range(10):
                write_atomic(ds, tmp_path / "same.nc")
        except BaseException as err:  # noqa: BLE001 - the old shared temp name raised FileNotFoundError here
            errors.append(err)

    threads = [threading.Thread(target=write) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and not list(tmp_path.glob(".*.tmp"))


# --- item 9: --out validated before training; stale temp files cleaned ------------------------------
@pytest.mark.parametrize(("out", "needle"), [("folder", "is a folder"), ("r.txt", "must end in .nc"),
                                             ("afile/r.nc", "is a file, not a folder")])
def test_bad_out_is_refused_before_data_loading(out: str, needle: str, tmp_path: Path, no_data: None,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "folder").mkdir()
    (tmp_path / "afile").write_text("x")
    assert main(["run", "images", *FAST, "--out", str(tmp_path / out)]) == 2
    assert needle in _one_line_error(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "folder"]  # nothing written


def test_stale_temp_files_of_dead_writers_are_removed(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    from dsb_widgets.engine.results import check_out_path

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    pid = int(dead.stdout)  # that process has exited
    stale = [tmp_path / f".r.nc.{pid}.tmp", tmp_path / f".r.state.pt.{pid}.ab12cd34.tmp",
             tmp_path / f".r.probes.pt.{pid}.tmp", tmp_path / "r.state.pt.tmp"]
    live = tmp_path / f".r.nc.{os.getpid()}.00ff00ff.tmp"  # a writer that is still running
    other = tmp_path / f".q.nc.{pid}.tmp"  # another output's
    for p in [*stale, live, other]:
        p.write_bytes(b"")
    check_out_path(tmp_path / "r.nc")
    assert not any(p.exists() for p in stale) and live.exists() and other.exists()


# --- item 11: tracebacks -> one line -----------------------------------------------------------------
@pytest.mark.parametrize(("args", "needle"), [
    (["--per-octave", "0"], "--per-octave"),
    (["--per-octave", "-1"], "--per-octave"),
    (["--weight-decay", "-1"], "--weight-decay"),
    (["--grad-clip", "0"], "--grad-clip"),
    (["--warmup", "-3"], "--warmup"),
])
def test_bad_numbers_exit_2_before_data_loading(args: list[str], needle: str, tmp_path: Path, no_data: None,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "images", *FAST, *args, "--out", str(tmp_path / "r.nc")]) == 2
    assert needle in _one_line_error(capsys)


def test_one_class_image_folder_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import numpy as np
    from PIL import Image

    for split, n in (("train", 6), ("test", 3)):
        folder = tmp_path / "data" / "cifar10" / split / "cat"
        folder.mkdir(parents=True)
        for i in range(n):
            Image.fromarray(np.full((8, 8, 3), 40 * i, dtype=np.uint8)).save(folder / f"{i}.png")
    monkey_cache = tmp_path / "cache"
    import os

    os.environ["DSB_CACHE_DIR"] = str(monkey_cache)
    try:
        code = main(["run", "images", "--dataset", "cifar10", "--data-dir", str(tmp_path / "data"), "--steps", "2",
                     "--probe-size", "4", "--device", "cpu", "--out", str(tmp_path / "r.nc")])
    finally:
        del os.environ["DSB_CACHE_DIR"]
    assert code == 2
    assert "at least 2" in _one_line_error(capsys)


@pytest.mark.parametrize("damage", ["provenance", "clone_file"])
def test_corrupt_clone_folder_is_one_line(damage: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    folder = tmp_path / "clones"
    folder.mkdir()
    (folder / "vocab.json").write_text(json.dumps({"token_strings": ["a", "b"]}))
    prov = {"corpus": "tinyshakespeare", "context": 8, "orders": {"1": {"file": "clone_L1.pt", "acceptance_rate": 0.5}},
            "config": {"tokenizer": "char", "vocab_size": 2}}
    (folder / "provenance.json").write_text(json.dumps(prov) if damage != "provenance" else '{"corpus": "tin')
    (folder / "clone_L1.pt").write_bytes(b"\x80\x04 not a torch file")
    assert main(["run", "clones", "--clones", str(folder), "--corpus", "tinyshakespeare",
                 "--out", str(tmp_path / "c.nc")]) == 2
    assert "remake them" in _one_line_error(capsys)


@pytest.mark.parametrize(("yaml_text", "needle"), [
    ("base: {steps: 4\ngrid: {lr: [0.1]}\n", "not valid YAML"),
    ("base: {}\ngrid: {steps: [abc]}\n", "steps must be an integer"),
    ("base: {}\ngrid: {seeds: [1.5]}\n", "seeds must be an integer"),
    ("base: {probes: real}\ngrid: {lr: [0.1]}\n", "probes must be a list"),
    ("base: {}\ngrid: {lr: [fast]}\n", "lr must be a number"),
])
def test_bad_sweep_files_are_one_line(yaml_text: str, needle: str, tmp_path: Path) -> None:
    from dsb_widgets.errors import ConfigError
    from dsb_widgets.sweep_config import expand, load_sweep

    f = tmp_path / "s.yaml"
    f.write_text(f"out_dir: {tmp_path / 'out'}\n" + yaml_text)
    with pytest.raises(ConfigError, match=needle) as info:
        expand(load_sweep(f))
    assert "\n" not in str(info.value)


def test_yaml_float_strings_are_numbers(tmp_path: Path) -> None:
    from dsb_widgets.sweep_config import expand, load_sweep

    f = tmp_path / "s.yaml"
    # YAML 1.1: 1e-3 is a str
    f.write_text(f"out_dir: {tmp_path}\nbase: {{steps: 4}}\ngrid: {{lr: [\"1e-3\", 3e-3]}}\n")
    assert [r.config.lr for r in expand(load_sweep(f))] == [0.001, 0.003]


def test_disk_full_is_one_line_and_keeps_nothing_half_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    import errno

    import xarray as xr

    def full(self: xr.Dataset, path: object, *args: object, **kwargs: object) -> None:
        Path(str(path)).write_bytes(b"\0" * 10)  # a partial write, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(xr.Dataset, "to_netcdf", full)
    assert main(["run", "images", *FAST, "--out", str(tmp_path / "r.nc")]) == 2
    assert "No space left on device" in _one_line_error(capsys)
    assert not list(tmp_path.glob(".*.tmp")) and not (tmp_path / "r.nc").exists()


# --- item 12: divergence -----------------------------------------------------------------------------
def test_huge_learning_rate_stops_with_one_line_and_keeps_checkpoints(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    import numpy as np

    from dsb_widgets.engine import load_results

    out = tmp_path / "r.nc"
    assert main(["run", "images", *FAST, "--steps", "300", "--lr", "1e9", "--out", str(out)]) == 2
    err = _one_line_error(capsys)
    assert "diverged" in err and "1e+09" in err and "--lr" in err
    ds = load_results(out)  # the checkpoints before the blow-up are kept, all finite
    assert ds.sizes["step"] >= 1 and int(ds.step[-1]) < 300
    assert np.isfinite(ds["train_loss"].values[1:]).all()


def test_divergence_is_caught_between_checkpoints(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import dsb_widgets.engine.loop as loop
    from dsb_widgets.engine import train
    from dsb_widgets.errors import TrainingDivergedError

    monkeypatch.setattr(loop, "log_checkpoints", lambda steps, per_octave: [0, steps])  # no checkpoint to see it
    every = loop.DIVERGENCE_CHECK_EVERY
    with pytest.raises(TrainingDivergedError, match=f"by step {every} with learning rate 1e\\+09"):
        train(_digits_cfg(steps=10 * every, lr=1e9))  # stops at the first periodic check, not at step 640


# --- item 17: no wall-clock assertion in the suite ---------------------------------------------------
def test_no_test_asserts_on_wall_clock_time() -> None:
    """Speed belongs in benchmarks/ (printed, side by side); an assert on a timer fails under load."""
    import re

    timer = re.compile(r"\b(perf_counter|process_time|monotonic|time\.time)\b")
    offenders = []
    for path in sorted(Path(__file__).parent.glob("test_*.py")):
        lines = path.read_text().splitlines()
        timed = {m.group(1) for line in lines if timer.search(line)
                 for m in [re.match(r"\s*(\w+)\s*=.*", line)] if m}  # names holding a time reading
        for i, line in enumerate(lines, 1):
            code = line.split("#")[0]
            if code.lstrip().startswith("assert") and (timer.search(code) or any(
                    re.search(rf"\b{re.escape(n)}\b", code) for n in timed)):
                offenders.append(f"{path.name}:{i}: {line.strip()}")
    assert not offenders, offenders


def test_dashboard_form_reads_the_same_options_schema(tmp_path: Path) -> None:
    from dsb_widgets.runs import RunRegistry
    from dsb_widgets.ui.app import Dashboard

    reg = RunRegistry()
    board = Dashboard(tmp_path / "runs", reg)
    assert "width=256" in board.options_help.value and "taylor_method" in board.options_help.value
    for text, needle in (("widht=64", "width"), ("width=0", "must be &gt;= 1"), ("taylor=maybe", "true")):
        board.options.value = text
        assert board.start() is None and needle in board.message.object and not reg.runs()
